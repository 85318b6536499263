"""References for the linear epilogues and gated activations."""

from __future__ import annotations

import torch.nn.functional as F

__all__ = ["linear", "linear_pair_silu_mul", "silu_mul", "gelu_mul"]


def _round(y, dtype):
    return y.to(dtype).float()


def _epilogue(y, epilogue, other, other2, dtype):
    """Rounds to ``dtype`` after each step, where unfused PyTorch code would."""
    y = _round(y, dtype)
    if epilogue == "none":
        return y
    if epilogue == "relu":
        return F.relu(y)
    if epilogue == "silu":
        return F.silu(y)
    if epilogue == "gelu":
        return F.gelu(y)
    if epilogue == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if epilogue == "mul":
        return y * other.float()
    if epilogue == "add":
        return y + other.float()
    if epilogue == "add_add":
        return _round(y + other.float(), dtype) + other2.float()
    if epilogue == "silu_mul":
        return _round(F.silu(y), dtype) * other.float()
    raise ValueError(epilogue)


def linear(input, weight, bias, epilogue="none", other=None, other2=None):
    """fp32 math, one rounding at the end (what the fused kernel does)."""
    y = F.linear(input.float(), weight.float(), None if bias is None else bias.float())
    return _epilogue(y, epilogue, other, other2, input.dtype).to(input.dtype)


def linear_pair_silu_mul(input, gate_weight, up_weight, gate_bias=None, up_bias=None):
    g = F.linear(input.float(), gate_weight.float(), None if gate_bias is None else gate_bias.float())
    u = F.linear(input.float(), up_weight.float(), None if up_bias is None else up_bias.float())
    g, u = _round(g, input.dtype), _round(u, input.dtype)
    return (_round(F.silu(g), input.dtype) * u).to(input.dtype)


def silu_mul(input, other):
    return (_round(F.silu(input.float()), input.dtype) * other.float()).to(input.dtype)


def gelu_mul(input, other, approximate="none"):
    return (_round(F.gelu(input.float(), approximate=approximate), input.dtype) * other.float()).to(input.dtype)
