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
* The prompt is computed once per batch row, not once per beam: beam search hands the
  model ``num_beams`` identical copies of every prompt, so the prefill runs on one copy
  and the cache writes its keys/values into every beam's slot (a copy of the prompt's
  KV, far cheaper than ``num_beams - 1`` extra forward passes); the logits are repeated.
* :func:`install` switches an optimized model over (its own config and generate hooks
  only; other models keep what they had).

Families whose attention passes ``cache.update()``'s output straight to the attention
function (most of :data:`IAKV_MODEL_TYPES`) need nothing more. Bloom, Falcon and MPT
compute attention in their own code (ALiBi added to ``baddbmm``/``matmul`` scores): a
small class-swapped attention subclass per family (:mod:`.iakv_adapters`) runs the
decode step on the same kernel. T5 (encoder-decoder) keeps its self-attention on the
IAKV cache and its cross-attention keys/values in a cache whose reorder is a no-op
(:class:`BeamSharedCrossAttentionCache`). Other families keep the default cache, where
beam search reorders by copying.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["IAKV_MODEL_TYPES", "BeamSharedCrossAttentionCache", "IpexIAKVCache", "IpexIAKVLayer", "install"]

#: Families whose attention reaches the "ipex" attention function (T5 included: its
#: relative position bias comes as ``position_bias``).
ATTENTION_INTERFACE_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "stablelm",
     "gptj", "gpt_neox", "opt", "codegen", "gpt_bigcode", "phi", "llava", "t5"}
)
#: Families whose attention modules get an IAKV decode adapter (see :mod:`.iakv_adapters`).
ADAPTED_TYPES = frozenset({"bloom", "falcon", "mpt"})
IAKV_MODEL_TYPES = ATTENTION_INTERFACE_TYPES | ADAPTED_TYPES
ATTN_NAME = "ipex"
#: For a model loaded with attn_implementation="eager": transformers' eager attention (which returns
#: the attention weights, for output_attentions) everywhere but beam search's IAKV steps.
EAGER_ATTN_NAME = "ipex_eager"


def _cache_layer_base():
    from transformers.cache_utils import CacheLayerMixin

    return CacheLayerMixin


class IpexIAKVLayer(_cache_layer_base()):
    """One layer's IAKV buffers.

    ``prompt_copies``: the first update (the prompt) comes with one row per batch entry
    and is stored into that many consecutive beam slots each (see the module docs).
    ``max_cache_len``: buffers of exactly that many positions, allocated once, for a
    compiled decode step (see :func:`install`): its update then only does tensor work
    (the fill level is the tensor ``cumulative_length``, as in transformers' StaticLayer),
    so one graph serves every step. Without it the buffers start at ``capacity`` and double
    when full.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int = 256, prompt_copies: int = 1, max_cache_len: int | None = None, **kwargs):
        super().__init__()
        self.capacity = capacity
        self.prompt_copies = prompt_copies
        self.max_cache_len = max_cache_len
        self.is_compileable = max_cache_len is not None
        # The fill level. A tensor, not an int, so a compiled step can read and advance it
        # without recompiling; eager code reads it through ``length``.
        self.cumulative_length = torch.tensor(0, dtype=torch.long)

    @property
    def length(self) -> int:
        """Positions stored so far."""
        return int(self.cumulative_length)

    @length.setter
    def length(self, value: int) -> None:
        self.cumulative_length.fill_(value)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, seq, dim = key_states.shape
        batch *= self.prompt_copies
        cap = max(self.capacity, 2 * seq) if self.max_cache_len is None else max(self.max_cache_len, seq)
        self.keys = key_states.new_empty(cap, batch, heads, dim)
        self.values = value_states.new_empty(cap, batch, value_states.shape[1], value_states.shape[-1])
        # Row t of the history for a step where no beam was reordered: every slot its own.
        self.own_slots = torch.arange(batch, dtype=torch.long)
        self.beam_idx = self.own_slots.repeat(cap, 1)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        # Growing past the buffer reallocates (doubling) instead of failing.
        cap = self.keys.shape[0]
        while cap < needed:
            cap *= 2
        length = self.length
        for name in ("keys", "values", "beam_idx"):
            old = getattr(self, name)
            new = old.new_empty(cap, *old.shape[1:])
            new[:length] = old[:length]
            setattr(self, name, new)
        self.beam_idx[length:] = self.own_slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        seq = key_states.shape[-2]
        if torch.compiler.is_compiling():
            return self._compiled_decode_update(key_states, value_states)
        length = self.length
        if length + seq > self.keys.shape[0]:
            self._grow(length + seq)
        end = length + seq
        copies = self.keys.shape[1] // key_states.shape[0]  # > 1: a shared prompt
        # [seq, rows, heads, dim] views; each beam slot of a batch entry gets the entry's KV.
        new_keys, new_values = key_states.permute(2, 0, 1, 3), value_states.permute(2, 0, 1, 3)
        if copies > 1:
            new_keys = new_keys.repeat_interleave(copies, dim=1)
            new_values = new_values.repeat_interleave(copies, dim=1)
        self.keys[length:end] = new_keys
        self.values[length:end] = new_values
        self.beam_idx[length:end] = self.own_slots
        self.length = end
        if length == 0:
            # The prompt attends only to itself: plain attention on the fresh states
            # (transformers' SDPA, as stock runs it), no walk through the history.
            return key_states, value_states
        # Views in the layout attention expects ([batch, heads, seq, dim]), no copy. The
        # tag tells the "ipex" attention function where the buffers and history are.
        keys = self.keys[:end].permute(1, 2, 0, 3)
        values = self.values[:end].permute(1, 2, 0, 3)
        keys._ipex_iakv = (self, seq)
        return keys, values

    def _compiled_decode_update(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """A decode step inside a compiled graph: tensor ops only, fixed shapes.

        Writes at ``cumulative_length`` and returns the whole buffers (tagged): the "ipex"
        attention function reads only the filled positions, and the mask covers all of
        them (:meth:`get_mask_sizes`).
        """
        seq = key_states.shape[-2]
        positions = torch.arange(seq, device=self.keys.device) + self.cumulative_length
        self.keys.index_copy_(0, positions, key_states.permute(2, 0, 1, 3))
        self.values.index_copy_(0, positions, value_states.permute(2, 0, 1, 3))
        self.beam_idx.index_copy_(0, positions, self.own_slots.expand(seq, -1))
        self.cumulative_length.add_(seq)
        keys = self.keys.permute(1, 2, 0, 3)
        keys._ipex_iakv = (self, seq)
        return keys, self.values.permute(1, 2, 0, 3)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        length = self.length
        if length:
            self.beam_idx[length - 1] = beam_idx.to(self.beam_idx.device)

    def get_seq_length(self):
        # Inside a compiled step the tensor (positions are computed from it, not guarded on).
        return self.cumulative_length if torch.compiler.is_compiling() else self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.max_cache_len is not None and (torch.compiler.is_compiling() or self.length):
            # Decode steps on fixed-size buffers: a mask over every buffer position (the
            # ones not yet written are masked), the same shape at every step.
            return self.keys.shape[0], 0
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1 if self.max_cache_len is None else self.max_cache_len

    def reset(self) -> None:
        self.length = 0


def _cache_base():
    from transformers.cache_utils import Cache

    return Cache


class IpexIAKVCache(_cache_base()):
    """A transformers Cache of :class:`IpexIAKVLayer` layers (created lazily, one per layer)."""

    def __init__(self, prompt_copies: int = 1, max_cache_len: int | None = None, **kwargs):
        super().__init__(layer_class_to_replicate=IpexIAKVLayer)
        self.prompt_copies = prompt_copies
        self.max_cache_len = max_cache_len
        # Layers are created lazily by Cache.update(); each learns how many beam slots
        # the prompt fills.
        self.layer_class_to_replicate = lambda: IpexIAKVLayer(prompt_copies=self.prompt_copies,
                                                              max_cache_len=self.max_cache_len)


def decode_layer(cache, layer_idx: int):
    """The IAKV layer of ``layer_idx`` if the next ``cache.update`` there is a decode step, else None.

    A decode step is any update after the prompt's: that one returns tagged views
    (see :meth:`IpexIAKVLayer.update`), which only IAKV-aware attention may read.
    """
    if not isinstance(cache, IpexIAKVCache) or layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    return layer if layer.length else None


def attention_bias(*terms):
    """The fp32 additive bias the kernel takes: the sum of ``terms`` (None skipped).

    A float term is added as is (an additive mask, ALiBi, T5's position bias); a bool
    term is a mask where True means "may attend" (transformers' SDPA convention) and
    becomes 0 / -inf. Shapes broadcast to ``[batch, heads, q_len, kv_len]``.
    """
    bias = None
    for term in terms:
        if term is None:
            continue
        if term.dtype == torch.bool:
            term = torch.zeros(term.shape, dtype=torch.float32).masked_fill_(~term, float("-inf"))
        else:
            term = term.float()
        bias = term if bias is None else bias + term
    return bias


def iakv_attend(tagged_keys: torch.Tensor, query: torch.Tensor, scale: float, bias=None, causal=None):
    """Attention of ``query [batch, heads, q_len, dim]`` over the history behind ``tagged_keys``.

    ``tagged_keys`` is what :meth:`IpexIAKVLayer.update` returned for this step. Returns
    ``[batch, q_len, heads, dim]``. ``causal`` defaults to "no bias given" (a mask, when
    present, already says which positions each query sees).
    """
    layer, seq = tagged_keys._ipex_iakv
    if causal is None:
        causal = bias is None
    if torch.compiler.is_compiling():  # the fill level as a tensor: one graph for every step
        return torch.ops.ipex.iakv_attention.offset_tensor(query.transpose(1, 2), layer.keys, layer.values,
                                                           layer.beam_idx, layer.cumulative_length - seq, scale,
                                                           bias, causal)
    return torch.ops.ipex.iakv_attention(query.transpose(1, 2), layer.keys, layer.values, layer.beam_idx,
                                         layer.length - seq, scale, bias, causal)


def ipex_attention(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   position_bias=None, **kwargs):
    """The "ipex" attention function.

    * keys from an IAKV layer (beam search): the IAKV kernel, following the beam history;
    * one query token over plain keys/values (greedy or sampling decode, on a static or
      dynamic cache): ipex's decode kernel, with the history the identity. A decode step
      is one row per head against the cache, where SDPA's general kernel spends most of
      its time on set-up (SmolLM2: 64 us a layer for 38 KB of keys and values);
    * anything else (prompts, dropout, soft-capping): transformers' SDPA, unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if hasattr(key, "_ipex_iakv"):
        out = iakv_attend(key, query, scale, attention_bias(attention_mask, position_bias),
                          causal=attention_mask is None)
        return out, None
    if _decode_kernel_applies(query, key, value, dropout, kwargs):
        kv_len, rows = key.shape[2], key.shape[0]
        own_slots = torch.arange(rows, device=key.device).expand(kv_len, rows)  # no beams: each row its own
        # [batch, kv_heads, kv_len, dim] -> the kernel's [kv_len, batch, kv_heads, dim], as views. The
        # query is the last position; the mask (if any) says which cached positions it sees.
        out = torch.ops.ipex.iakv_attention(query.transpose(1, 2), key.permute(2, 0, 1, 3), value.permute(2, 0, 1, 3),
                                            own_slots, kv_len - 1, scale,
                                            attention_bias(attention_mask, position_bias), False)
        return out, None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  position_bias=position_bias, **kwargs)


def ipex_eager_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The "ipex_eager" attention function: the IAKV kernel on beam search's IAKV keys (no weights),
    else the model family's own eager attention, which returns the weights."""
    eager = None
    for cls in type(module).__mro__:  # ipex's swapped classes live elsewhere: the family's module is a base's
        eager = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if eager is not None:
            break
    if hasattr(key, "_ipex_iakv") or eager is None:
        return ipex_attention(module, query, key, value, attention_mask, **kwargs)
    return eager(module, query, key, value, attention_mask, **kwargs)


def _decode_kernel_applies(query, key, value, dropout, kwargs) -> bool:
    """One query token, no dropout or soft-capping, keys and values of one shape, grouped heads."""
    return (query.dim() == 4 and query.shape[2] == 1 and dropout == 0.0 and kwargs.get("softcap") is None
            and kwargs.get("s_aux") is None and query.device.type == "cpu" and key.shape == value.shape
            and key.shape[-1] == query.shape[-1] and key.shape[0] == query.shape[0]
            and query.shape[1] % key.shape[1] == 0)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, ipex_attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    if EAGER_ATTN_NAME not in AttentionInterface._global_mapping:
        from transformers.masking_utils import eager_mask

        AttentionInterface.register(EAGER_ATTN_NAME, ipex_eager_attention)
        AttentionMaskInterface.register(EAGER_ATTN_NAME, eager_mask)


def _dynamic_cache_base():
    from transformers.cache_utils import DynamicCache

    return DynamicCache


class BeamSharedCrossAttentionCache(_dynamic_cache_base()):
    """An encoder-decoder's cross-attention keys/values during beam search: never reordered.

    generate() expands the encoder output per beam, so the beams of one batch entry hold
    identical cross-attention keys/values, and beam search's ``beam_idx`` only maps a
    beam onto a beam of the same batch entry. A reorder would copy rows onto equal rows,
    so it is skipped (the self-attention cache beside it records the indices).
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        return None


# -- compiled decode (deployment_mode): cache sizes, fallback, a user's own cache --------------------

#: Smallest static cache the compiled decode allocates; larger ones are powers of two.
MIN_STATIC_CACHE = 256


def cache_bucket(length: int) -> int:
    """The static cache size for ``length`` tokens: a power of two, at least MIN_STATIC_CACHE.

    Each cache size is one compiled graph, and dynamo stops after 8 (torch._dynamo.config
    recompile_limit; with fullgraph=True an error). Sized exactly, a server's ninth distinct
    prompt length + max_new_tokens failed; bucketed, 8 graphs cover 256 to 32768 tokens.
    """
    return max(MIN_STATIC_CACHE, 1 << (max(int(length), 1) - 1).bit_length())


def prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """transformers' cache preparation, except that a cache the caller passes wins over the static cache
    ``deployment_mode`` asked for in the model's generation config (transformers refuses the pair; the
    call then decodes eagerly on the caller's cache, as stock does)."""
    cache = model_kwargs.get("cache")
    if cache is not None and generation_config.cache_implementation == "static" \
            and getattr(self, "_ipex_static_cache", False):
        generation_config.cache_implementation = None  # this call's copy of the config
        if _static_cache_too_small(cache, generation_config):
            model_kwargs["cache"] = _as_dynamic_cache(cache)
    return type(self)._prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs)


def _static_cache_too_small(cache, generation_config) -> bool:
    from transformers.cache_utils import StaticCache

    if not isinstance(cache, StaticCache):
        return False
    capacity = cache.get_max_length()
    return capacity is not None and capacity > 0 and (generation_config.max_length or 0) > capacity


def _as_dynamic_cache(cache):
    """The caller's StaticCache as a DynamicCache (its tokens so far), to continue past its size.

    generate() returns the static cache deployment_mode gave the call, sized to a bucket of that
    call's length; a conversation continued with it (``past_key_values=out.past_key_values``) ran out
    of room at the bucket's end (an index_copy_ IndexError where stock's DynamicCache grows).
    """
    from transformers.cache_utils import DynamicCache

    used = cache.get_seq_length()
    dynamic = DynamicCache()
    for index, layer in enumerate(cache.layers):
        dynamic.update(layer.keys[:, :, :used].clone(), layer.values[:, :, :used].clone(), index)
    return dynamic


def prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, *args, **kwargs):
    """transformers' static cache, sized by cache_bucket."""
    return type(self)._prepare_static_cache(self, cache_implementation, batch_size, cache_bucket(max_cache_len),
                                            *args, **kwargs)


def with_eager_fallback(model: nn.Module, compiled, eager):
    """``compiled``, or ``eager`` from the first call that cannot compile on (for this model): dynamo's
    recompile limit (more distinct batch or cache sizes than it allows), a construct it does not
    support, or a failed compilation (no working C++ compiler on the machine, as in slim images).
    All are raised while tracing or compiling, before the step runs, so the eager call repeats nothing."""
    from torch._inductor.exc import InductorError

    def call(*args, **kwargs):
        if getattr(model, "_ipex_eager_decode", False):
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except (torch._dynamo.exc.FailOnRecompileLimitHit, torch._dynamo.exc.Unsupported,
                torch._dynamo.exc.BackendCompilerFailed, InductorError) as exc:
            warnings.warn(f"ipex.llm.optimize: the decode step cannot stay compiled ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]}); this model decodes eagerly from now on. For the "
                          "recompile limit, raise torch._dynamo.config.recompile_limit to keep compiling.",
                          UserWarning, stacklevel=2)
            model._ipex_eager_decode = True
            return eager(*args, **kwargs)

    return call


def compile_kwargs(compile_config) -> dict:
    """torch.compile arguments: the generation config's, with ipex's options (guards, no output asserts)."""
    from ipex_core.optimize.graph_mode import NO_OUTPUT_ASSERTS, deployment_guard_filter

    kwargs = compile_config.to_dict()
    kwargs["options"] = {**(kwargs.get("options") or {}), "guard_filter_fn": deployment_guard_filter,
                         **NO_OUTPUT_ASSERTS}
    return kwargs


def compile_for(model: nn.Module, fn, compile_config):
    """``torch.compile`` of ``fn(model, ...)`` for this model alone (graph_mode.deployed_step: a code object
    of its own, so that another model of the same class never runs this one's graphs), as a callable
    taking the rest of the arguments."""
    from ipex_core.optimize.graph_mode import deployed_step

    return functools.partial(torch.compile(deployed_step(fn), **compile_kwargs(compile_config)), model)


class _CompiledCalls:
    """A model's compiled calls, held on the model itself, so that they go with it (held in a
    WeakKeyDictionary, they kept their model alive: its values refer to it), and left behind by
    copy.deepcopy and pickling (a copy compiles its own)."""

    def __init__(self):
        self.calls: dict[str, object] = {}

    def __deepcopy__(self, memo):
        return _CompiledCalls()

    def __reduce__(self):
        return (_CompiledCalls, ())


def _compiled_calls(model: nn.Module) -> dict:
    holder = model.__dict__.get("_ipex_compiled_calls")
    if holder is None:
        holder = model.__dict__["_ipex_compiled_calls"] = _CompiledCalls()
        # The compiled calls do not guard the model's own tensors (deployment_guard_filter): a cast, a move
        # or a state_dict load of the model drops them, and the next step compiles for the new weights.
        model.register_load_state_dict_post_hook(lambda module, incompatible: _forget_compiled_calls(module))
        model._apply = functools.partial(_apply_then_forget, model)  # in front of nn.Module._apply
    return holder.calls


def _forget_compiled_calls(model: nn.Module) -> None:
    holder = model.__dict__.get("_ipex_compiled_calls")
    if holder is not None:
        holder.calls.clear()


def _apply_then_forget(model: nn.Module, fn, recurse: bool = True) -> nn.Module:
    type(model)._apply(model, fn, recurse)
    _forget_compiled_calls(model)
    return model


def get_compiled_call(self, compile_config):
    """The compiled ``__call__`` for the decode steps (transformers' own, with ipex's options), with the
    eager fallback. A step on another kind of cache than the static one (a model that swaps its cache
    mid-generation) runs eagerly, for that call only."""
    from transformers.cache_utils import StaticCache

    compiled = _compiled_calls(self).get("call")
    if compiled is None:
        compiled = with_eager_fallback(self, compile_for(self, type(self).__call__, compile_config), self.__call__)
        _compiled_calls(self)["call"] = compiled

    def call(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and not isinstance(cache, StaticCache):
            return self.__call__(*args, **kwargs)
        return compiled(*args, **kwargs)

    return call


def install(model: nn.Module, compiled_decode: bool = False) -> bool:
    """Use the IAKV cache for this model's beam search; returns whether it applies.

    ``compiled_decode`` (``deployment_mode``): the decode steps of beam search run as one
    ``torch.compile`` graph too (transformers compiles only greedy/sampling decode), on
    buffers sized for the whole generation, for the decoder-only families whose attention
    goes through the attention interface. Bloom/Falcon/MPT (adapters) and encoder-decoders
    stay eager.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in IAKV_MODEL_TYPES or not hasattr(model, "_prepare_cache_for_generation"):
        return False
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager", None, ATTN_NAME, EAGER_ATTN_NAME):
        return False  # the user chose another kernel (flash, flex): leave it
    if model_type in ADAPTED_TYPES:
        from ipex_llm.optimize.iakv_adapters import adapt_attention

        if not adapt_attention(model):
            return False  # an attention module without an adapter would read the raw buffers
    else:
        _register()
        model.set_attn_implementation(EAGER_ATTN_NAME if implementation in ("eager", EAGER_ATTN_NAME) else ATTN_NAME)
    static = compiled_decode and model_type in ATTENTION_INTERFACE_TYPES and not config.is_encoder_decoder
    if static:
        _compile_beam_decode(model)
    # The wrappers below call the class's methods on `self`, never a method bound at install time: a
    # deepcopy of the model rebinds them to the copy, which must not run the original's weights.
    def prepare_cache(self, generation_config, model_kwargs, *args, **kwargs):
        if (generation_config.num_beams or 1) > 1 and model_kwargs.get("cache") is None and \
                generation_config.use_cache is not False:
            # transformers passes (generation_mode, batch_size, max_cache_length)
            max_cache_length = kwargs.get("max_cache_length", args[2] if len(args) > 2 else None)
            cache = IpexIAKVCache(max_cache_len=cache_bucket(max_cache_length + 1) if static and max_cache_length
                                  else None)
            if self.config.is_encoder_decoder:
                from transformers.cache_utils import EncoderDecoderCache

                cross = BeamSharedCrossAttentionCache(config=self.config.get_text_config(decoder=True))
                cache = EncoderDecoderCache(cache, cross)
            model_kwargs["cache"] = cache
            return None
        return prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs)

    def prefill(self, input_ids, generation_config, model_kwargs, *args, **kwargs):
        shared = _shared_prompt_inputs(input_ids, generation_config, model_kwargs)
        class_prefill = type(self)._prefill
        if shared is None:
            return class_prefill(self, input_ids, generation_config, model_kwargs, *args, **kwargs)
        beams, one_ids, one_kwargs = shared
        model_kwargs["cache"].prompt_copies = beams
        outputs = class_prefill(self, one_ids, generation_config, one_kwargs, *args, **kwargs)
        outputs.logits = outputs.logits.repeat_interleave(beams, dim=0)
        return outputs

    # Bound to this model object only: other instances of the class are unaffected.
    model._prepare_cache_for_generation = types.MethodType(prepare_cache, model)
    model._prefill = types.MethodType(prefill, model)
    return True


#: The compiled forward of each model whose beam decode is compiled (not an attribute of


def _compile_beam_decode(model: nn.Module) -> None:
    """Route this model's beam-search decode steps through one compiled graph.

    transformers' beam search calls ``self(...)`` eagerly at every step. The model gets
    an instance-level ``forward`` (same signature, which generate() inspects) that sends a
    step on a fixed-size IAKV cache, after the prompt, to ``torch.compile`` of the class's
    forward, with the model's own ``compile_config``; every other call runs the class's
    forward as before.
    """
    class_forward = type(model).forward

    @functools.wraps(class_forward)
    def forward(self, *args, **kwargs):
        cache = kwargs.get("cache")
        compile_config = getattr(self.generation_config, "compile_config", None)
        # A TorchDispatchMode (op counters, FLOP counters) cannot run inside a compiled
        # graph: then the step runs eager, on the same buffers.
        if (isinstance(cache, IpexIAKVCache) and cache.max_cache_len is not None and cache.layers
                and compile_config is not None and not torch.compiler.is_compiling()
                and not is_in_torch_dispatch_mode(include_infra_modes=False) and cache.get_seq_length() > 0):
            compiled = _compiled_calls(self).get("forward")
            if compiled is None:
                compiled = with_eager_fallback(self, compile_for(self, class_forward, compile_config),
                                               types.MethodType(class_forward, self))
                _compiled_calls(self)["forward"] = compiled
            return compiled(*args, **kwargs)
        return class_forward(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)  # a deepcopy rebinds it to the copy


# model_kwargs that beam search expands per beam and the prefill reads; anything else
# with a batch dimension (images, encoder outputs) keeps the ordinary per-beam prefill.
_PER_ROW_KWARGS = ("attention_mask", "position_ids")


def _shared_prompt_inputs(input_ids, generation_config, model_kwargs):
    """(beams, input_ids, model_kwargs) of one copy per batch entry, or None if the beams differ."""
    beams = generation_config.num_beams or 1
    cache = model_kwargs.get("cache")
    if beams == 1 or not isinstance(cache, IpexIAKVCache) or cache.get_seq_length() != 0:
        return None
    if generation_config.prefill_chunk_size is not None or input_ids.shape[0] % beams:
        return None
    if generation_config.output_hidden_states or generation_config.output_attentions:
        return None  # the prompt's hidden states / attentions are returned per beam: run it per beam
    if any(isinstance(v, (dict, list, tuple)) and v for k, v in model_kwargs.items() if k != "cache"):
        return None  # per-beam structures (e.g. encoded images): keep the per-beam prefill
    one_kwargs = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == input_ids.shape[0]:
            if key not in _PER_ROW_KWARGS:
                return None
            value = _one_per_group(value, beams)
            if value is None:
                return None
        one_kwargs[key] = value
    one_ids = _one_per_group(input_ids, beams)
    return None if one_ids is None else (beams, one_ids, one_kwargs)


def _one_per_group(rows: torch.Tensor, beams: int):
    """rows[::beams] if every group of ``beams`` consecutive rows is identical, else None."""
    first = rows[::beams]
    return first if torch.equal(first.repeat_interleave(beams, dim=0), rows) else None
