"""ipex.verbose scoping and the enable_onednn_fusion switch."""

import os
import subprocess
import sys
import textwrap

import pytest

import ipex_core
from ipex_core import verbose


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if "VERBOSE" not in k})


ONEDNN_WORK = """
import torch
a = torch.randn(64, 64, dtype=torch.bfloat16)
def work(tag):
    print(tag, flush=True)
    (a @ a).sum()
"""


def test_messages_only_inside_the_scope():
    r = _run(ONEDNN_WORK + """
import ipex_core
work("BEFORE")
with ipex_core.verbose(ipex_core.verbose.VERBOSE_ON):
    work("INSIDE")
work("AFTER")
""")
    assert r.returncode == 0, r.stderr
    seg = _segments(r.stdout, ["BEFORE", "INSIDE", "AFTER"])
    assert "onednn_verbose" not in seg["BEFORE"]
    assert "primitive,exec" in seg["INSIDE"]
    assert "onednn_verbose" not in seg["AFTER"]


def test_decorator_and_restore_on_exception():
    r = _run(ONEDNN_WORK + """
import ipex_core
V = ipex_core.verbose
@V(V.VERBOSE_ON)
def decorated():
    work("DECORATED")
decorated()
try:
    with V(V.VERBOSE_ON):
        raise KeyError("boom")
except KeyError:
    pass
work("AFTER_EXC")
with V(V.VERBOSE_ON):
    with V(V.VERBOSE_OFF):
        work("NESTED_OFF")
    work("NESTED_ON")
""")
    assert r.returncode == 0, r.stderr
    seg = _segments(r.stdout, ["DECORATED", "AFTER_EXC", "NESTED_OFF", "NESTED_ON"])
    assert "primitive,exec" in seg["DECORATED"]
    assert "primitive,exec" not in seg["AFTER_EXC"]  # restored after the exception
    assert "primitive,exec" not in seg["NESTED_OFF"]
    assert "primitive,exec" in seg["NESTED_ON"]  # inner scope restored the outer level


def _segments(text: str, markers: list[str]) -> dict[str, str]:
    """The text printed after each marker line, up to the next marker."""
    out, current = {}, None
    for line in text.splitlines():
        if line in markers:
            current = line
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def test_levels_and_bad_level():
    assert (verbose.VERBOSE_OFF, verbose.VERBOSE_ON, verbose.VERBOSE_ON_CREATION) == (0, 1, 2)
    with pytest.raises(ValueError, match="VERBOSE_ON"):
        verbose(7)


def test_enable_onednn_fusion_switch():
    assert ipex_core.is_onednn_fusion_enabled() is True
    try:
        ipex_core.enable_onednn_fusion(False)
        assert ipex_core.is_onednn_fusion_enabled() is False
    finally:
        ipex_core.enable_onednn_fusion(True)
    with pytest.raises(TypeError, match="takes a bool"):
        ipex_core.enable_onednn_fusion("yes")


OFF_SCOPE_WORK = ONEDNN_WORK + """
import ipex_core
work("BEFORE")
with ipex_core.verbose(ipex_core.verbose.VERBOSE_OFF):
    work("INSIDE")
work("AFTER")
"""


@pytest.mark.parametrize("variable", ["ONEDNN_VERBOSE", "IPEX_VERBOSE"])
def test_level_outside_scopes_is_the_environment_one(variable):
    """ONEDNN_VERBOSE=1: the output was on before a scope and off for good after it. IPEX_VERBOSE=1: it took
    effect only after the first scope had closed."""
    env = {k: v for k, v in os.environ.items() if "VERBOSE" not in k}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(OFF_SCOPE_WORK)], capture_output=True, text=True,
                       timeout=300, env={**env, variable: "1"})
    assert r.returncode == 0, r.stderr
    seg = _segments(r.stdout, ["BEFORE", "INSIDE", "AFTER"])
    assert "primitive,exec" in seg["BEFORE"] and "primitive,exec" in seg["AFTER"]
    assert "onednn_verbose" not in seg["INSIDE"]


def test_bad_ipex_verbose_value():
    env = {k: v for k, v in os.environ.items() if "VERBOSE" not in k}
    bad = subprocess.run([sys.executable, "-c", "import ipex_core\nwith ipex_core.verbose(1): pass"],
                         capture_output=True, text=True, timeout=300, env={**env, "IPEX_VERBOSE": "7"})
    assert bad.returncode != 0 and "IPEX_VERBOSE must be 0, 1 or 2; got '7'" in bad.stderr


def test_overlapping_scopes_of_two_threads_end_off():
    """Each scope restored the level it saw on entry: thread A (on) entered, B (off) entered, A exited (set off),
    B exited (set A's on), and verbose stayed on for the rest of the process."""
    r = _run(ONEDNN_WORK + """
import threading, ipex_core
in_first, in_second, first_done = threading.Event(), threading.Event(), threading.Event()
def first():
    with ipex_core.verbose(1):
        in_first.set(); in_second.wait()
    first_done.set()
def second():
    in_first.wait()
    with ipex_core.verbose(0):
        in_second.set(); first_done.wait()
threads = [threading.Thread(target=f) for f in (first, second)]
[t.start() for t in threads]; [t.join() for t in threads]
work("AFTER")
""")
    assert r.returncode == 0, r.stderr
    assert "onednn_verbose" not in _segments(r.stdout, ["AFTER"])["AFTER"]


def test_verbose_on_creation_also_reports_primitive_creation():
    """VERBOSE_ON_CREATION (2) prints oneDNN's primitive creation lines as well as executions; VERBOSE_ON (1)
    prints executions only (a fresh shape each time, so a primitive is created inside each scope)."""
    r = _run("""
import torch, ipex_core
def work(tag, n):
    print(tag, flush=True)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    (a @ a).sum()
with ipex_core.verbose(ipex_core.verbose.VERBOSE_ON):
    work("ON", 48)
with ipex_core.verbose(ipex_core.verbose.VERBOSE_ON_CREATION):
    work("CREATION", 40)
""")
    assert r.returncode == 0, r.stderr
    seg = _segments(r.stdout, ["ON", "CREATION"])
    assert "primitive,exec" in seg["ON"] and "primitive,create" not in seg["ON"]
    assert "primitive,create" in seg["CREATION"] and "primitive,exec" in seg["CREATION"]
