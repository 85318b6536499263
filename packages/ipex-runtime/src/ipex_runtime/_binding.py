"""Binding a thread and its OpenMP team to CPUs, through ipex-core's native helpers.

GNU OpenMP (the runtime inside the torch wheel) gives every thread that starts
parallel work its own pool of worker threads, and torch computes on that pool.
Binding therefore means: this thread, the workers of its team, and the
intra-op thread count, all thread-local, pushed on a per-thread stack so that
pins nest and every exit restores exactly what its entry changed.

Every thread of the team gets the whole CPU set of the pool rather than one
CPU each: GNU OpenMP ends surplus workers when a smaller team runs (MKL does
that for small problems) and later creates new ones from the calling thread,
which start with the caller's mask. With the pool's mask on the caller too,
re-created workers stay inside the pool; one-CPU-per-thread masks would not
survive that.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

__all__ = ["bind_current_thread", "is_runtime_ext_enabled", "unbind_current_thread", "unpinned_cpus"]


@functools.cache
def _status() -> tuple[bool, str]:
    from ipex_core import _C

    return _C.runtime_ext_status()


def is_runtime_ext_enabled() -> bool:
    """Whether ``ipex.cpu.runtime`` can bind torch's threads in this process.

    True when all of these hold (no ``LD_PRELOAD`` of Intel OpenMP is needed):

    * torch's intra-op backend is OpenMP (the case for the torch wheels);
    * ipex-core's native helper calls the same OpenMP runtime as torch, checked
      by setting a thread count through ipex-core and reading it through torch
      (ipex-core links torch's own ``libgomp.so.1``, so this holds unless
      ipex-core was built against another torch);
    * the process may call ``sched_setaffinity`` (some sandboxes forbid it).

    ``pin``, ``Task`` and ``MultiStreamModule`` raise ``RuntimeError`` with the
    reason when it is False.
    """
    return _status()[0]


def require_enabled() -> None:
    enabled, reason = _status()
    if not enabled:
        raise RuntimeError(f"ipex.cpu.runtime cannot bind threads in this process: {reason}")


@dataclass
class _Saved:
    team_cpus: list[list[int]]  # CPU list per OpenMP thread before binding, [0] = this thread
    threads: tuple[int, int]  # (OpenMP, MKL) thread-local counts before binding


_local = threading.local()


def _stack() -> list[_Saved]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


#: The process's CPUs when ipex_runtime was imported (before any pin), for error messages.
CPUS_AT_IMPORT = frozenset(os.sched_getaffinity(0))


def unpinned_cpus() -> list[int]:
    """CPUs this thread may use outside any ipex binding (sched_getaffinity before the first pin)."""
    stack = _stack()
    if stack:
        return sorted(stack[0].team_cpus[0])
    return sorted(os.sched_getaffinity(0))


def bind_current_thread(cpus: list[int]) -> list[int]:
    """Bind this thread and its OpenMP team to ``cpus`` with len(cpus) intra-op threads.

    Returns the kernel thread ids of the team (index 0 = this thread).
    """
    import torch

    from ipex_core import _C

    require_enabled()
    n = len(cpus)
    team_cpus = _C.omp_team_affinity(torch.get_num_threads())
    saved = _Saved(team_cpus, _C.set_intraop_threads(n, n))
    try:
        tids = _C.bind_omp_team([list(cpus)] * n)
    except BaseException:
        _restore(saved)
        raise
    _stack().append(saved)
    return tids


def unbind_current_thread() -> None:
    """Undo the innermost bind_current_thread of this thread."""
    _restore(_stack().pop())


def _restore(saved: _Saved) -> None:
    from ipex_core import _C

    # Count first, so the restoring team has the size torch will use next and
    # GNU OpenMP does not end and re-create workers in between.
    _C.set_intraop_threads(*saved.threads)
    _C.bind_omp_team(saved.team_cpus)
