"""Attention and decoder-layer swaps for the Llama-pattern families.

Most decoder-only families of transformers 5.x (Llama, Mistral, Mixtral, Qwen2,
Qwen3 and their MoE variants) share one attention pattern -- separate
``q_proj``/``k_proj``/``v_proj``, RoPE from ``position_embeddings``, ``cache.update``,
the attention interface, ``o_proj`` -- and the dense ones one decoder-layer pattern
(pre-norm, residual add after attention and after the MLP). For those:

* attention reads Q, K and V with **one** GEMM on the concatenated weight (one pass
  over the input, one kernel call instead of three);
* the decoder layer adds the residual inside the ``o_proj`` and ``down_proj`` GEMM
  epilogues (no separate pass over the hidden states).

The modules keep their class: each instance's class is swapped for a subclass that
only overrides ``forward``, so ``isinstance`` checks, transformers' output recording
(``output_hidden_states`` / ``output_attentions`` hook on these classes) and every
attribute the model reads keep working. ``state_dict()`` keys stay those of the
original (``q_proj.weight``, ...): the fused weight is split on save and merged on load.

Classes are listed explicitly (not matched by shape): a family joins only after its
forward was checked to be this pattern, and its tests compare tokens with stock.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ipex_llm.optimize.swaps import IpexGatedMLP, IpexLinear, IpexRMSNorm

__all__ = ["FUSED_QKV_ATTENTIONS", "FUSED_DECODER_LAYERS", "fuse_qkv", "fuse_decoder_layers"]

#: Attention classes of the Llama pattern, and where their ``sliding_window`` argument
#: to the attention interface comes from ("module", "config", or None: not passed).
FUSED_QKV_ATTENTIONS = {
    "LlamaAttention": None,
    "MistralAttention": "config",
    "MixtralAttention": "config",
    "Qwen2Attention": "module",
    "Qwen2MoeAttention": None,
    "Qwen3Attention": "module",
    "Qwen3MoeAttention": "module",
}

#: Dense decoder layers whose forward is exactly the Llama one (pre-norm, two residuals).
FUSED_DECODER_LAYERS = frozenset(
    {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
)

_QKV = ("q_proj", "k_proj", "v_proj")


class _FusedQKVAttention:
    """Mixin: the Llama-pattern attention forward on one QKV GEMM."""

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, _ipex_residual=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = self.qkv_proj(hidden_states).split(self._ipex_qkv_sizes, dim=-1)
        query, key, value = query.view(hidden_shape), key.view(hidden_shape), value.view(hidden_shape)
        if self._ipex_qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        cos, sin = position_embeddings
        family = sys.modules[self._ipex_family_module]
        query, key = family.apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                          family.eager_attention_forward)
        extra = {}
        if self._ipex_sliding_from == "module":
            extra["sliding_window"] = self.sliding_window
        elif self._ipex_sliding_from == "config":
            extra["sliding_window"] = getattr(self.config, "sliding_window", None)
        out, weights = attention(self, query, key, value, attention_mask,
                                 dropout=0.0 if not self.training else self.attention_dropout,
                                 scaling=self.scaling, **extra, **kwargs)
        out = out.reshape(*input_shape, -1).contiguous()
        # The decoder layer passes its residual: added in the GEMM's epilogue.
        out = self.o_proj(out) if _ipex_residual is None else self.o_proj.add(out, _ipex_residual)
        return out, weights


class _FusedDecoderLayer:
    """Mixin: the Llama decoder-layer forward with both residual adds in GEMM epilogues."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
            _ipex_residual=hidden_states, **kwargs,
        )
        mlp = self.mlp
        return mlp.down_proj.add(mlp.gate_up(self.post_attention_layernorm(hidden_states)), hidden_states)


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _swap_class(module: nn.Module, mixin: type) -> None:
    """Make ``module`` an instance of a subclass of its class whose forward is ``mixin``'s."""
    cls = type(module)
    sub = _SUBCLASSES.get((cls, mixin))
    if sub is None:
        # Named after the original so repr() and error messages stay familiar.
        sub = type(f"Ipex{cls.__name__}", (mixin, cls), {"__module__": __name__})
        _SUBCLASSES[(cls, mixin)] = sub
    module.__class__ = sub


def _state_dict_split_qkv(module, state_dict, prefix, local_metadata):
    """Save the fused QKV weight under the original q_proj/k_proj/v_proj keys."""
    for suffix in ("weight", "bias"):
        fused = state_dict.pop(f"{prefix}qkv_proj.{suffix}", None)
        if fused is not None:
            for name, part in zip(_QKV, fused.split(module._ipex_qkv_sizes, dim=0)):
                state_dict[f"{prefix}{name}.{suffix}"] = part.clone()


def _load_merge_qkv(module, state_dict, prefix, *args):
    """Accept a checkpoint with q_proj/k_proj/v_proj keys: merge them into qkv_proj."""
    for suffix in ("weight", "bias"):
        keys = [f"{prefix}{name}.{suffix}" for name in _QKV]
        if all(k in state_dict for k in keys):
            state_dict[f"{prefix}qkv_proj.{suffix}"] = torch.cat([state_dict.pop(k) for k in keys], dim=0)


def _fuse_qkv(attn: nn.Module) -> bool:
    name = type(attn).__name__
    if name not in FUSED_QKV_ATTENTIONS:
        return False
    projs = [getattr(attn, n, None) for n in _QKV]
    if not all(type(p) is nn.Linear for p in projs):
        return False
    if len({p.in_features for p in projs}) != 1 or len({p.bias is None for p in projs}) != 1:
        return False
    family = sys.modules[type(attn).__module__]
    if not hasattr(family, "apply_rotary_pos_emb") or not hasattr(family, "eager_attention_forward"):
        return False
    fused = nn.Linear(projs[0].in_features, sum(p.out_features for p in projs), bias=projs[0].bias is not None,
                      device="meta")
    fused.weight = nn.Parameter(torch.cat([p.weight.detach() for p in projs]), requires_grad=False)
    if fused.bias is not None:
        fused.bias = nn.Parameter(torch.cat([p.bias.detach() for p in projs]), requires_grad=False)
    attn.qkv_proj = fused  # a plain Linear: apply_swaps packs it like every other
    for n in _QKV:
        delattr(attn, n)
    attn._ipex_qkv_sizes = [p.out_features for p in projs]
    attn._ipex_qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    attn._ipex_sliding_from = FUSED_QKV_ATTENTIONS[name]
    attn._ipex_family_module = family.__name__  # a name, not the module object: deepcopy cannot copy modules
    attn.register_state_dict_post_hook(_state_dict_split_qkv)
    attn.register_load_state_dict_pre_hook(_load_merge_qkv)
    _swap_class(attn, _FusedQKVAttention)
    return True


def _fuse_decoder_layer(layer: nn.Module) -> bool:
    if type(layer).__name__ not in FUSED_DECODER_LAYERS:
        return False
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if not isinstance(attn, _FusedQKVAttention) or not isinstance(getattr(attn, "o_proj", None), IpexLinear):
        return False
    if not isinstance(mlp, IpexGatedMLP):
        return False
    if not all(isinstance(getattr(layer, n, None), IpexRMSNorm)
               for n in ("input_layernorm", "post_attention_layernorm")):
        return False
    _swap_class(layer, _FusedDecoderLayer)
    return True


def fuse_qkv(model: nn.Module) -> int:
    """Concatenate Q/K/V of Llama-pattern attentions; run before ``apply_swaps`` (which packs it)."""
    return sum(_fuse_qkv(m) for m in list(model.modules()))


def fuse_decoder_layers(model: nn.Module) -> int:
    """Residual adds into the GEMM epilogues; run after ``apply_swaps`` (needs its modules)."""
    return sum(_fuse_decoder_layer(m) for m in list(model.modules()))
