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


@pytest.fixture(params=isa_levels())
def isa(request):
    """Run the test once per ISA level this CPU supports (what IPEX_ISA would force)."""
    with forced_isa(request.param):
        yield request.param


@pytest.fixture
def tol():
    return TOLERANCES


def pytest_report_header(config):
    return f"ipex-core ISA levels here: {isa_levels()} (max {ipex_core.max_isa()})"
