"""Attention references: plain PyTorch, one sequence at a time, fp32 math.

Conventions shared with the kernels: scores are ``scale * q . k`` plus any
additive bias; a query row that sees no key at all (empty context, or every
score ``-inf``) yields zeros instead of NaN.
"""

from __future__ import annotations

import torch

__all__ = ["reshape_and_cache", "paged_attention_decode", "iakv_attention", "varlen_attention", "dense_attention"]


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    *,
    causal: bool = False,
    bias: torch.Tensor | None = None,
    visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """``q [Lq, H, D]``, ``k``/``v`` ``[Lk, Hkv, D]`` (query head h reads kv head ``h // (H // Hkv)``).

    ``causal`` is top-left aligned (query row i sees key rows ``0..i``), like
    ``scaled_dot_product_attention(is_causal=True)``. ``bias`` broadcasts to
    ``[H, Lq, Lk]``; ``visible`` is a bool mask broadcasting to ``[H, Lq, Lk]``.
    Returns fp32 ``[Lq, H, D]``.
    """
    H, Hkv = q.shape[1], k.shape[1]
    qf, kf, vf = q.float().transpose(0, 1), k.float().transpose(0, 1), v.float().transpose(0, 1)
    if Hkv != H:
        kf = kf.repeat_interleave(H // Hkv, dim=0)
        vf = vf.repeat_interleave(H // Hkv, dim=0)
    s = scale * qf @ kf.transpose(1, 2)
    if bias is not None:
        s = s + bias.float()
    lq, lk = q.shape[0], k.shape[0]
    keep = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        keep = torch.tril(keep)
    if visible is not None:
        keep = keep & visible
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
    return (p @ vf).transpose(0, 1)


def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store token ``i`` at block ``slot // block_size``, row ``slot % block_size``; negative slots are skipped."""
    block_size = key_cache.shape[1]
    for i, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        key_cache[slot // block_size, slot % block_size] = key[i]
        value_cache[slot // block_size, slot % block_size] = value[i]


def paged_attention_decode(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    head_mapping: torch.Tensor,
    scale: float,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    max_context_len: int,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int = -1,
) -> None:
    """Caches are ``[num_blocks, block_size, num_kv_heads, head_size]`` (the documented layout)."""
    for s in range(query.shape[0]):
        n = int(context_lens[s])
        blocks = block_tables[s, : (n + block_size - 1) // block_size].long()
        k = key_cache[blocks].reshape(-1, *key_cache.shape[2:])[:n]
        v = value_cache[blocks].reshape(-1, *value_cache.shape[2:])[:n]
        hm = head_mapping.long()
        k, v = k[:, hm], v[:, hm]  # one kv row per query head
        pos = torch.arange(n, dtype=torch.float32)
        bias = None
        if alibi_slopes is not None:
            bias = alibi_slopes.float().view(-1, 1, 1) * (pos - (n - 1)).view(1, 1, -1)
        visible = None
        if sliding_window > 0:
            visible = (pos >= n - sliding_window).view(1, 1, -1)
        out[s] = dense_attention(query[s : s + 1], k, v, scale, bias=bias, visible=visible)[0].to(out.dtype)


def iakv_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    beam_idx: torch.Tensor,
    offset: int,
    scale: float,
    attn_bias: torch.Tensor | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    """Gather each beam's history by walking ``beam_idx`` back, then plain attention."""
    B, S, H, D = query.shape
    L = offset + S
    out = torch.empty(B, S, H, D, dtype=query.dtype)
    for b in range(B):
        slots = [b] * L
        cur = b
        for t in range(offset - 1, -1, -1):
            cur = int(beam_idx[t, cur])
            slots[t] = cur
        rows = torch.arange(L)
        k = key_cache[rows, torch.tensor(slots)]
        v = value_cache[rows, torch.tensor(slots)]
        bias = None
        if attn_bias is not None:
            bias = attn_bias[b if attn_bias.shape[0] > 1 else 0][..., :L].expand(H, S, L)
        visible = None
        if is_causal:
            visible = (torch.arange(L).view(1, -1) <= offset + torch.arange(S).view(-1, 1)).view(1, S, L)
        out[b] = dense_attention(query[b], k, v, scale, bias=bias, visible=visible).to(query.dtype)
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    seqlen_q: torch.Tensor,
    seqlen_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    is_causal: bool,
) -> None:
    cq, ck = seqlen_q.tolist(), seqlen_k.tolist()
    for i in range(len(cq) - 1):
        q = query[cq[i] : cq[i + 1]]
        k, v = key[ck[i] : ck[i + 1]], value[ck[i] : ck[i + 1]]
        out[cq[i] : cq[i + 1]] = dense_attention(q, k, v, softmax_scale, causal=is_causal).to(out.dtype)
