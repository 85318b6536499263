"""ipex-quant: ``ipex.quantization``.

The quantization API of the contract (``prepare``, ``convert``,
``get_smooth_quant_qconfig_mapping``, ``autotune``, weight-only int8/int4) is
not implemented yet; this package only claims the ``ipex.quantization`` name so
that discovery and the install story are in place.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
