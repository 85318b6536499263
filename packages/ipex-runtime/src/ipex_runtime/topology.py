"""CPU topology from sysfs (``/sys/devices/system/{cpu,node}``), not ``lscpu``.

Readers look up ``SYSFS_ROOT`` at call time (or take ``root``), so tests can
point them at a fake tree.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SYSFS_ROOT", "get_core_list_of_node_id", "node_ids", "parse_cpu_list"]

SYSFS_ROOT = Path("/sys/devices/system")


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,8,10-11"`` (the kernel's cpulist format) -> ``[0, 1, 2, 3, 8, 10, 11]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else SYSFS_ROOT


def _read_cpu_list(path: Path) -> list[int] | None:
    try:
        return parse_cpu_list(path.read_text())
    except OSError:
        return None


def online_cpus(root: Path | None = None) -> list[int]:
    root = _root(root)
    cpus = _read_cpu_list(Path(root) / "cpu" / "online")
    return cpus if cpus is not None else list(range(os.cpu_count() or 1))


def _node_cpus(root: Path | None) -> dict[int, list[int]]:
    root = _root(root)
    node_dir = Path(root) / "node"
    nodes = {}
    if node_dir.is_dir():
        for entry in node_dir.iterdir():
            if entry.name.startswith("node") and entry.name[4:].isdigit():
                cpus = _read_cpu_list(entry / "cpulist")
                if cpus is not None:
                    nodes[int(entry.name[4:])] = cpus
    # A kernel without NUMA support has no node directory: one node holds every CPU.
    return nodes or {0: online_cpus(root)}


def node_ids(root: Path | None = None) -> list[int]:
    return sorted(_node_cpus(root))


def _is_first_thread_of_core(cpu: int, root: Path, among: set[int] | None = None) -> bool:
    # Intra-op work gains nothing from a core's second hardware thread, so a
    # node's "cores" are one logical CPU (the lowest-numbered) per physical core.
    # `among`: only these CPUs count as siblings (a core whose first thread is not
    # allowed is then stood for by its second).
    topo = Path(root) / "cpu" / f"cpu{cpu}" / "topology"
    for name in ("core_cpus_list", "thread_siblings_list"):
        siblings = _read_cpu_list(topo / name)
        if siblings:
            return cpu == min(s for s in siblings if among is None or s in among or s == cpu)
    return True


def physical_cores(cpus: list[int], *, root: Path | None = None) -> list[int]:
    """One CPU of ``cpus`` per physical core (the lowest of ``cpus`` among its siblings), in order. Where only
    a core's second hardware thread is allowed (a cgroup / cpuset), that thread stands for the core."""
    root, allowed = _root(root), set(cpus)
    return [c for c in cpus if _is_first_thread_of_core(c, root, allowed)]


def get_core_list_of_node_id(node_id: int, *, root: Path | None = None) -> list[int]:
    """CPU core ids of NUMA node ``node_id``: one logical CPU per online physical core, ascending.

    Read from ``/sys/devices/system/node/node<N>/cpulist`` and each CPU's
    ``topology/core_cpus_list``; hyper-thread siblings other than the first are
    left out. A machine without NUMA information is one node, ``0``.
    """
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise TypeError(f"node_id must be an int NUMA node id, got {type(node_id).__name__} {node_id!r}")
    root = _root(root)
    nodes = _node_cpus(root)
    if node_id not in nodes:
        raise ValueError(
            f"NUMA node {node_id} does not exist: this machine has node(s) {sorted(nodes)} "
            f"(from {Path(root) / 'node'}). Pass one of those, or core_ids instead"
        )
    online = set(online_cpus(root))
    return [c for c in sorted(nodes[node_id]) if c in online and _is_first_thread_of_core(c, root)]
