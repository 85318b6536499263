"""A minimal third-party ipex backend: RMSNorm kernels for CUDA devices."""

from __future__ import annotations

import threading

__all__ = ["register", "rms_norm_cuda", "add_rms_norm_cuda"]

_lock = threading.Lock()
_spec = None


def rms_norm_cuda(input, weight, eps):
    # Same semantics as ipex_core.reference.rms_norm: fp32 accumulation, one rounding.
    import torch

    x = input.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(input.dtype)


def add_rms_norm_cuda(input, residual, weight, eps):
    s = input + residual
    return rms_norm_cuda(s, weight, eps), s


def register():
    """Entry point of the ipex.backends group: spec when a CUDA device is present, else None."""
    global _spec
    import torch

    if not torch.cuda.is_available():
        return None
    with _lock:
        if _spec is None:  # idempotent: kernels are registered once per process
            import ipex_core  # noqa: F401  (defines the ipex op schemas)
            from ipex.backends import BackendSpec

            torch.library.register_kernel("ipex::rms_norm", "cuda", rms_norm_cuda)
            torch.library.register_kernel("ipex::add_rms_norm", "cuda", add_rms_norm_cuda)
            _spec = BackendSpec(
                name="example_cuda",
                device_type="cuda",
                description="example third-party backend (plain torch ops on CUDA)",
                ops=("rms_norm", "add_rms_norm"),
            )
    return _spec
