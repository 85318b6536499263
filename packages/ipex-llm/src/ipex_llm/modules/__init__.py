"""``ipex.llm.modules``: fused LLM modules for customised models."""

from __future__ import annotations

from ipex_llm.modules.norm import RMSNorm

__all__ = ["RMSNorm"]
