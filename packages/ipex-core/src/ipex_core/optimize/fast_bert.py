"""``ipex.fast_bert``: the retired extension's BERT entry point, on ``ipex.optimize``'s inference path.

The retired extension ran BERT on libxsmm (TPP) kernels and was tuned for training; its
own docs sent inference users to ``ipex.optimize``. Here ``fast_bert`` is that inference
path for a BERT-style model (prepacked oneDNN Linears with fused GELU and residual adds),
so code written against the old API runs. Training (``optimizer=``) and unpadding are not
implemented: the first raises, the second warns, neither is silently ignored.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ipex_core.optimize.api import optimize
from ipex_core.optimize.modules import _PackedModule

__all__ = ["fast_bert"]

# transformers model types with BERT's encoder layout.
_BERT_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "ernie"})


def fast_bert(model: nn.Module, dtype: torch.dtype = torch.float32, optimizer=None, unpad: bool = False,
              seed=None) -> nn.Module:
    """Optimize a BERT model for inference (the retired ``ipex.fast_bert`` API).

    Args:
        model: the model, in eval mode, with its weights loaded.
        dtype: ``torch.float32`` (default) or ``torch.bfloat16``.
        optimizer: training is not implemented: anything but None raises NotImplementedError.
        unpad: the retired extension's training-time unpadding; not implemented (a warning), the
            sequences run padded with the same results.
        seed: the retired extension's libxsmm seed; accepted for compatibility, unused (no libxsmm).

    Returns:
        The optimized copy of ``model`` (``ipex.optimize(model, dtype=...)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"ipex.fast_bert takes a torch.nn.Module; got {type(model).__name__}")
    if optimizer is not None:
        return optimize(model, optimizer=optimizer)  # raises: training is not implemented
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"ipex.fast_bert: dtype must be torch.float32 or torch.bfloat16; got {dtype!r}")
    if any(isinstance(m, _PackedModule) for m in model.modules()):
        raise RuntimeError("ipex.fast_bert cannot be applied to a model already passed through ipex.optimize; "
                           "call it on the original model")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _BERT_TYPES:
        warnings.warn(f"ipex.fast_bert is meant for BERT-style encoders; this model's type is {model_type!r}. "
                      "Applying ipex.optimize's inference path to it.", UserWarning, stacklevel=2)
    if unpad:
        warnings.warn("ipex.fast_bert: unpad=True is not implemented; the sequences run padded (same results).",
                      UserWarning, stacklevel=2)
    return optimize(model, dtype=None if dtype == torch.float32 else dtype)
