"""ipex::to_memory_format (and ops.layout.channels_first): channels-first <-> channels-last copies by ipex's
blocked transpose, against PyTorch's Tensor.contiguous(memory_format=...)."""

from __future__ import annotations

import pytest
import torch

from ipex_core import reference
from ipex_core.ops.layout import channels_first, to_memory_format

SHAPES = [(1, 64, 56, 56), (3, 17, 5, 33), (2, 16, 1, 16), (1, 1, 7, 9), (2, 3, 7, 9, 11), (1, 64, 4, 12, 12),
          (1, 40, 1, 1)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]  # 8- and 1-byte: PyTorch's copy


def _cl(shape):
    return torch.channels_last if len(shape) == 4 else torch.channels_last_3d


def _values(shape, dtype):
    # every element distinct (as far as the dtype holds them), so a misplaced one shows
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
    return (x % 251).to(dtype) if dtype in (torch.uint8, torch.bfloat16, torch.float16) else x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_both_directions_equal_pytorch(isa, shape, dtype):
    x = _values(shape, dtype)
    cl = x.contiguous(memory_format=_cl(shape))
    first = to_memory_format(cl, False)
    assert first.is_contiguous() and torch.equal(first, x)
    last = to_memory_format(x, True)
    assert last.is_contiguous(memory_format=_cl(shape)) and torch.equal(last, x)
    for ours, ref in ((first, reference.to_memory_format(cl, False)), (last, reference.to_memory_format(x, True))):
        assert ours.stride() == ref.stride() and torch.equal(ours, ref)


def test_wide_batched_and_remainder_panels(isa):
    # rows and columns that are no multiple of the 16x16 blocks, several images
    x = torch.randn(3, 45, 19, 21, dtype=torch.bfloat16)
    assert torch.equal(to_memory_format(x.contiguous(memory_format=torch.channels_last), False), x)
    assert torch.equal(to_memory_format(x, True), x)


def test_returns_a_new_tensor_even_in_the_requested_format():
    x = torch.randn(2, 8, 3, 3)
    y = to_memory_format(x, False)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_channels_first_helper():
    x = torch.randn(1, 32, 9, 10)
    cl = x.contiguous(memory_format=torch.channels_last)
    y = channels_first(cl)
    assert y.is_contiguous() and torch.equal(y, x)
    assert channels_first(x) is x  # already contiguous: no copy, as Tensor.contiguous()
    t = torch.randn(4, 6).t()  # not 4-D / 5-D: Tensor.contiguous()
    assert torch.equal(channels_first(t), t) and channels_first(t).is_contiguous()


def test_non_dense_input_falls_back_to_pytorch():
    x = torch.randn(2, 8, 10, 10)[:, :, ::2]  # neither layout
    first, last = to_memory_format(x, False), to_memory_format(x, True)
    assert torch.equal(first, x) and first.is_contiguous()
    assert torch.equal(last, x) and last.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (0, 3, 2, 4, 5)])
def test_empty_tensors(shape, dtype):
    # empty tensors are contiguous but not always channels-last contiguous: nothing to transpose
    x = torch.empty(shape, dtype=dtype)
    assert to_memory_format(x, True).shape == x.shape
    assert to_memory_format(x.contiguous(memory_format=_cl(shape)), False).shape == x.shape


def test_bad_rank_is_a_clear_error():
    with pytest.raises(RuntimeError, match="must be 4-D"):
        to_memory_format(torch.randn(3, 4, 5), True)
