"""Backend plugins, first and third party, through the ``ipex.backends`` entry points.

A backend distribution declares, in its pyproject.toml::

    [project.entry-points."ipex.backends"]
    mydevice = "my_pkg.backend:register"

``register()`` must be cheap and idempotent, and returns a :class:`BackendSpec`
(or any object with ``name`` and ``device_type``) when its hardware is present,
``None`` otherwise. It typically adds kernels for ``torch.ops.ipex.*`` with
``torch.library.register_kernel`` (never redefining the namespace).

Plugins are loaded lazily, on the first call of :func:`load_backends` (never at
``import ipex``). ``IPEX_BACKENDS`` is an allow-list, ``IPEX_BACKEND_AUTOLOAD=0``
turns loading off; both are documented in ``ipex_core.env``.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from ipex_core import env

__all__ = ["GROUP", "BackendSpec", "BackendLoadError", "load_backends", "discovered_backends"]

GROUP = "ipex.backends"


@dataclass(frozen=True)
class BackendSpec:
    """What a backend's ``register()`` returns when its hardware is present."""

    name: str
    device_type: str
    description: str = ""
    ops: tuple[str, ...] = field(default=())  # the torch.ops.ipex ops it implements


class BackendLoadError(RuntimeError):
    """A backend plugin failed to load or to register."""


_lock = threading.Lock()
_loaded: dict[str, BackendSpec | None] | None = None


def discovered_backends() -> list[dict[str, str]]:
    """Every installed backend entry point (name, value, distribution), without loading any."""
    return [
        {"name": ep.name, "value": ep.value, "distribution": ep.dist.name if ep.dist else "?"}
        for ep in entry_points(group=GROUP)
    ]


def _allow_list() -> list[str]:
    """IPEX_BACKENDS's names (empty: every plugin is allowed)."""
    return [n.strip() for n in env.get("IPEX_BACKENDS").split(",") if n.strip()]


def load_backends(*, reload: bool = False) -> dict[str, BackendSpec | None]:
    """Load the allowed backend plugins once; name -> spec (None: hardware absent).

    Raises :class:`BackendLoadError` naming the plugin, its distribution and how
    to disable it when a plugin's import or ``register()`` raises.
    """
    global _loaded
    with _lock:
        if _loaded is not None and not reload:
            return dict(_loaded)
        result: dict[str, BackendSpec | None] = {}
        allow = _allow_list()
        installed = list(entry_points(group=GROUP))
        if env.get_bool("IPEX_BACKEND_AUTOLOAD"):
            unknown = sorted(set(allow) - {ep.name for ep in installed})
            if unknown:
                warnings.warn(f"IPEX_BACKENDS names {unknown}, which match no installed backend plugin (installed: "
                              f"{sorted(ep.name for ep in installed)}); check the spelling.", UserWarning,
                              stacklevel=2)
            for ep in installed:
                if allow and ep.name not in allow:
                    continue
                dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
                try:
                    register = ep.load()
                    spec = register()
                except Exception as exc:
                    others = sorted(e.name for e in installed if e.name != ep.name)
                    raise BackendLoadError(
                        f"ipex backend {ep.name!r} (entry point {ep.value!r} of distribution {dist!r}) "
                        f"failed to register: {type(exc).__name__}: {exc}. Disable it with "
                        f"IPEX_BACKENDS={','.join(others) or '<other backends>'} (an allow-list), turn "
                        f"off all plugins with IPEX_BACKEND_AUTOLOAD=0, or pip uninstall {dist}."
                    ) from exc
                if spec is not None and not (hasattr(spec, "name") and hasattr(spec, "device_type")):
                    raise BackendLoadError(
                        f"ipex backend {ep.name!r} from {dist!r}: register() must return a BackendSpec or "
                        f"None, got {type(spec).__name__}. Fix the plugin or disable it with IPEX_BACKENDS."
                    )
                result[ep.name] = spec
        _loaded = result
        return dict(result)
