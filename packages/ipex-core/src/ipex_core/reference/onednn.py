"""References for the oneDNN post-op fusions of ``ipex.optimize`` (``ipex::onednn_linear*``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_binary", "apply_unary", "onednn_linear", "onednn_linear_binary"]


def apply_unary(y: torch.Tensor, attr: str, scalars=(), algorithm: str | None = None) -> torch.Tensor:
    """The unary post-op ``attr`` (names of ``ipex_core.ops.onednn.UNARY_ATTRS``) in plain PyTorch."""
    if attr == "none":
        return y
    if attr == "relu":
        return F.relu(y)
    if attr == "gelu":
        return F.gelu(y, approximate="tanh" if algorithm == "tanh" else "none")
    if attr == "swish":
        return F.silu(y)
    if attr == "sigmoid":
        return torch.sigmoid(y)
    if attr == "tanh":
        return torch.tanh(y)
    if attr == "hardswish":
        return F.hardswish(y)
    if attr == "hardsigmoid":
        return F.hardsigmoid(y)
    if attr == "leaky_relu":
        return F.leaky_relu(y, float(scalars[0]))
    if attr == "hardtanh":
        return F.hardtanh(y, float(scalars[0]), float(scalars[1]))
    raise ValueError(f"unknown unary post-op {attr!r}")


def apply_binary(y: torch.Tensor, other: torch.Tensor, attr: str) -> torch.Tensor:
    """The binary post-op ``attr`` (add, sub, mul, div) in plain PyTorch."""
    ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
    if attr not in ops:
        raise ValueError(f"unknown binary post-op {attr!r}")
    return ops[attr](y, other)


def onednn_linear(input, weight, bias=None, attr="none", scalars=(), algorithm=None):
    """fp32 math, one rounding at the end (what the fused kernel does)."""
    y = F.linear(input.float(), weight.float(), None if bias is None else bias.float())
    return apply_unary(y, attr, scalars, algorithm).to(input.dtype)


def onednn_linear_binary(input, other, weight, bias=None, attr="add"):
    y = F.linear(input.float(), weight.float(), None if bias is None else bias.float())
    return apply_binary(y, other.float(), attr).to(input.dtype)
