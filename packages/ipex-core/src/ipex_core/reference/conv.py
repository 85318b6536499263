"""Reference for ``ipex::conv3x3_winograd``: the Winograd F(4x4, 3x3) algorithm in float64, from the op's
own (transformed) weight. Its result equals ``conv2d`` with the 3x3 kernel the weight was made from (the
tests check both)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ipex_core.ops.conv import WINOGRAD_F43_AT, WINOGRAD_F43_BT, winograd_weight_matrices

__all__ = ["conv3x3_winograd"]


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
