"""Memory-format copies: ipex::to_memory_format vs stock Tensor.contiguous(memory_format=...), interleaved.

What ipex.optimize's convolutions pay per call in a model fed channels-first tensors: oneDNN (and
ipex's Winograd / 1x1 kernels) write channels-last, and the output goes back to the caller contiguous,
as nn.Conv returns it. Shapes: convolution outputs of ResNet-50 (4-D) and of a Conv3d net (5-D), fp32
and bf16, channels-last -> contiguous ("to NCHW") and contiguous -> channels-last ("to NHWC"). Memory
bound: the figure of merit is the bytes read and written per second as a fraction of the copy
bandwidth probed in the same rounds. Inputs rotate through harness.COLD_BYTES of copies, so every call
reads from memory.

    python benchmarks/bench_layout.py
    python benchmarks/bench_layout.py --rounds 30
"""

from __future__ import annotations

import argparse

import torch

from harness import BandwidthProbes, Row, check_ours, cycler, machine_meta, progress, report, rotating, time_interleaved
from ipex_core.ops.layout import to_memory_format

SHAPES = [(1, 64, 112, 112), (1, 256, 56, 56), (1, 1024, 14, 14), (32, 256, 56, 56), (1, 64, 16, 48, 48)]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    probes = BandwidthProbes()
    rows = []
    cases = [(dt, shape) for dt in (torch.float32, torch.bfloat16) for shape in SHAPES]
    for i, (dtype, shape) in enumerate(cases):
        progress(i, len(cases), f"{dtype} {shape}")
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        nbytes = torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
        sets = rotating(lambda: torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt), nbytes)
        for direction, channels_last in (("to NCHW", False), ("to NHWC", True)):
            src = [s.contiguous() for s in sets] if channels_last else sets  # the other format as input
            stock_next, ours_next = cycler(src), cycler(src)
            target = fmt if channels_last else torch.contiguous_format

            def stock(nxt=stock_next, target=target):
                return nxt().contiguous(memory_format=target)

            def ours(nxt=ours_next, channels_last=channels_last):
                return to_memory_format(nxt(), channels_last)

            o, ref = ours(), stock()  # the cyclers are in step: the same input
            check_ours(f"{direction} {shape}", o, ref, tolerance=0.0)
            if o.stride() != ref.stride():
                raise AssertionError(f"{direction} {shape}: strides {o.stride()}, stock {ref.stride()}")
            t = time_interleaved({"stock": stock, "ours": ours, **probes.fns}, rounds=args.rounds)
            bw = probes.gbs(t)
            gbs = 2 * nbytes / t["ours"] / 1e9
            rows.append(Row(f"{direction} {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}",
                            t["stock"] * 1e3, t["ours"] * 1e3,
                            {"ipex GB/s": gbs, "% of copy BW": 100 * gbs / bw["copy_gbs"],
                             "stock % of copy BW": 100 * 2 * nbytes / t["stock"] / 1e9 / bw["copy_gbs"]}))
    meta = machine_meta() | probes.summary()
    table_md = report("layout", rows, meta, columns=["ipex GB/s", "% of copy BW", "stock % of copy BW"])
    print(f"bandwidth probes (interleaved, median over cases): {probes.summary()}")
    print(table_md)
    return table_md


if __name__ == "__main__":
    main()
