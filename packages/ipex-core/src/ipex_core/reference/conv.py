"""References for the convolution ops, in float64 from the ops' own weight layouts. ``conv3x3_winograd``:
the Winograd F(4x4, 3x3) algorithm from the transformed weight; its result equals ``conv2d`` with the 3x3
kernel the weight was made from (the tests check both). ``conv1x1``: the GEMM over channels-last rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ipex_core.ops.conv import WINOGRAD_F43_AT, WINOGRAD_F43_BT, conv1x1_weight_matrix, winograd_weight_matrices

__all__ = ["conv1x1", "conv3x3_winograd"]


def conv3x3_winograd(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     padding=(1, 1), attr: str = "none") -> torch.Tensor:
    n, c, h, w = input.shape
    u = winograd_weight_matrices(weight)  # [36, in, out]
    k = u.shape[2]
    ph, pw = padding
    out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-out_h // 4), -(-out_w // 4)
    x = F.pad(input.double(), (pw, tw * 4 + 2 - w - pw, ph, th * 4 + 2 - h - ph))
    tiles = x.unfold(2, 6, 4).unfold(3, 6, 4)  # [n, c, th, tw, 6, 6]
    bt, at = torch.tensor(WINOGRAD_F43_BT, dtype=torch.float64), torch.tensor(WINOGRAD_F43_AT, dtype=torch.float64)
    v = torch.einsum("ij,ncyxjl,kl->ncyxik", bt, tiles, bt)
    u = u.double().reshape(6, 6, c, k)
    m = torch.einsum("ncyxij,ijco->noyxij", v, u)
    y = torch.einsum("ij,noyxjl,kl->noyxik", at, m, at)  # [n, k, th, tw, 4, 4]
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(n, k, th * 4, tw * 4)[:, :, :out_h, :out_w]
    if bias is not None:
        y = y + bias.double().view(1, -1, 1, 1)
    if attr == "relu":
        y = y.relu()
    return y.to(input.dtype).contiguous(memory_format=torch.channels_last)


def conv1x1(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, attr: str = "none",
            other: torch.Tensor | None = None) -> torch.Tensor:
    """``attr(input @ W + bias + other)`` per pixel, ``W`` the ``[in, out]`` matrix of the blocked weight."""
    matrix = conv1x1_weight_matrix(weight)[: input.shape[1]]  # (the bf16x3 form's zero rows dropped)
    y = torch.einsum("nchw,ck->nkhw", input.double(), matrix.double())
    if bias is not None:
        y = y + bias.double().view(1, -1, 1, 1)
    if other is not None:
        y = y + other.double()
    if attr == "relu":
        y = y.relu()
    return y.to(input.dtype).contiguous(memory_format=torch.channels_last)
