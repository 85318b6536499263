"""Beam search on the IAKV cache for Bloom, Falcon and MPT (attention in their own code) and T5 (encoder-decoder).

Each decode step of each layer must run ``ipex::iakv_attention`` (counted), the tokens
must equal stock's, and no cache tensor may be copied to reorder beams (stock copies
with ``index_select`` on the 4-D key/value tensors, counted the same way).
"""

import copy

import pytest
import torch
from test_llm_optimize import IpexOpCounter
from torch import nn

import ipex
from ipex_llm.optimize.iakv_adapters import resolve_adapter
from ipex_llm.optimize.iakv_cache import BeamSharedCrossAttentionCache, IpexIAKVCache
from llm_families import VARIANTS, build

# Bloom, both Falcon position schemes (rotary: multi-query here; ALiBi: per-head K/V, under
# SDPA and eager), Falcon's new decoder architecture (grouped K/V), MPT.
OWN_ATTENTION = ["bloom", "falcon", *VARIANTS, "mpt"]
SINGLE = torch.tensor([[4, 5, 6, 7, 8, 9]])
# Two prompts, the first left-padded with the pad token 0.
PADDED = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
PADDED_MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
BEAMS = 4


class CacheCopyCounter(IpexOpCounter):
    """IpexOpCounter that also counts ``index_select`` along dim 0 of 4-D tensors: a KV cache reordered by copying."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index_select.default and args[0].dim() == 4 and args[1] == 0:
            self.counts["cache_copy"] += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def _beam_search(model, ids, mask, **kw):
    """(output, op counts, forward calls) of a 4-beam search of 10 new tokens."""
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with torch.no_grad(), CacheCopyCounter() as counter:
            # MPT's config defaults to use_cache=False (stock then recomputes every step).
            out = model.generate(ids, attention_mask=mask, max_new_tokens=10, num_beams=BEAMS, do_sample=False,
                                 pad_token_id=0, use_cache=True, return_dict_in_generate=True, output_scores=True,
                                 **kw)
    finally:
        hook.remove()
    return out, counter.counts, len(forwards)


def _assert_step_scores_close(out, ref):
    """Every step's beam log-probabilities equal stock's (tokens alone can agree despite a wrong bias)."""
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(ref.scores), atol=1e-4, rtol=1e-4)


def _assert_history_recorded(layer):
    """Reorders went into the beam history: some step did not keep every beam in its slot."""
    identity = torch.arange(layer.beam_idx.shape[1])
    assert any(not torch.equal(layer.beam_idx[t], identity) for t in range(layer.length))


def _beam_searches_matching_stock(model, opt, layers, kernel_calls=None):
    """[(prompt ids, optimized cache)] for one unpadded prompt and a left-padded batch of two.

    Checked against stock on the way: the same tokens and step scores; stock copied its
    cache to reorder beams and the optimized model did not; every decode step (every
    forward but the prompt's) of each of ``layers`` layers ran the IAKV kernel, or
    ``kernel_calls(forwards)`` calls of it were made where other attentions use it too.
    """
    results = []
    for ids, mask in ((SINGLE, torch.ones_like(SINGLE)), (PADDED, PADDED_MASK)):
        ref, ref_counts, _ = _beam_search(model, ids, mask)
        out, counts, forwards = _beam_search(opt, ids, mask)
        assert torch.equal(out.sequences, ref.sequences)
        _assert_step_scores_close(out, ref)
        assert ref_counts["cache_copy"] > 0 and counts["cache_copy"] == 0, (ref_counts, counts)
        expected = layers * (forwards - 1) if kernel_calls is None else kernel_calls(forwards)
        assert counts["iakv_attention"] == expected > 0, counts
        results.append((ids, out.past_key_values))
    return results


@pytest.mark.parametrize("deployment_mode", [False, True])
@pytest.mark.parametrize("name", OWN_ATTENTION)
def test_own_attention_family_beam_search_on_iakv(name, deployment_mode):
    model = build(name)
    opt = ipex.llm.optimize(model, deployment_mode=deployment_mode)
    assert opt._ipex_optimized["iakv_beam_search"] is True
    # Every attention module is class-swapped for the adapter; checkpoints keep their keys.
    base, adapter = resolve_adapter(model.config.model_type)
    layers = model.config.num_hidden_layers
    attentions = [m for m in opt.modules() if isinstance(m, base)]
    assert len(attentions) == layers and all(isinstance(m, adapter) for m in attentions)
    assert sorted(opt.state_dict()) == sorted(model.state_dict())
    for ids, cache in _beam_searches_matching_stock(model, opt, layers):
        assert isinstance(cache, IpexIAKVCache)
        layer = cache.layers[0]
        _assert_history_recorded(layer)
        # The prompt ran once per batch entry; each beam slot of an entry holds its keys.
        prompt = ids.shape[1]
        for entry in range(ids.shape[0]):
            slots = layer.keys[:prompt, entry * BEAMS : (entry + 1) * BEAMS]
            torch.testing.assert_close(slots, slots[:, :1].expand_as(slots))


@pytest.mark.parametrize("deployment_mode", [False, True])
def test_t5_beam_search_self_attention_on_iakv_cross_attention_not_reordered(deployment_mode):
    model = build("t5")
    opt = ipex.llm.optimize(model, deployment_mode=deployment_mode)
    assert opt._ipex_optimized["iakv_beam_search"] is True
    layers = model.config.num_decoder_layers
    # generate() runs the encoder outside the model's forward(): one forward per decoder step.
    # Every forward has one query token (the prompt is the decoder start token), so each
    # layer's self-attention (IAKV) and cross-attention (the same kernel without beam
    # history) run the kernel at every forward.
    for ids, cache in _beam_searches_matching_stock(model, opt, layers, kernel_calls=lambda f: 2 * layers * f):
        assert isinstance(cache.self_attention_cache, IpexIAKVCache)
        assert isinstance(cache.cross_attention_cache, BeamSharedCrossAttentionCache)
        _assert_history_recorded(cache.self_attention_cache.layers[0])
        # Why skipping the cross-attention reorder is exact: every beam of an entry holds the same rows.
        for cross in cache.cross_attention_cache.layers:
            for entry in range(ids.shape[0]):
                rows = cross.keys[entry * BEAMS : (entry + 1) * BEAMS]
                assert torch.equal(rows, rows[:1].expand_as(rows))


@pytest.mark.parametrize("name", ["bloom", "falcon", "falcon_alibi", "falcon_new_arch", "mpt", "t5"])
def test_bf16_beam_search_on_iakv_close_to_stock_bf16(name):
    model = build(name)
    ref_model = copy.deepcopy(model).to(torch.bfloat16)
    opt = ipex.llm.optimize(model, dtype=torch.bfloat16, deployment_mode=False)
    ref, _, _ = _beam_search(ref_model, PADDED, PADDED_MASK)
    out, counts, _ = _beam_search(opt, PADDED, PADDED_MASK)
    assert counts["iakv_attention"] > 0 and counts["cache_copy"] == 0, counts
    # bf16 rounding may differ from stock's (fp32 accumulation in the kernel), so tokens are
    # compared loosely and the beams' scores to a tolerance.
    assert (out.sequences == ref.sequences).float().mean() >= 0.9
    torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, atol=0.05, rtol=0.02)


def test_bloom_tensor_parallel_slow_but_exact_keeps_copy_reordering():
    """Bloom's slow_but_exact emulation (pretraining_tp > 1) slices its Linears' weights itself.

    Those Linears stay stock (and the attention has no IAKV adapter, so beams are reordered by
    copying); the tokens still equal stock's.
    """
    model = build("bloom")
    model.config.pretraining_tp, model.config.slow_but_exact = 2, True
    for module in (m for m in model.modules() if type(m).__name__ in ("BloomAttention", "BloomMLP")):
        module.pretraining_tp, module.slow_but_exact = 2, True
    ref_model = copy.deepcopy(model)
    opt = ipex.llm.optimize(model, deployment_mode=False)
    assert opt._ipex_optimized["iakv_beam_search"] is False
    assert not any(type(m).__name__.startswith("IpexBloom") for m in opt.modules())
    sliced = [m for m in opt.modules() if type(m).__name__ in ("BloomAttention", "BloomMLP")]
    assert sliced and all(type(lin) is nn.Linear for m in sliced for lin in m.children() if isinstance(lin, nn.Linear))
    ref, _, _ = _beam_search(ref_model, PADDED, PADDED_MASK)
    out, counts, _ = _beam_search(opt, PADDED, PADDED_MASK)
    assert torch.equal(out.sequences, ref.sequences)
    assert counts["iakv_attention"] == 0 and counts["cache_copy"] > 0

