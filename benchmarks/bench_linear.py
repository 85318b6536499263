"""Linear fusions at decode and prefill shapes: ipex packed kernels vs stock F.linear.

Decode (small M) is memory bound: the figure of merit is the weight bytes read
per second as a fraction of the read bandwidth measured in the same rounds (interleaved probes).
Cases: every epilogue of ``torch.ops.ipex.linear`` (the kernels behind LinearRelu, LinearSilu,
LinearGelu, LinearNewGelu, LinearMul, LinearAdd, LinearAddAdd, LinearSiluMul), each against the
unfused stock expression, and Linear2SiluMul (silu(x Wg^T) * x Wu^T, both weights read in one pass).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness import BandwidthProbes, Row, check_ours, cycler, machine_meta, progress, report, rotating, time_interleaved
from ipex_core.ops import linear_ops as L

# The stock expression each epilogue fuses (y = F.linear(x, w); o1, o2 the extra operands), and the
# module of ipex.llm.modules that runs it.
STOCK_EPILOGUES = {
    "none": ("linear", lambda y, o1, o2: y),
    "relu": ("LinearRelu", lambda y, o1, o2: F.relu(y)),
    "silu": ("LinearSilu", lambda y, o1, o2: F.silu(y)),
    "gelu": ("LinearGelu", lambda y, o1, o2: F.gelu(y)),
    "gelu_tanh": ("LinearNewGelu", lambda y, o1, o2: F.gelu(y, approximate="tanh")),
    "mul": ("LinearMul", lambda y, o1, o2: y * o1),
    "add": ("LinearAdd", lambda y, o1, o2: y + o1),
    "add_add": ("LinearAddAdd", lambda y, o1, o2: y + o1 + o2),
    "silu_mul": ("LinearSiluMul", lambda y, o1, o2: F.silu(y) * o1),
}
assert set(STOCK_EPILOGUES) == set(L.EPILOGUES), "a new epilogue needs its stock expression here"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 4, 8, 128])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--epilogues", nargs="+", default=list(STOCK_EPILOGUES), choices=list(STOCK_EPILOGUES),
                        help="epilogues to time (default: all)")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    probes = BandwidthProbes()
    shapes = [(4096, 11008), (11008, 4096)]
    cases = [(m, k, n) for (k, n) in shapes for m in args.m]
    rows = []
    for i, (m, k, n) in enumerate(cases):
        progress(i, len(cases), f"M={m} {k}->{n}")
        x = torch.randn(m, k, dtype=dtype)
        o1, o2 = torch.randn(m, n, dtype=dtype), torch.randn(m, n, dtype=dtype)

        # Weights rotated through COLD_BYTES of copies, counted by the bytes one timed call reads: a decoder
        # reads each layer's weights from memory, and one 90 MB weight stayed in a 480 MiB L3 (read "at 158% of
        # the read bandwidth"). Linear2SiluMul reads a gate and an up weight a call: half as many pairs.
        wbytes = n * k * torch.finfo(dtype).bits // 8
        ws = rotating(lambda: torch.randn(n, k, dtype=dtype) / k**0.5, wbytes)
        ups = rotating(lambda: torch.randn(n, k, dtype=dtype) / k**0.5, 2 * wbytes)
        packed = [L.pack_linear_weight(w) for w in ws]
        pairs = [(w, up, L.pack_linear_weight_pair(w, up)) for w, up in zip(ws, ups, strict=False)]
        fns = {}
        for ep in args.epilogues:
            expr = STOCK_EPILOGUES[ep][1]
            stock_w, ours_w = cycler(ws), cycler(packed)
            fns[f"stock_{ep}"] = lambda expr=expr, nxt=stock_w: expr(F.linear(x, nxt()), o1, o2)
            fns[f"ours_{ep}"] = lambda ep=ep, nxt=ours_w: L.linear(x, nxt(), None, n, ep, o1, o2)
        stock_pair, ours_pair = cycler(pairs), cycler(pairs)

        def stock_2sm():
            w, up, _ = stock_pair()
            return F.silu(F.linear(x, w)) * F.linear(x, up)

        fns["stock_2sm"] = stock_2sm
        fns["ours_2sm"] = lambda: L.linear_pair_silu_mul(x, ours_pair()[2], None, n)
        # A fast wrong kernel must not pass for a speedup: each of ours against stock first (bf16 sums), on the
        # same weights (the two cyclers of a pair advance in step).
        for label in [*args.epilogues, "2sm"]:
            check_ours(f"{label} M={m} {k}->{n}", fns[f"ours_{label}"](), fns[f"stock_{label}"]())
        t = time_interleaved(fns | probes.fns, rounds=args.rounds)
        bw = probes.gbs(t)
        timed = [(STOCK_EPILOGUES[ep][0], t[f"stock_{ep}"], t[f"ours_{ep}"], wbytes) for ep in args.epilogues]
        timed.append(("Linear2SiluMul", t["stock_2sm"], t["ours_2sm"], 2 * wbytes))
        for label, s, o, nbytes in timed:
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
