"""ipex-quant claims ipex.quantization (the quantization API itself is not built yet)."""

import ipex
import ipex_quant


def test_ipex_quantization_is_this_package():
    assert ipex.quantization is ipex_quant
    assert ipex_quant.__version__ == "0.1.0"


def test_contract_names_say_they_are_not_implemented():
    """`from ipex.quantization import prepare` failed with a bare "cannot import name"."""
    import pytest

    for name in ("prepare", "convert", "autotune", "get_smooth_quant_qconfig_mapping"):
        with pytest.raises(AttributeError, match=f"ipex.quantization.{name} is not implemented in this release"):
            getattr(ipex.quantization, name)
        assert not hasattr(ipex.quantization, name)
    with pytest.raises(ImportError):  # Python 3.11's `from m import n` words its own message
        exec("from ipex.quantization import prepare")
