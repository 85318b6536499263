import pytest
import torch

import ipex_core
from ipex_core.isa import forced_isa, isa_levels

# Tolerances per dtype for kernels that accumulate in fp32 (one final rounding).
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
}


# One level per kernel path: the compiled variants (default, avx2, avx512) and
# avx512_bf16, where the avx512 RMSNorm/RoPE kernels round with vcvtneps2bf16 and
# the decode kernels use vdpbf16ps. amx adds only GEMM/attention tile paths, which
# their own tests force.
KERNEL_LEVELS = [level for level in isa_levels() if level in ("default", "avx2", "avx512", "avx512_bf16")]


@pytest.fixture(params=KERNEL_LEVELS)
def isa(request):
    """Run the test once per kernel variant this CPU can run (what IPEX_ISA would force)."""
    with forced_isa(request.param):
        yield request.param


@pytest.fixture
def tol():
    return TOLERANCES


def pytest_report_header(config):
    return f"ipex-core ISA levels here: {isa_levels()} (max {ipex_core.max_isa()})"
