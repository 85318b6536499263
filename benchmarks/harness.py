"""Shared benchmark machinery: interleaved timing, a memory-bandwidth probe, reports.

Every benchmark runs the stock-PyTorch baseline and ours alternately in one
process (the machine is shared and noisy, so ratios from interleaved runs are
what we quote), takes medians, and writes JSON plus a markdown table.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def progress(i: int, total: int, label: str) -> None:
    """A one-line progress bar on stderr (no extra dependency)."""
    width = 30
    done = int(width * (i + 1) / total)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i + 1}/{total} {label[:60]:<60}")
    if i + 1 == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def time_interleaved(fns: dict[str, Callable[[], object]], *, rounds: int = 15, inner: int | None = None,
                     warmup: int = 3, target_s: float = 0.02) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin in the same process."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    # Calls per sample, per fn, so that each sample lasts about target_s. One count for
    # all (set from the first fn, the slow stock one) made a fast kernel's sample a single
    # call that paid for waking the thread pool, which went idle during the slow call: on a
    # 2-vCPU VM that wake-up alone cost up to 5 ms (ipex IAKV decode 0.58 ms back to back,
    # 1.6 ms measured one call after each 14 ms stock call).
    counts: dict[str, int] = {}
    for name, fn in fns.items():
        if inner is None:
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-7)
            counts[name] = max(1, min(1000, int(target_s / one)))
        else:
            counts[name] = inner
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / counts[name])
    return {k: statistics.median(v) for k, v in samples.items()}


def l3_bytes() -> int:
    """The largest cache's size in bytes (Linux sysfs; 32 MiB where it cannot be read)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=32 << 20)


# Bytes of data a "cold" case cycles through, so that each call finds its data in memory, not in the cache: more
# than twice the largest cache. A fixed 256 MiB was cold on a 32 MiB L3, but stayed in an Intel Xeon's 480 MiB
# L3 (LLM weights read "at 158% of the read bandwidth").
COLD_BYTES = max(1 << 30, int(2.5 * l3_bytes()))


def _probe_floats(gib: float | None) -> int:
    """fp32 elements of a bandwidth probe's buffer: ``gib`` GiB, default COLD_BYTES (far larger than the L3, or the
    probe reads partly from the cache)."""
    return (COLD_BYTES if gib is None else int(gib * (1 << 30))) // 4


def measure_bandwidth(gib: float | None = None, rounds: int = 7) -> dict[str, float]:
    """Read and copy bandwidth in GB/s on buffers far larger than the L3 cache."""
    n = _probe_floats(gib)
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    read = time_interleaved({"read": lambda: src.sum(), "copy": lambda: dst.copy_(src)}, rounds=rounds, inner=1,
                            warmup=1)
    nbytes = n * 4
    return {"read_gbs": nbytes / read["read"] / 1e9, "copy_gbs": 2 * nbytes / read["copy"] / 1e9}


class BandwidthProbes:
    """Read and copy probes timed among a case's functions: the bandwidth of the same minutes.

    Add ``probes.fns`` to the dict given to :func:`time_interleaved`, then ``probes.gbs(times)`` is the
    read/copy GB/s measured in those rounds. One probe at the start of a run was not enough here: this
    VM's measured read bandwidth swung between 34 and 59 GB/s within minutes.
    """

    def __init__(self, gib: float | None = None):
        n = _probe_floats(gib)
        self._src = torch.ones(n, dtype=torch.float32)
        self._dst = torch.empty_like(self._src)
        self._dst.copy_(self._src)
        self._bytes = n * 4
        self.fns = {"_probe_read": lambda: self._src.sum(), "_probe_copy": lambda: self._dst.copy_(self._src)}
        self._seen: dict[str, list[float]] = {"read_gbs": [], "copy_gbs": []}

    def gbs(self, times: dict[str, float]) -> dict[str, float]:
        bw = {"read_gbs": self._bytes / times["_probe_read"] / 1e9,
              "copy_gbs": 2 * self._bytes / times["_probe_copy"] / 1e9}
        for k, v in bw.items():
            self._seen[k].append(v)
        return bw

    def summary(self) -> dict[str, float]:
        """Median, min and max of the probes over the cases so far (for the report's header)."""
        out = {}
        for k, v in self._seen.items():
            if v:
                out[k] = round(statistics.median(v), 2)
                out[k.replace("_gbs", "_range")] = f"{min(v):.1f}-{max(v):.1f}"
        return out


def copy_bandwidth_probe(gib: float | None = None):
    """A callable that copies a buffer far larger than the L3 once and returns the copy GB/s.

    For interleaving with the timed cases, so that a roofline uses the bandwidth of the
    same minutes (this machine's speed drifts by tens of percent within a run).
    """
    n = _probe_floats(gib)
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def probe() -> float:
        start = time.perf_counter()
        dst.copy_(src)
        return 2 * n * 4 / (time.perf_counter() - start) / 1e9

    return probe


@dataclass
class Row:
    case: str
    baseline_ms: float
    ours_ms: float
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.ours_ms


def report(name: str, rows: Sequence[Row], meta: dict, columns: Sequence[str] = ()) -> str:
    """Write results/<name>.json and .md; return the markdown table."""
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {"benchmark": name, "meta": meta,
               "rows": [asdict(r) | {"speedup": r.speedup} for r in rows]}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2))
    head = ["case", "stock ms", "ipex ms", "speedup", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.case, f"{r.baseline_ms:.4f}", f"{r.ours_ms:.4f}", f"{r.speedup:.2f}x"]
        cells += [f"{r.extra.get(c, ''):.2f}" if isinstance(r.extra.get(c), float) else str(r.extra.get(c, ""))
                  for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    md = f"## {name}\n\n{json.dumps(meta)}\n\n{table}\n"
    (RESULTS_DIR / f"{name}.md").write_text(md)
    return table


def machine_meta() -> dict:
    import ipex_core

    # What the figures depend on: the arguments, and the machine's load (another process on one of two
    # vCPUs halves a 2-thread probe; compare runs at similar load only).
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "isa": ipex_core.active_isa(),
            "argv": sys.argv[1:], "loadavg_1m": round(os.getloadavg()[0], 2)}


# Largest error relative to the largest stock magnitude that ours may show before timing, per dtype. fp32 sees
# a wrong formula (tanh- for erf-GELU: 1.1e-4; fp32 results differ by accumulation order only, ~1e-6). bf16 and
# fp16 round each output to 8 / 11 bits: their check catches gross errors (a wrong epilogue op, a missing add,
# scrambled layouts), not approximation variants, which the unit tests check in fp32.
CHECK_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def check_ours(label: str, ours, stock, tolerance: float | None = None) -> float:
    """A fast wrong kernel must not pass for a speedup: ``ours`` against ``stock`` (tensors, or tuples of them)
    before timing, at CHECK_TOLERANCE of the stock dtype (or ``tolerance``, for a kernel whose algorithm is
    documented as less exact); returns the largest relative error."""
    pairs = zip(ours, stock, strict=True) if isinstance(stock, (tuple, list)) else [(ours, stock)]
    worst = 0.0
    for a, b in pairs:
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
        worst = max(worst, err)
        limit = CHECK_TOLERANCE[b.dtype] if tolerance is None else tolerance
        if not err <= limit:
            raise AssertionError(f"{label}: ipex differs from stock by {err:.3g} of the largest value "
                                 f"(tolerance {limit} for {b.dtype})")
    return worst


def rotating(make, nbytes_each: int, total_bytes: float | None = None) -> list:
    """Enough copies made by ``make()`` to cover ``total_bytes`` (default COLD_BYTES; at least 2 copies, 1 when
    total_bytes is 0): cycling through them, a timed call finds its data in memory, not in the cache the previous
    call left it in."""
    total_bytes = COLD_BYTES if total_bytes is None else total_bytes
    count = max(2, int(total_bytes // max(nbytes_each, 1)) + 1) if total_bytes else 1
    return [make() for _ in range(count)]


def cycler(items):
    """A function returning the next item of ``items`` at each call (round robin)."""
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt
