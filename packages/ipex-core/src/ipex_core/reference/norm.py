"""RMSNorm references."""

from __future__ import annotations

import torch

__all__ = ["rms_norm", "add_rms_norm"]


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Rounded to the input dtype before the scale, as transformers' RMSNorm modules do.
    x = input.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(input.dtype)
    return (normed.float() * weight.float()).to(input.dtype)


def add_rms_norm(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    s = input + residual  # rounded to input.dtype, as an unfused model does
    return rms_norm(s, weight, eps), s
