"""ipex-quant claims ipex.quantization (the quantization API itself is not built yet)."""

import ipex
import ipex_quant


def test_ipex_quantization_is_this_package():
    assert ipex.quantization is ipex_quant
    assert ipex_quant.__version__ == "0.1.0"
