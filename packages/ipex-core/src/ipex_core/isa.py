"""CPU features and the ISA level ipex kernels run at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ipex_core import _C, env

__all__ = ["cpu_features", "max_isa", "active_isa", "set_isa", "isa_levels", "forced_isa"]

#: ISA levels, lowest first. Kernels exist for default, avx2 and avx512; the
#: bf16/AMX levels add brgemm-based paths on top of the AVX-512 kernels.
ISA_LEVELS = ("default", "avx2", "avx512", "avx512_bf16", "amx")


def cpu_features() -> dict[str, bool]:
    """Feature flags read from cpuid and XCR0 (AMX only when Linux granted tile data)."""
    return dict(_C.cpu_features())


def max_isa() -> str:
    """Highest ISA level this CPU supports."""
    return _C.max_isa()


def active_isa() -> str:
    """ISA level ipex kernels run at now."""
    return _C.active_isa()


def set_isa(level: str) -> None:
    """Force kernels to ``level`` (at or below :func:`max_isa`); ValueError otherwise."""
    _C.set_isa(level)


def isa_levels() -> list[str]:
    """Every level this CPU can run, lowest first (what the tests iterate over)."""
    top = ISA_LEVELS.index(max_isa())
    return list(ISA_LEVELS[: top + 1])


@contextlib.contextmanager
def forced_isa(level: str) -> Iterator[None]:
    """Run the block with kernels forced to ``level``, then restore the previous level."""
    previous = active_isa()
    set_isa(level)
    try:
        yield
    finally:
        set_isa(previous)


def _apply_env() -> None:
    level = env.get("IPEX_ISA")
    if level:
        try:
            set_isa(level)
        except ValueError as exc:
            raise ImportError(f"ipex-core: invalid IPEX_ISA: {exc}") from None
    else:
        set_isa(max_isa())


_apply_env()
