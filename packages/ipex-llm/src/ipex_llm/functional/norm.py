"""Normalisation functions backed by ``torch.ops.ipex`` kernels."""

from __future__ import annotations

import torch

import ipex_core  # noqa: F401  (loads the ipex op library)

__all__ = ["rms_norm", "add_rms_norm"]


def rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``hidden_states`` over its last dimension, scaled by ``weight``.

    Computed in fp32 and returned in the input's dtype; ``weight`` has the
    input's dtype or fp32.
    """
    return torch.ops.ipex.rms_norm(hidden_states, weight, eps)


def add_rms_norm(
    residual: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    add_back: bool = False,
) -> torch.Tensor:
    """RMSNorm of ``x + residual`` (of ``x`` alone when ``residual`` is None), plus ``bias`` if given.

    The retired extension's signature. ``add_back=True`` also stores ``x + residual`` into
    ``residual`` (in place), the next layer's residual. The add and the norm run in one
    pass (``torch.ops.ipex.add_rms_norm``); ``x`` is not modified.
    """
    if residual is None:
        out = torch.ops.ipex.rms_norm(x, weight, eps)
    else:
        out, total = torch.ops.ipex.add_rms_norm(x, residual, weight, eps)
        if add_back:
            residual.copy_(total)
    return out if bias is None else out + bias
