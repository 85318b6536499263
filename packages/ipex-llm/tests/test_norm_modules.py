"""ipex.llm.modules.RMSNorm and ipex.llm.functional norms against a plain-PyTorch reference."""

import pytest
import torch

from ipex_llm import functional as F
from ipex_llm.modules import RMSNorm


def reference_rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2), (torch.float16, 1e-3)])
def test_rmsnorm_module(dtype, tol):
    w = torch.randn(256)
    m = RMSNorm(256, eps=1e-5, weight=w).to(dtype)
    x = torch.randn(2, 7, 256, dtype=dtype)
    torch.testing.assert_close(m(x), reference_rms_norm(x, w.to(dtype), 1e-5), rtol=tol, atol=tol)
    torch.testing.assert_close(RMSNorm.apply_function(x, w.to(dtype), 1e-5), m(x))


def test_rmsnorm_defaults_and_parameter_weight():
    m = RMSNorm(64)
    assert torch.equal(m.weight, torch.ones(64)) and m.eps == 1e-6
    p = torch.nn.Parameter(torch.randn(64))
    assert RMSNorm(64, weight=p).weight is p
    assert "64, eps=1e-06" in repr(m)
    with pytest.raises(ValueError, match="hidden_size=64"):
        RMSNorm(64, weight=torch.ones(32))


def test_functional_add_rms_norm():
    """The retired extension's signature: add_rms_norm(residual, x, weight, bias, eps, add_back)."""
    x, r, w, b = torch.randn(3, 128), torch.randn(3, 128), torch.randn(128), torch.randn(128)
    x0, r0 = x.clone(), r.clone()
    out = F.add_rms_norm(r, x, w, None, 1e-6)
    torch.testing.assert_close(out, reference_rms_norm(x + r, w, 1e-6))
    assert torch.equal(r, r0) and torch.equal(x, x0)  # add_back=False writes nothing
    torch.testing.assert_close(F.add_rms_norm(None, x, w, b, 1e-6), reference_rms_norm(x, w, 1e-6) + b)
    out = F.add_rms_norm(r, x, w, None, 1e-6, True)
    torch.testing.assert_close(r, x0 + r0)  # the sum is stored back into the residual
    torch.testing.assert_close(out, reference_rms_norm(x0 + r0, w, 1e-6))
    assert torch.equal(x, x0)


def test_rmsnorm_under_torch_compile():
    m = RMSNorm(128)
    x = torch.randn(4, 128)
    with torch.no_grad():  # the ipex ops are inference kernels (no autograd formula)
        torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))
