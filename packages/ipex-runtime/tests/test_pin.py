"""pin: binding of the calling thread and its OpenMP workers, read from /proc while the region runs."""

import os
import threading

import pytest
import torch

from ipex_core import _C
from ipex_runtime import CPUPool, pin


@pytest.fixture
def distinct_team(two_cpus):
    """Main thread on [a, b], its OpenMP worker on [b] only, so any change (and its undoing) is visible."""
    a, b = two_cpus
    saved = _C.omp_team_affinity(2)
    previous = _C.set_intraop_threads(2, 2)
    tids = _C.bind_omp_team([[a, b], [b]])
    yield a, b, tids
    _C.set_intraop_threads(*previous)
    _C.bind_omp_team(saved)


def test_pin_binds_caller_and_workers_then_restores(probe, distinct_team):
    a, b, tids = distinct_team
    with pin(CPUPool([a, b])):
        assert torch.get_num_threads() == 2
        assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [a, b])]
    assert torch.get_num_threads() == 2
    assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]


def test_pin_one_core(probe, distinct_team):
    a, b, tids = distinct_team
    with pin(CPUPool([a])):
        assert torch.get_num_threads() == 1
        assert probe.intraop_masks() == [(probe.main_tid(), [a])]  # torch runs intra-op work on the caller alone
        assert sorted(os.sched_getaffinity(0)) == [a]
    assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]


def test_pin_nests(probe, distinct_team):
    a, b, tids = distinct_team
    with pin(CPUPool([b])):
        assert probe.intraop_masks() == [(tids[0], [b])]
        with pin(CPUPool([a, b])):
            assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [a, b])]
            with pin(CPUPool([a])):
                assert probe.intraop_masks() == [(tids[0], [a])]
            assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [a, b])]
        assert probe.intraop_masks() == [(tids[0], [b])]
        assert torch.get_num_threads() == 1
    assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]


def test_pin_restores_after_exception(probe, distinct_team):
    a, b, tids = distinct_team
    with pytest.raises(KeyError, match="inside"):
        with pin(CPUPool([a])):
            raise KeyError("inside")
    assert torch.get_num_threads() == 2
    assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]


def test_pin_as_decorator(probe, distinct_team):
    a, b, tids = distinct_team
    pinned = pin(CPUPool([b]))

    @pinned
    def work(depth):
        seen = [(torch.get_num_threads(), probe.intraop_masks())]
        return seen + (work(depth - 1) if depth else [])  # the same pin object, re-entered

    @pinned
    def fails():
        raise ValueError("boom")

    assert work.__name__ == "work"
    assert work(2) == [(1, [(tids[0], [b])])] * 3
    with pytest.raises(ValueError, match="boom"):
        fails()
    assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]


def test_pin_in_another_thread_leaves_this_one_alone(probe, two_cpus):
    a, b = two_cpus
    before = probe.intraop_masks(), torch.get_num_threads()
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        with pin(CPUPool([b])):
            seen["inside"] = probe.intraop_masks(), torch.get_num_threads()
            entered.set()
            release.wait(10)
        seen["after"] = probe.cpus_allowed(threading.get_native_id())

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    assert (probe.intraop_masks(), torch.get_num_threads()) == before  # while the other thread is pinned
    release.set()
    t.join()
    assert seen["inside"][1] == 1 and seen["inside"][0][0][1] == [b]
    assert seen["after"] == probe.allowed


def test_pin_errors(two_cpus):
    a, b = two_cpus
    with pytest.raises(TypeError, match="CPUPool"):
        pin([a])
    pool = CPUPool([a, b])
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {a})  # this thread lost core b after the pool was made
    try:
        with pytest.raises(ValueError, match=rf"core id\(s\) \[{b}\] are outside this thread's CPU mask"):
            with pin(pool):
                pass
    finally:
        os.sched_setaffinity(0, before)


def test_pools_made_inside_a_pin_still_see_every_allowed_cpu(probe, two_cpus):
    a, b = two_cpus
    with pin(CPUPool([a])):
        assert CPUPool().core_ids == probe.allowed
        with pin(CPUPool([b])):  # a pool on a core the outer pin excluded
            assert probe.cpus_allowed(probe.main_tid()) == [b]


def test_thread_started_inside_a_pin_gets_a_clear_error(two_cpus):
    # It inherits the pinned mask; the message must not claim the process lacks the other core.
    a, b = two_cpus
    errors = []

    def worker():
        try:
            CPUPool([b])
        except ValueError as exc:
            errors.append(str(exc))

    with pin(CPUPool([a])):
        t = threading.Thread(target=worker)
        t.start()
        t.join(30)
    assert errors and "A thread started inside pin() or by a Task inherits that pinned mask" in errors[0]
