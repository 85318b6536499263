"""RMSNorm ops: Python wrappers and fake implementations."""

from __future__ import annotations

import torch

__all__ = ["rms_norm", "add_rms_norm", "add_rms_norm_"]

_ipex = torch.ops.ipex


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``input / sqrt(mean(input**2, -1) + eps) * weight``, accumulated in fp32."""
    return _ipex.rms_norm(input, weight, eps)


def add_rms_norm(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``s = input + residual; return rms_norm(s, weight, eps), s`` in one pass."""
    return _ipex.add_rms_norm(input, residual, weight, eps)


def add_rms_norm_(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    """In place: ``residual += input; input[:] = rms_norm(residual)`` (no allocation)."""
    _ipex.add_rms_norm_(input, residual, weight, eps)


def _check_fake_norm(op: str, input: torch.Tensor, weight: torch.Tensor) -> None:
    torch._check(input.dim() >= 1, lambda: f"{op}: input must have at least 1 dimension")
    torch._check(
        input.dtype in (torch.float32, torch.bfloat16, torch.float16),
        lambda: f"{op}: input dtype must be float32, bfloat16 or float16; got {input.dtype}",
    )
    torch._check(
        weight.dim() == 1 and weight.shape[0] == input.shape[-1],
        lambda: f"{op}: weight must be 1-D of size {input.shape[-1]}; got {tuple(weight.shape)}",
    )
    torch._check(
        weight.device == input.device,
        lambda: f"{op}: weight is on {weight.device} but input is on {input.device}; move them to one device",
    )


@torch.library.register_fake("ipex::rms_norm")
def _rms_norm_fake(input, weight, eps):
    _check_fake_norm("ipex::rms_norm", input, weight)
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


@torch.library.register_fake("ipex::add_rms_norm")
def _add_rms_norm_fake(input, residual, weight, eps):
    _check_fake_norm("ipex::add_rms_norm", input, weight)
    torch._check(residual.shape == input.shape, lambda: "ipex::add_rms_norm: residual shape must equal input")
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    return out, torch.empty_like(out)


@torch.library.register_fake("ipex::add_rms_norm_")
def _add_rms_norm_inplace_fake(input, residual, weight, eps):
    _check_fake_norm("ipex::add_rms_norm_", input, weight)
    torch._check(residual.shape == input.shape, lambda: "ipex::add_rms_norm_: residual shape must equal input")
