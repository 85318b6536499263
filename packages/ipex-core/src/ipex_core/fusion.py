"""The switch for oneDNN post-op fusion (``ipex.enable_onednn_fusion``).

What it turns off: the fusions ``ipex.optimize`` applies when it swaps modules,
i.e. folding a following activation (ReLU, GELU, SiLU, sigmoid, tanh,
hardswish) or residual add into the oneDNN convolution/linear call. Under
``graph_mode=True`` the compiled modules then carry no fused post-ops;
inductor's own oneDNN pattern fusions, which plain ``torch.compile`` applies
too, are inductor's and stay on. It is read when ``ipex.optimize`` runs, so
switch it before optimizing. It does not change the
explicit fused modules of ``ipex.llm.modules`` (a user who builds
``LinearSilu`` asked for that fusion by name), nor anything in stock PyTorch.
"""

from __future__ import annotations

__all__ = ["enable_onednn_fusion", "is_onednn_fusion_enabled"]

_enabled = True


def enable_onednn_fusion(enabled: bool) -> None:
    """Enable or disable oneDNN post-op fusion for subsequent ``ipex.optimize`` calls."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enable_onednn_fusion(enabled) takes a bool; got {type(enabled).__name__}")
    _enabled = enabled


def is_onednn_fusion_enabled() -> bool:
    """Whether ``ipex.optimize`` will fuse post-ops into oneDNN calls."""
    return _enabled
