"""ipex-xpu: the XPU backend plugin of ipex (``ipex.xpu``).

It registers through the ``ipex.backends`` entry points; :func:`backend.register`
returns ``None`` on machines without an XPU, so installing it on a CPU-only
machine changes nothing.
"""

from __future__ import annotations

from ipex_xpu.backend import is_available, register

__version__ = "0.1.0"
__all__ = ["__version__", "is_available", "register"]
