"""fp32 convolutions: ipex's Winograd F(4x4, 3x3) kernel and its 1x1 GEMM kernel vs stock PyTorch, interleaved.

3x3: ResNet-50's stride-1 3x3 layers (channels-last, ReLU after), at batch 1 and 32.
1x1: ResNet-50's stride-1 1x1 layers at batch 1 (where ipex.optimize runs ``ipex::conv1x1``: at most
4096 rows), with ReLU, or with the residual added in place and ReLU (``ipex::conv1x1_add_``; stock:
``F.relu(F.conv2d(x, w, b) + r)``). Its weight in the form ``ipex.optimize`` packs by default (on a CPU with
AMX, the bf16x3 form for 128 output channels or more: three bf16 GEMMs on AMX tiles), and, as "fp32 GEMM
ms", in the float32 form (fp32 FMAs).
Stock: ``F.relu(F.conv2d(x, w, b, padding=1))`` on a channels-last model (oneDNN's direct
convolution inside ATen). Also timed: the oneDNN prepacked kernel with the ReLU fused
(``mkldnn::_convolution_pointwise``, what ``ipex.optimize`` ran before, and still runs where the
Winograd rule does not apply). Compute-bound work: the figures are GFLOP/s of the direct
convolution's arithmetic (2*N*H*W*C*K*9), against a torch.mm probe of the same rounds (the
CPU's attainable fp32 FMA rate); Winograd does 4x fewer multiplications, so its effective rate
may exceed the probe.

    python benchmarks/bench_conv.py
    python benchmarks/bench_conv.py --batches 1 --rounds 30
    python benchmarks/bench_conv.py --kinds 1x1
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness import Row, check_ours, machine_meta, progress, report, time_interleaved
from ipex_core.ops.conv import conv1x1, conv1x1_add_, conv1x1_weight, conv3x3_winograd, winograd_weight

# (height = width, channels): ResNet-50's stride-1 3x3 layers (layer1..layer4).
# Winograd F(4x4, 3x3) in fp32 is off by up to about 3e-5 of the output's scale at 512 input channels
# (the direct convolution: about 1e-6), the documented accuracy of ipex::conv3x3_winograd.
WINOGRAD_TOLERANCE = 5e-5
SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]
# (height = width, in, out, residual): ResNet-50's stride-1 1x1 layers at batch 1; "residual": the block's
# last 1x1 layer, whose output takes the residual add and ReLU.
SHAPES_1X1 = [(56, 64, 64, False), (56, 64, 256, True), (56, 256, 64, False), (28, 128, 512, True),
              (28, 512, 128, False), (14, 256, 1024, True), (14, 1024, 256, False), (7, 512, 2048, True),
              (7, 2048, 512, False)]
CONV1X1_TOLERANCE = 1e-5  # fp32 sums in another order: measured up to 1e-6 of the output's scale
BF16X3_TOLERANCE = 2e-5  # the bf16x3 form: 3e-6 to 6e-6 of the output's scale


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batches of the 3x3 cases")
    parser.add_argument("--kinds", nargs="+", default=["3x3", "1x1"], choices=["3x3", "1x1"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cases = [(n, hw, c) for n in args.batches for hw, c in SHAPES] if "3x3" in args.kinds else []
    rows = []
    with torch.no_grad():
        for i, (n, hw, c) in enumerate(cases):
            progress(i, len(cases), f"batch {n} {hw}x{hw}x{c}")
            x = torch.randn(n, c, hw, hw).to(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
            w, bias = conv.weight.detach(), conv.bias.detach()
            packed = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(), [1, 1], [1, 1], [1, 1], 1,
                                                                  list(x.shape))
            u = winograd_weight(w)

            def stock():
                return F.relu(F.conv2d(x, w, bias, padding=1))

            def ours():
                return conv3x3_winograd(x, u, bias, (1, 1), "relu")

            def prepacked():
                return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [1, 1], [1, 1], [1, 1], 1, "relu",
                                                               [], "")

            err = check_ours(f"conv3x3_winograd batch {n} {hw}x{hw}x{c}", ours(), stock(), WINOGRAD_TOLERANCE)
            heavy = n * hw * hw * c * c >= 32 * 56 * 56 * 64 * 64 // 2
            t = time_interleaved({"stock": stock, "ours": ours, "prepacked": prepacked, "mm": lambda: a @ b},
                                 rounds=max(3, args.rounds // 3) if heavy else args.rounds)
            rows.append(_row(f"3x3 conv batch {n} {hw}x{hw} {c}->{c} fp32", t, 2 * n * hw * hw * c * c * 9, err))
    if "1x1" in args.kinds:
        rows += _conv1x1_rows(args.rounds, a, b)
    table = report("conv", rows, machine_meta(), columns=["prepacked ms", "vs prepacked", "fp32 GEMM ms",
                                                          "ipex GFLOP/s", "stock GFLOP/s", "mm GFLOP/s", "rel err"])
    print(table)
    return table


def _row(label: str, t: dict, flops: int, err: float) -> Row:
    """A table row from the interleaved medians ``t`` (stock, ours, prepacked, the 1024^3 mm probe, and for
    1x1 layers "fp32": ours on the float32 weight form)."""
    return Row(label, t["stock"] * 1e3, t["ours"] * 1e3, {
        "prepacked ms": t["prepacked"] * 1e3,
        "vs prepacked": t["prepacked"] / t["ours"],
        "fp32 GEMM ms": f"{t['fp32'] * 1e3:.3f}" if "fp32" in t else "",
        "ipex GFLOP/s": flops / t["ours"] / 1e9,
        "stock GFLOP/s": flops / t["stock"] / 1e9,
        "mm GFLOP/s": 2 * 1024 ** 3 / t["mm"] / 1e9,
        "rel err": f"{err:.1e}",
    })


def _conv1x1_rows(rounds: int, a, b) -> list[Row]:
    rows = []
    with torch.no_grad():
        for i, (hw, c, k, residual) in enumerate(SHAPES_1X1):
            progress(i, len(SHAPES_1X1), f"1x1 {hw}x{hw} {c}->{k}")
            x = torch.randn(1, c, hw, hw).to(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(c, k, 1).eval().to(memory_format=torch.channels_last)
            w, bias = conv.weight.detach(), conv.bias.detach()
            packed = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(), [0, 0], [1, 1], [1, 1], 1,
                                                                  list(x.shape))
            u = conv1x1_weight(w)  # the default form (bf16x3 on AMX where bf16x3_default says so)
            u32 = conv1x1_weight(w, bf16x3=False)
            tol = BF16X3_TOLERANCE if u.dtype == torch.bfloat16 else CONV1X1_TOLERANCE
            form = " bf16x3" if u.dtype == torch.bfloat16 else ""
            r = torch.randn(1, k, hw, hw).to(memory_format=torch.channels_last)
            # written in place: the values drift, the work not
            acc = {"ours": r.clone(), "prepacked": r.clone(), "fp32": r.clone()}

            if residual:
                def stock():
                    return F.relu(F.conv2d(x, w, bias) + r)

                def ours():
                    return conv1x1_add_(acc["ours"], x, u, bias, "relu")

                def fp32():
                    return conv1x1_add_(acc["fp32"], x, u32, bias, "relu")

                def prepacked():
                    torch.ops.ipex.onednn_conv_add_(acc["prepacked"], x, packed, bias, [0, 0], [1, 1], [1, 1], 1,
                                                    "relu")
                    return acc["prepacked"]

                err = check_ours(f"conv1x1_add_ {hw}x{hw} {c}->{k}", conv1x1_add_(r.clone(), x, u, bias, "relu"),
                                 stock(), tol)
            else:
                def stock():
                    return F.relu(F.conv2d(x, w, bias))

                def ours():
                    return conv1x1(x, u, bias, "relu")

                def fp32():
                    return conv1x1(x, u32, bias, "relu")

                def prepacked():
                    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [0, 0], [1, 1], [1, 1], 1, "relu",
                                                                   [], "")

                err = check_ours(f"conv1x1 {hw}x{hw} {c}->{k}", ours(), stock(), tol)
            t = time_interleaved({"stock": stock, "ours": ours, "prepacked": prepacked, "fp32": fp32,
                                  "mm": lambda: a @ b}, rounds=rounds)
            rows.append(_row(f"1x1 conv batch 1 {hw}x{hw} {c}->{k}{' +residual' if residual else ''} fp32{form}", t,
                             2 * hw * hw * c * k, err))
    return rows


if __name__ == "__main__":
    main()
