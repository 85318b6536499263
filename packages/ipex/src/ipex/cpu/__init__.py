"""``ipex.cpu``: CPU-specific pieces. ``ipex.cpu.runtime`` comes from ``ipex-runtime``."""

from __future__ import annotations

from ipex import _extensions

__all__ = ["runtime"]


def __getattr__(name: str):
    if name == "runtime":
        value = _extensions.resolve("cpu.runtime")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ipex.cpu' has no attribute {name!r}")
