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
    hidden_states: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = hidden_states + residual``; returns ``(rms_norm(s, weight, eps), s)`` in one pass."""
    return torch.ops.ipex.add_rms_norm(hidden_states, residual, weight, eps)
