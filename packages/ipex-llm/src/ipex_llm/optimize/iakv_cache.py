"""Beam search on the indirect-access KV cache (IAKV), through transformers' extension points.

* :class:`IpexIAKVLayer` is a transformers cache layer that keeps keys/values in
  pre-allocated ``[max_seq, beam*batch, kv_heads, head_dim]`` buffers (doubling when
  full) plus a beam-index history ``[max_seq, beam*batch]``. ``reorder_cache``, which
  beam search calls after every step, writes the step's beam indices into the history
  -- O(beams) -- instead of copying the cache.
* The attention function registered as ``"ipex"`` in transformers' AttentionInterface
  recognises keys that came from such a layer and runs ``torch.ops.ipex.iakv_attention``,
  which follows the history to each beam's tokens. Anything else goes to transformers'
  own SDPA attention, unchanged.
* :func:`install` switches an optimized model over (its own config and generate hook
  only; other models keep what they had).

Only families whose attention passes ``cache.update()``'s output straight to the
attention function use it (listed in :data:`IAKV_MODEL_TYPES`); others keep the
default cache, where beam search reorders by copying.
"""

from __future__ import annotations

import types

import torch
from torch import nn

__all__ = ["IAKV_MODEL_TYPES", "IpexIAKVCache", "IpexIAKVLayer", "install"]

IAKV_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "stablelm"}
)
ATTN_NAME = "ipex"


def _cache_layer_base():
    from transformers.cache_utils import CacheLayerMixin

    return CacheLayerMixin


class IpexIAKVLayer(_cache_layer_base()):
    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int = 256, **kwargs):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, seq, dim = key_states.shape
        cap = max(self.capacity, 2 * seq)
        self.keys = key_states.new_empty(cap, batch, heads, dim)
        self.values = value_states.new_empty(cap, batch, value_states.shape[1], value_states.shape[-1])
        self.beam_idx = torch.arange(batch, dtype=torch.long).repeat(cap, 1)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        # Growing past the buffer reallocates (doubling) instead of failing.
        cap = self.keys.shape[0]
        while cap < needed:
            cap *= 2
        for name in ("keys", "values", "beam_idx"):
            old = getattr(self, name)
            new = old.new_empty(cap, *old.shape[1:])
            new[: self.length] = old[: self.length]
            setattr(self, name, new)
        self.beam_idx[self.length :] = torch.arange(self.beam_idx.shape[1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        seq = key_states.shape[-2]
        if self.length + seq > self.keys.shape[0]:
            self._grow(self.length + seq)
        end = self.length + seq
        self.keys[self.length : end] = key_states.permute(2, 0, 1, 3)
        self.values[self.length : end] = value_states.permute(2, 0, 1, 3)
        self.beam_idx[self.length : end] = torch.arange(self.beam_idx.shape[1])
        self.length = end
        # Views in the layout attention expects ([batch, heads, seq, dim]), no copy. The
        # tag tells the "ipex" attention function where the buffers and history are.
        keys = self.keys[:end].permute(1, 2, 0, 3)
        values = self.values[:end].permute(1, 2, 0, 3)
        keys._ipex_iakv = (self, seq)
        return keys, values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.length:
            self.beam_idx[self.length - 1] = beam_idx.to(self.beam_idx.device)

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0


def _cache_base():
    from transformers.cache_utils import Cache

    return Cache


class IpexIAKVCache(_cache_base()):
    """A transformers Cache of :class:`IpexIAKVLayer` layers (created lazily, one per layer)."""

    def __init__(self, **kwargs):
        super().__init__(layer_class_to_replicate=IpexIAKVLayer)


def ipex_attention(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   **kwargs):
    """The "ipex" attention function: IAKV decode for tagged keys, transformers' SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    tag = None if torch.compiler.is_compiling() else getattr(key, "_ipex_iakv", None)
    if tag is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layer, seq = tag
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    bias = None
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=torch.float32).masked_fill_(~attention_mask, float("-inf"))
        else:
            bias = attention_mask.float()
    out = torch.ops.ipex.iakv_attention(query.transpose(1, 2), layer.keys, layer.values, layer.beam_idx,
                                        layer.length - seq, scale, bias, bias is None)
    return out, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, ipex_attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def install(model: nn.Module) -> bool:
    """Use the IAKV cache for this model's beam search; returns whether it applies."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in IAKV_MODEL_TYPES or not hasattr(model, "_prepare_cache_for_generation"):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", None, ATTN_NAME):
        return False  # the user chose another kernel (flash, flex): leave it
    _register()
    model.set_attn_implementation(ATTN_NAME)
    original = model._prepare_cache_for_generation

    def prepare_cache(self, generation_config, model_kwargs, *args, **kwargs):
        if (generation_config.num_beams or 1) > 1 and model_kwargs.get("cache") is None and \
                generation_config.use_cache is not False:
            model_kwargs["cache"] = IpexIAKVCache()
            return None
        return original(generation_config, model_kwargs, *args, **kwargs)

    # Bound to this model object only: other instances of the class are unaffected.
    model._prepare_cache_for_generation = types.MethodType(prepare_cache, model)
    return True
