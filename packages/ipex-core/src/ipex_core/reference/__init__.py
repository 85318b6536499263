"""Plain-PyTorch reference implementations of the ``ipex`` ops.

Tests compare the native kernels against these; backends may also use them as
the semantic definition of an op. One module per op family.
"""

from ipex_core.reference.norm import add_rms_norm, rms_norm

__all__ = ["add_rms_norm", "rms_norm"]
