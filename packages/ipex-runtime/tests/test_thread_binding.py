"""ipex-core's native binding helpers, checked from /proc (outside Python's and torch's view)."""

import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch

import ipex
import ipex_runtime
from ipex_core import _C

OPENMP_RUNTIME = re.compile(r"lib(gomp|iomp5|omp)[.-]")


def test_facade_alias_and_public_api():
    assert ipex.cpu.runtime is ipex_runtime
    for name in ("is_runtime_ext_enabled", "CPUPool", "pin", "MultiStreamModuleHint", "MultiStreamModule", "Task",
                 "get_core_list_of_node_id"):
        assert name in ipex_runtime.__all__ and hasattr(ipex_runtime, name)


def test_one_openmp_runtime_mapped_and_it_is_torchs():
    torch.randn(256, 256) @ torch.randn(256, 256)  # make sure torch's OpenMP is in use
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if OPENMP_RUNTIME.search(line.rsplit("/", 1)[-1])}
    torch_lib = Path(torch.__file__).parent / "lib"
    assert len(mapped) == 1, f"more than one OpenMP runtime mapped: {mapped}"
    (path,) = mapped
    assert Path(path).resolve() == (torch_lib / "libgomp.so.1").resolve()
    assert Path(_C.openmp_library()).resolve() == Path(path).resolve()


def test_runtime_ext_enabled_without_preload():
    assert "LD_PRELOAD" not in os.environ or "iomp" not in os.environ["LD_PRELOAD"]
    enabled, reason = _C.runtime_ext_status()
    assert enabled and ipex_runtime.is_runtime_ext_enabled()
    assert "libgomp" in reason


def test_bind_team_reaches_the_threads_torch_computes_on(probe, two_cpus):
    a, b = two_cpus
    saved = _C.omp_team_affinity(2)
    previous = _C.set_intraop_threads(2, 2)
    try:
        tids = _C.bind_omp_team([[a, b], [b]])
        assert tids[0] == probe.main_tid() and len(set(tids)) == 2
        assert [probe.cpus_allowed(t) for t in tids] == [[a, b], [b]]
        # at::parallel_for, torch's own intra-op primitive, runs on exactly that team.
        assert probe.intraop_masks() == [(tids[0], [a, b]), (tids[1], [b])]

        # And torch's kernels (here MKL/oneDNN GEMM) make the bound worker work,
        # on the CPU it is bound to (per-thread accounting in /proc/.../stat).
        def cpu_ticks_and_last_cpu(tid):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12]), int(fields[36])

        start, _ = cpu_ticks_and_last_cpu(tids[1])
        x = torch.randn(512, 512)
        deadline = time.monotonic() + 10
        while cpu_ticks_and_last_cpu(tids[1])[0] == start and time.monotonic() < deadline:
            for _ in range(20):
                x @ x
        ticks, last_cpu = cpu_ticks_and_last_cpu(tids[1])
        assert ticks > start and last_cpu == b
    finally:
        _C.set_intraop_threads(*previous)
        _C.bind_omp_team(saved)


def test_intraop_thread_count_is_thread_local():
    main_before = torch.get_num_threads()
    seen = {}

    def other():
        previous = _C.set_intraop_threads(1, 1)
        seen["inside"] = (torch.get_num_threads(), len(_C.intraop_thread_ids()))
        _C.set_intraop_threads(*previous)
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["inside"] == (1, 1)
    assert seen["after"] == main_before
    assert torch.get_num_threads() == main_before


@pytest.mark.parametrize("cpu_lists, error, match", [
    ([], ValueError, "one CPU list per thread"),
    ([[]], ValueError, "CPU list 0 is empty"),
    ([[-1]], ValueError, "out of range"),
    ([[os.cpu_count() + 7]], RuntimeError, "None of these CPUs is allowed"),
])
def test_bind_team_errors(cpu_lists, error, match):
    with pytest.raises(error, match=match):
        _C.bind_omp_team(cpu_lists)


def test_helper_argument_errors():
    with pytest.raises(ValueError, match="at least 1"):
        _C.omp_team_affinity(0)
    with pytest.raises(ValueError, match="at least 1"):
        _C.set_intraop_threads(0, 0)


def test_disabled_runtime_says_why(monkeypatch):
    from ipex_runtime import CPUPool, Task, _binding, pin

    monkeypatch.setattr(_binding, "_status", lambda: (False, "sched_setaffinity is not permitted"))
    assert not ipex_runtime.is_runtime_ext_enabled()
    pool = CPUPool([sorted(os.sched_getaffinity(0))[0]])
    with pytest.raises(RuntimeError, match="cannot bind threads in this process: sched_setaffinity is not permitted"):
        with pin(pool):
            pass
    with pytest.raises(RuntimeError, match="cannot bind threads"):
        Task(lambda: None, pool)
