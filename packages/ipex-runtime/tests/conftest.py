import os
import threading

import pytest
import torch

import ipex_runtime
from ipex_core import _C

ALLOWED = sorted(os.sched_getaffinity(0))


def cpus_allowed(tid: int) -> list[int]:
    """A thread's CPU mask as the kernel reports it (not as Python or torch see it)."""
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return ipex_runtime.topology.parse_cpu_list(line.split(":", 1)[1])
    raise AssertionError(f"no Cpus_allowed_list for thread {tid}")


class Probe:
    allowed = ALLOWED
    cpus_allowed = staticmethod(cpus_allowed)

    @staticmethod
    def main_tid() -> int:
        return threading.get_native_id()

    @staticmethod
    def intraop_masks() -> list[tuple[int, list[int]]]:
        """(tid, mask) of each thread torch's at::parallel_for runs on from this thread."""
        return [(t, cpus_allowed(t)) for t in _C.intraop_thread_ids()]


@pytest.fixture
def probe():
    return Probe


@pytest.fixture
def two_cpus():
    if len(ALLOWED) < 2:
        pytest.skip("needs two CPUs available to the process")
    return ALLOWED[0], ALLOWED[1]


@pytest.fixture(autouse=True)
def binding_restored():
    """Every test must leave this thread's binding, team and thread count as it found them."""
    before = (torch.get_num_threads(), _C.omp_team_affinity(torch.get_num_threads()))
    yield
    after = (torch.get_num_threads(), _C.omp_team_affinity(torch.get_num_threads()))
    assert after == before, "the test left the main thread's binding or thread count changed"
