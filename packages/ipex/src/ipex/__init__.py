"""ipex: fast PyTorch on Intel CPUs, with the API of the Intel Extension for PyTorch.

``import ipex`` is cheap: it imports neither torch nor any sibling package.
Each public name is loaded on first use:

* the core API (``ipex.optimize``, ``ipex.fast_bert``, ``ipex.verbose``, ``ipex.enable_onednn_fusion``,
  ``ipex.cpu_features``) comes from ``ipex-core``;
* ``ipex.llm``, ``ipex.quantization``, ``ipex.cpu.runtime`` and ``ipex.xpu`` come
  from ``ipex-llm``, ``ipex-quant``, ``ipex-runtime`` and ``ipex-xpu``, found
  through the ``ipex.extensions`` entry points. A piece that is not installed
  raises an error that names the ``pip install`` command.
"""

from __future__ import annotations

import importlib

from ipex import _extensions

__version__ = "0.1.0"

_extensions.install_finder()

# name -> (module, attribute) of the core API, imported on first access.
_CORE_API = {
    "optimize": ("ipex_core.optimize", "optimize"),
    "fast_bert": ("ipex_core.optimize", "fast_bert"),
    "verbose": ("ipex_core.verbose", "verbose"),
    "enable_onednn_fusion": ("ipex_core.fusion", "enable_onednn_fusion"),
    "is_onednn_fusion_enabled": ("ipex_core.fusion", "is_onednn_fusion_enabled"),
    "cpu_features": ("ipex_core.isa", "cpu_features"),
}
_SUBPACKAGES = ("cpu", "backends", "env")
_TOP_LEVEL_PIECES = tuple(alias for alias in _extensions.FIRST_PARTY if "." not in alias)

_ALWAYS = ["__version__", *_CORE_API, *_SUBPACKAGES]


def _all_names() -> list[str]:
    """``__all__``: the core API and the pieces installed here. Computed on first use, so that
    ``from ipex import *`` does not fail on a piece that is not installed."""
    installed = _extensions.installed_extensions()
    return [*_ALWAYS, *(alias for alias in _TOP_LEVEL_PIECES if alias in installed)]


def __getattr__(name: str):
    if name == "__all__":
        value = _all_names()
    elif name in _CORE_API:
        module, attr = _CORE_API[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"ipex.{name}")
    elif name in _TOP_LEVEL_PIECES or name in _extensions.installed_extensions():
        value = _extensions.resolve(name)
    else:
        raise AttributeError(f"module 'ipex' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    installed = _extensions.installed_extensions()
    return sorted(set(globals()) | set(_ALWAYS) | {p for p in _TOP_LEVEL_PIECES if p in installed})
