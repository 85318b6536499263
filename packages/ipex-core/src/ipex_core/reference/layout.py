"""Reference of ``ipex::to_memory_format``: PyTorch's own copy between the two memory formats."""

from __future__ import annotations

import torch


def memory_format(dim: int, channels_last: bool) -> torch.memory_format:
    """The format ``ipex::to_memory_format`` writes for a ``dim``-D input (4 or 5)."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def to_memory_format(input: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A copy of ``input`` (4-D or 5-D) in channels-last or contiguous memory."""
    return input.clone(memory_format=memory_format(input.dim(), channels_last))
