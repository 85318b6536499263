"""IAKV decode adapters for the families that compute attention in their own code.

Bloom, Falcon and MPT do not call transformers' AttentionInterface: their attention
modules multiply the cached keys themselves (``baddbmm`` with ALiBi, ``matmul`` plus a
sliced ALiBi table). On the IAKV cache those keys are the raw beam slots, not each
beam's history, so each family's attention class is swapped (per instance, as in
:mod:`.decoder`; ``state_dict`` keys unchanged) for a subclass whose ``forward`` runs
decode steps through :func:`.iakv_cache.iakv_attend` with the bias the family adds to
its scores, and leaves everything else (the prompt, other caches) to the original code.

What differs per family is only how Q/K/V come out of the fused projection and what
the score bias is; each adapter says that and no more.
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from ipex_llm.optimize.decoder import _swap_class
from ipex_llm.optimize.iakv_cache import attention_bias, decode_layer, iakv_attend

__all__ = ["ADAPTED_ATTENTIONS", "adapt_attention", "resolve_adapter"]


class _BloomIAKVAttention:
    """Bloom: scores are ``alibi + q k^T / sqrt(d)`` plus the additive causal/padding mask."""

    def forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                output_attentions=False, **kwargs):
        if decode_layer(layer_past, self.layer_idx) is None:
            return super().forward(hidden_states, residual, alibi, attention_mask, layer_past=layer_past,
                                   use_cache=use_cache, output_attentions=output_attentions, **kwargs)
        from transformers.models.bloom.modeling_bloom import dropout_add

        batch, q_len, _ = hidden_states.shape
        query, key, value = self._reshape(self.query_key_value(hidden_states))
        key, _ = layer_past.update(key, value, self.layer_idx)
        bias = attention_bias(alibi.view(batch, self.num_heads, 1, -1), attention_mask)
        out = self.dense(iakv_attend(key, query, self.inv_norm_factor, bias).reshape(batch, q_len, -1))
        return dropout_add(out, residual, self.hidden_dropout, self.training), None


class _FalconIAKVAttention:
    """Falcon, transformers >= 5.25 (rotary or ALiBi; multi-query, grouped or per-head K/V).

    ``FalconModel`` folds ``alibi / sqrt(d)`` into ``attention_mask`` for every attention
    implementation, so the score bias is the mask alone.
    """

    def forward(self, hidden_states, attention_mask, position_ids=None, layer_past=None, use_cache=False,
                output_attentions=False, position_embeddings=None, **kwargs):
        if decode_layer(layer_past, self.layer_idx) is None:
            return super().forward(hidden_states, attention_mask, position_ids=position_ids, layer_past=layer_past,
                                   use_cache=use_cache, output_attentions=output_attentions,
                                   position_embeddings=position_embeddings, **kwargs)
        from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

        batch, q_len, _ = hidden_states.shape
        fused = self.query_key_value(hidden_states).view(batch, q_len, -1, self.head_dim)
        if self.new_decoder_architecture:
            # [..., kv_heads, queries per group + 2, head_dim]: each group's queries, then its key and value
            grouped = fused.view(batch, q_len, self.num_kv_heads, -1, self.head_dim)
            query, key, value = grouped[..., :-2, :].flatten(-3, -2), grouped[..., -2, :], grouped[..., -1, :]
        elif self.multi_query:
            query, key, value = fused.split([self.num_heads, 1, 1], dim=-2)
        else:  # [..., heads, 3, head_dim]: query, key and value interleaved per head
            query, key, value = fused.unflatten(-2, (self.num_heads, 3)).unbind(-2)
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))
        if not self.config.alibi:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        key, _ = layer_past.update(key, value, self.layer_idx)
        out = iakv_attend(key, query, self.scaling, attention_bias(attention_mask))
        return self.dense(out.reshape(batch, q_len, -1)), None

    @classmethod
    def for_base(cls, base):
        """The adapter for the installed transformers: before 5.25 ``FalconAttention`` took ``alibi``."""
        return _FalconLegacyIAKVAttention if "alibi" in inspect.signature(base.forward).parameters else cls


class _FalconLegacyIAKVAttention:
    """Falcon, transformers < 5.25: ``forward`` takes ``alibi`` next to the mask.

    With ALiBi, FalconModel already folds ``alibi / sqrt(d)`` into ``attention_mask``; its
    non-SDPA path adds ``alibi / sqrt(d)`` to the scores once more, and so does this.
    """

    def forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
                output_attentions=False, position_embeddings=None, **kwargs):
        if decode_layer(layer_past, self.layer_idx) is None:
            return super().forward(hidden_states, alibi, attention_mask, position_ids=position_ids,
                                   layer_past=layer_past, use_cache=use_cache, output_attentions=output_attentions,
                                   position_embeddings=position_embeddings, **kwargs)
        from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

        batch, q_len, _ = hidden_states.shape
        query, key, value = (x.transpose(1, 2) for x in self._split_heads(self.query_key_value(hidden_states)))
        if alibi is None:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        key, _ = layer_past.update(key, value, self.layer_idx)
        scores_alibi = None
        if alibi is not None and (self.config._attn_implementation != "sdpa" or output_attentions):
            scores_alibi = alibi.view(batch, self.num_heads, 1, -1) * self.inv_norm_factor
        bias = attention_bias(scores_alibi, attention_mask)
        out = iakv_attend(key, query, self.inv_norm_factor, bias)
        return self.dense(out.reshape(batch, q_len, -1)), None


class _MptIAKVAttention:
    """MPT: scaled scores plus the ALiBi table's last columns; ``attention_mask`` is True where masked."""

    def forward(self, hidden_states, position_bias, cache=None, attention_mask=None, **kwargs):
        if decode_layer(cache, self.layer_idx) is None:
            return super().forward(hidden_states, position_bias, cache=cache, attention_mask=attention_mask, **kwargs)
        batch, q_len = hidden_states.shape[:2]
        qkv = self.Wqkv(hidden_states)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        query, key, value = (x.reshape(batch, q_len, self.n_heads, self.head_dim).transpose(1, 2)
                             for x in qkv.chunk(3, dim=2))
        key, _ = cache.update(key, value, self.layer_idx)
        if position_bias is not None:
            # The rows/columns stock MptAttention slices (its query length counts the cache too).
            kv_len = key.shape[-2]
            rows = max(0, position_bias.size(1) - (q_len + kv_len))
            position_bias = position_bias[:, rows:, max(0, position_bias.size(2) - kv_len):].unsqueeze(0)
        visible = None if attention_mask is None else ~attention_mask
        out = iakv_attend(key, query, self.softmax_scale, attention_bias(position_bias, visible))
        return self.out_proj(out.reshape(batch, q_len, -1)), None


#: model_type -> (transformers module, attention class, adapter mixin).
ADAPTED_ATTENTIONS = {
    "bloom": ("transformers.models.bloom.modeling_bloom", "BloomAttention", _BloomIAKVAttention),
    "falcon": ("transformers.models.falcon.modeling_falcon", "FalconAttention", _FalconIAKVAttention),
    "mpt": ("transformers.models.mpt.modeling_mpt", "MptAttention", _MptIAKVAttention),
}


def resolve_adapter(model_type: str) -> tuple[type, type]:
    """``(attention class, adapter mixin)`` of a family in ``ADAPTED_ATTENTIONS``, for the installed transformers."""
    module_name, class_name, adapter = ADAPTED_ATTENTIONS[model_type]
    base = getattr(importlib.import_module(module_name), class_name)
    if hasattr(adapter, "for_base"):  # the family's attention API changed between transformers releases
        adapter = adapter.for_base(base)
    return base, adapter


def adapt_attention(model: nn.Module) -> bool:
    """Swap every attention module of ``model``'s family for its IAKV adapter.

    Returns False, swapping nothing, where some attention module would still read the
    cache itself: a subclass of the family's attention (Falcon's flash-attention
    class), or Bloom's tensor-parallel ``slow_but_exact`` output projection.
    """
    config = model.config
    if config.model_type not in ADAPTED_ATTENTIONS:
        return False
    base, adapter = resolve_adapter(config.model_type)
    if config.model_type == "bloom" and config.pretraining_tp > 1 and config.slow_but_exact:
        return False
    attentions = [m for m in model.modules() if isinstance(m, base)]
    if not attentions or any(type(m) is not base and not isinstance(m, adapter) for m in attentions):
        return False
    for attention in attentions:
        if not isinstance(attention, adapter):
            _swap_class(attention, adapter)
    return True
