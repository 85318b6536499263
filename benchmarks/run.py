"""Run every benchmark (or the ones named) and collect the markdown tables.

    python run.py            # all
    python run.py norm       # only bench_norm.py
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

BENCHMARKS = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    chosen = args.names or BENCHMARKS
    tables = []
    for name in chosen:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench_{name}")
        tables.append(f"## {name}\n\n{module.main([])}\n")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary.md").write_text("\n".join(tables))
    print(f"summary: {HERE / 'results' / 'summary.md'}")


if __name__ == "__main__":
    main()
