"""``ipex.llm.modules``: fused LLM modules for customised models."""

from __future__ import annotations

from ipex_llm.modules.attention import IndirectAccessKVCacheAttention, PagedAttention, VarlenAttention
from ipex_llm.modules.linear_fusion import (
    Linear2SiluMul,
    LinearAdd,
    LinearAddAdd,
    LinearGelu,
    LinearMul,
    LinearNewGelu,
    LinearRelu,
    LinearSilu,
    LinearSiluMul,
)
from ipex_llm.modules.norm import FastLayerNorm, RMSNorm
from ipex_llm.modules.rope import RotaryEmbedding

__all__ = [
    "FastLayerNorm",
    "IndirectAccessKVCacheAttention",
    "Linear2SiluMul",
    "LinearAdd",
    "LinearAddAdd",
    "LinearGelu",
    "LinearMul",
    "LinearNewGelu",
    "LinearRelu",
    "LinearSilu",
    "LinearSiluMul",
    "PagedAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "VarlenAttention",
]
