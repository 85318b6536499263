"""``ipex::to_memory_format``: 4-D / 5-D tensors between channels-first and channels-last memory by a blocked
transpose (PyTorch's own copy into channels-first ran up to 10x slower: csrc/ops/layout_ops.cpp,
benchmarks/bench_layout.py)."""

from __future__ import annotations

import torch

from ipex_core.reference.layout import memory_format

__all__ = ["to_memory_format", "channels_first"]

_ipex = torch.ops.ipex


def to_memory_format(input: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A copy of ``input`` (4-D or 5-D) in channels-last memory (``torch.channels_last`` /
    ``torch.channels_last_3d``; ``channels_last=True``) or contiguous memory; always a new tensor."""
    return _ipex.to_memory_format(input, channels_last)


def channels_first(input: torch.Tensor) -> torch.Tensor:
    """``input.contiguous()``, by ipex's transpose where ``input`` is a channels-last 4-D / 5-D tensor (what
    oneDNN's convolutions write) in eager mode; under ``torch.compile``, ``contiguous()`` itself, which
    inductor lowers to its own copy."""
    if input.is_contiguous() or torch.compiler.is_compiling() or input.dim() not in (4, 5):
        return input.contiguous()
    return _ipex.to_memory_format(input, False)


@torch.library.register_fake("ipex::to_memory_format")
def _to_memory_format_fake(input, channels_last):
    torch._check(input.dim() in (4, 5), lambda: "ipex::to_memory_format: input must be 4-D [N, C, H, W] or 5-D "
                 f"[N, C, D, H, W] (the shapes with a channels-last memory format); got shape {tuple(input.shape)}")
    return torch.empty_like(input, memory_format=memory_format(input.dim(), channels_last))
