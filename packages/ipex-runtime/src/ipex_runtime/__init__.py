"""ipex-runtime: ``ipex.cpu.runtime`` (CPU pools, core pinning, multi-stream inference).

Threads are bound through ipex-core's native helper on the GNU OpenMP runtime
inside the torch wheel; no Intel OpenMP preload is needed. Topology comes from
``/sys/devices/system/{node,cpu}`` and ``sched_getaffinity``.
"""

from __future__ import annotations

from ipex_runtime._binding import is_runtime_ext_enabled
from ipex_runtime.cpupool import CPUPool, pin
from ipex_runtime.multi_stream import MultiStreamModule, MultiStreamModuleHint
from ipex_runtime.task import Task
from ipex_runtime.topology import get_core_list_of_node_id

__version__ = "0.1.0"
__all__ = [
    "CPUPool",
    "MultiStreamModule",
    "MultiStreamModuleHint",
    "Task",
    "__version__",
    "get_core_list_of_node_id",
    "is_runtime_ext_enabled",
    "pin",
]
