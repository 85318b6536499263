"""ipex.llm.optimize on the image-to-text families (Git, Llava): stock tokens from images, kernels in both towers."""

import collections
import copy

import pytest
import torch
from test_llm_optimize import BF16_LOGITS_TOL, IpexOpCounter, assert_logits_close
from torch import nn

import ipex
from llm_families import MULTIMODAL, build, image_prompt


def _towers(model):
    """(vision encoder, text model) of a Git or Llava model."""
    if type(model).__name__ == "GitForCausalLM":
        return model.git.image_encoder, model.git.encoder
    return model.model.vision_tower, model.model.language_model


def _generate(model, input_ids, pixel_values, **kw):
    with torch.no_grad():
        return model.generate(input_ids, pixel_values=pixel_values, attention_mask=torch.ones_like(input_ids),
                              max_new_tokens=8, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("model_type", sorted(MULTIMODAL))
def test_image_to_text_fp32_greedy_and_beam_match_stock(model_type):
    model = build(model_type)
    opt = ipex.llm.optimize(model, dtype=torch.float32, deployment_mode=False)
    input_ids, pixel_values = image_prompt(model_type)
    greedy = _generate(opt, input_ids, pixel_values)
    assert torch.equal(greedy, _generate(model, input_ids, pixel_values))
    # The image matters: another image changes what the model says (so the vision path is compared too).
    assert not torch.equal(greedy, _generate(opt, input_ids, torch.randn_like(pixel_values)))
    assert torch.equal(_generate(opt, input_ids, pixel_values, num_beams=4),
                       _generate(model, input_ids, pixel_values, num_beams=4))


@pytest.mark.parametrize("model_type", sorted(MULTIMODAL))
def test_image_to_text_bf16_logits_close_to_stock_bf16(model_type):
    model = build(model_type)
    ref = copy.deepcopy(model).to(torch.bfloat16)
    opt = ipex.llm.optimize(model, dtype=torch.bfloat16, deployment_mode=False)
    input_ids, pixel_values = image_prompt(model_type)
    with torch.no_grad():
        a = ref(input_ids, pixel_values=pixel_values.bfloat16()).logits.float().flatten()
        b = opt(input_ids, pixel_values=pixel_values.bfloat16()).logits.float().flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    # Measured 0 (bitwise equal to stock bf16) for Git and Llava; the tolerance is explained in test_llm_optimize.
    assert_logits_close(b, a, BF16_LOGITS_TOL)


@pytest.mark.parametrize("model_type", sorted(MULTIMODAL))
def test_image_to_text_swaps_run_in_vision_and_text_towers(model_type):
    opt = ipex.llm.optimize(build(model_type), dtype=torch.bfloat16, deployment_mode=False)
    input_ids, pixel_values = image_prompt(model_type)
    vision, text = _towers(opt)
    for tower in vision, text:
        left = [n for n, m in tower.named_modules() if type(m) in (nn.Linear, nn.LayerNorm)]
        assert not left, f"not swapped: {left}"
    # Every swapped module of a tower runs its ipex kernel once per forward: a silent
    # fallback to the stock op would lower these counts.
    with IpexOpCounter() as counter, torch.no_grad():
        vision(pixel_values.bfloat16())
    modules = collections.Counter(type(m).__name__ for m in vision.modules())
    assert modules["IpexLinear"] > 0 and modules["IpexLayerNorm"] > 0
    assert counter.counts["linear"] == modules["IpexLinear"], counter.counts
    assert counter.counts["layer_norm"] == modules["IpexLayerNorm"], counter.counts
    modules = collections.Counter(type(m).__name__ for m in text.modules())
    if model_type == "llava":
        with IpexOpCounter() as counter, torch.no_grad():
            text(input_ids)
        assert counter.counts["linear_pair_silu_mul"] == modules["IpexGatedMLP"] > 0, counter.counts
        assert counter.counts["rms_norm"] == modules["IpexRMSNorm"] > 0, counter.counts
    else:  # Git's text model: a BERT-style encoder stack over the token embeddings
        with torch.no_grad():
            embedded = opt.git.embeddings(input_ids=input_ids)
        with IpexOpCounter() as counter, torch.no_grad():
            text(embedded)
        assert counter.counts["layer_norm"] == modules["IpexLayerNorm"] > 0, counter.counts
    assert counter.counts["linear"] == modules["IpexLinear"] > 0, counter.counts


def test_llava_beam_search_runs_on_iakv():
    from ipex_llm.optimize.iakv_cache import IpexIAKVCache

    model = build("llava")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    input_ids, pixel_values = image_prompt("llava")
    out = _generate(opt, input_ids, pixel_values, num_beams=4, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, IpexIAKVCache)
    assert torch.equal(out.sequences, _generate(model, input_ids, pixel_values, num_beams=4))
