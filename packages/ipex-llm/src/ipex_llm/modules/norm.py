"""Normalisation modules."""

from __future__ import annotations

import torch
from torch import nn

from ipex_llm.functional import elementwise as FE
from ipex_llm.functional import norm as F

__all__ = ["FastLayerNorm", "RMSNorm"]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension on the ``ipex::rms_norm`` kernel.

    Args:
        hidden_size: size of the last dimension.
        eps: added to the mean square before the reciprocal square root.
        weight: initial scale (a tensor or Parameter of ``hidden_size`` elements);
            ones when omitted.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, weight: torch.Tensor | None = None):
        super().__init__()
        if weight is None:
            weight = torch.ones(hidden_size)
        if weight.dim() != 1 or weight.shape[0] != hidden_size:
            raise ValueError(
                f"RMSNorm: weight must be 1-D with hidden_size={hidden_size} elements; got shape "
                f"{tuple(weight.shape)}"
            )
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden_states, self.weight, self.eps)

    @classmethod
    def apply_function(cls, hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(hidden_states, weight, eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class FastLayerNorm(nn.Module):
    """LayerNorm over the trailing ``normalized_shape`` dimensions on the ``ipex::layer_norm`` kernel.

    Args:
        normalized_shape: the input's last dimension(s), an int or a sequence (as ``nn.LayerNorm``:
            ``[2, 4]`` normalises over the last two dimensions, which must be 2 and 4).
        eps: added to the variance.
        weight, bias: the affine parameters of shape ``normalized_shape`` (either may be None).
    """

    def __init__(self, normalized_shape, eps: float, weight: torch.Tensor | None, bias: torch.Tensor | None = None):
        super().__init__()
        shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
        if not shape:
            raise ValueError("FastLayerNorm: normalized_shape must name at least one dimension (the input's last); "
                             "got an empty sequence")
        self.normalized_shape = tuple(shape)
        self.eps = eps
        for name, t in (("weight", weight), ("bias", bias)):
            if t is None:
                self.register_parameter(name, None)
            else:
                if t.shape != self.normalized_shape:
                    raise ValueError(f"FastLayerNorm: {name} must have shape {self.normalized_shape}; got {tuple(t.shape)}")
                setattr(self, name, t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone()))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return FE.fast_layer_norm(hidden_states, self.normalized_shape, self.weight, self.bias, self.eps)

    @classmethod
    def apply_function(cls, hidden_states, normalized_shape, weight, bias, eps):
        return FE.fast_layer_norm(hidden_states, normalized_shape, weight, bias, eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"
