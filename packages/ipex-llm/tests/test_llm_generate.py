"""model.generate() on an optimized model, beyond plain greedy: streamers, stopping, and the compiled decode.

Left padding with sampling under eager decode is in test_llm_optimize.py; here the same
inputs go through the default deployment_mode=True (static cache, compiled decode step).
"""

import torch

import ipex
from llm_families import build

# Two prompts, the first left-padded with the pad token 0.
PROMPTS = torch.tensor([[0, 0, 5, 6, 7, 8], [4, 5, 6, 7, 8, 9]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def _word_tokenizer(vocab_size: int):
    """A tokenizer without downloads: token i is the word ``w{i}`` (words are joined by spaces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="w0", unk_token="w1", eos_token="w2")


def _generate(model, **kw):
    with torch.no_grad():
        return model.generate(PROMPTS, attention_mask=MASK, pad_token_id=0, **kw)


def test_text_streamer_prints_the_generated_text():
    from transformers import TextStreamer

    class Collect(TextStreamer):
        """TextStreamer's own put/end logic; the finished pieces are kept instead of printed."""

        def __init__(self, tokenizer):
            super().__init__(tokenizer, skip_prompt=True)
            self.pieces = []

        def on_finalized_text(self, text, stream_end=False):
            self.pieces.append(text)

    model = build("llama")
    tokenizer = _word_tokenizer(model.config.vocab_size)
    opt = ipex.llm.optimize(model, deployment_mode=False)
    prompt = tokenizer("w4 w5 w6 w7 w8 w9", return_tensors="pt").input_ids
    streamer = Collect(tokenizer)
    with torch.no_grad():
        out = opt.generate(prompt, max_new_tokens=10, do_sample=False, streamer=streamer, pad_token_id=0)
        ref = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref)
    text = tokenizer.decode(out[0, prompt.shape[1]:])
    assert len(text.split()) == 10 and "".join(streamer.pieces) == text
    assert len(streamer.pieces) > 1  # streamed piece by piece, not once at the end


def test_stopping_criteria_eos_and_lengths_match_stock():
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAfterToken(StoppingCriteria):
        """Stops a row once it has produced ``token`` (a user-written criterion)."""

        def __init__(self, token, prompt_length):
            self.token, self.prompt_length = token, prompt_length

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, self.prompt_length:] == self.token).any(dim=1)

    model = build("llama")
    opt = ipex.llm.optimize(model, deployment_mode=False)
    free = _generate(opt, max_new_tokens=10, do_sample=False)
    assert free.shape == (2, 6 + 10) and torch.equal(free, _generate(model, max_new_tokens=10, do_sample=False))
    assert torch.equal(_generate(opt, max_length=9, do_sample=False), free[:, :9])
    # Stop the first row at its 3rd new token: it is padded from there while the second row goes on.
    stop = int(free[0, 6 + 2])
    assert stop not in free[0, 6:8].tolist() + free[1, 6:].tolist()
    for kw in ({"eos_token_id": stop},
               {"stopping_criteria": StoppingCriteriaList([StopAfterToken(stop, PROMPTS.shape[1])])}):
        out = _generate(opt, max_new_tokens=10, do_sample=False, **kw)
        assert torch.equal(out, _generate(model, max_new_tokens=10, do_sample=False, **kw)), kw
    assert torch.equal(out[:, :9], free[:, :9]) and out.shape == (2, 16)
    assert out[0, 9:].eq(0).all() and torch.equal(out[1], free[1])


def test_compiled_decode_left_padding_sampling_and_eos_match_stock():
    model = build("llama")
    opt = ipex.llm.optimize(model)  # deployment_mode=True: static cache, compiled decode step
    assert opt._ipex_optimized["compiled_decode"] is True
    greedy = _generate(opt, max_new_tokens=8, do_sample=False)
    assert torch.equal(greedy, _generate(model, max_new_tokens=8, do_sample=False))
    sampled = []
    for m in (model, opt):
        torch.manual_seed(42)
        sampled.append(_generate(m, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20, top_p=0.9))
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], greedy)
    stop = int(greedy[0, 6 + 2])
    stopped = _generate(opt, max_new_tokens=8, do_sample=False, eos_token_id=stop)
    assert torch.equal(stopped, _generate(model, max_new_tokens=8, do_sample=False, eos_token_id=stop))


def test_two_models_of_one_class_keep_their_own_compiled_decode():
    """The decode step's graphs were cached per code object (the class's forward), and its guards on module
    attributes are dropped for speed: a second model of the same class ran the first one's graph, with the
    first one's Python constants baked in (RMSNorm eps 1e-6 against 0.5: logits 0.5 off), greedy and beams."""
    import copy

    first, second = build("llama", seed=0), build("llama", seed=1, rms_norm_eps=0.5)
    reference = copy.deepcopy(second)
    opt_first, opt_second = ipex.llm.optimize(first), ipex.llm.optimize(second)
    for kw in ({}, {"num_beams": 2}):
        _generate(opt_first, max_new_tokens=4, **kw)
        want = _generate(reference, max_new_tokens=4, return_dict_in_generate=True, output_scores=True, **kw)
        got = _generate(opt_second, max_new_tokens=4, return_dict_in_generate=True, output_scores=True, **kw)
        assert torch.equal(got.sequences, want.sequences), kw
        for a, b in zip(got.scores, want.scores):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_decode_follows_casts_and_loaded_weights():
    """The compiled step does not guard the model's own weights (deployment_guard_filter: 4% of a SmolLM2
    decode step); a cast or a state_dict load of the model drops it and the next generate() compiles anew."""
    import copy

    model = build("llama", seed=0)
    opt = ipex.llm.optimize(copy.deepcopy(model))
    kw = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)

    def same(got, want, tol):  # tol: of the logits' scale
        assert torch.equal(got.sequences, want.sequences)
        for a, b in zip(got.scores, want.scores, strict=True):
            assert (a.float() - b.float()).abs().max() <= tol * b.float().abs().max()

    same(_generate(opt, **kw), _generate(model, **kw), 1e-4)
    compiled = opt.__dict__["_ipex_compiled_calls"].calls
    assert compiled
    other = build("llama", seed=1)
    opt.load_state_dict(other.state_dict())  # new weights, same shapes
    assert not compiled  # dropped: the next step compiles for the new weights
    same(_generate(opt, **kw), _generate(other, **kw), 1e-4)
    assert compiled
    opt.to(torch.bfloat16)  # another dtype
    assert not compiled
    same(_generate(opt, **kw), _generate(copy.deepcopy(other).to(torch.bfloat16), **kw), 3e-2)  # bf16 rounding
