"""``ipex.optimize`` (inference): BatchNorm folding, dropout removal, dtype casting, oneDNN weight
prepacking with post-op fusion, oneDNN LSTM, concat_linear, and graph mode through ``torch.compile``.

See :func:`ipex_core.optimize.api.optimize` for the knobs and ``modules.py`` for what the swapped
modules keep of the ones they replace.
"""

from ipex_core.optimize.api import optimize
from ipex_core.optimize.concat_linear import ConcatLinear, ConcatLinearMember
from ipex_core.optimize.fast_bert import fast_bert
from ipex_core.optimize.lstm import PackedLSTM
from ipex_core.optimize.modules import (
    FoldedBatchNorm,
    PackedConv1d,
    PackedConv2d,
    PackedConv3d,
    PackedConvTranspose2d,
    PackedConvTranspose3d,
    PackedLinear,
    PostOp,
)

__all__ = [
    "ConcatLinear",
    "ConcatLinearMember",
    "FoldedBatchNorm",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConv3d",
    "PackedConvTranspose2d",
    "PackedConvTranspose3d",
    "PackedLSTM",
    "PackedLinear",
    "PostOp",
    "fast_bert",
    "optimize",
]
