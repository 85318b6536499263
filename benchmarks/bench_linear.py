"""Linear fusions at decode and prefill shapes: ipex packed kernels vs stock F.linear.

Decode (small M) is memory bound: the figure of merit is the weight bytes read
per second as a fraction of the read bandwidth measured in the same rounds (interleaved probes).
Cases: plain linear, LinearSiluMul-style (silu(xW^T) * other) and
Linear2SiluMul (silu(x Wg^T) * x Wu^T, both weights read in one pass).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness import BandwidthProbes, Row, machine_meta, progress, report, time_interleaved
from ipex_core.ops import linear_ops as L


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 4, 8, 128])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    probes = BandwidthProbes()
    shapes = [(4096, 11008), (11008, 4096)]
    cases = [(m, k, n) for (k, n) in shapes for m in args.m]
    rows = []
    for i, (m, k, n) in enumerate(cases):
        progress(i, len(cases), f"M={m} {k}->{n}")
        w = torch.randn(n, k, dtype=dtype) / k**0.5
        wu = torch.randn(n, k, dtype=dtype) / k**0.5
        x = torch.randn(m, k, dtype=dtype)
        other = torch.randn(m, n, dtype=dtype)
        p = L.pack_linear_weight(w)
        pp = L.pack_linear_weight_pair(w, wu)
        # A fast wrong kernel must not pass for a speedup: each of ours against stock first (bf16 sums).
        for ours, stock in ((L.linear(x, p, None, n), F.linear(x, w)),
                            (L.linear_pair_silu_mul(x, pp, None, n), F.silu(F.linear(x, w)) * F.linear(x, wu))):
            err = ((ours.float() - stock.float()).abs().max() / stock.float().abs().max()).item()
            if not err < 3e-2:
                raise AssertionError(f"linear M={m} {k}->{n}: ipex differs from stock by {err:.3g} (relative)")
        t = time_interleaved(
            {
                "stock": lambda: F.linear(x, w),
                "ours": lambda: L.linear(x, p, None, n),
                "stock_sm": lambda: F.silu(F.linear(x, w)) * other,
                "ours_sm": lambda: L.linear(x, p, None, n, "silu_mul", other),
                "stock_2sm": lambda: F.silu(F.linear(x, w)) * F.linear(x, wu),
                "ours_2sm": lambda: L.linear_pair_silu_mul(x, pp, None, n),
                **probes.fns,
            },
            rounds=args.rounds,
        )
        bw = probes.gbs(t)
        wbytes = w.numel() * w.element_size()
        for label, s, o, nbytes in (
            ("linear", t["stock"], t["ours"], wbytes),
            ("LinearSiluMul", t["stock_sm"], t["ours_sm"], wbytes),
            ("Linear2SiluMul", t["stock_2sm"], t["ours_2sm"], 2 * wbytes),
        ):
            # The weights are read, nothing of their size is written: the ceiling is the read bandwidth
            # (against the copy probe, which is lower, M=1 showed 108-113%).
            rows.append(Row(f"{label} M={m} {k}->{n}", s * 1e3, o * 1e3, {
                "ipex weight GB/s": nbytes / o / 1e9, "% of read BW": 100 * nbytes / o / 1e9 / bw["read_gbs"],
                "stock % BW": 100 * nbytes / s / 1e9 / bw["read_gbs"],
            }))
    meta = machine_meta() | probes.summary() | {"dtype": args.dtype}
    table = report(f"linear_{args.dtype}", rows, meta, columns=["ipex weight GB/s", "% of read BW", "stock % BW"])
    print(f"bandwidth probes (interleaved, median over cases): {probes.summary()}")
    print(table)
    return table


if __name__ == "__main__":
    main()
