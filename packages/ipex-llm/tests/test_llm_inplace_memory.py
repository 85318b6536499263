"""ipex.llm.optimize(inplace=...): memory stays near one copy of the weights; the caller's model is left alone.

Peak memory is measured in a child process (a fresh heap, nothing else allocated), on a
Llama of a few hundred MB: hidden 2048 and a 32000-token vocabulary, one layer.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import ipex
from llm_families import build

_MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    import torch
    import ipex
    from transformers import LlamaConfig, LlamaForCausalLM

    def rss(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

    def measure(dtype, tie):
        config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=1,
                             num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=256,
                             tie_word_embeddings=tie)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        # Real, touched pages (every byte written), without the cost of random initialisation.
        model = model.to_empty(device="cpu").eval()
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(0.01)
            del param  # the loop variable would keep the last weight alive through the swaps
        if tie:
            model.tie_weights()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        final_weights = weights * dtype.itemsize // 4
        gc.collect()
        before = rss("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # restart the VmHWM peak from the current RSS
        optimized = ipex.llm.optimize(model, dtype=dtype, inplace=True, deployment_mode=False)
        peak = rss("VmHWM")
        assert optimized is model
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # free heap pages back to the system: count live data only
        # What the process holds beyond the weights in their new dtype.
        kept = rss("VmRSS") - (before - weights + final_weights)
        return {"weights": weights, "final_weights": final_weights, "peak_growth": peak - before, "kept": kept}

    # Load ipex.llm, its kernels and transformers' modules first, so code and caches are not counted.
    tiny = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    ipex.llm.optimize(LlamaForCausalLM(tiny).eval(), dtype=torch.bfloat16, inplace=True, deployment_mode=False)
    print(json.dumps({case: measure(getattr(torch, case.split("-")[0]), case.endswith("-tied"))
                      for case in sys.argv[1:]}))
""")
_CASES = ("bfloat16", "float32", "bfloat16-tied")


@pytest.fixture(scope="module")
def inplace_memory() -> dict:
    """Memory figures of ipex.llm.optimize(inplace=True) for each of _CASES, from one child process."""
    child = subprocess.run([sys.executable, "-c", _MEASURE, *_CASES], capture_output=True, text=True, timeout=300)
    if child.returncode and "clear_refs" in child.stderr:
        pytest.skip(f"this kernel cannot reset the peak RSS (/proc/self/clear_refs): {child.stderr[-300:]}")
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def _in_mb(measured: dict) -> dict:
    return {k: round(v / 2**20) for k, v in measured.items()}


def _assert_nothing_kept_twice(measured: dict) -> None:
    assert measured["kept"] < 0.1 * measured["final_weights"], _in_mb(measured)


def _assert_peak_near_one_copy(measured: dict) -> None:
    # While optimizing, about one tensor at a time is duplicated (cast, packed), never the model.
    assert measured["peak_growth"] < 0.5 * measured["weights"], _in_mb(measured)


def test_inplace_fp32_to_bf16_memory_near_one_copy(inplace_memory):
    _assert_nothing_kept_twice(inplace_memory["bfloat16"])
    _assert_peak_near_one_copy(inplace_memory["bfloat16"])


def test_inplace_fp32_memory_near_one_copy(inplace_memory):
    _assert_nothing_kept_twice(inplace_memory["float32"])
    _assert_peak_near_one_copy(inplace_memory["float32"])


def test_inplace_tied_embeddings_kept_once(inplace_memory):
    _assert_nothing_kept_twice(inplace_memory["bfloat16-tied"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_leaves_the_callers_model_bit_for_bit(dtype):
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attn, cache = model.config._attn_implementation, model.generation_config.cache_implementation
    opt = ipex.llm.optimize(model, dtype=dtype)  # deployment_mode=True: the most it changes
    assert opt is not model
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(type(m).__module__.startswith("transformers.") or type(m).__module__.startswith("torch.")
               for m in model.modules())
    assert (model.config._attn_implementation, model.generation_config.cache_implementation) == (attn, cache)
    assert not hasattr(model, "_ipex_optimized")


def test_inplace_returns_the_same_object_optimized():
    model = build("llama")
    same = ipex.llm.optimize(model, dtype=torch.bfloat16, inplace=True, deployment_mode=False)
    assert same is model and model._ipex_optimized["dtype"] == torch.bfloat16
    assert type(model.model.layers[0].mlp).__name__ == "IpexGatedMLP"
    assert next(model.parameters()).dtype == torch.bfloat16
