"""On-demand oneDNN verbose output (``ipex.verbose``).

torch exposes a setter for oneDNN's verbose level but no getter, so we keep the
level we set ourselves and restore exactly that on exit, also on exceptions and
when scopes nest.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

from ipex_core import env

__all__ = ["verbose"]

_lock = threading.Lock()
_current_level: int | None = None


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
        self._saved: list[int] = []

    def __enter__(self) -> verbose:
        global _current_level
        with _lock:
            if _current_level is None:
                _current_level = _initial_level()
            self._saved.append(_current_level)
            _set_level(self.level)
            _current_level = self.level
        return self

    def __exit__(self, *exc) -> bool:
        global _current_level
        with _lock:
            previous = self._saved.pop()
            _set_level(previous)
            _current_level = previous
        return False
