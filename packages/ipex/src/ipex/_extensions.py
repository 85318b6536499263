"""Finding the installed ipex pieces through the ``ipex.extensions`` entry points.

``ipex`` owns the ``ipex`` import folder; ``ipex.llm``, ``ipex.quantization``,
``ipex.cpu.runtime`` and ``ipex.xpu`` live in sibling distributions and are
aliased in on first use:

* attribute access (``ipex.llm``) goes through ``ipex.__getattr__``;
* ``import ipex.llm.modules`` goes through :class:`_AliasFinder`, a meta-path
  finder that maps ``ipex.<alias>.<sub>`` to the *module object*
  ``ipex_<pkg>.<sub>``. Aliasing only ``sys.modules["ipex.llm"]`` is not enough:
  Python would then load ``ipex/llm/modules.py`` a second time under the alias
  name, with classes that are not those of ``ipex_llm.modules``.

First-party names are bound to their distribution: another distribution
declaring ``llm`` in the group is ignored with a warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

__all__ = ["FIRST_PARTY", "PieceNotInstalledError", "resolve", "installed_extensions", "install_finder"]

GROUP = "ipex.extensions"


@dataclass(frozen=True)
class Piece:
    alias: str  # the name under ipex., dotted for nested ones ("cpu.runtime")
    distribution: str  # the PyPI name that must provide it
    module: str  # the import name it resolves to
    extra: str  # the ipex[extra] that installs it


FIRST_PARTY: dict[str, Piece] = {
    p.alias: p
    for p in (
        Piece("llm", "ipex-llm", "ipex_llm", "llm"),
        Piece("quantization", "ipex-quant", "ipex_quant", "quantization"),
        Piece("cpu.runtime", "ipex-runtime", "ipex_runtime", "runtime"),
        Piece("xpu", "ipex-xpu", "ipex_xpu", "xpu"),
    )
}


class PieceNotInstalledError(ModuleNotFoundError):
    """An ipex piece was imported whose distribution is not installed (``import ipex.llm``)."""


class PieceNotInstalledAttributeError(AttributeError):
    """The same, met as an attribute (``ipex.llm``): an AttributeError, so that ``hasattr(ipex, "llm")`` is
    False and ``getattr(ipex, "xpu", None)`` is None, as for any missing attribute (a ModuleNotFoundError
    escaped both). Python cannot make one class of both (their layouts conflict)."""


@dataclass(frozen=True)
class _Resolved:
    module: str
    distribution: str


_lock = threading.Lock()
_table: dict[str, _Resolved] | None = None


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def _scan() -> dict[str, _Resolved]:
    table: dict[str, _Resolved] = {}
    for ep in entry_points(group=GROUP):
        dist = _normalise(ep.dist.name) if ep.dist is not None else "<unknown>"
        piece = FIRST_PARTY.get(ep.name)
        if piece is not None and dist != piece.distribution:
            warnings.warn(
                f"Ignoring entry point {ep.name!r} = {ep.value!r} in group {GROUP!r} from distribution "
                f"{dist!r}: ipex.{ep.name} belongs to {piece.distribution!r}. Uninstall {dist!r} or rename "
                "its entry point.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if ep.name in table and table[ep.name].distribution != dist:
            warnings.warn(
                f"Entry point {ep.name!r} in group {GROUP!r} is declared by both "
                f"{table[ep.name].distribution!r} and {dist!r}; keeping the first.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        table[ep.name] = _Resolved(ep.value, dist)
    return table


def installed_extensions() -> dict[str, _Resolved]:
    """alias -> (module, distribution) for every extension installed (scanned once)."""
    global _table
    with _lock:
        if _table is None:
            _table = _scan()
        return _table


def _refresh() -> None:
    """Forget the scan (tests install and remove fake distributions)."""
    global _table
    with _lock:
        _table = None


def not_installed_error(alias: str) -> PieceNotInstalledError:
    piece = FIRST_PARTY[alias]
    return PieceNotInstalledError(
        f"ipex.{alias} is provided by the {piece.distribution!r} package, which is not installed: "
        f"pip install {piece.distribution}  (or pip install 'ipex[{piece.extra}]')",
        name=f"ipex.{alias}",
    )


def resolve(alias: str):
    """Import and return the module behind ``ipex.<alias>``, for attribute access: a piece that is not
    installed raises PieceNotInstalledAttributeError with the message naming its package."""
    try:
        return importlib.import_module(f"ipex.{alias}")
    except PieceNotInstalledError as exc:
        raise PieceNotInstalledAttributeError(str(exc)) from None


def _is_real_submodule(head: str) -> bool:
    """Whether ipex/<head>.py or ipex/<head>/ exists in the ipex package itself."""
    package = sys.modules.get("ipex")
    for base in getattr(package, "__path__", ()):
        if os.path.exists(os.path.join(base, head + ".py")) or os.path.isdir(os.path.join(base, head)):
            return True
    return False


def _split(fullname: str) -> tuple[str, str] | None:
    """'ipex.cpu.runtime.x' -> ('cpu.runtime', '.x'); None when no alias applies."""
    if not fullname.startswith("ipex."):
        return None
    rest = fullname[len("ipex.") :]
    for alias in sorted(FIRST_PARTY, key=len, reverse=True):
        if rest == alias or rest.startswith(alias + "."):
            return alias, rest[len(alias) :]
    if _is_real_submodule(rest.split(".", 1)[0]):
        return None  # ipex's own modules: the normal finders load them
    # Possibly a third-party extension; only now pay for the entry-point scan.
    for alias in sorted(installed_extensions(), key=len, reverse=True):
        if rest == alias or rest.startswith(alias + "."):
            return alias, rest[len(alias) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self._target = target
        self._real_spec = target.__spec__

    def create_module(self, spec):
        return self._target

    def exec_module(self, module):
        # The import system stamped our alias spec on the module; put its own
        # back so reload(), pickling and tracebacks still see ipex_llm etc.
        module.__spec__ = self._real_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Maps ``ipex.<alias>[.<sub>]`` to the already-importable ``<module>[.<sub>]``.

    It must sit at the front of ``sys.meta_path``: once ``ipex.llm`` is the
    ``ipex_llm`` module, its ``__path__`` would let the ordinary path finder load
    ``ipex.llm.modules`` from the same files a second time. For ipex's own
    modules it returns None after a dictionary lookup and a stat.
    """

    def find_spec(self, fullname, path, target=None):
        split = _split(fullname)
        if split is None:
            return None
        alias, sub = split
        resolved = installed_extensions().get(alias)
        if resolved is None:
            if alias in FIRST_PARTY:
                raise not_installed_error(alias)
            return None
        module = importlib.import_module(resolved.module + sub)
        is_package = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=is_package)


_finder = _AliasFinder()


def install_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
