"""Reference of ``ipex::to_memory_format``: PyTorch's own copy between the two memory formats."""

from __future__ import annotations

import torch


def to_memory_format(input: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A copy of ``input`` (4-D or 5-D) in channels-last or contiguous memory."""
    fmt = (torch.channels_last if input.dim() == 4 else torch.channels_last_3d) if channels_last \
        else torch.contiguous_format
    return input.clone(memory_format=fmt)
