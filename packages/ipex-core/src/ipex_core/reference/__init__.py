"""Plain-PyTorch reference implementations of the ``ipex`` ops.

Tests compare the native kernels against these; backends may also use them as
the semantic definition of an op. One module per op family.
"""

from ipex_core.reference import attention as attention
from ipex_core.reference import conv as conv
from ipex_core.reference import onednn as onednn
from ipex_core.reference.layout import to_memory_format
from ipex_core.reference.linear import gelu_mul, linear, linear_pair_silu_mul, silu_mul
from ipex_core.reference.norm import add_rms_norm, rms_norm
from ipex_core.reference.rope import add_layer_norm, layer_norm, rotary_embedding

__all__ = [
    "attention",
    "add_layer_norm",
    "add_rms_norm",
    "conv",
    "gelu_mul",
    "layer_norm",
    "linear",
    "linear_pair_silu_mul",
    "onednn",
    "rms_norm",
    "rotary_embedding",
    "silu_mul",
    "to_memory_format",
]
