"""On-demand oneDNN verbose output (``ipex.verbose``).

torch exposes a setter for oneDNN's verbose level but no getter, so we keep the
levels of the open scopes ourselves and, when one closes, set the level of the
newest one still open (any thread), or the level outside every scope; also on
exceptions and when scopes nest.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

from ipex_core import env

__all__ = ["verbose"]

_lock = threading.Lock()
# The open scopes of every thread, oldest first: (token, level). oneDNN's level is process-wide, so on exit
# the newest scope still open wins, or the level outside every scope. Restoring each scope's saved level
# (the previous form) assumed scopes close in reverse order; two threads' overlapping scopes left verbose on.
_active: list[tuple[object, int]] = []


def _initial_level() -> int:
    """The level outside every ipex.verbose scope: IPEX_VERBOSE if set, else what oneDNN started with
    (ONEDNN_VERBOSE / DNNL_VERBOSE; a named mode such as 'all' counts as 1). Reading only IPEX_VERBOSE
    made a scope's exit turn off the output a user had asked oneDNN for."""
    value = env.get("IPEX_VERBOSE")  # stripped; "" when unset
    if value:
        if value not in ("0", "1", "2"):
            raise ValueError(f"IPEX_VERBOSE must be 0, 1 or 2; got {value!r}")
        return int(value)
    onednn = (os.environ.get("ONEDNN_VERBOSE") or os.environ.get("DNNL_VERBOSE") or "0").strip()
    if onednn in ("0", "1", "2"):
        return int(onednn)
    return 0 if onednn.lower() == "none" else 1


def _set_level(level: int) -> None:
    if not torch._C._verbose.mkldnn_set_verbose(level):
        raise RuntimeError(
            "oneDNN refused to change its verbose level; is torch built with oneDNN "
            "(torch.backends.mkldnn.is_available())?"
        )


class verbose(contextlib.ContextDecorator):
    """Dump oneDNN verbose messages only inside the scope.

    Usable as ``with ipex.verbose(ipex.verbose.VERBOSE_ON): model(x)`` or as a
    decorator ``@ipex.verbose(ipex.verbose.VERBOSE_ON)``.
    """

    VERBOSE_OFF = 0
    VERBOSE_ON = 1
    VERBOSE_ON_CREATION = 2

    def __init__(self, level: int):
        if level not in (self.VERBOSE_OFF, self.VERBOSE_ON, self.VERBOSE_ON_CREATION):
            raise ValueError(
                f"ipex.verbose level must be ipex.verbose.VERBOSE_OFF (0), VERBOSE_ON (1) or "
                f"VERBOSE_ON_CREATION (2); got {level!r}"
            )
        self.level = level
        self._saved: list[object] = []

    def __enter__(self) -> verbose:
        token = object()
        with _lock:
            _active.append((token, self.level))
            _set_level(self.level)
        self._saved.append(token)  # this object's open scopes (it may be entered again, nested or recursively)
        return self

    def __exit__(self, *exc) -> bool:
        token = self._saved.pop()
        with _lock:
            for i, (t, _) in enumerate(_active):
                if t is token:
                    del _active[i]
                    break
            _set_level(_active[-1][1] if _active else _initial_level())
        return False


# IPEX_VERBOSE is the level outside every scope from the start, not only after a scope closed (that is
# when it used to take effect). Set only when the user set it: importing ipex changes nothing otherwise.
if env.get("IPEX_VERBOSE"):
    try:
        _set_level(_initial_level())
    except (ValueError, RuntimeError) as _exc:
        import warnings

        warnings.warn(f"ipex: IPEX_VERBOSE ignored: {_exc}", RuntimeWarning, stacklevel=2)
