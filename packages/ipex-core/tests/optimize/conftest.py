import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # optimize_models.py, shared with benchmarks/bench_optimize.py

import pytest  # noqa: E402


@pytest.fixture(params=["default rules", "oneDNN for small layers"])
def small_layer_kernels(request, monkeypatch):
    """Tests whose models are small run twice: with the default kernel rules, which keep small Linears and small
    batch-1 convolutions on the stock kernel (api._linear_is_small, api._aten_kernel_beats_onednn), and with those
    rules off, so that the same layers also run oneDNN's paths (fused post-ops, folded BatchNorm, autocast copies)."""
    if request.param != "default rules":
        from ipex_core.optimize import api

        monkeypatch.setattr(api, "_linear_is_small", lambda linear, dtype, shape: False)
        monkeypatch.setattr(api, "_aten_kernel_beats_onednn", lambda conv, dtype, shape, channels_last: False)
    return request.param
