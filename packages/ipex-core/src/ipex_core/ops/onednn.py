"""oneDNN kernels of ``ipex.optimize``'s prepacked modules: wrappers and fake implementations.

``ipex::onednn_linear`` / ``onednn_linear_binary`` / ``onednn_conv_binary`` /
``onednn_conv_transpose`` call the oneDNN kernels torch ships
(``mkldnn::_linear_pointwise``, ``_convolution_pointwise.binary``,
``_convolution_transpose_pointwise``); schemas and the reason for the wrappers
are in csrc/ops/onednn_ops.cpp. A linear weight is ``[out_features,
in_features]``, dense or packed by :func:`pack_linear_weight`.
"""

from __future__ import annotations

import torch

__all__ = ["UNARY_ATTRS", "BINARY_ATTRS", "onednn_conv_add_", "onednn_conv_binary", "onednn_conv_transpose",
           "onednn_linear", "onednn_linear_binary", "pack_linear_weight"]

# Post-ops oneDNN fuses into the linear/convolution kernels torch ships
# (mkldnn/Utils.cpp's fusion maps): name -> (scalars, algorithm) it needs.
UNARY_ATTRS = ("none", "relu", "gelu", "swish", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu",
               "hardtanh")
BINARY_ATTRS = ("add", "sub", "mul", "div")


def pack_linear_weight(weight: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``weight`` [out, in] reordered into oneDNN's blocked layout (an opaque mkldnn tensor).

    ``batch_size`` (rows of the input, all leading dimensions multiplied) lets
    oneDNN pick the block format for that shape; ``None`` uses its default.
    """
    if weight.dim() != 2:
        raise ValueError(f"pack_linear_weight: weight must be 2-D [out, in]; got shape {tuple(weight.shape)}")
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_size)


def onednn_linear(input, weight, bias=None, attr: str = "none", scalars=(), algorithm: str | None = None):
    """``attr(input @ weight.T + bias)`` in one oneDNN call; see :data:`UNARY_ATTRS`."""
    return torch.ops.ipex.onednn_linear(input, weight, bias, attr, list(scalars), algorithm)


def onednn_linear_binary(input, other, weight, bias=None, attr: str = "add"):
    """``(input @ weight.T + bias) <attr> other`` in one oneDNN call; see :data:`BINARY_ATTRS`."""
    return torch.ops.ipex.onednn_linear_binary(input, other, weight, bias, attr)


def _fake_linear(op, input, weight, bias):
    torch._check(weight.dim() == 2, lambda: f"{op}: weight must be 2-D; got {tuple(weight.shape)}")
    torch._check(input.shape[-1] == weight.shape[1],
                 lambda: f"{op}: input has {input.shape[-1]} features, the weight expects {weight.shape[1]}")
    torch._check(input.dtype == weight.dtype,
                 lambda: f"{op}: input dtype {input.dtype} differs from weight dtype {weight.dtype}; cast the input")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("ipex::onednn_linear")
def _onednn_linear_fake(input, weight, bias, attr, scalars, algorithm):
    torch._check(attr in UNARY_ATTRS, lambda: f"ipex::onednn_linear: unknown attr {attr!r}; use one of {UNARY_ATTRS}")
    return _fake_linear("ipex::onednn_linear", input, weight, bias)


@torch.library.register_fake("ipex::onednn_linear_binary")
def _onednn_linear_binary_fake(input, other, weight, bias, attr="add"):
    torch._check(attr in BINARY_ATTRS,
                 lambda: f"ipex::onednn_linear_binary: unknown attr {attr!r}; use one of {BINARY_ATTRS}")
    out = _fake_linear("ipex::onednn_linear_binary", input, weight, bias)
    torch._check(other.shape == out.shape, lambda: "ipex::onednn_linear_binary: other must have the output's shape")
    return out


def onednn_conv_binary(input, other, weight, bias, padding, stride, dilation, groups: int, binary_attr: str = "add",
                       unary_attr: str = "none"):
    """``unary_attr(conv(input, weight) + bias <binary_attr> other)`` in one oneDNN call (channels-last output)."""
    return torch.ops.ipex.onednn_conv_binary(input, other, weight, bias, list(padding), list(stride), list(dilation),
                                             groups, binary_attr, unary_attr)


def onednn_conv_add_(other, input, weight, bias, padding, stride, dilation, groups: int, unary_attr: str = "none"):
    """In place: ``other = unary_attr(conv(input, weight) + bias + other)``; ``other`` channels-last, weight packed.

    Returns ``other``."""
    torch.ops.ipex.onednn_conv_add_(other, input, weight, bias, list(padding), list(stride), list(dilation), groups,
                                    unary_attr)
    return other


def onednn_conv_transpose(input, weight, bias, padding, output_padding, stride, dilation, groups: int,
                          attr: str = "none", scalars=(), algorithm: str | None = None):
    """``attr(conv_transpose(input, weight) + bias)`` on a weight packed by
    ``torch.ops.mkldnn._reorder_convolution_transpose_weight`` (channels-last output)."""
    return torch.ops.ipex.onednn_conv_transpose(input, weight, bias, list(padding), list(output_padding),
                                                list(stride), list(dilation), groups, attr, list(scalars), algorithm)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.to(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


@torch.library.register_fake("ipex::onednn_conv_binary")
def _onednn_conv_binary_fake(input, other, weight, bias, padding, stride, dilation, groups, binary_attr,
                             unary_attr):
    torch._check(binary_attr in BINARY_ATTRS, lambda: f"ipex::onednn_conv_binary: unknown binary_attr {binary_attr!r}")
    torch._check(unary_attr in ("none", "relu"),
                 lambda: f"ipex::onednn_conv_binary: unary_attr must be 'none' or 'relu'; got {unary_attr!r}")
    torch._check(input.dim() in (4, 5), lambda: "ipex::onednn_conv_binary: input must be 4-D or 5-D")
    spatial = [(s + 2 * p - d * (k - 1) - 1) // st + 1
               for s, p, d, k, st in zip(input.shape[2:], padding, dilation, weight.shape[2:], stride)]
    shape = (input.shape[0], weight.shape[0], *spatial)
    torch._check(tuple(other.shape) == shape, lambda: "ipex::onednn_conv_binary: other must have the output's shape")
    return _channels_last(input.new_empty(shape))


@torch.library.register_fake("ipex::onednn_conv_add_")
def _onednn_conv_add_fake(other, input, weight, bias, padding, stride, dilation, groups, unary_attr):
    torch._check(unary_attr in ("none", "relu"),
                 lambda: f"ipex::onednn_conv_add_: unary_attr must be 'none' or 'relu'; got {unary_attr!r}")


@torch.library.register_fake("ipex::onednn_conv_transpose")
def _onednn_conv_transpose_fake(input, weight, bias, padding, output_padding, stride, dilation, groups, attr, scalars,
                                algorithm):
    torch._check(attr in UNARY_ATTRS, lambda: f"ipex::onednn_conv_transpose: unknown attr {attr!r}")
    torch._check(input.dim() in (4, 5), lambda: "ipex::onednn_conv_transpose: input must be 4-D or 5-D")
    # The packed weight's logical shape is [out_channels, in_channels / groups, k...].
    spatial = [(s - 1) * st - 2 * p + d * (k - 1) + op + 1
               for s, p, op, d, k, st in zip(input.shape[2:], padding, output_padding, dilation, weight.shape[2:],
                                             stride)]
    return _channels_last(input.new_empty((input.shape[0], weight.shape[0], *spatial)))
