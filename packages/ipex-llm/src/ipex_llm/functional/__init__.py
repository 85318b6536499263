"""``ipex.llm.functional``: the fused LLM building blocks as functions on tensors."""

from __future__ import annotations

from ipex_llm.functional.attention import indirect_access_kv_cache_attention, varlen_attention
from ipex_llm.functional.elementwise import add_layer_norm, fast_layer_norm, gelu_mul, rotary_embedding, silu_mul
from ipex_llm.functional.norm import add_rms_norm, rms_norm

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "fast_layer_norm",
    "gelu_mul",
    "indirect_access_kv_cache_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_mul",
    "varlen_attention",
]
