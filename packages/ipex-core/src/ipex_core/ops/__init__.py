"""Python entry points and fake (meta) implementations of the ``torch.ops.ipex`` ops.

The schemas and CPU kernels are native (``csrc/ops``); the fake implementations
in the modules here let ``torch.compile`` trace the ops without a graph break.
One module per op family; importing this package registers them all.
"""

from ipex_core.ops import attention as attention_ops
from ipex_core.ops import conv as conv_ops
from ipex_core.ops import elementwise as elementwise_ops
from ipex_core.ops import layout as layout_ops
from ipex_core.ops import linear as linear_ops
from ipex_core.ops import onednn as onednn_ops
from ipex_core.ops.norm import add_rms_norm, add_rms_norm_, rms_norm

__all__ = ["add_rms_norm", "add_rms_norm_", "attention_ops", "conv_ops", "elementwise_ops", "layout_ops", "linear_ops", "onednn_ops", "rms_norm"]
