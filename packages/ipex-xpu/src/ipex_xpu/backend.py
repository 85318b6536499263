"""The ``xpu`` entry of the ``ipex.backends`` group."""

from __future__ import annotations

__all__ = ["is_available", "register"]


def is_available() -> bool:
    """Whether torch sees an Intel XPU device in this process."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def register():
    """Cheap and idempotent: the backend spec when an XPU is present, else None."""
    if not is_available():
        return None
    from ipex.backends import BackendSpec

    return BackendSpec(name="xpu", device_type="xpu", description="Intel GPU through torch.xpu")
