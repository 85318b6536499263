"""Rotary embedding, SiLU-multiply and GELU-multiply: ipex kernels vs the stock PyTorch formulas, interleaved.

Stock RoPE is transformers' `q * cos + rotate_half(q) * sin` on [batch, heads, seq, dim]
(cos/sin gathered per token); ours is ipex::rotary_embedding on [tokens, heads, dim]
with a position-indexed sin/cos table. Bytes: read q, write q (the table is cached).
silu_mul / gelu_mul (the MLP activations of Llama-style and Gemma-style GeGLU models) read
gate and up and write the product: F.silu(gate) * up and F.gelu(gate, approximate="tanh") * up.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness import BandwidthProbes, Row, check_ours, cycler, machine_meta, progress, report, rotating, time_interleaved
from ipex_core.ops import elementwise_ops as E


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 2048])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    probes = BandwidthProbes()
    dtype = torch.bfloat16
    h, d = args.heads, args.head_dim
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    table = torch.outer(torch.arange(4096).float(), inv)
    emb = torch.cat([table, table], -1)
    sin_t, cos_t = emb.sin().to(dtype), emb.cos().to(dtype)
    rows = []
    for i, t in enumerate(args.tokens):
        progress(i, len(args.tokens), f"tokens={t}")
        pos = torch.arange(t).unsqueeze(0)
        cos_hf, sin_hf = cos_t[pos].unsqueeze(1), sin_t[pos].unsqueeze(1)
        # Inputs rotate through harness.COLD_BYTES of copies (more than twice the L3), so every size is read from
        # memory (see bench_norm).
        qs = rotating(lambda: torch.randn(1, t, h, d, dtype=dtype), 2 * t * h * d * 2)
        gus = rotating(lambda: (torch.randn(t, 11008, dtype=dtype), torch.randn(t, 11008, dtype=dtype)),
                       3 * t * 11008 * 2)
        q_stock, q_ours, gu_stock, gu_ours = cycler(qs), cycler(qs), cycler(gus), cycler(gus)

        def stock_rope():
            q_hf = q_stock().transpose(1, 2)  # transformers' layout [b, heads, seq, dim]
            return q_hf * cos_hf + rotate_half(q_hf) * sin_hf

        def stock_silu():
            gate, up = gu_stock()
            return F.silu(gate) * up

        def stock_gelu():
            gate, up = gu_stock()
            return F.gelu(gate, approximate="tanh") * up

        def ours_rope():
            return E.rotary_embedding(q_ours(), sin_t, cos_t, d, True, pos)

        # A fast wrong kernel must not pass for a speedup: ours against stock on the same inputs first.
        for label, ours, stock in (("rotary_embedding", ours_rope, lambda: stock_rope().transpose(1, 2)),
                                   ("silu_mul", lambda: E.silu_mul(*gu_ours()), stock_silu),
                                   ("gelu_mul", lambda: E.gelu_mul(*gu_ours(), "tanh"), stock_gelu)):
            check_ours(f"{label} tokens={t}", ours(), stock())  # the two cyclers are in step: the same inputs

        tm = time_interleaved({
            "stock_rope": stock_rope,
            "ours_rope": ours_rope,
            "stock_silu": stock_silu,
            "ours_silu": lambda: E.silu_mul(*gu_ours()),
            "stock_gelu": stock_gelu,
            "ours_gelu": lambda: E.gelu_mul(*gu_ours(), "tanh"),
            **probes.fns,
        }, rounds=args.rounds)
        q, (gate, _) = qs[0], gus[0]
        bw = probes.gbs(tm)
        rope_bytes = 2 * q.numel() * q.element_size()
        silu_bytes = 3 * gate.numel() * gate.element_size()
        for label, s, o, nbytes in (("rotary_embedding", tm["stock_rope"], tm["ours_rope"], rope_bytes),
                                    ("silu_mul 11008", tm["stock_silu"], tm["ours_silu"], silu_bytes),
                                    ("gelu_mul tanh 11008", tm["stock_gelu"], tm["ours_gelu"], silu_bytes)):
            gbs = nbytes / o / 1e9
            rows.append(Row(f"{label} bf16 tokens={t}", s * 1e3, o * 1e3,
                            {"ipex GB/s": gbs, "% of copy BW": 100 * gbs / bw["copy_gbs"]}))
    meta = machine_meta() | probes.summary() | {"heads": h, "head_dim": d}
    table_md = report("rope", rows, meta, columns=["ipex GB/s", "% of copy BW"])
    print(f"bandwidth probes (interleaved, median over cases): {probes.summary()}")
    print(table_md)
    return table_md


if __name__ == "__main__":
    main()
