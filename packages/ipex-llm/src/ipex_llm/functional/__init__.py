"""``ipex.llm.functional``: the fused LLM building blocks as functions on tensors."""

from __future__ import annotations

from ipex_llm.functional.norm import add_rms_norm, rms_norm

__all__ = ["add_rms_norm", "rms_norm"]
