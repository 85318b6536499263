"""What ipex.llm.optimize's deployment choices leave behind: the cache generate() returns, the checkpoint
save_pretrained writes, a second optimize without deployment_mode; and the fallback's dtype, the optimizer
argument. Each case failed before its fix (see the test's docstring)."""

import copy
import json
import warnings

import pytest
import torch

import ipex
from llm_families import build

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def test_conversation_continues_past_the_returned_static_cache():
    """generate() returns the static cache sized to the call's bucket (256); passing it back with a longer
    turn raised an IndexError (index 256 out of bounds), where stock's DynamicCache grows."""
    model = build("llama")
    reference = copy.deepcopy(model)
    opt = ipex.llm.optimize(model)
    turn2 = torch.randint(3, 60, (1, 260), generator=torch.Generator().manual_seed(0))
    results = []
    with torch.no_grad():
        for m in (reference, opt):
            first = m.generate(PROMPT, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
            ids = torch.cat([first.sequences, turn2], 1)
            results.append(m.generate(ids, past_key_values=first.past_key_values, max_new_tokens=4, do_sample=False))
    assert results[1].shape == (1, 7 + 5 + 260 + 4)
    assert torch.equal(results[0], results[1])


def test_save_pretrained_writes_stock_generation_settings(tmp_path):
    """The saved generation_config.json carried "cache_implementation": "static", so the checkpoint made every
    later plain-transformers generate() use a static cache (and refuse a cache passed in)."""
    model = build("llama")
    opt = ipex.llm.optimize(model)
    assert opt.generation_config.cache_implementation == "static"  # this process's deployment choice
    opt.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert "cache_implementation" not in saved and "compile_config" not in saved
    assert opt.generation_config.cache_implementation == "static"  # and still deployed here


def test_optimizing_again_without_deployment_mode_stops_compiling():
    model = ipex.llm.optimize(build("llama"))
    again = ipex.llm.optimize(model, deployment_mode=False)
    assert again.generation_config.cache_implementation is None and again.generation_config.compile_config is None
    assert "get_compiled_call" not in again.__dict__
    assert not again._ipex_optimized["compiled_decode"]


def test_fallback_casts_the_whole_model():
    """The fallback (families outside the supported list) cast only ipex.optimize's layer list: GPT-2's Conv1D
    stayed fp32 and the first bf16 generate raised 'mat1 and mat2 must have the same dtype'."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=64)).eval()
    reference = copy.deepcopy(model).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = ipex.llm.optimize(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in opt.parameters() if p.is_floating_point())
    with torch.no_grad():
        got = opt(PROMPT).logits.float()
        want = reference(PROMPT).logits.float()
        assert opt.generate(PROMPT, max_new_tokens=4, do_sample=False).shape == (1, PROMPT.shape[1] + 4)
    assert ((got - want).abs().max() / want.abs().max()).item() < 5e-2  # bf16 against stock bf16


def test_dtype_given_as_the_optimizer_is_refused():
    """ipex.llm.optimize(model, torch.bfloat16) returned (model, torch.bfloat16) unoptimized, with a warning."""
    with pytest.raises(TypeError, match="dtype by keyword"):
        ipex.llm.optimize(build("llama"), torch.bfloat16)


def test_decode_falls_back_to_eager_without_a_compiler():
    """With no working C++ compiler (slim images), generate() raised InductorError: InvalidCxxCompiler."""
    import torch._inductor.config as inductor_config

    model = build("llama", seed=3)
    reference = copy.deepcopy(model)
    opt = ipex.llm.optimize(model)
    # config.patch restores the option (monkeypatch.setattr deleted it on undo: the config serves it
    # through __getattr__, so it is not in the namespace's __dict__).
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), \
            inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        warnings.simplefilter("always")
        got = opt.generate(PROMPT, max_new_tokens=4, do_sample=False)
    assert any("cannot stay compiled" in str(w.message) for w in caught)
    assert torch.equal(got, reference.generate(PROMPT, max_new_tokens=4, do_sample=False))


def test_num_parameters_counts_the_packed_weights():
    """Packed weights are buffers: num_parameters() gave 16,704 of a 106,816-parameter model."""
    model = build("llama")
    want = (model.num_parameters(), model.num_parameters(exclude_embeddings=True))
    opt = ipex.llm.optimize(model)
    assert (opt.num_parameters(), opt.num_parameters(exclude_embeddings=True)) == want
    assert ipex.llm.optimize(opt).num_parameters() == want[0]  # optimized again
    assert copy.deepcopy(opt).num_parameters() == want[0]


def test_optimized_model_is_freed_after_compiled_decode():
    """The compiled calls were kept in a WeakKeyDictionary whose values referred to the model: no optimized
    model that had generated was ever freed (a leak per model in a long-running process)."""
    import gc
    import weakref

    opt = ipex.llm.optimize(build("llama"))
    with torch.no_grad():
        opt.generate(PROMPT, max_new_tokens=3, do_sample=False)
        opt.generate(PROMPT, max_new_tokens=3, do_sample=False, num_beams=2)
    assert copy.deepcopy(opt).__dict__["_ipex_compiled_calls"].calls == {}  # a copy compiles its own
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None


def test_generate_without_cache_gives_no_deployment_warnings(capfd):
    """deployment_mode's static cache and compile config mean nothing to a generate() without a cache: transformers
    logged "generation flags are not valid ... ['cache_implementation']" and "unable to meet the criteria for
    compilation" at every use_cache=False call. The call uses transformers' own settings; tokens equal stock's;
    the deployment settings stay for the next call."""
    import logging

    model = build("llama")
    reference = copy.deepcopy(model)
    opt = ipex.llm.optimize(model)
    logging.Logger.warning_once.cache_clear()  # transformers' once-only warnings must be able to show here
    capfd.readouterr()
    with torch.no_grad():
        got = opt.generate(PROMPT, max_new_tokens=4, use_cache=False, do_sample=False)
        want = reference.generate(PROMPT, max_new_tokens=4, use_cache=False, do_sample=False)
    logged = capfd.readouterr().err
    assert "cache_implementation" not in logged and "criteria for compilation" not in logged, logged
    assert torch.equal(got, want)
    assert opt.generation_config.cache_implementation == "static" and opt.generation_config.compile_config is not None
