"""pytest parameters for the low-precision dtypes: float16 is skipped where oneDNN has no float16 kernels.

oneDNN runs float16 only with AVX512-FP16, AVX-NE-CONVERT or AMX-FP16 (e.g. not on AMD Zen 4);
there ``ipex.optimize(dtype=torch.float16)`` raises, which test_optimize_api checks.
"""

import pytest
import torch

from ipex_core.optimize.api import cpu_supports

FP16 = pytest.param(torch.float16, marks=pytest.mark.skipif(
    not cpu_supports(torch.float16), reason="oneDNN has no float16 kernels on this CPU"))
LOW_PRECISION = [torch.bfloat16, FP16]
SUPPORTED_LOW_PRECISION = [dt for dt in (torch.bfloat16, torch.float16) if cpu_supports(dt)]
