"""``ipex::conv3x3_winograd``: a 3x3 stride-1 convolution by Winograd F(4x4, 3x3), computed in float32;
``ipex::conv1x1`` / ``ipex::conv1x1_add_``: a 1x1 stride-1 float32 convolution as one GEMM with its
bias, residual add and ReLU fused, in float32 FMAs or, with the weight in its bf16x3 form, as three
bf16 GEMMs on AMX tiles (:func:`conv1x1_weight`).

Schema and kernel: csrc/ops/conv_ops.cpp. The op takes the weight already
transformed (:func:`winograd_weight`, done once when ``ipex.optimize`` packs a
layer). The transform matrices are Lavin & Gray's (2015); with them a 6x6 input
tile ``d`` and a 3x3 kernel ``g`` give the 4x4 output tile
``A^T [(G g G^T) * (B^T d B)] A`` (``*`` elementwise, summed over input channels).
"""

from __future__ import annotations

import torch

from ipex_core import env, isa

__all__ = ["BF16X3_COLUMNS", "BF16X3_MIN_OUT_CHANNELS", "WINOGRAD_F43_AT", "WINOGRAD_F43_BT", "WINOGRAD_F43_G",
           "bf16x3_default", "column_block", "conv1x1", "conv1x1_add_", "conv1x1_weight", "conv1x1_weight_matrix",
           "conv3x3_winograd", "winograd_weight", "winograd_weight_matrices"]

BF16X3_COLUMNS = 32  # output channels per column block of the bf16x3 weight (a pair of AMX B tiles)

WINOGRAD_F43_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                   (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
WINOGRAD_F43_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
                  (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
WINOGRAD_F43_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def column_block(out_channels: int) -> int:
    """The column block of the blocked GEMM weights (:func:`winograd_weight`, :func:`conv1x1_weight`): 64
    output channels, else the largest of 32 and 16 that divides ``out_channels``, else all of them."""
    return next((b for b in (64, 32, 16) if out_channels % b == 0), out_channels)


# Fewer output channels than this keep the float32 form: the input's split into bf16 parts (one more pass over
# it, 4 bytes written per value) costs what the GEMM saves when each input value feeds few outputs (ResNet-50's
# 256 -> 64 at 56x56: 0.95-1.05x float32; 512 -> 128 at 28x28 1.26-1.37x; 1.5-1.9x from 256 outputs).
BF16X3_MIN_OUT_CHANNELS = 128


def bf16x3_default(out_channels: int) -> bool:
    """Whether :func:`conv1x1_weight` makes the bf16x3 form by default for a layer of ``out_channels``: on CPUs
    with AMX-BF16 (the active ISA level ``amx``), for a multiple of :data:`BF16X3_COLUMNS` output channels, at
    least :data:`BF16X3_MIN_OUT_CHANNELS`, unless ``IPEX_FP32_BF16X3=0``. Without AMX three bf16 GEMMs would be
    slower than one in float32."""
    return (out_channels % BF16X3_COLUMNS == 0 and out_channels >= BF16X3_MIN_OUT_CHANNELS
            and isa.active_isa() == "amx" and env.get_bool("IPEX_FP32_BF16X3"))


def _bf16x3_blocks(w: torch.Tensor) -> torch.Tensor:
    """Column blocks ``[..., blocks, in, 32]`` (float32) as the bf16x3 form ``[..., blocks, 2, in_32 / 2, 32, 2]``:
    hi = bf16(w) and lo = bf16(w - hi), in zero-padded to a multiple of 32 (whole AMX k steps), each part in
    VNNI k pairs."""
    w = torch.nn.functional.pad(w, (0, 0, 0, -w.shape[-2] % 32))
    hi = w.to(torch.bfloat16)
    lo = w - hi.float()
    lo = torch.where(lo.isnan(), 0.0, lo).to(torch.bfloat16)  # (an infinite weight: hi alone carries it, as the op's input split)
    parts = torch.stack([hi, lo], dim=-3)  # [..., blocks, 2, in_32, 32]
    *lead, in_32, block = parts.shape
    return parts.view(*lead, in_32 // 2, 2, block).transpose(-1, -2).contiguous()


def _bf16x3_sum(weight: torch.Tensor) -> torch.Tensor:
    """The bf16x3 form ``[..., blocks, 2, in_32 / 2, 32, 2]`` as the float32 ``[..., blocks, in_32, 32]`` blocks
    it computes with: hi + lo."""
    *lead, pairs, block, _ = weight.shape
    parts = weight.transpose(-1, -2).reshape(*lead, 2 * pairs, block).float()
    return parts.select(-3, 0) + parts.select(-3, 1)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution weight ``[out, in, 3, 3]`` as the op's float32 weight ``[36, out / b, in, b]``
    (``b = column_block(out)``): ``U = G g G^T`` per (out, in) pair, computed in float64 and rounded
    once; for each of the 36 tile positions, the ``[in, out]`` matrix in column blocks of ``b`` output
    channels, each block contiguous. The op's GEMMs then read the weight in address order, one block at
    a time: at batch 1 that weight comes from memory at every call (9.4 MB for a 256-channel layer), and
    read as plain ``[in, out]`` rows it was 1.14x slower at 14x14x256 and 1.29x at 7x7x512.

    Float32 only: its GEMMs in the bf16x3 form (:func:`conv1x1_weight`) were 0.9-1.2e-4 off the output's scale,
    10x the float32 Winograd error (the output transform amplifies the 2^-16 error of each GEMM element)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight: expects a 3x3 convolution weight [out, in, 3, 3]; got {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    block = column_block(out_channels)
    g = torch.tensor(WINOGRAD_F43_G, dtype=torch.float64)
    u = torch.einsum("ij,ocjl,kl->ikco", g, weight.detach().double(), g)  # [6, 6, in, out]
    u = u.reshape(36, in_channels, out_channels // block, block).permute(0, 2, 1, 3)
    return u.to(torch.float32).contiguous()


def winograd_weight_matrices(weight: torch.Tensor) -> torch.Tensor:
    """The op's transformed weight ``[36, out / b, in, b]`` as the 36 plain ``[in, out]`` matrices."""
    planes, blocks, in_channels, block = weight.shape
    return weight.permute(0, 2, 1, 3).reshape(planes, in_channels, blocks * block)


def conv3x3_winograd(input, weight, bias=None, padding=(1, 1), attr: str = "none"):
    """``attr(conv2d(input, g, bias, padding=padding))`` for the 3x3 kernel ``g`` whose
    :func:`winograd_weight` is ``weight``. ``input`` float32, bfloat16 or float16 (the math is float32,
    the output in the input's dtype, channels-last); ``bias`` float32 or the input's dtype."""
    return torch.ops.ipex.conv3x3_winograd(input, weight, bias, list(padding), attr)


@torch.library.register_fake("ipex::conv3x3_winograd")
def _conv3x3_winograd_fake(input, weight, bias, padding, attr):
    op = "ipex::conv3x3_winograd"
    torch._check(input.dim() == 4, lambda: f"{op}: input must be 4-D [N, C, H, W]; got {tuple(input.shape)}")
    torch._check(input.dtype in (torch.float32, torch.bfloat16, torch.float16),
                 lambda: f"{op}: input dtype must be float32, bfloat16 or float16; got {input.dtype}")
    torch._check(weight.dtype == torch.float32, lambda: f"{op}: the transformed weight must be float32; got {weight.dtype}")
    torch._check(weight.dim() == 4 and weight.shape[0] == 36 and weight.shape[2] == input.shape[1]
                 and weight.shape[3] > 0,
                 lambda: f"{op}: weight must be [36, out_channels / b, in_channels={input.shape[1]}, b] "
                         f"(winograd_weight); got {tuple(weight.shape)}")
    torch._check(attr in ("none", "relu"), lambda: f"{op}: attr must be 'none' or 'relu'; got {attr!r}")
    n, _, h, w = input.shape
    out = input.new_empty((n, weight.shape[1] * weight.shape[3], h + 2 * padding[0] - 2, w + 2 * padding[1] - 2))
    return out.contiguous(memory_format=torch.channels_last)


def conv1x1_weight(weight: torch.Tensor, bf16x3: bool | None = None) -> torch.Tensor:
    """A 1x1 convolution weight ``[out, in, 1, 1]`` (or ``[out, in]``) as the op's weight: the ``[in, out]``
    GEMM matrix in contiguous column blocks of output channels, which the GEMMs read in address order.

    Float32 form: ``[out / b, in, b]``, ``b = column_block(out)``. With ``bf16x3`` (default
    :func:`bf16x3_default`), the bfloat16 form ``[out / 32, 2, in_32 / 2, 32, 2]`` (``in_32``: ``in`` rounded up
    to a multiple of 32, zero rows): per block of 32 output channels the weight's hi = bf16(w) and lo =
    bf16(w - hi) parts, each in VNNI k pairs, which the op runs as three bf16 GEMMs on AMX tiles, within a few
    1e-6 of the output's scale (csrc/cpu/kernels/conv1x1_bf16x3.cpp). Same bytes as the float32 form."""
    if weight.dim() not in (2, 4) or (weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1)):
        raise ValueError(f"conv1x1_weight: expects a 1x1 convolution weight [out, in, 1, 1]; got {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    if bf16x3 is None:
        bf16x3 = bf16x3_default(out_channels)
    if bf16x3 and out_channels % BF16X3_COLUMNS:
        raise ValueError(f"conv1x1_weight: the bf16x3 form needs a multiple of {BF16X3_COLUMNS} output channels; "
                         f"got {out_channels}")
    block = BF16X3_COLUMNS if bf16x3 else column_block(out_channels)
    w = weight.detach().reshape(out_channels // block, block, in_channels).permute(0, 2, 1).to(torch.float32)
    return _bf16x3_blocks(w) if bf16x3 else w.contiguous()


def conv1x1_weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The op's blocked weight (either form of :func:`conv1x1_weight`) as the plain float32 ``[in, out]``
    matrix it computes with (the bf16x3 form: hi + lo, with its ``in_32`` rows)."""
    if weight.dim() == 5:
        weight = _bf16x3_sum(weight)
    blocks, in_channels, block = weight.shape
    return weight.permute(1, 0, 2).reshape(in_channels, blocks * block)


def conv1x1(input, weight, bias=None, attr: str = "none", other=None):
    """``attr(conv2d(input, w, bias) + other)`` (``other`` optional) for the 1x1 kernel ``w`` whose
    :func:`conv1x1_weight` is ``weight``; float32, output channels-last."""
    return torch.ops.ipex.conv1x1(input, weight, bias, attr, other)


def conv1x1_add_(other, input, weight, bias=None, attr: str = "none"):
    """In place: ``other = attr(conv2d(input, w, bias) + other)``; ``other`` channels-last and dense (an input
    sharing memory with it is read from a copy). Returns ``other``."""
    torch.ops.ipex.conv1x1_add_(other, input, weight, bias, attr)
    return other


def _check_conv1x1_fake(op, input, weight, bias, attr, other):
    torch._check(input.dim() == 4, lambda: f"{op}: input must be 4-D [N, C, H, W]; got {tuple(input.shape)}")
    torch._check(input.dtype == torch.float32, lambda: f"{op}: input must be float32; got {input.dtype}")
    if weight.dtype == torch.bfloat16:
        torch._check(weight.dim() == 5 and weight.shape[1] == 2 and 2 * weight.shape[2] == (input.shape[1] + 31) // 32 * 32
                     and weight.shape[3] == BF16X3_COLUMNS and weight.shape[4] == 2,
                     lambda: f"{op}: a bfloat16 weight must be the bf16x3 weight [out_channels / 32, 2, in_channels_32 "
                             f"/ 2, 32, 2] (conv1x1_weight, in_channels = {input.shape[1]}); got {tuple(weight.shape)}")
        out_channels = weight.shape[0] * weight.shape[3]
    else:
        torch._check(weight.dtype == torch.float32, lambda: f"{op}: weight must be float32; got {weight.dtype}")
        torch._check(weight.dim() == 3 and weight.shape[1] == input.shape[1] and weight.shape[2] > 0,
                     lambda: f"{op}: weight must be [out_channels / b, in_channels={input.shape[1]}, b] "
                             f"(conv1x1_weight); got {tuple(weight.shape)}")
        out_channels = weight.shape[0] * weight.shape[2]
    torch._check(attr in ("none", "relu"), lambda: f"{op}: attr must be 'none' or 'relu'; got {attr!r}")
    shape = (input.shape[0], out_channels, input.shape[2], input.shape[3])
    if bias is not None:
        torch._check(tuple(bias.shape) == (shape[1],) and bias.dtype == torch.float32,
                     lambda: f"{op}: bias must be float32 [out_channels = {shape[1]}]; got {bias.dtype} "
                             f"{tuple(bias.shape)}")
    if other is not None:
        torch._check(tuple(other.shape) == shape and other.dtype == torch.float32,
                     lambda: f"{op}: other must be float32 of the output's shape {shape}; got {tuple(other.shape)}")
    return shape


@torch.library.register_fake("ipex::conv1x1")
def _conv1x1_fake(input, weight, bias, attr, other):
    shape = _check_conv1x1_fake("ipex::conv1x1", input, weight, bias, attr, other)
    return input.new_empty(shape).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("ipex::conv1x1_add_")
def _conv1x1_add_fake(other, input, weight, bias, attr):
    _check_conv1x1_fake("ipex::conv1x1_add_", input, weight, bias, attr, other)
    torch._check(other.is_contiguous(memory_format=torch.channels_last),
                 lambda: "ipex::conv1x1_add_: other is written in place and must be channels-last and dense")
