"""Outputs of 32 MiB and more, which the ops ask transparent huge pages for (op_utils.h:
advise_huge_pages): the results are right with the advice on and off, and the advice really
reaches the kernel where THP is in madvise mode."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ipex_core  # noqa: F401  (registers torch.ops.ipex)
from ipex_core import reference
from ipex_core.ops import elementwise_ops as E
from ipex_core.ops import linear_ops as L

ROWS, COLS = 2048, 4096  # fp32: exactly 32 MiB, the smallest output that gets the advice


def test_large_outputs_match_references():
    torch.manual_seed(0)
    x, r, w = torch.randn(ROWS, COLS), torch.randn(ROWS, COLS), torch.rand(COLS) + 0.5
    torch.testing.assert_close(torch.ops.ipex.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    out, s = torch.ops.ipex.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_s = reference.add_rms_norm(x, r, w, 1e-6)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(s, ref_s)
    torch.testing.assert_close(E.silu_mul(x, r), reference.silu_mul(x, r))
    q = x.view(ROWS, 32, 128)
    sin, cos = torch.rand(ROWS, 128), torch.rand(ROWS, 128)
    torch.testing.assert_close(E.rotary_embedding(q, sin, cos, 128, True), reference.rotary_embedding(q, sin, cos, 128, True))
    a, wt = torch.randn(ROWS, 32), torch.randn(COLS, 32)
    torch.testing.assert_close(L.linear(a, L.pack_linear_weight(wt), None, COLS), reference.linear(a, wt, None),
                               rtol=1e-4, atol=1e-4)


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text.split("[")[1].split("]")[0]


@pytest.mark.skipif(_thp_mode() != "madvise", reason="the advice only matters where THP is in madvise mode")
def test_huge_page_advice_reaches_the_output_mapping():
    # A child process per setting: the switch is read once per process.
    probe = textwrap.dedent("""
        import torch, ipex_core
        x, w = torch.randn(2048, 4096), torch.ones(4096)
        y = torch.ops.ipex.rms_norm(x, w, 1e-6)
        p, flags = y.data_ptr(), ""
        lines = open("/proc/self/smaps").read().splitlines()
        for i, line in enumerate(lines):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-")) if "-" in line.split()[0] else (0, 0)
            if lo <= p + (4 << 20) < hi:  # a page well inside the output
                flags = next(l for l in lines[i:] if l.startswith("VmFlags"))
                break
        print("hg" in flags.split())
    """)
    seen = {}
    for setting in ("1", "0"):
        env = dict(os.environ, IPEX_HUGE_PAGE_OUTPUTS=setting)
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        seen[setting] = out.stdout.strip()
    assert seen == {"1": "True", "0": "False"}, seen
