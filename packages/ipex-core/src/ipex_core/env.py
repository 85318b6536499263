"""Every ``IPEX_*`` environment variable ipex reads, with its default and meaning.

This is the one place they are defined; other modules call :func:`get` with a
name from :data:`VARIABLES` so that an unknown or mistyped name fails loudly in
development instead of silently reading nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["EnvVar", "VARIABLES", "get", "get_bool", "describe"]


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str


VARIABLES: dict[str, EnvVar] = {
    v.name: v
    for v in (
        EnvVar(
            "IPEX_ISA",
            "",
            "Force kernels to an ISA level at or below what the CPU supports: "
            "default, avx2, avx512, avx512_bf16, amx. Empty: the best level cpuid reports.",
        ),
        EnvVar(
            "IPEX_BACKENDS",
            "",
            "Comma-separated allow-list of backend plugin names (entry-point group "
            "'ipex.backends') to load. Empty: every installed backend.",
        ),
        EnvVar(
            "IPEX_BACKEND_AUTOLOAD",
            "1",
            "0 disables loading backend plugins altogether (ipex then uses only its CPU kernels).",
        ),
        EnvVar(
            "IPEX_LINEAR_SMALL_M",
            "",
            "Rows (tokens) up to which ipex::linear uses its streaming decode kernel instead of "
            "the large-M one (bf16 AMX tiles, else brgemm). Empty: the measured default (bf16: 16 with "
            "AMX, 8 with AVX512-BF16 only, else 0; 2 for fp16; 8 for fp32). A tuning knob.",
        ),
        EnvVar(
            "IPEX_LINEAR_PREFETCH_BYTES",
            "4096",
            "How far ahead (bytes) ipex::linear's decode kernels prefetch the weights they stream; "
            "0 turns the software prefetch off. A tuning knob.",
        ),
        EnvVar(
            "IPEX_HUGE_PAGE_OUTPUTS",
            "1",
            "0 (or false/no/off) stops ipex ops from asking for transparent huge pages (madvise) on outputs of 32 MiB and "
            "more, which glibc maps afresh on every call; with it, their first writes fault 2 MiB at a time.",
        ),
        EnvVar(
            "IPEX_GRAPH_MODE_CPP_WRAPPER",
            "1",
            "0 (or false/no/off) compiles ipex.optimize(graph_mode=True) models with inductor's Python wrapper "
            "instead of its C++ one: a faster first call of each input shape (BERT-base: about 9 s instead of 22 s), "
            "slower calls after it (BERT-base bf16: 7% slower).",
        ),
        EnvVar(
            "IPEX_CONV_PACKINGS",
            "8",
            "For how many of the input shapes it was last called with each convolution ipex.optimize prepacked "
            "keeps a oneDNN weight packed (oneDNN's blocked weight depends on the input shape; a call with a shape "
            "not among them packs one, dropping the least recently used; a detection head shared by 5 feature "
            "levels sees 5 shapes in every call). Graph mode compiles a graph of its own for as many input "
            "shapes, 4 at most. Each packing costs the layer's weight bytes again (for a model of several GB "
            "called at varying shapes, lower it); 1 keeps one packing, repacked whenever the shape changes.",
        ),
        EnvVar(
            "IPEX_CONV_PACKINGS_MB",
            "1024",
            "MiB the per-shape packings of all prepacked convolutions may take in all, process-wide, beyond each "
            "layer's own weight (see IPEX_CONV_PACKINGS). Past it a layer replaces its least recently used packing, "
            "or packs its one weight again, instead of adding one. 0: one packing per layer.",
        ),
        EnvVar(
            "IPEX_FP32_BF16X3",
            "1",
            "0 (or false/no/off) keeps ipex.optimize's float32 1x1 convolutions (the 1x1 GEMM kernel) and float32 "
            "Linears on float32 FMAs (MKL, oneDNN). By default, on CPUs with AMX-BF16, 1x1 convolutions of 128 "
            "output channels or more and Linears of 128 output features or more (a multiple of 32) fed 16 rows or "
            "more run as three bf16 GEMMs on AMX tiles (x_hi w_hi + "
            "x_hi w_lo + x_lo w_hi, each value split into two bf16 parts, fp32 accumulation): within a few 1e-6 of "
            "the output's scale, as the Winograd kernel, against about 5e-7 in float32. Read when a layer packs its "
            "weight.",
        ),
        EnvVar(
            "IPEX_VERBOSE",
            "",
            "The oneDNN verbose level ipex.verbose restores outside its scopes: 0 off, 1 on, 2 on with "
            "kernel creation. Default: what oneDNN started with (ONEDNN_VERBOSE / DNNL_VERBOSE).",
        ),
    )
}


def _var(name: str) -> EnvVar:
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(f"{name} is not an ipex environment variable; known: {sorted(VARIABLES)}") from None


def get(name: str) -> str:
    """The value of ``name`` in the environment, or its documented default."""
    var = _var(name)
    return os.environ.get(name, var.default).strip()


def get_bool(name: str) -> bool:
    """``name`` read as a boolean: 0/false/no/off are False, anything else True; set but empty is its
    documented default (``IPEX_BACKEND_AUTOLOAD=`` used to turn plugins off)."""
    value = get(name) or _var(name).default.strip()
    return value.lower() not in ("0", "false", "no", "off", "")


def describe() -> list[dict[str, str]]:
    """Name, current value, default and meaning of every variable (for ``ipex doctor``)."""
    return [
        {"name": v.name, "value": os.environ.get(v.name, ""), "default": v.default, "meaning": v.meaning}
        for v in VARIABLES.values()
    ]
