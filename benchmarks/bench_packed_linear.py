"""ipex.optimize's Linear layers, one at a time: the kernel its rules pick vs stock nn.Linear, interleaved.

Each case is one ``nn.Linear`` at BERT-base's shapes (768 -> 768 / 2304 / 3072, 3072 -> 768) and a number
of input rows, optimized as ``ipex.optimize(nn.Sequential(linear), dtype=..., sample_input=x)`` does it: the
kernel column says which PackedLinear kernel the rules chose (``brgemm``: ipex::linear's AMX tiles for bf16,
ipex::conv1x1's bf16x3 GEMM for float32 on AMX; ``onednn``: oneDNN's prepacked GEMM; ``mkl``: MKL's packed
sgemm; ``dense``: stock's kernel on the dense weight). "alt ms" is the other candidate the rules weighed
(``onednn`` where another kernel was chosen, ``brgemm`` where ``onednn`` was), so a rule that picks the slower kernel shows.
Stock: the same ``nn.Linear`` in the same dtype (float32: MKL's sgemm inside ATen; bf16: oneDNN's matmul).
Compute-bound at these row counts: the figures are GFLOP/s (2 * rows * K * N). Weights and inputs stay in
cache (one layer reused), as a per-layer benchmark measures.

    python benchmarks/bench_packed_linear.py
    python benchmarks/bench_packed_linear.py --dtypes bfloat16 --rows 128 1024
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ipex
from harness import Row, check_ours, machine_meta, progress, report, time_interleaved
from ipex_core.optimize import PackedLinear

SHAPES = [(768, 768), (768, 2304), (768, 3072), (3072, 768)]  # (in, out): BERT-base's Linears
# float32 through bf16x3 is a few 1e-6 of the output's scale off (documented): the harness's fp32 check is tighter.
BF16X3_TOLERANCE = 2e-5


def run_case(dtype: torch.dtype, rows: int, k: int, n: int, rounds: int) -> Row:
    torch.manual_seed(0)
    linear = nn.Linear(k, n).eval().to(dtype)
    x = torch.randn(rows, k, dtype=dtype)
    opt = ipex.optimize(nn.Sequential(linear).eval(), dtype=None, sample_input=x)[0]
    alt_kernel = "onednn" if opt.kernel in ("brgemm", "dense", "mkl") else "brgemm"
    alt = PackedLinear(linear, kernel=alt_kernel, batch_size=rows).eval()
    with torch.no_grad():
        want = linear(x)
        tolerance = BF16X3_TOLERANCE if dtype == torch.float32 else None
        err = check_ours(f"{rows} x {k} -> {n} {opt.kernel}", opt(x), want, tolerance)
        check_ours(f"{rows} x {k} -> {n} {alt_kernel}", alt(x), want, tolerance)
        t = time_interleaved({"stock": lambda: linear(x), "ours": lambda: opt(x), "alt": lambda: alt(x)},
                             rounds=rounds)
    gflop = 2 * rows * k * n / 1e9
    name = str(dtype).replace("torch.", "")
    return Row(f"{name} {rows} x {k} -> {n}", t["stock"] * 1e3, t["ours"] * 1e3, {
        "kernel": opt.kernel,
        "alt": alt_kernel,
        "alt ms": t["alt"] * 1e3,
        "ipex GFLOP/s": gflop / t["ours"],
        "stock GFLOP/s": gflop / t["stock"],
        "rel err": f"{err:.1e}",
    })


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 128, 1024])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    cases = [(getattr(torch, d), r, k, n) for d in args.dtypes for r in args.rows for k, n in SHAPES]
    rows = []
    for i, (dtype, r, k, n) in enumerate(cases):
        progress(i, len(cases), f"{dtype} {r} x {k} -> {n}")
        rows.append(run_case(dtype, r, k, n, args.rounds))
    columns = ["kernel", "alt", "alt ms", "ipex GFLOP/s", "stock GFLOP/s", "rel err"]
    table = report("packed_linear", rows, machine_meta(), columns=columns)
    print(table)
    return table


if __name__ == "__main__":
    main()
