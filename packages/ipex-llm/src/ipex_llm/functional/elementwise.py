"""Rotary embedding, LayerNorm and gated activations on ``torch.ops.ipex`` kernels."""

from __future__ import annotations

import torch

from ipex_core.ops import elementwise_ops as E

__all__ = ["rotary_embedding", "fast_layer_norm", "add_layer_norm", "silu_mul", "gelu_mul"]


def _rope_one(x, sin, cos, rotary_dim, rotary_half, position_ids):
    if x is None:
        return None
    return E.rotary_embedding(x, sin, cos, rotary_dim, rotary_half, position_ids)


def rotary_embedding(
    query: torch.Tensor,
    key: torch.Tensor,
    sin: torch.Tensor,
    cos: torch.Tensor,
    rotary_dim: int,
    rotary_half: bool,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of query and key (which may have different head counts).

    Args:
        query, key: ``[batch, seq, heads, head_dim]`` or ``[tokens, heads, head_dim]``.
        sin, cos: ``[num_tokens, rotary_dim]`` holding the angles as ``cat(f, f)`` (the
            transformers convention, for both layouts) or ``[num_tokens, rotary_dim / 2]``.
            With ``position_ids`` they are a table indexed by position instead.
        rotary_dim: leading dimensions of each head that rotate; the rest pass through.
        rotary_half: True for Llama (rotate the two halves), False for GPT-J/ChatGLM
            (rotate neighbouring pairs).
        position_ids: optional ``[batch, seq]`` rows of sin/cos to use per token (int64 or int32).

    Returns the rotated ``(query, key)`` as new tensors; the inputs are not modified (the
    retired extension also rotated them in place, which some callers relied on: use the
    returned tensors).
    """
    return (
        _rope_one(query, sin, cos, rotary_dim, rotary_half, position_ids),
        _rope_one(key, sin, cos, rotary_dim, rotary_half, position_ids),
    )


def _normalized(shape) -> list[int]:
    return [shape] if isinstance(shape, int) else list(shape)


def fast_layer_norm(
    hidden_states: torch.Tensor, normalized_shape, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dimension (``normalized_shape`` must be it), fp32 accumulation."""
    return E.layer_norm(hidden_states, _normalized(normalized_shape), weight, bias, eps)


def add_layer_norm(
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = hidden_states + residual``; returns ``(layer_norm(s), s)`` in one pass."""
    return E.add_layer_norm(hidden_states, residual, [hidden_states.shape[-1]], weight, bias, eps)


def silu_mul(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``silu(input) * other`` in one pass (a gated MLP's activation)."""
    return E.silu_mul(input, other)


def gelu_mul(input: torch.Tensor, other: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(input, approximate) * other`` in one pass."""
    return E.gelu_mul(input, other, approximate)
