"""A short tour of ipex on this machine: CPU features, the rms_norm kernels, ipex.verbose.

    python examples/showcase.py [--tokens N] [--hidden H]
"""

from __future__ import annotations

import argparse
import time

import torch

import ipex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=4096)
    args = parser.parse_args()

    import ipex_core

    print(f"ipex kernels run at ISA level '{ipex_core.active_isa()}' (max here: '{ipex_core.max_isa()}')")
    x = torch.randn(args.tokens, args.hidden, dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    w = torch.ones(args.hidden, dtype=torch.bfloat16)

    def stock():
        s = x + residual
        return torch.nn.functional.rms_norm(s, (args.hidden,), w, 1e-6), s

    def ours():
        return ipex.llm.functional.add_rms_norm(x, residual, w, 1e-6)

    for name, fn in (("stock add + rms_norm", stock), ("ipex add_rms_norm", ours)):
        fn()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        print(f"{name:<22} {1e3 * (time.perf_counter() - t0) / 10:8.3f} ms  ({args.tokens}x{args.hidden} bf16)")
    ref, _ = stock()
    got, _ = ours()
    print(f"max |difference| vs stock: {(ref.float() - got.float()).abs().max().item():.4f} (bf16 rounding)")

    print("\noneDNN verbose, only inside `with ipex.verbose(ipex.verbose.VERBOSE_ON)`:")
    a = torch.randn(64, 64, dtype=torch.bfloat16)
    with ipex.verbose(ipex.verbose.VERBOSE_ON):
        a @ a
    a @ a  # outside the scope: silent
    print("(nothing printed for the second matmul)")


if __name__ == "__main__":
    main()
