"""The example third-party backend: discovered by ipex, None without its hardware."""

import pytest
import torch

import ipex_example_backend
from ipex import backends


def test_discovered_through_entry_points():
    found = {b["name"]: b for b in backends.discovered_backends()}
    assert found["example_cuda"]["distribution"] == "ipex-example-backend"


def test_loaded_by_ipex(monkeypatch):
    monkeypatch.delenv("IPEX_BACKENDS", raising=False)
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    specs = backends.load_backends(reload=True)
    assert "example_cuda" in specs
    if torch.cuda.is_available():
        assert specs["example_cuda"].device_type == "cuda"
    else:
        assert specs["example_cuda"] is None


def test_reference_semantics_match_ipex_core():
    from ipex_core import reference

    x, r, w = torch.randn(4, 64), torch.randn(4, 64), torch.randn(64)
    torch.testing.assert_close(ipex_example_backend.rms_norm_cuda(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    out, s = ipex_example_backend.add_rms_norm_cuda(x, r, w, 1e-6)
    torch.testing.assert_close(out, reference.rms_norm(x + r, w, 1e-6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ipex_op_runs_on_cuda():
    assert ipex_example_backend.register() is ipex_example_backend.register()  # idempotent
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    out = torch.ops.ipex.rms_norm(x, w, 1e-6)
    ref = torch.ops.ipex.rms_norm(x.cpu(), w.cpu(), 1e-6)
    torch.testing.assert_close(out.cpu(), ref, rtol=1.6e-2, atol=1e-2)
