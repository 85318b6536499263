"""RMSNorm, LayerNorm and their fused add+norm forms: ipex kernels vs stock PyTorch, interleaved.

Stock baselines: torch.nn.functional.rms_norm / layer_norm, and `x + residual` followed by
the norm (unfused). Bytes moved: a norm reads x and writes y; add+norm
reads x and residual and writes y and the new residual. The fraction of
bandwidth uses the copy bandwidth measured in the same rounds (interleaved probes);
the inputs rotate through harness.COLD_BYTES of copies (more than twice the L3), so every
size is read from memory.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import ipex_core  # noqa: F401
from harness import BandwidthProbes, Row, check_ours, cycler, machine_meta, progress, report, rotating, time_interleaved


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 2048])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: torch's); 1 avoids OpenMP barrier stalls on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    probes = BandwidthProbes()
    rows = []
    cases = [(dt, t) for dt in (torch.float32, torch.bfloat16) for t in args.tokens]
    for i, (dtype, tokens) in enumerate(cases):
        progress(i, len(cases), f"{dtype} tokens={tokens}")
        h = args.hidden
        w = torch.randn(h, dtype=dtype)
        b = torch.randn(h, dtype=dtype)
        esz = w.element_size()
        # Inputs rotated through harness.COLD_BYTES of copies (more than twice the L3): each call reads from
        # memory, as a decoder layer's norm does, not from the cache the previous call left its few KiB in (up to
        # 235% "of copy bandwidth").
        # A mean of 1, not 0: a LayerNorm that skipped the mean subtraction passed the check on zero-mean rows.
        sets = rotating(lambda: tuple(torch.randn(tokens, h, dtype=dtype) + 1 for _ in range(4)),
                        4 * tokens * h * esz)
        stock_sets, ours_sets = cycler(sets), cycler(sets)

        def stock_norm():
            x = stock_sets()[0]
            return F.rms_norm(x, (h,), w, 1e-6)

        def ours_norm():
            return torch.ops.ipex.rms_norm(ours_sets()[0], w, 1e-6)

        def stock_add_norm():
            x, r, _, _ = stock_sets()
            s = x + r
            return F.rms_norm(s, (h,), w, 1e-6), s

        def ours_add_norm():
            x, r, _, _ = ours_sets()
            return torch.ops.ipex.add_rms_norm(x, r, w, 1e-6)

        # In place (what ipex.llm's decoder layers call): the stock equivalent
        # updates the residual in place and normalises into the hidden buffer.
        def stock_add_norm_inplace():
            _, _, xi, ri = stock_sets()
            ri.add_(xi)
            torch.nn.functional.rms_norm(ri, (h,), w, 1e-6)  # stock has no out= form
            return ri

        def ours_add_norm_inplace():
            _, _, xi, ri = ours_sets()
            torch.ops.ipex.add_rms_norm_(xi, ri, w, 1e-6)

        def stock_layer_norm():
            return F.layer_norm(stock_sets()[0], (h,), w, b, 1e-5)

        def ours_layer_norm():
            return torch.ops.ipex.layer_norm(ours_sets()[0], (h,), w, b, 1e-5)

        def stock_add_layer_norm():
            x, r, _, _ = stock_sets()
            s = x + r
            return F.layer_norm(s, (h,), w, b, 1e-5), s

        def ours_add_layer_norm():
            x, r, _, _ = ours_sets()
            return torch.ops.ipex.add_layer_norm(x, r, (h,), w, b, 1e-5)

        # A fast wrong kernel must not pass for a speedup: each of ours against stock on the same inputs
        # first (the cyclers advance in step). The in-place pair is checked on copies.
        def inplace_pair():
            _, _, xi, ri = stock_sets()
            ours_sets()
            xo, ro = xi.clone(), ri.clone()
            torch.ops.ipex.add_rms_norm_(xo, ro, w, 1e-6)
            ref_r = ri + xi
            return (xo, ro), (F.rms_norm(ref_r, (h,), w, 1e-6), ref_r)

        checks = [(label, ours(), stock()) for label, ours, stock in (
            ("rms_norm", ours_norm, stock_norm), ("add_rms_norm", ours_add_norm, stock_add_norm),
            ("layer_norm", ours_layer_norm, stock_layer_norm),
            ("add_layer_norm", ours_add_layer_norm, stock_add_layer_norm))]
        checks.append(("add_rms_norm_", *inplace_pair()))
        for label, ours, stock in checks:
            check_ours(f"{label} {dtype} tokens={tokens}", ours, stock)

        t = time_interleaved({"sn": stock_norm, "on": ours_norm, "sa": stock_add_norm, "oa": ours_add_norm,
                              "si": stock_add_norm_inplace, "oi": ours_add_norm_inplace,
                              "sl": stock_layer_norm, "ol": ours_layer_norm,
                              "sal": stock_add_layer_norm, "oal": ours_add_layer_norm, **probes.fns},
                             rounds=args.rounds)
        bw = probes.gbs(t)
        name = str(dtype).replace("torch.", "")
        for label, base, ours, nbytes in (
            ("rms_norm", t["sn"], t["on"], 2 * tokens * h * esz),
            ("add_rms_norm", t["sa"], t["oa"], 4 * tokens * h * esz),
            ("add_rms_norm_ (in place)", t["si"], t["oi"], 4 * tokens * h * esz),
            ("layer_norm", t["sl"], t["ol"], 2 * tokens * h * esz),
            ("add_layer_norm", t["sal"], t["oal"], 4 * tokens * h * esz),
        ):
            gbs = nbytes / ours / 1e9
            rows.append(Row(f"{label} {name} tokens={tokens}", base * 1e3, ours * 1e3,
                            {"ipex GB/s": gbs, "% of copy BW": 100 * gbs / bw["copy_gbs"]}))
    meta = machine_meta() | probes.summary() | {"hidden": args.hidden}
    table = report("norm", rows, meta, columns=["ipex GB/s", "% of copy BW"])
    print(f"bandwidth probes (interleaved, median over cases): {probes.summary()}")
    print(table)
    return table


if __name__ == "__main__":
    main()
