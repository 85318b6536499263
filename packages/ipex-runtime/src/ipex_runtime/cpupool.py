"""CPUPool and pin: a set of cores, and binding the calling thread's intra-op work to it."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

from ipex_runtime import _binding
from ipex_runtime.topology import get_core_list_of_node_id, physical_cores

__all__ = ["CPUPool", "pin"]


def _check_available(core_ids: list[int], allowed: list[int]) -> None:
    missing = [c for c in core_ids if c not in set(allowed)]
    if missing and set(missing) <= _binding.CPUS_AT_IMPORT:
        # The process had them: this thread's mask is narrower (inherited from a pin, or set by hand).
        raise ValueError(
            f"core id(s) {missing} are outside this thread's CPU mask {allowed}, though the process had "
            f"{sorted(_binding.CPUS_AT_IMPORT)} when ipex_runtime was imported. A thread started inside pin() or "
            "by a Task inherits that pinned mask: create CPUPools, Tasks and MultiStreamModules outside pinned "
            "regions (or widen the thread's mask with os.sched_setaffinity)"
        )
    if missing:
        raise ValueError(
            f"core id(s) {missing} are not available to this process, which may use CPUs {allowed} "
            "(os.sched_getaffinity; taskset, numactl or a cgroup cpuset limit it). Use ids from that list, "
            "or start the process with those CPUs allowed"
        )


def _validate_core_ids(core_ids: Iterable[int], allowed: list[int]) -> list[int]:
    if isinstance(core_ids, str | bytes) or not isinstance(core_ids, Iterable):
        raise TypeError(f"core_ids must be a list of int CPU ids, got {type(core_ids).__name__} {core_ids!r}")
    ids = list(core_ids)
    bad = [c for c in ids if isinstance(c, bool) or not isinstance(c, int)]
    if bad:
        raise TypeError(f"core_ids must contain int CPU ids only, got {bad!r} in {ids!r}")
    if not ids:
        raise ValueError("core_ids is empty: a CPUPool needs at least one core. Pass e.g. core_ids=[0]")
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise ValueError(f"core_ids lists core(s) {duplicates} more than once in {ids}: give each core once")
    _check_available(ids, allowed)
    return ids


class CPUPool:
    """An abstraction of a pool of CPU cores used for intra-op parallelism.

    Args:
        core_ids (list): CPU ids (as in ``/sys/devices/system/cpu/cpuN``) used for
            intra-op parallelism, kept in the given order. Each must be available to
            this process (``os.sched_getaffinity``); empty, duplicate or unavailable
            ids raise ``ValueError``.
        node_id (int): a NUMA node id: the pool is the node's cores
            (:func:`get_core_list_of_node_id`) that this process may use.
            ``node_id`` doesn't work if ``core_ids`` is set (it is ignored, with a warning).

    With neither, the pool is every physical core this process may use (one CPU per core: hyper-thread
    siblings other than the first are left out, as in a node's core list), on every NUMA node. "May use" means the
    calling thread's affinity outside any :class:`pin`.
    """

    def __init__(self, core_ids: list | None = None, node_id: int | None = None):
        allowed = _binding.unpinned_cpus()
        if core_ids is not None:
            if node_id is not None:
                warnings.warn(
                    f"CPUPool got both core_ids and node_id={node_id}; core_ids is used and node_id ignored. "
                    "Pass only one of them to silence this warning",
                    UserWarning,
                    stacklevel=2,
                )
            self.core_ids = _validate_core_ids(core_ids, allowed)
        elif node_id is not None:
            node_cores = get_core_list_of_node_id(node_id)
            usable = [c for c in node_cores if c in set(allowed)]
            if not usable:
                raise ValueError(
                    f"NUMA node {node_id} has cores {node_cores}, none of which this process may use "
                    f"(it may use CPUs {allowed}). Pick another node, or pass core_ids"
                )
            self.core_ids = usable
        else:
            # One CPU per physical core, as get_core_list_of_node_id gives: a second hardware thread adds
            # nothing to intra-op work, and MultiStreamModule("AUTO") ran two streams per core on it.
            self.core_ids = physical_cores(allowed) or allowed

    def __len__(self) -> int:
        return len(self.core_ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CPUPool) and other.core_ids == self.core_ids

    def __hash__(self) -> int:
        return hash(tuple(self.core_ids))

    def __repr__(self) -> str:
        return f"CPUPool(core_ids={self.core_ids})"


class pin:  # noqa: N801  (lowercase: the public name of the API)
    """Apply the given CPU pool to the thread that runs the scoped region or function.

    Inside, the calling thread and the OpenMP worker threads torch runs its
    intra-op work on are bound to the pool's cores, and the thread's intra-op
    thread count (``torch.get_num_threads()``) is the pool size. On exit, also
    by an exception, the previous binding and count come back. Pins nest, and one
    ``pin`` object may be used by several threads or recursively: the saved state
    lives per thread. Other threads are not affected.

    Args:
        cpu_pool (CPUPool): the cores used by the designated operations.

    Use as ``with pin(pool): ...`` or as a decorator ``@pin(pool)``.
    """

    def __init__(self, cpu_pool: CPUPool):
        if not isinstance(cpu_pool, CPUPool):
            raise TypeError(f"pin needs an ipex.cpu.runtime.CPUPool, got {type(cpu_pool).__name__}")
        self.cpu_pool = cpu_pool

    def __enter__(self) -> pin:
        # The pool was checked when made; the process affinity may have changed since.
        _check_available(self.cpu_pool.core_ids, _binding.unpinned_cpus())
        _binding.bind_current_thread(self.cpu_pool.core_ids)
        return self

    def __exit__(self, *exc_info) -> None:
        _binding.unbind_current_thread()

    def __call__(self, func):
        @functools.wraps(func)
        def pinned(*args, **kwargs):
            with self:
                return func(*args, **kwargs)

        return pinned
