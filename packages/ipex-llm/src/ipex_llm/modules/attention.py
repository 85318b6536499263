"""Attention modules: IndirectAccessKVCacheAttention, PagedAttention, VarlenAttention."""

from __future__ import annotations

import torch
from torch import nn

from ipex_core.ops import attention_ops as A
from ipex_llm.functional import attention as F

__all__ = ["IndirectAccessKVCacheAttention", "PagedAttention", "VarlenAttention"]


class IndirectAccessKVCacheAttention(nn.Module):
    """Attention with an Indirect Access KV cache (IAKV) for beam search.

    The key/value buffers ``[max_seq, beam*batch, num_kv_heads, head_dim]`` are allocated once
    (``text_max_length`` positions, doubling when a sequence outgrows them) and written one token
    at a time; a beam-index history ``[max_seq, beam*batch]`` records which beam each beam came
    from at every step, so reordering beams is one row write instead of a cache copy::

        def _reorder_cache(self, past_key_values, beam_idx):
            if len(past_key_values[0]) == 4 and past_key_values[0][0].shape[-1] == 1:
                for layer_past in past_key_values:
                    layer_past[3][layer_past[0].size(-2) - 1] = beam_idx
                return past_key_values

    The module holds no state: everything travels in ``layer_past = (seq_info, key_cache,
    value_cache, beam_idx)``. See :func:`ipex.llm.functional.indirect_access_kv_cache_attention`
    for the arguments; ``forward`` and ``apply_function`` take the same ones.

    Args:
        text_max_length: positions allocated for the cache on the first call.
    """

    def __init__(self, text_max_length: int = 2048):
        super().__init__()
        self.text_max_length = text_max_length

    def forward(
        self,
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
        text_max_length: int | None = None,
    ):
        return F.indirect_access_kv_cache_attention(
            query, key, value, scale_attn, layer_past, head_mask, attention_mask, alibi, add_casual_mask, seq_info,
            self.text_max_length if text_max_length is None else text_max_length,
        )

    # The parameters of apply_function() are those of forward(), without a module.
    apply_function = staticmethod(F.indirect_access_kv_cache_attention)

    def extra_repr(self) -> str:
        return f"text_max_length={self.text_max_length}"


class PagedAttention:
    """vLLM-style paged KV cache: ``reshape_and_cache`` stores tokens, ``single_query_cached_kv_attention`` attends.

    Cache layout: ``[num_blocks, block_size, num_kv_heads, head_size]`` for both key and value,
    as documented. (The retired Intel Extension's kernel silently used ``[num_blocks, num_kv_heads,
    block_size, head_size]`` despite the same documentation; caches built for that layout must be
    permuted: ``cache.transpose(1, 2).contiguous()``.) Tokens of a sequence fill its blocks in
    order; ``block_tables`` maps a sequence's logical blocks to physical ones.

    Runs on CPU for float32, bfloat16 and float16 (fp32 accumulation; bf16 uses AMX tiles where the
    CPU has them, else AVX512-BF16 dot products, with the probabilities rounded to bf16 before the
    product with V).
    """

    @classmethod
    def reshape_and_cache(
        cls,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` at ``slot_mapping`` (int32/int64).

        Token ``i`` goes to block ``slot_mapping[i] // block_size``, row ``slot_mapping[i] %
        block_size``; slot -1 (padding) is skipped; a slot past the cache or below -1 is an error.
        An inference kernel: with grad enabled, an input that requires grad is an error.
        """
        if torch.is_grad_enabled():
            F._refuse_autograd("PagedAttention.reshape_and_cache", key, value, key_cache, value_cache)
        A.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)

    @classmethod
    def single_query_cached_kv_attention(
        cls,
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
        sliding_window: int | None = None,
    ) -> None:
        """Decode attention: ``out[s] = softmax(scale * query[s] K_s^T + alibi) V_s`` into ``out``.

        Args:
            out, query: ``[num_seqs, num_heads, head_size]``.
            key_cache, value_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``.
            head_mapping: ``[num_heads]`` kv head read by each query head (grouped-query attention).
            scale: usually ``head_size ** -0.5``.
            block_tables: ``[num_seqs, max_num_blocks_per_seq]`` physical block of each logical block.
            context_lens: ``[num_seqs]`` tokens in each sequence's cache (0 gives zeros).
            block_size: tokens per block (must equal ``key_cache.shape[1]``).
            max_context_len: upper bound of ``context_lens``.
            alibi_slopes: optional ``[num_heads]``; adds ``slope * (position - context_len + 1)``.
            sliding_window: optional; attend only to the last ``sliding_window`` tokens.

        An inference kernel: with grad enabled, an input that requires grad is an error.
        """
        if torch.is_grad_enabled():
            F._refuse_autograd("PagedAttention.single_query_cached_kv_attention", out, query, key_cache,
                               value_cache, alibi_slopes)
        A.paged_attention_decode(
            out, query, key_cache, value_cache, head_mapping, scale, block_tables, context_lens, block_size,
            max_context_len, alibi_slopes, -1 if sliding_window is None else int(sliding_window),
        )


class VarlenAttention(nn.Module):
    """Scaled dot-product attention over packed sequences of different lengths.

    See :func:`ipex.llm.functional.varlen_attention` for the arguments; ``forward`` and
    ``apply_function`` take the same ones and write into ``out``.
    """

    def forward(self, query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, pdropout=0.0,
                softmax_scale=None, zero_tensors=False, is_causal=True, return_softmax=False, gen_=None):
        return F.varlen_attention(query, key, value, out, seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, pdropout,
                                  softmax_scale, zero_tensors, is_causal, return_softmax, gen_)

    apply_function = staticmethod(F.varlen_attention)
