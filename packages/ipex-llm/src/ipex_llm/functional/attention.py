"""Attention functions: IndirectAccessKVCache (beam search without cache copies) and varlen attention."""

from __future__ import annotations

import math

import torch

from ipex_core.ops import attention_ops as A

__all__ = ["indirect_access_kv_cache_attention", "varlen_attention"]


def _refuse_autograd(op: str, *tensors: torch.Tensor | None) -> None:
    """Raise where autograd would be dropped silently: the kernel writes into caller buffers (``out``, the caches).

    Such a write is outside autograd (the result has no grad_fn), so a backward through it left the
    inputs' gradients missing without an error. Callers test ``torch.is_grad_enabled()`` first, so
    the inference path (no_grad / inference_mode) pays that one call only.
    """
    for t in tensors:
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is an inference kernel with no backward; call it under torch.no_grad() (or "
                "torch.inference_mode()) or detach the inputs that require grad"
            )


# ------------------------------------------------------------------- IAKV ---


def _seq_info(length: int, device: torch.device) -> torch.Tensor:
    # The cached length travels in the shape (``size(-2)``, what the API's
    # ``_reorder_cache`` indexes with); the values are the positions 0..length-1.
    return torch.arange(length, device=device).view(1, 1, length, 1)


def _new_history(rows: int, beams: int, device: torch.device) -> torch.Tensor:
    # Identity: until a reorder says otherwise, beam b continues from beam b.
    return torch.arange(beams, device=device).expand(rows, beams).contiguous()


def _grow(layer_past, offset: int, needed: int, text_max_length: int):
    _, key_cache, value_cache, beam_idx = layer_past
    capacity = max(needed, 2 * key_cache.shape[0], text_max_length)
    k = key_cache.new_empty((capacity, *key_cache.shape[1:]))
    v = value_cache.new_empty((capacity, *value_cache.shape[1:]))
    k[:offset] = key_cache[:offset]
    v[:offset] = value_cache[:offset]
    hist = _new_history(capacity, beam_idx.shape[1], beam_idx.device)
    hist[:offset] = beam_idx[:offset]
    return k, v, hist


def _iakv_bias(attention_mask, alibi, B: int, H: int, S: int, L: int) -> torch.Tensor | None:
    """Additive fp32 bias broadcastable to [B, H, S, >= L] from a mask and an ALiBi term."""
    bias = None
    if attention_mask is not None:
        m = attention_mask
        if m.dim() == 2:  # [B, L] padding mask, 1 = attend (transformers' input mask)
            # A 2-D additive mask (0 / -inf) would read inverted here; refuse it (a data check,
            # so skipped while compiling).
            if m.is_floating_point() and not torch.compiler.is_compiling() and bool(((m != 0) & (m != 1)).any()):
                raise ValueError(
                    "indirect_access_kv_cache_attention: a 2-D attention_mask is a padding mask with 1 = attend and "
                    "0 = masked (transformers' input mask); this one holds other values. Pass an additive mask as "
                    "4-D [batch, 1, query_len, key_len]"
                )
            m = m[:, None, None, :]
            m = torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(m == 0, float("-inf"))
        elif m.dtype == torch.bool:  # True = attend (scaled_dot_product_attention's convention)
            m = torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
        if m.dim() != 4:
            raise ValueError(
                "indirect_access_kv_cache_attention: attention_mask must be [batch, key_len] (1 = attend), or 4-D "
                f"[batch|1, heads|1, query_len|1, key_len] (additive float, or bool with True = attend); got shape "
                f"{tuple(attention_mask.shape)}"
            )
        if m.shape[-1] < L:
            raise ValueError(
                f"indirect_access_kv_cache_attention: attention_mask covers {m.shape[-1]} key positions but "
                f"{L} are cached; pass a mask over the whole sequence so far"
            )
        bias = m[..., :L].float()
    if alibi is not None:
        a = alibi.float()
        if a.dim() == 1 and a.shape[0] != H:
            raise ValueError(
                f"indirect_access_kv_cache_attention: alibi as per-head slopes needs one slope per query head; got "
                f"{a.shape[0]} slopes for {H} heads (query.shape[2]): pass a [{H}] tensor"
            )
        if a.dim() == 1:  # per-head slopes: slope * position
            a = a.view(1, H, 1, 1) * torch.arange(L, dtype=torch.float32, device=a.device).view(1, 1, 1, L)
        elif a.dim() == 3 and a.shape[0] == B * H:  # BLOOM's [batch * heads, 1 | query_len, key_len]
            a = a.view(B, H, a.shape[1], a.shape[2])
        if a.dim() != 4 or a.shape[-1] < L:
            raise ValueError(
                "indirect_access_kv_cache_attention: alibi must be per-head slopes [heads], BLOOM's "
                "[batch*heads, 1|query_len, key_len] or [batch|1, heads|1, query_len|1, key_len] over all "
                f"{L} positions; got shape {tuple(alibi.shape)}"
            )
        a = a[..., :L]
        bias = a if bias is None else bias + a
    return bias


def indirect_access_kv_cache_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale_attn: float,
    layer_past: tuple[torch.Tensor, ...] | None = None,
    head_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    alibi: torch.Tensor | None = None,
    add_casual_mask: bool | None = True,
    seq_info: torch.Tensor | None = None,
    text_max_length: int | None = 0,
) -> tuple[torch.Tensor, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Scaled dot-product attention over an Indirect Access KV cache.

    Args:
        query: ``[beam*batch, seq_len, num_heads, head_dim]``.
        key, value: ``[beam*batch, seq_len, num_kv_heads, head_dim]`` (``num_heads`` a multiple of
            ``num_kv_heads``: grouped-query attention).
        scale_attn: scores are ``q . k / scale_attn`` (so usually ``sqrt(head_dim)``).
        layer_past: ``(seq_info, key_cache, value_cache, beam_idx)`` from the previous call, or None
            to start. ``key_cache``/``value_cache`` are ``[max_seq, beam*batch, num_kv_heads,
            head_dim]`` buffers allocated once; ``beam_idx`` ``[max_seq, beam*batch]`` is the beam
            history: row ``t`` says which beam each beam continued from after position ``t``.
            ``seq_info`` carries the cached length as ``seq_info.size(-2)`` (shape
            ``[1, 1, length, 1]``, holding the positions), which is what the API's
            ``_reorder_cache`` snippet indexes with: ``layer_past[3][layer_past[0].size(-2) - 1] =
            beam_idx`` reorders every beam without copying the cache.
        head_mask: not supported (a ValueError when given).
        attention_mask: None; ``[batch, key_len]`` padding mask (1 = attend); or 4-D
            ``[batch|1, heads|1, query_len|1, key_len]`` additive float, or bool (True = attend).
            ``key_len`` covers all positions so far (cached + new).
        alibi: ALiBi term added to the scores: per-head slopes ``[heads]`` (slope * position),
            BLOOM's ``[batch*heads, 1|query_len, key_len]``, or 4-D broadcastable like the mask.
        add_casual_mask: new tokens attend only to positions up to their own.
        seq_info: overrides ``layer_past[0]`` as the holder of the cached length.
        text_max_length: positions to allocate on the first call (at least seq_len). A longer
            sequence reallocates (doubling) instead of failing.

    Returns:
        ``(attn_output [beam*batch, seq_len, num_heads, head_dim], None, new_layer_past)``; the
        attention weights are not materialised (None). The returned caches are the same buffers
        (written in place) unless they had to grow.

    A query row with every score masked out yields zeros. Runs on CPU for float32, bfloat16 and
    float16 (fp32 math).
    """
    if head_mask is not None:
        raise ValueError("indirect_access_kv_cache_attention: head_mask is not supported; pass None")
    if query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
        raise ValueError(
            "indirect_access_kv_cache_attention: query must be [beam*batch, seq_len, num_heads, head_dim] and "
            "key/value [beam*batch, seq_len, num_kv_heads, head_dim]; got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    B, S, H, D = query.shape
    if key.shape[0] != B or key.shape[1] != S or key.shape[3] != D:
        raise ValueError(
            f"indirect_access_kv_cache_attention: key {tuple(key.shape)} does not match query {tuple(query.shape)} "
            "(same beam*batch, seq_len and head_dim)"
        )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(
            f"indirect_access_kv_cache_attention: query/key/value dtypes must match; got {query.dtype}, {key.dtype}, "
            f"{value.dtype}"
        )
    text_max_length = int(text_max_length or 0)
    if layer_past is None or layer_past[1].numel() == 0:
        offset = 0
        capacity = max(text_max_length, S)
        key_cache = key.new_empty((capacity, B, key.shape[2], D))
        value_cache = value.new_empty((capacity, B, key.shape[2], D))
        beam_idx = _new_history(capacity, B, query.device)
    else:
        if len(layer_past) != 4:
            raise ValueError(
                "indirect_access_kv_cache_attention: layer_past must be (seq_info, key_cache, value_cache, beam_idx); "
                f"got a tuple of {len(layer_past)}"
            )
        holder = seq_info if seq_info is not None else layer_past[0]
        offset = holder.size(-2)
        _, key_cache, value_cache, beam_idx = layer_past
        if key_cache.dim() != 4 or key_cache.shape[1:] != (B, key.shape[2], D):
            raise ValueError(
                f"indirect_access_kv_cache_attention: key_cache {tuple(key_cache.shape)} does not fit key "
                f"{tuple(key.shape)}; expected [max_seq, {B}, {key.shape[2]}, {D}]"
            )
        if offset > key_cache.shape[0]:
            raise ValueError(
                f"indirect_access_kv_cache_attention: seq_info says {offset} positions are cached but the cache "
                f"holds {key_cache.shape[0]}"
            )
        if offset + S > key_cache.shape[0]:
            key_cache, value_cache, beam_idx = _grow(layer_past, offset, offset + S, text_max_length)
    L = offset + S
    key_cache[offset:L] = key.transpose(0, 1)
    value_cache[offset:L] = value.transpose(0, 1)
    bias = _iakv_bias(attention_mask, alibi, B, H, S, L)
    # Compiled, the offset goes in as a tensor (the op's offset_tensor overload): as an int argument
    # dynamo would specialise on it and recompile at every decode step.
    offset_arg = torch.scalar_tensor(offset, dtype=torch.int64) if torch.compiler.is_compiling() else offset
    out = A.iakv_attention(query, key_cache, value_cache, beam_idx, offset_arg, 1.0 / scale_attn, bias,
                           bool(add_casual_mask))
    return out, None, (_seq_info(L, query.device), key_cache, value_cache, beam_idx)


# ----------------------------------------------------------------- varlen ---


def _varlen_eager(query, key, value, out, seqlen_q, seqlen_k, softmax_scale, is_causal, pdropout, return_softmax,
                  gen_):
    """Plain PyTorch path for what the kernel leaves out: dropout and returning the probabilities."""
    cq, ck = seqlen_q.tolist(), seqlen_k.tolist()
    batch = len(cq) - 1
    H, Hkv = query.shape[1], key.shape[1]
    max_q = max((cq[i + 1] - cq[i] for i in range(batch)), default=0)
    max_k = max((ck[i + 1] - ck[i] for i in range(batch)), default=0)
    probs_all = query.new_zeros((batch, H, max_q, max_k), dtype=torch.float32) if return_softmax else None
    for i in range(batch):
        q = query[cq[i]:cq[i + 1]].float().transpose(0, 1)
        k = key[ck[i]:ck[i + 1]].float().transpose(0, 1).repeat_interleave(H // Hkv, 0)
        v = value[ck[i]:ck[i + 1]].float().transpose(0, 1).repeat_interleave(H // Hkv, 0)
        s = softmax_scale * q @ k.transpose(1, 2)
        if is_causal:
            s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        if return_softmax:
            probs_all[i, :, : p.shape[1], : p.shape[2]] = p
        if pdropout > 0:
            keep = torch.rand(p.shape, generator=gen_, device=p.device) >= pdropout
            p = p * keep / (1.0 - pdropout)
        out[cq[i]:cq[i + 1]] = (p @ v).transpose(0, 1).to(out.dtype)
    return (out, probs_all) if return_softmax else out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    seqlen_q: torch.Tensor,
    seqlen_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    pdropout: float = 0.0,
    softmax_scale: float | None = None,
    zero_tensors: bool = False,
    is_causal: bool = True,
    return_softmax: bool = False,
    gen_: torch.Generator | None = None,
):
    """Attention over packed sequences of different lengths, written into ``out``.

    Args:
        query: ``[total_q_tokens, num_heads, head_dim]``; key/value ``[total_k_tokens, num_kv_heads,
            head_dim]`` (``num_heads`` a multiple of ``num_kv_heads``).
        out: ``[total_q_tokens, num_heads, head_dim]`` buffer for the result (same dtype).
        seqlen_q, seqlen_k: ``[batch + 1]`` cumulative starts (``seqlen_q[i]..seqlen_q[i+1]-1`` are
            the rows of sequence ``i``), int32 or int64.
        max_seqlen_q, max_seqlen_k: upper bounds of the per-sequence lengths.
        pdropout: dropout on the probabilities (uses ``gen_``); > 0 runs in plain PyTorch.
        softmax_scale: score scale; None means ``1 / sqrt(head_dim)``.
        zero_tensors: zero ``out`` first (rows past ``seqlen_q[-1]`` stay zero).
        is_causal: causal mask, top-left aligned per sequence like
            ``scaled_dot_product_attention(is_causal=True)``: query row ``r`` sees key rows ``0..r``.
            Where a sequence has fewer queries than keys this differs from flash-attn's
            varlen kernels, which align the mask bottom-right (the last query sees every key).
        return_softmax: also return the probabilities ``[batch, num_heads, max_q, max_k]`` (fp32,
            zero padded, before dropout); runs in plain PyTorch.
        gen_: generator for the dropout mask.

    Returns:
        ``out``, or ``(out, probabilities)`` with ``return_softmax``.

    Runs on CPU for float32, bfloat16 and float16. Scores and the softmax are fp32; float16 is
    computed in fp32 (no AVX512-FP16 arithmetic); bfloat16 uses AMX tiles where the CPU has
    them, with the probabilities rounded to bf16 before the product with V. The kernel has no backward:
    with grad enabled, an input that requires grad is an error there (the result would have no grad_fn);
    with dropout or ``return_softmax`` the plain-PyTorch path runs and autograd tracks it.
    """
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(query.shape[-1])
    if not 0.0 <= pdropout < 1.0:
        raise ValueError(f"varlen_attention: pdropout must be in [0, 1); got {pdropout}")
    if zero_tensors:
        out.zero_()
    if pdropout > 0 or return_softmax:
        # The kernel's checks (shapes, dtypes, lengths) first, so both paths fail alike.
        A.varlen_attention(query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                           is_causal)
        return _varlen_eager(query, key, value, out, seqlen_q, seqlen_k, softmax_scale, is_causal, pdropout,
                             return_softmax, gen_)  # plain PyTorch: autograd tracks it
    if torch.is_grad_enabled():
        _refuse_autograd("varlen_attention", query, key, value, out)
    A.varlen_attention(query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                       is_causal)
    return out
