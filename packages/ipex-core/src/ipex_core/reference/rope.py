"""References for rotary embedding and LayerNorm."""

from __future__ import annotations

import torch.nn.functional as F

__all__ = ["rotary_embedding", "layer_norm", "add_layer_norm"]


def rotary_embedding(x, sin, cos, rotary_dim, rotary_half, position_ids=None):
    """x: [..., heads, head_dim]; sin/cos rows of rotary_dim (cat(f, f)) or rotary_dim/2 angles."""
    shape = x.shape
    xf = x.float().reshape(-1, shape[-2], shape[-1])
    half = rotary_dim // 2
    s = sin.float().reshape(-1, sin.shape[-1])[:, :half]
    c = cos.float().reshape(-1, cos.shape[-1])[:, :half]
    if position_ids is not None:
        idx = position_ids.reshape(-1).long()
        s, c = s[idx], c[idx]
    s, c = s[:, None, :], c[:, None, :]

    def r(t):  # each product rounded to x's dtype, as `q * cos + rotate_half(q) * sin` does
        return t.to(x.dtype).float()

    out = xf.clone()
    if rotary_half:
        x1, x2 = xf[..., :half], xf[..., half:rotary_dim]
        out[..., :half] = r(x1 * c) - r(x2 * s)
        out[..., half:rotary_dim] = r(x2 * c) + r(x1 * s)
    else:
        x1, x2 = xf[..., 0:rotary_dim:2], xf[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = r(x1 * c) - r(x2 * s)
        out[..., 1:rotary_dim:2] = r(x2 * c) + r(x1 * s)
    return out.reshape(shape).to(x.dtype)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), tuple(normalized_shape), w, b, eps).to(x.dtype)


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    s = x + residual
    return layer_norm(s, normalized_shape, weight, bias, eps), s
