"""ipex-quant: ``ipex.quantization``.

The quantization API of the contract (``prepare``, ``convert``,
``get_smooth_quant_qconfig_mapping``, ``autotune``, weight-only int8/int4) is
not implemented yet; this package claims the ``ipex.quantization`` name so
that discovery and the install story are in place, and every name of that API
raises an AttributeError saying so (a bare "cannot import name" before).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

#: The names of the API contract's ipex.quantization section.
CONTRACT_NAMES = frozenset({
    "prepare", "convert", "autotune", "get_smooth_quant_qconfig_mapping", "get_weight_only_quant_qconfig_mapping",
    "default_static_qconfig", "default_static_qconfig_mapping", "default_dynamic_qconfig",
    "default_dynamic_qconfig_mapping", "WoqWeightDtype", "WoqLowpMode", "WoqActQuantMode",
})


class NotImplementedInThisRelease(AttributeError):
    """A name of the ipex.quantization API that this release does not implement."""


def __getattr__(name: str):
    if name in CONTRACT_NAMES:
        raise NotImplementedInThisRelease(
            f"ipex.quantization.{name} is not implemented in this release of ipex-quant: the quantization API is "
            "not built yet. For now quantize with torch.ao.quantization, or run the model in bfloat16 "
            "(ipex.optimize(model, dtype=torch.bfloat16) / ipex.llm.optimize(model, dtype=torch.bfloat16)).")
    raise AttributeError(f"module 'ipex.quantization' has no attribute {name!r}")
