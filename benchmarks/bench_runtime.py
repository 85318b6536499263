"""ipex.cpu.runtime throughput mode: MultiStreamModule with 2 streams of 1 core vs 1 stream of 2 cores.

Models: a small CNN (3x64x64 images) and BERT-base (transformers BertConfig
defaults, random weights, no download), fp32 inference under torch.no_grad().
Three variants run interleaved in the same process on the first two CPUs this
process may use:

* stock:  model(x), stock PyTorch eager on its default intra-op threads;
* 1x2:    MultiStreamModule(num_streams=1) on a pool of 2 cores (one stream, pinned);
* 2x1:    MultiStreamModule(num_streams=2), each stream one core and half the batch,
          outputs concatenated back into one batch.

The table's "stock" column is stock eager and "ipex" is 2x1; the column
"2x1 vs 1x2" is the ratio the runtime issue asks for (>1: streams win).
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import ipex
from harness import Row, machine_meta, progress, report, time_interleaved


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 10),
    ).eval()


def bert_base() -> nn.Module:
    import transformers

    return transformers.BertModel(transformers.BertConfig()).eval()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128, help="BERT sequence length")
    parser.add_argument("--cnn-rounds", type=int, default=30)
    parser.add_argument("--bert-rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["cnn", "bert"], choices=["cnn", "bert"])
    args = parser.parse_args(argv)

    runtime = ipex.cpu.runtime
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        return "bench_runtime needs two CPUs available to the process; skipped"
    pool = runtime.CPUPool(cpus)

    cases = {
        "cnn": (small_cnn, lambda: torch.randn(args.batch, 3, 64, 64), args.cnn_rounds, 2,
                runtime.MultiStreamModuleHint(0)),
        "bert": (bert_base, lambda: torch.randint(0, 30522, (args.batch, args.seq_len)), args.bert_rounds, 1,
                 runtime.MultiStreamModuleHint(last_hidden_state=0, pooler_output=0)),
    }
    rows = []
    for i, name in enumerate(args.models):
        make_model, make_input, rounds, warmup, output_hint = cases[name]
        progress(i, len(args.models), f"{name} batch={args.batch}")
        torch.manual_seed(0)
        model, x = make_model(), make_input()
        one_by_two = runtime.MultiStreamModule(model, num_streams=1, cpu_pool=pool)
        two_by_one = runtime.MultiStreamModule(model, num_streams=2, cpu_pool=pool, output_concat_hint=output_hint)
        with torch.no_grad():
            t = time_interleaved({"stock": lambda: model(x), "1x2": lambda: one_by_two(x),
                                  "2x1": lambda: two_by_one(x)}, rounds=rounds, inner=1, warmup=warmup)
        label = "small CNN 3x64x64" if name == "cnn" else f"BERT-base seq={args.seq_len}"
        rows.append(Row(f"{label} batch={args.batch}", t["stock"] * 1e3, t["2x1"] * 1e3, {
            "1x2 ms": t["1x2"] * 1e3,
            "2x1 vs 1x2": t["1x2"] / t["2x1"],
            "2x1 items/s": args.batch / t["2x1"],
            "1x2 items/s": args.batch / t["1x2"],
        }))
    meta = machine_meta() | {"cpus": cpus, "runtime_ext_enabled": runtime.is_runtime_ext_enabled(),
                             "dtype": "float32", "load_avg_1m": os.getloadavg()[0]}
    table = report("runtime", rows, meta, columns=["1x2 ms", "2x1 vs 1x2", "2x1 items/s", "1x2 items/s"])
    print(table)
    return table


if __name__ == "__main__":
    main()
