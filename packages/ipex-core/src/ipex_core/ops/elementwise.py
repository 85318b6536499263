"""Gated activations, rotary embedding and LayerNorm ops: wrappers and fake implementations."""

from __future__ import annotations

import torch

__all__ = ["silu_mul", "gelu_mul", "rotary_embedding", "layer_norm", "add_layer_norm"]

_ipex = torch.ops.ipex


def silu_mul(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``silu(input) * other`` in one pass."""
    return _ipex.silu_mul(input, other)


def gelu_mul(input: torch.Tensor, other: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(input, approximate) * other`` in one pass."""
    return _ipex.gelu_mul(input, other, approximate)


def rotary_embedding(input, sin, cos, rotary_dim: int, rotary_half: bool, position_ids=None) -> torch.Tensor:
    """Rotary embedding of one query or key tensor; see the op schema in csrc/ops/elementwise_ops.cpp."""
    return _ipex.rotary_embedding(input, sin, cos, rotary_dim, rotary_half, position_ids)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension, accumulated in fp32."""
    return _ipex.layer_norm(input, list(normalized_shape), weight, bias, eps)


def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """``s = input + residual``; returns ``(layer_norm(s), s)`` in one pass."""
    return _ipex.add_layer_norm(input, residual, list(normalized_shape), weight, bias, eps)


def _same(op, a, b, name):
    torch._check(a.shape == b.shape, lambda: f"{op}: {name} shape must equal input shape")


@torch.library.register_fake("ipex::silu_mul")
def _silu_mul_fake(input, other):
    _same("ipex::silu_mul", input, other, "other")
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("ipex::gelu_mul")
def _gelu_mul_fake(input, other, approximate="none"):
    _same("ipex::gelu_mul", input, other, "other")
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("ipex::rotary_embedding")
def _rope_fake(input, sin, cos, rotary_dim, rotary_half, position_ids=None):
    torch._check(input.dim() in (3, 4), lambda: "ipex::rotary_embedding: input must be 3-D or 4-D")
    return input.new_empty(input.shape)


@torch.library.register_fake("ipex::layer_norm")
def _layer_norm_fake(input, normalized_shape, weight, bias, eps):
    return input.new_empty(input.shape)


@torch.library.register_fake("ipex::add_layer_norm")
def _add_layer_norm_fake(input, residual, normalized_shape, weight, bias, eps):
    _same("ipex::add_layer_norm", input, residual, "residual")
    return input.new_empty(input.shape), input.new_empty(input.shape)
