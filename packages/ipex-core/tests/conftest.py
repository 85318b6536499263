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


# One level per compiled kernel variant: avx512_bf16 and amx run the avx512
# element-wise kernels (their extra instructions are used through oneDNN's brgemm,
# which picks its own path), so testing them again would repeat the avx512 run.
KERNEL_LEVELS = [level for level in isa_levels() if level in ("default", "avx2", "avx512")]


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
