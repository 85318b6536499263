"""All pieces installed together: discovery, aliasing identity, cross-package use."""

import importlib
import sys

import pytest
import torch

ipex_llm = pytest.importorskip("ipex_llm")

import ipex  # noqa: E402


def test_alias_identity_attribute_and_import():
    import ipex.llm
    import ipex_quant
    import ipex_runtime
    import ipex_xpu

    assert ipex.llm is ipex_llm
    assert ipex.quantization is ipex_quant
    assert ipex.cpu.runtime is ipex_runtime
    assert ipex.xpu is ipex_xpu
    assert importlib.import_module("ipex.cpu.runtime") is ipex_runtime
    assert sys.modules["ipex.llm"] is ipex_llm


def test_submodule_identity_keeps_isinstance_working():
    import ipex.llm.functional as F
    import ipex_llm.modules
    from ipex.llm.modules import RMSNorm

    assert RMSNorm is ipex_llm.modules.RMSNorm
    assert ipex.llm.modules is ipex_llm.modules is sys.modules["ipex.llm.modules"]
    assert F is ipex_llm.functional
    m = RMSNorm(64)
    assert isinstance(m, ipex_llm.modules.RMSNorm)
    # The alias did not rename the real module.
    assert ipex_llm.modules.__spec__.name == "ipex_llm.modules"
    assert ipex_llm.__name__ == "ipex_llm"


def test_llm_rmsnorm_runs_core_kernel():
    from ipex.llm.modules import RMSNorm
    from ipex_core import reference

    w = torch.randn(128)
    m = RMSNorm(128, eps=1e-5, weight=w)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    torch.testing.assert_close(m(x.float()), reference.rms_norm(x.float(), w, 1e-5))
    torch.testing.assert_close(
        ipex.llm.functional.rms_norm(x, w.bfloat16(), 1e-5), reference.rms_norm(x, w.bfloat16(), 1e-5)
    )
    res = x.clone()
    out = ipex.llm.functional.add_rms_norm(res, x, w.bfloat16(), None, 1e-5, True)
    assert torch.equal(res, x + x)
    torch.testing.assert_close(out, reference.rms_norm(x + x, w.bfloat16(), 1e-5))


def test_doctor_lists_every_piece():
    from ipex import cli

    report = cli.collect_doctor_report()
    assert all(report["pieces"][p] == "0.1.0" for p in cli.PIECES)
    names = {b["name"] for b in report["backends_discovered"]}
    assert {"xpu", "example_cuda"} <= names
    assert report["warnings"] == []


def test_xpu_backend_absent_here():
    from ipex import backends

    assert backends.load_backends(reload=True)["xpu"] is None
