"""Attention ops: Python wrappers and fake implementations.

Layouts (all CPU; q/k/v/caches float32, bfloat16 or float16, math in fp32):

- paged caches ``[num_blocks, block_size, num_kv_heads, head_size]`` (the
  documented ipex/vLLM layout; the retired extension's kernel used
  ``[num_blocks, num_kv_heads, block_size, head_size]`` despite its docs);
- IAKV caches ``[max_seq, beam*batch, num_kv_heads, head_dim]`` with the beam
  history ``[max_seq, beam*batch]``;
- varlen: packed ``[tokens, heads, head_dim]`` with cumulative ``seqlen`` starts.
"""

from __future__ import annotations

import torch

__all__ = ["reshape_and_cache", "paged_attention_decode", "iakv_attention", "varlen_attention"]

_ipex = torch.ops.ipex


def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write token ``i`` of ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` into slot ``slot_mapping[i]``.

    The slot is block ``slot // block_size``, row ``slot % block_size``;
    slot -1 (a padding token) is skipped; any other negative slot is an error.
    """
    _ipex.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


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
    """One query token per sequence against its paged cache, written into ``out``."""
    _ipex.paged_attention_decode(
        out, query, key_cache, value_cache, head_mapping, scale, block_tables, context_lens, block_size,
        max_context_len, alibi_slopes, sliding_window,
    )


def iakv_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    beam_idx: torch.Tensor,
    offset: int | torch.Tensor,
    scale: float,
    attn_bias: torch.Tensor | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    """``query [B, S, H, D]`` at positions ``offset..offset+S-1`` against the IAKV caches (already holding them).

    ``offset`` may be a one-element integer tensor (the ``offset_tensor`` overload): a
    compiled caller then keeps one graph however far the sequence has grown.
    """
    if isinstance(offset, torch.Tensor):
        return _ipex.iakv_attention.offset_tensor(query, key_cache, value_cache, beam_idx, offset, scale, attn_bias,
                                                  is_causal)
    return _ipex.iakv_attention(query, key_cache, value_cache, beam_idx, offset, scale, attn_bias, is_causal)


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
    """Packed variable-length attention into ``out``; causal is top-left aligned (like SDPA)."""
    _ipex.varlen_attention(query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                           is_causal)


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _check_fake(op: str, **tensors: torch.Tensor) -> None:
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        torch._check(
            t.device == first.device,
            lambda n=name, t=t: f"{op}: {n} is on {t.device} but {first_name} is on {first.device}; move them to one device",
        )
        torch._check(t.dtype in _FLOATS, lambda n=name, t=t: f"{op}: {n} dtype must be float32, bfloat16 or float16; got {t.dtype}")
        torch._check(t.dtype == first.dtype, lambda n=name, t=t: f"{op}: {n} dtype {t.dtype} must equal {first.dtype}")


@torch.library.register_fake("ipex::reshape_and_cache")
def _reshape_and_cache_fake(key, value, key_cache, value_cache, slot_mapping):
    op = "ipex::reshape_and_cache"
    torch._check(key.dim() == 3 and key_cache.dim() == 4, lambda: f"{op}: key must be 3-D and key_cache 4-D")
    torch._check(value.shape == key.shape, lambda: f"{op}: value shape must equal key shape")
    torch._check(value_cache.shape == key_cache.shape, lambda: f"{op}: value_cache shape must equal key_cache shape")
    _check_fake(op, key=key, value=value, key_cache=key_cache, value_cache=value_cache)


@torch.library.register_fake("ipex::paged_attention_decode")
def _paged_attention_decode_fake(out, query, key_cache, value_cache, head_mapping, scale, block_tables, context_lens,
                                 block_size, max_context_len, alibi_slopes=None, sliding_window=-1):
    op = "ipex::paged_attention_decode"
    torch._check(query.dim() == 3 and out.shape == query.shape, lambda: f"{op}: out and query must be [num_seqs, num_heads, head_size]")
    torch._check(key_cache.dim() == 4, lambda: f"{op}: key_cache must be [num_blocks, block_size, num_kv_heads, head_size]")
    _check_fake(op, out=out, query=query, key_cache=key_cache, value_cache=value_cache)


@torch.library.register_fake("ipex::iakv_attention")
def _iakv_attention_fake(query, key_cache, value_cache, beam_idx, offset, scale, attn_bias=None, is_causal=True):
    op = "ipex::iakv_attention"
    torch._check(query.dim() == 4, lambda: f"{op}: query must be [beam*batch, seq_len, num_heads, head_dim]")
    torch._check(key_cache.dim() == 4, lambda: f"{op}: key_cache must be [max_seq, beam*batch, num_kv_heads, head_dim]")
    _check_fake(op, query=query, key_cache=key_cache, value_cache=value_cache)
    return query.new_empty(query.shape)


@torch.library.register_fake("ipex::iakv_attention.offset_tensor")
def _iakv_attention_offset_tensor_fake(query, key_cache, value_cache, beam_idx, offset, scale, attn_bias=None,
                                       is_causal=True):
    torch._check(offset.numel() == 1, lambda: "ipex::iakv_attention.offset_tensor: offset must have one element")
    return _iakv_attention_fake(query, key_cache, value_cache, beam_idx, 0, scale, attn_bias, is_causal)


@torch.library.register_fake("ipex::varlen_attention")
def _varlen_attention_fake(query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                           is_causal):
    op = "ipex::varlen_attention"
    torch._check(query.dim() == 3 and out.shape == query.shape, lambda: f"{op}: out and query must be [tokens, num_heads, head_size]")
    _check_fake(op, query=query, key=key, value=value, out=out)
