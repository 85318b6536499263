"""ipex-runtime: ``ipex.cpu.runtime`` (CPU pools, core pinning, multi-stream inference)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
