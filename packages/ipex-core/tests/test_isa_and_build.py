"""CPU feature probe, ISA forcing (IPEX_ISA) and the torch-version guard."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ipex_core
from ipex_core.isa import ISA_LEVELS, forced_isa, isa_levels


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )


def _proc_cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_cpu_features_agree_with_proc_cpuinfo():
    feats = ipex_core.cpu_features()
    flags = _proc_cpuinfo_flags()
    for ours, linux in [("avx2", "avx2"), ("avx512f", "avx512f"), ("avx512_bf16", "avx512_bf16"),
                        ("avx512_fp16", "avx512_fp16"), ("amx_bf16", "amx_bf16"), ("amx_int8", "amx_int8"),
                        ("fma", "fma"), ("avx512_vnni", "avx512_vnni")]:
        # The kernel may refuse AMX tile data; then we must report False even if cpuinfo lists it.
        if ours.startswith("amx") and not feats["os_amx_permitted"]:
            assert feats[ours] is False
        else:
            assert feats[ours] == (linux in flags), ours


def test_cpu_vendor_agrees_with_proc_cpuinfo():
    vendor = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    if vendor is None:
        pytest.skip("/proc/cpuinfo has no vendor_id")
    assert ipex_core.cpu_features()["genuine_intel"] == (vendor == "GenuineIntel")


def test_isa_levels_are_consistent():
    levels = isa_levels()
    assert levels[0] == "default" and levels[-1] == ipex_core.max_isa()
    assert all(level in ISA_LEVELS for level in levels)
    feats = ipex_core.cpu_features()
    assert ("avx512" in levels) == (feats["avx512f"] and feats["avx512bw"] and feats["avx512vl"])


def test_forced_isa_switches_kernels_and_restores():
    before = ipex_core.active_isa()
    with forced_isa("avx2"):
        assert ipex_core.active_isa() == "avx2"
        assert ipex_core._C.kernel_isa() == "avx2"
    with forced_isa("default"):
        assert ipex_core._C.kernel_isa() == "default_isa"
    assert ipex_core.active_isa() == before


def test_set_isa_errors():
    with pytest.raises(ValueError, match="not a known ISA level"):
        ipex_core.set_isa("sse9")


def test_ipex_isa_env_forces_level():
    r = _run("import torch, ipex_core; print(ipex_core.active_isa(), ipex_core._C.kernel_isa())", IPEX_ISA="avx2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["avx2", "avx2"]


def test_ipex_isa_env_unknown_value_is_clear_error():
    r = _run("import torch, ipex_core", IPEX_ISA="avx9000")
    assert r.returncode != 0
    assert "IPEX_ISA='avx9000' is not a known ISA level" in r.stderr


def test_torch_version_mismatch_is_an_import_error():
    r = _run(
        """
        import torch
        torch.__version__ = "2.99.0"
        try:
            import ipex_core
        except ImportError as e:
            print("IMPORTERROR", e)
        """
    )
    assert "IMPORTERROR" in r.stdout, r.stdout + r.stderr
    assert "2.99.0" in r.stdout and ipex_core._build_info.TORCH_VERSION in r.stdout
    assert "pip install" in r.stdout


def test_build_info_records_this_torch():
    assert ipex_core._C.built_with_torch == ipex_core._build_info.TORCH_VERSION
    assert ipex_core._build_info.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]


def test_import_changes_nothing_in_torch():
    # Importing ipex_core must not register aten overrides or patch torch.
    r = _run(
        """
        import torch
        before = {k: id(getattr(torch, k)) for k in dir(torch)}
        import ipex_core, ipex_core.ops
        after = {k: id(getattr(torch, k)) for k in dir(torch) if k in before}
        changed = [k for k in before if before[k] != after.get(k)]
        print("CHANGED", changed)
        """
    )
    assert "CHANGED []" in r.stdout, r.stdout + r.stderr
