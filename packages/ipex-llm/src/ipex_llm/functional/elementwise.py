"""Rotary embedding, LayerNorm and gated activations on ``torch.ops.ipex`` kernels."""

from __future__ import annotations

import math

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
    """LayerNorm over the trailing ``normalized_shape`` dimensions, as ``torch.nn.functional.layer_norm``.

    ``normalized_shape`` is an int or a sequence of the input's last dimensions (e.g. ``[2, 4]``
    normalises each ``[2, 4]`` block); ``weight``/``bias``, when given, have that shape. Accumulated
    in fp32, returned in the input's dtype.
    """
    shape = _normalized(normalized_shape)
    nd = len(shape)
    if nd == 0 or hidden_states.dim() < nd or list(hidden_states.shape[-nd:]) != shape:
        raise ValueError(
            f"fast_layer_norm: normalized_shape must be the input's last dimension(s); got {shape} for an input of "
            f"shape {tuple(hidden_states.shape)} (e.g. normalized_shape={list(hidden_states.shape[-1:])})"
        )
    if nd == 1:  # the common case straight to the kernel (which checks weight/bias)
        return E.layer_norm(hidden_states, shape, weight, bias, eps)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != shape:
            raise ValueError(f"fast_layer_norm: {name} must have normalized_shape {shape}; got {tuple(t.shape)}")
    # The kernel normalises over the last dimension: the trailing dimensions as one, then back.
    flat = hidden_states.reshape(*hidden_states.shape[:-nd], math.prod(shape))  # -1 fails on an empty batch
    out = E.layer_norm(flat, [flat.shape[-1]], None if weight is None else weight.reshape(-1),
                       None if bias is None else bias.reshape(-1), eps)
    return out.view(hidden_states.shape)


def add_layer_norm(
    residual: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    add_back: bool = False,
) -> torch.Tensor:
    """LayerNorm (last dimension) of ``x + residual`` (of ``x`` alone when ``residual`` is None).

    The retired extension's signature. ``add_back=True`` also stores ``x + residual`` into
    ``residual`` (in place). The add and the norm run in one pass; ``x`` is not modified.
    """
    shape = [x.shape[-1]]
    if residual is None:
        return E.layer_norm(x, shape, weight, bias, eps)
    out, total = E.add_layer_norm(x, residual, shape, weight, bias, eps)
    if add_back:
        residual.copy_(total)
    return out


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must have the result's shape {tuple(result.shape)} and dtype {result.dtype}; got "
                         f"{tuple(out.shape)} and {out.dtype}")
    return out.copy_(result)


def silu_mul(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x) * y`` in one pass (a gated MLP's activation), into ``out`` when given."""
    return _into(out, E.silu_mul(x, y))


def gelu_mul(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None, approximate: str = "none"
             ) -> torch.Tensor:
    """``gelu(x, approximate) * y`` in one pass, into ``out`` when given."""
    return _into(out, E.gelu_mul(x, y, approximate))
