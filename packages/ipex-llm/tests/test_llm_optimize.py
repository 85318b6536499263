"""ipex.llm.optimize on tiny models of every family: same tokens as stock, ipex kernels really run."""

import collections
import copy
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ipex
from llm_families import TINY, build


class IpexOpCounter(TorchDispatchMode):
    """Counts the torch.ops.ipex ops that run (so a silent fallback fails a test)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "ipex":
            self.counts[func._opname] += 1
        return func(*args, **(kwargs or {}))


# ipex.llm.optimize(dtype=bf16) against the stock model cast to bf16: max |logit error| relative to the
# largest stock logit (cosine similarity alone is blind to a uniform scaling and allows ~14% rms error).
# Measured on AVX512-BF16 without AMX (Zen 4): 0 for every family here (bitwise equal). Two correct bf16
# backends need not agree bitwise (another CPU, another accumulation order): stock bf16 with oneDNN on vs
# off differs by up to 1.0e-2 (Llava; <= 4e-3 for the text families), about 1.5 bf16 ulps (8-bit mantissa:
# 2^-7 relative spacing) of the largest logit. The tolerance is 3x that. An RMSNorm 2% off (errors 4e-2 to
# 6e-2) or a LayerNorm with eps 1e-2 (0.13 to 0.18) fails it; both passed the cosine check.
BF16_LOGITS_TOL = 3e-2
# fp16 (the ipex kernels compute it through fp32 on a CPU without AVX512-FP16, stock rounds every op to
# fp16): measured 2.2e-4 (Llama) and 4.3e-4 (GPT-J), ~half an fp16 ulp (2^-10 relative) of the largest logit.
FP16_LOGITS_TOL = 1.5e-3


def assert_logits_close(out, ref, tol):
    """max |out - ref| <= tol * max |ref|, elementwise over the logits (and the same shape)."""
    assert out.shape == ref.shape
    err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    assert err <= tol, f"max logit error {err:.3g} of the largest logit > {tol}"


def _inputs(model_type):
    torch.manual_seed(1)
    return torch.randint(3, 300, (2, 6))


def _generate(model, ids, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              pad_token_id=0, **kw)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_family_fp32_greedy_and_beam_match_stock(model_type):
    model = build(model_type)
    opt = ipex.llm.optimize(model, dtype=torch.float32, deployment_mode=False)
    assert opt is not model
    ids = _inputs(model_type)
    assert torch.equal(_generate(opt, ids), _generate(model, ids))
    assert torch.equal(_generate(opt, ids, num_beams=4), _generate(model, ids, num_beams=4))
    swaps = opt._ipex_optimized["swaps"]
    assert swaps.get("linear", 0) + swaps.get("gated_mlp", 0) > 0, swaps
    with IpexOpCounter() as counter, torch.no_grad():
        opt(ids, decoder_input_ids=ids) if model_type == "t5" else opt(ids)
    assert counter.counts["linear"] + counter.counts["linear_pair_silu_mul"] > 0, counter.counts


@pytest.mark.parametrize("model_type", ["llama", "gptj", "falcon", "t5", "qwen3", "phi3"])
def test_family_bf16_logits_close_to_stock_bf16(model_type):
    model = build(model_type)
    ref = copy.deepcopy(model).to(torch.bfloat16)
    opt = ipex.llm.optimize(model, dtype=torch.bfloat16, deployment_mode=False)
    ids = _inputs(model_type)
    kw = {"decoder_input_ids": ids} if model_type == "t5" else {}
    with torch.no_grad():
        a = ref(ids, **kw).logits.float().flatten()
        b = opt(ids, **kw).logits.float().flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert_logits_close(b, a, BF16_LOGITS_TOL)


@pytest.mark.parametrize("model_type", ["llama", "gptj"])
@pytest.mark.parametrize("deployment_mode", [False, True])
def test_family_fp16_close_to_stock_fp16(model_type, deployment_mode):
    """dtype=torch.float16 (ipex kernels compute fp16 through fp32, see ipex-core): logits close to
    stock fp16, ipex kernels running, greedy and beam-search tokens equal to stock fp16's."""
    model = build(model_type)
    ref = copy.deepcopy(model).to(torch.float16)
    opt = ipex.llm.optimize(model, dtype=torch.float16, deployment_mode=deployment_mode)
    ids = _inputs(model_type)
    with IpexOpCounter() as counter, torch.no_grad():
        b = opt(ids).logits.float().flatten()
    assert counter.counts["linear"] + counter.counts["linear_pair_silu_mul"] > 0, counter.counts
    with torch.no_grad():
        a = ref(ids).logits.float().flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert_logits_close(b, a, FP16_LOGITS_TOL)
    assert torch.equal(_generate(opt, ids), _generate(ref, ids))
    with IpexOpCounter() as counter:
        beams = _generate(opt, ids, num_beams=3)
    assert beams.shape == (2, ids.shape[1] + 8) and torch.equal(beams[:, :ids.shape[1]], ids)
    assert torch.equal(beams, _generate(ref, ids, num_beams=3))  # the stock fp16 model's beams, token for token
    assert counter.counts["iakv_attention"] > 0, counter.counts  # and the decode steps ran ipex's kernel


def test_llama_swaps_and_kernels():
    opt = ipex.llm.optimize(build("llama"), dtype=torch.bfloat16, deployment_mode=False)
    layer = opt.model.layers[0]
    assert type(layer.mlp).__name__ == "IpexGatedMLP"
    assert type(layer.input_layernorm).__name__ == "IpexRMSNorm"
    assert type(layer.self_attn.qkv_proj).__name__ == "IpexLinear"
    # Class-swapped, not replaced: transformers' isinstance-based hooks still find them.
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

    assert isinstance(layer, LlamaDecoderLayer) and type(layer).__name__ == "IpexLlamaDecoderLayer"
    assert isinstance(layer.self_attn, LlamaAttention) and not hasattr(layer.self_attn, "q_proj")
    assert opt._ipex_optimized["swaps"] == {"gated_mlp": 2, "rms_norm": 5, "linear": 5, "fused_qkv": 2,
                                            "fused_decoder_layer": 2}
    with IpexOpCounter() as counter, torch.no_grad():
        opt(torch.randint(0, 300, (1, 5)))
    assert counter.counts["linear_pair_silu_mul"] == 2 and counter.counts["rms_norm"] == 5
    assert counter.counts["linear"] == 2 * 3 + 1  # qkv, o (+residual), down (+residual) per layer + lm_head


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "phi3"])
def test_state_dict_keeps_original_keys_and_loads_other_checkpoints(model_type):
    model = build(model_type)
    opt = ipex.llm.optimize(model, deployment_mode=False)
    saved = opt.state_dict()
    assert sorted(saved) == sorted(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # A checkpoint of another model (different weights) loads into the optimized one.
    other = build(model_type)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    opt.load_state_dict(other.state_dict())
    ids = torch.randint(3, 300, (2, 6))
    assert torch.equal(_generate(opt, ids), _generate(other, ids))
    assert not torch.equal(_generate(opt, ids), _generate(model, ids))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen2_moe", "qwen3_moe"])
def test_llama_pattern_attention_runs_one_qkv_gemm(model_type):
    opt = ipex.llm.optimize(build(model_type), deployment_mode=False)
    swaps = opt._ipex_optimized["swaps"]
    layers = opt.config.num_hidden_layers
    assert swaps["fused_qkv"] == layers
    dense = model_type in ("llama", "qwen2", "qwen3", "mistral")
    assert swaps.get("fused_decoder_layer", 0) == (layers if dense else 0)


def test_padding_sampling_streaming():
    from transformers import TextStreamer

    model = build("llama")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        b = opt.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(a, b)
        outs = []
        for m in (model, opt):
            torch.manual_seed(42)
            outs.append(m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, temperature=0.8,
                                   top_k=20, top_p=0.9, pad_token_id=0))
        assert torch.equal(outs[0], outs[1])

    class Collect(TextStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens.append(value)

        def end(self):
            pass

    streamer = Collect()
    with torch.no_grad():
        out = opt.generate(ids[1:], max_new_tokens=4, do_sample=False, streamer=streamer, pad_token_id=0)
    assert len(streamer.tokens) == 1 + 4 and torch.equal(torch.cat([t.reshape(-1) for t in streamer.tokens[1:]]),
                                                         out[0, 5:])


def test_inplace_shares_and_copy_does_not():
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = ipex.llm.optimize(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    same = ipex.llm.optimize(model, inplace=True)
    assert same is model and type(model.model.layers[0].mlp).__name__ == "IpexGatedMLP"
    assert opt is not model


def test_errors_and_warnings():
    model = build("llama")
    with pytest.raises(NotImplementedError, match="quantization_config"):
        ipex.llm.optimize(model, quantization_config=object())
    with pytest.raises(NotImplementedError, match="low_precision_checkpoint"):
        ipex.llm.optimize(model, low_precision_checkpoint={})
    with pytest.raises(ValueError, match="dtype must be"):
        ipex.llm.optimize(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'xpu'"):
        ipex.llm.optimize(model, device="cuda")
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        assert ipex.llm.optimize(model) is model
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="an optimizer was given"):
        assert ipex.llm.optimize(model, optimizer=opt) == (model, opt)


def test_xpu_device_names_the_backend_package(monkeypatch):
    import importlib.util

    model = build("llama")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipex_xpu" else real_find_spec(name, *a))
    with pytest.raises(RuntimeError, match="pip install ipex-xpu"):
        ipex.llm.optimize(model, device="xpu")
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    if real_find_spec("ipex_xpu") is not None:  # installed: it says what is missing instead
        with pytest.raises(NotImplementedError, match="no LLM path yet"):
            ipex.llm.optimize(model, device="xpu")


def test_unsupported_model_falls_back_with_one_warning():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ipex.llm.optimize(net)
    msgs = [str(w.message) for w in caught if "not one of the supported model families" in str(w.message)]
    assert len(msgs) == 1 and "Sequential" in msgs[0]
    x = torch.randn(2, 8)
    torch.testing.assert_close(out(x), net(x))


def test_model_without_architectures_is_recognised():
    model = build("llama")
    model.config.architectures = None  # as when loaded from GGUF
    assert ipex.llm.optimize(model)._ipex_optimized["model_type"] == "llama"


def test_deployment_mode_compiles_decode_once_and_matches_stock():
    import torch._dynamo

    model = build("llama")
    opt = ipex.llm.optimize(model)  # deployment_mode=True is the default
    assert opt._ipex_optimized["compiled_decode"] is True
    assert opt.generation_config.cache_implementation == "static"
    assert model.generation_config.cache_implementation != "static"  # the caller's model is untouched
    ids = torch.randint(3, 300, (1, 6))
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        first = opt.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with torch.profiler.profile() as prof:
            again = opt.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(first, ref) and torch.equal(again, ref)
    # Every compiled decode step runs ipex's decode attention kernel in every layer (not SDPA).
    events = collections.Counter(e.name for e in prof.events())
    assert events["ipex::iakv_attention"] == model.config.num_hidden_layers * 11, events
    # The sequence grew by 12 tokens on each run with no recompile, and a second run compiles nothing.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    with IpexOpCounter() as counter, torch.no_grad():
        opt(ids)
    assert counter.counts["linear"] > 0


def test_deployment_mode_sees_a_new_checkpoint_after_compiling():
    model = build("llama")
    opt = ipex.llm.optimize(model)
    from ipex_llm.optimize.iakv_cache import compile_kwargs

    assert compile_kwargs(opt.generation_config.compile_config)["options"]["guard_filter_fn"] is not None
    ids = torch.randint(3, 300, (1, 6))
    with torch.no_grad():
        before = opt.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(before, model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
        other = build("llama", seed=1)
        model.load_state_dict(other.state_dict())
        opt.load_state_dict(other.state_dict())
        after = opt.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(after, model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
    assert not torch.equal(after, before)  # the compiled step really runs on the new weights


def test_deployment_mode_false_stays_eager():
    model = build("llama")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    assert opt._ipex_optimized["compiled_decode"] is False
    assert opt.generation_config.cache_implementation != "static"
    ids = torch.randint(3, 300, (2, 6))
    with IpexOpCounter() as counter:
        out = _generate(opt, ids)
    assert torch.equal(out, _generate(model, ids))
    # Decode steps (one query token) on the dynamic cache run ipex's decode attention kernel.
    assert counter.counts["iakv_attention"] == model.config.num_hidden_layers * 7, counter.counts


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "phi3", "gptj", "gpt_neox", "opt", "codegen", "gpt_bigcode",
                                        "phi"])
@pytest.mark.parametrize("deployment_mode", [False, True])
def test_beam_search_runs_on_iakv_without_cache_copies(model_type, deployment_mode):
    from ipex_llm.optimize.iakv_cache import IpexIAKVCache

    model = build(model_type)
    opt = ipex.llm.optimize(model, deployment_mode=deployment_mode)
    assert opt._ipex_optimized["iakv_beam_search"] is True
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    kw = dict(attention_mask=mask, max_new_tokens=10, num_beams=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        with IpexOpCounter() as counter:
            out = opt.generate(ids, return_dict_in_generate=True, **kw)
    assert torch.equal(out.sequences, ref)
    assert counter.counts["iakv_attention"] > 0
    cache = out.past_key_values
    assert isinstance(cache, IpexIAKVCache)
    layer = cache.layers[0]
    # Reordering was recorded in the beam history (not done by copying the buffers).
    identity = torch.arange(layer.beam_idx.shape[1])
    assert any(not torch.equal(layer.beam_idx[t], identity) for t in range(layer.length))
    # The stock model's config still uses its own attention.
    assert model.config._attn_implementation != "ipex"
    # The prompt ran once per batch entry (2 rows), not once per beam (8 rows), and every
    # beam slot of an entry holds that entry's prompt keys.
    torch.testing.assert_close(layer.keys[:6, 0:4], layer.keys[:6, 0:1].expand(-1, 4, -1, -1))
    torch.testing.assert_close(layer.keys[:6, 4:8], layer.keys[:6, 4:5].expand(-1, 4, -1, -1))


def test_deployment_mode_compiles_beam_decode_on_iakv():
    """transformers runs beam-search decode eagerly; deployment_mode compiles it, on the IAKV cache."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = build("llama")
    opt = ipex.llm.optimize(model)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    steps = 10
    kw = dict(attention_mask=mask, max_new_tokens=steps, num_beams=4, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        before = counters["stats"]["unique_graphs"]
        out = opt.generate(ids, return_dict_in_generate=True, **kw)
        after_first = counters["stats"]["unique_graphs"]
        # A profiler (unlike a dispatch mode) leaves the compiled path on.
        with torch.profiler.profile() as prof:
            again = opt.generate(ids, **kw)
    assert torch.equal(out.sequences, ref) and torch.equal(again, ref)
    # One graph for every decode step of the first run, none for the second.
    assert after_first == before + 1 and counters["stats"]["unique_graphs"] == after_first
    events = collections.Counter(e.name for e in prof.events())
    # Each decode step is one compiled call, and in it every layer runs the IAKV kernel.
    assert events["Torch-Compiled Region: 0/0"] == steps - 1, events
    assert events["ipex::iakv_attention"] == model.config.num_hidden_layers * (steps - 1), events
    layer = out.past_key_values.layers[0]
    assert layer.max_cache_len is not None and layer.keys.shape[0] == layer.max_cache_len
    assert layer.length == ids.shape[1] + steps - 1  # the last token is never fed back
    identity = torch.arange(layer.beam_idx.shape[1])
    assert any(not torch.equal(layer.beam_idx[t], identity) for t in range(layer.length))


def test_beam_search_prefill_runs_the_prompt_once_per_batch_entry():
    model = build("llama")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    rows = []
    opt.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        out = opt.generate(ids, **kw)
        assert torch.equal(out, model.generate(ids, **kw))
    assert rows[0] == (2, 6)  # the prompt: one copy per batch entry
    assert all(r == (6, 1) for r in rows[1:])  # decode: every beam


def test_iakv_layer_grows_and_records_beams():
    from ipex_llm.optimize.iakv_cache import IpexIAKVLayer

    layer = IpexIAKVLayer(capacity=4)
    k1, v1 = torch.randn(2, 3, 3, 8), torch.randn(2, 3, 3, 8)  # [beams, kv_heads, seq, dim]
    keys, _ = layer.update(k1, v1)
    assert keys.shape == (2, 3, 3, 8) and layer.keys.shape[0] == 6  # 2 x the first chunk
    layer.reorder_cache(torch.tensor([1, 1]))
    k2, v2 = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keys, values = layer.update(k2, v2)  # 8 > 6: reallocated, not an error
    assert layer.keys.shape[0] >= 8 and layer.get_seq_length() == 8
    torch.testing.assert_close(keys[:, :, :3], k1)
    torch.testing.assert_close(values[:, :, 3:], v2)
    assert layer.beam_idx[2].tolist() == [1, 1] and layer.beam_idx[3].tolist() == [0, 1]
    assert layer.get_mask_sizes(1) == (9, 0)


# -- user-facing cases that once broke (review) -------------------------------------------------------


def test_deployment_mode_many_prompt_lengths():
    # Each total length was one compiled graph and dynamo stops at 8 (an error under fullgraph): the
    # ninth prompt length failed. Cache sizes are now powers of two, so these 11 share one graph.
    model = build("llama")
    opt = ipex.llm.optimize(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning either
        for n in range(3, 14):
            torch.manual_seed(n)
            ids = torch.randint(3, 300, (1, n))
            ref = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert torch.equal(opt.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), ref), n


def test_deployment_mode_decodes_eagerly_past_the_recompile_limit():
    import torch._dynamo

    model = build("llama")
    opt = ipex.llm.optimize(model)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        outs = []
        with pytest.warns(UserWarning, match="recompile limit"):
            for batch in (1, 2, 3):  # each batch size is a new graph
                ids = torch.randint(3, 300, (batch, 5))
                ref = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
                outs.append(torch.equal(opt.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), ref))
    assert all(outs)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # `cache=` is 5.25+ only
def test_deployment_mode_accepts_the_callers_cache():
    from transformers import DynamicCache

    model = build("llama")
    opt = ipex.llm.optimize(model)
    ids, extra = torch.randint(3, 300, (1, 6)), torch.randint(3, 300, (1, 3))
    results = []
    with torch.no_grad():
        for m in (model, opt):
            out = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
            again = m.generate(torch.cat([out.sequences, extra], 1), past_key_values=out.past_key_values,
                               max_new_tokens=4, do_sample=False, pad_token_id=0)
            own = m.generate(ids, past_key_values=DynamicCache(config=m.config), max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
            results.append((again, own))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("model_type, window", [("mistral", dict(sliding_window=4)),
                                                ("phi3", dict(sliding_window=4))])
def test_sliding_window_models_generate_past_the_window(model_type, window):
    # transformers' static sliding-window cache recompiles at every step: such models decode eagerly.
    model = build(model_type, **window)
    opt = ipex.llm.optimize(model)
    assert opt._ipex_optimized["compiled_decode"] is False
    ids = _inputs(model_type)
    assert torch.equal(_generate(opt, ids), _generate(model, ids))  # 8 new tokens after a 6-token prompt


def test_deepcopy_of_an_optimized_model_runs_its_own_weights():
    # The beam-search hooks once called methods bound to the original model: a copy's prompt ran on the
    # original's weights (silently different tokens).
    opt = ipex.llm.optimize(build("gptj"), deployment_mode=False)
    copied = copy.deepcopy(opt)
    other = build("gptj", seed=5)
    copied.load_state_dict(other.state_dict())
    ids = _inputs("gptj")
    assert torch.equal(_generate(copied, ids), _generate(other, ids))
    assert torch.equal(_generate(copied, ids, num_beams=3), _generate(other, ids, num_beams=3))
    assert torch.equal(_generate(ipex.llm.optimize(opt), ids), _generate(opt, ids))  # optimize twice (deepcopy)


def test_beam_search_returns_per_beam_hidden_states():
    model = build("llama")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    ids = _inputs("llama")
    kw = dict(num_beams=2, return_dict_in_generate=True, output_hidden_states=True)
    ref, out = _generate(model, ids, **kw), _generate(opt, ids, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert [h.shape for h in out.hidden_states[0]] == [h.shape for h in ref.hidden_states[0]]


def test_eager_model_keeps_returning_attention_weights():
    model = build("llama", attn_implementation="eager")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    ids = _inputs("llama")
    with torch.no_grad():
        ref, out = model(ids, output_attentions=True).attentions, opt(ids, output_attentions=True).attentions
    assert len(out) == len(ref) == model.config.num_hidden_layers
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    assert torch.equal(_generate(opt, ids, num_beams=2), _generate(model, ids, num_beams=2))  # IAKV still serves beams


def test_tied_embedding_rejects_out_of_range_ids():
    model = build("llama", tie_word_embeddings=True, vocab_size=200)
    opt = ipex.llm.optimize(model, deployment_mode=False)
    for bad in (200, 250, -1):
        ids = torch.tensor([[5, bad, 7]])
        with pytest.raises(IndexError):
            model(ids)
        with pytest.raises(IndexError, match=f"token id {bad} is out of range"):
            opt(ids)


@pytest.mark.parametrize("model_type, overrides", [
    ("falcon_alibi", {}),  # Falcon-RW: ALiBi does not fit transformers' static cache
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}),
])
def test_deployment_mode_models_that_stay_eager(model_type, overrides):
    model = build(model_type, **overrides)
    opt = ipex.llm.optimize(model)
    assert opt._ipex_optimized["compiled_decode"] is False
    ids = _inputs(model_type)
    assert torch.equal(_generate(opt, ids), _generate(model, ids))


def test_deployment_mode_model_saves_and_prints(tmp_path):
    # The compile options (a function among them) used to sit on the generation config: save_pretrained
    # wrote config.json and then failed on generation_config.json, and repr() raised.
    from transformers import AutoModelForCausalLM

    opt = ipex.llm.optimize(build("llama"))
    assert "static" in repr(opt.generation_config)
    opt.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, opt(ids).logits, rtol=1e-4, atol=1e-4)


def test_training_after_optimize_is_refused_not_silent():
    # The ipex kernels have no backward; the remaining parameters used to get None gradients silently.
    opt = ipex.llm.optimize(build("llama"), deployment_mode=False)
    assert not any(p.requires_grad for p in opt.parameters())
    opt.train()
    ids = _inputs("llama")
    loss = opt(ids, labels=ids).loss
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


def test_sample_inputs_warns_and_device_objects_accepted():
    model, ids = build("llama"), _inputs("llama")
    plain = ipex.llm.optimize(model, deployment_mode=False)  # device="cpu"
    with torch.no_grad():
        want = plain(ids).logits
    with pytest.warns(UserWarning, match="sample_inputs is not used"):
        opt = ipex.llm.optimize(model, deployment_mode=False, sample_inputs=(ids,))
    assert opt._ipex_optimized == plain._ipex_optimized  # ignored, not a reason to skip optimizing
    for device in (torch.device("cpu"), torch.device("cpu", 0), "cpu:0"):
        opt = ipex.llm.optimize(model, deployment_mode=False, device=device)
        # Optimized exactly as with device="cpu": same swaps, ipex kernels running, the same logits.
        assert opt is not model and opt._ipex_optimized == plain._ipex_optimized
        with IpexOpCounter() as counter, torch.no_grad():
            assert torch.equal(opt(ids).logits, want)
        assert counter.counts["linear"] > 0, counter.counts
    # A device object is read by its type, so other types are refused as their strings are (not taken for CPU).
    for device in (torch.device("cuda"), torch.device("cuda", 0), "cuda:0", torch.device("meta")):
        with pytest.raises(ValueError, match=r"device must be 'cpu' or 'xpu'; got '(cuda|meta)'"):
            ipex.llm.optimize(model, device=device)
    with pytest.raises((RuntimeError, NotImplementedError), match=r"device='xpu'"):  # as device="xpu" (see above)
        ipex.llm.optimize(model, device=torch.device("xpu", 0))


def test_signature_matches_the_api():
    """The contract's signature and defaults, pinned (as ipex.optimize's are)."""
    import inspect

    params = inspect.signature(ipex.llm.optimize).parameters
    assert list(params)[0] == "model"
    assert {k: p.default for k, p in list(params.items())[1:]} == {
        "optimizer": None, "dtype": torch.float32, "inplace": False, "device": "cpu", "quantization_config": None,
        "qconfig_summary_file": None, "low_precision_checkpoint": None, "sample_inputs": None,
        "deployment_mode": True}
    with pytest.raises(NotImplementedError, match="qconfig_summary_file"):
        ipex.llm.optimize(build("llama"), qconfig_summary_file="summary.json")
