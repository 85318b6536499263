"""Linear ops on ipex's packed weight layout: packing, wrappers, fake implementations.

Layout (documented for the kernels in csrc/cpu/kernels/linear_kernels.h): W
[N, K] is cut into blocks of ``BLOCK_N`` output columns; each block is stored
as ``[K_pad / V, BLOCK_N, V]`` with ``V = 2`` (k pairs, the VNNI layout oneDNN's
brgemm reads) for bf16 (and fp16 where brgemm packs it) and ``V = 1`` for fp32.
"""

from __future__ import annotations

import torch

from ipex_core import _C

__all__ = [
    "BLOCK_N",
    "EPILOGUES",
    "linear",
    "linear_pair_silu_mul",
    "pack_linear_weight",
    "pack_linear_weight_pair",
    "unpack_linear_weight",
    "unpack_linear_weight_pair",
]

BLOCK_N = 32
EPILOGUES = ("none", "relu", "silu", "gelu", "gelu_tanh", "mul", "add", "add_add", "silu_mul")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _vnni_factor(dtype: torch.dtype) -> int:
    return _C.linear_vnni_factor(str(dtype).replace("torch.", ""))


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"pack_linear_weight: weight must be 2-D [out_features, in_features]; got {tuple(weight.shape)}")
    if weight.dtype not in _DTYPES:
        raise ValueError(f"pack_linear_weight: weight dtype must be one of {_DTYPES}; got {weight.dtype}")
    n, k = weight.shape
    v = _vnni_factor(weight.dtype)
    blocks = -(-n // BLOCK_N)
    k_pad = -(-k // v) * v
    src = weight.detach().contiguous()
    if blocks * BLOCK_N != n or k_pad != k:  # pad only when needed: packing a big weight costs one copy
        src = torch.zeros(blocks * BLOCK_N, k_pad, dtype=weight.dtype)
        src[:n, :k] = weight.detach()
    # [blocks, BLOCK_N, K_pad/V, V] -> [blocks, K_pad/V, BLOCK_N, V]
    return src.view(blocks, BLOCK_N, k_pad // v, v).permute(0, 2, 1, 3).contiguous()


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack an ``nn.Linear`` weight [N, K] for :func:`linear` (one copy, same dtype)."""
    return _blocks(weight)


def pack_linear_weight_pair(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Pack the gate and up weights of a gated MLP side by side for :func:`linear_pair_silu_mul`."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"pack_linear_weight_pair: gate and up weights must have one shape and dtype; got "
            f"{tuple(gate.shape)} {gate.dtype} and {tuple(up.shape)} {up.dtype}"
        )
    return torch.stack([_blocks(gate), _blocks(up)], dim=1).contiguous()


def unpack_linear_weight(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The [out_features, in_features] weight back from its packed form."""
    blocks, groups, block_n, v = packed.shape
    full = packed.permute(0, 2, 1, 3).reshape(blocks * block_n, groups * v)
    return full[:out_features, :in_features].contiguous()


def unpack_linear_weight_pair(packed: torch.Tensor, out_features: int, in_features: int):
    """(gate, up) weights back from a packed pair."""
    return tuple(unpack_linear_weight(packed[:, i], out_features, in_features) for i in range(2))


def linear(input, packed_weight, bias, out_features, epilogue="none", other=None, other2=None):
    """``epilogue(input @ W.T + bias)`` on a packed weight; see :data:`EPILOGUES`."""
    return torch.ops.ipex.linear(input, packed_weight, bias, out_features, epilogue, other, other2)


def linear_pair_silu_mul(input, packed_pair, bias, out_features):
    """``silu(input @ Wg.T + bg) * (input @ Wu.T + bu)`` reading both weights in one pass."""
    return torch.ops.ipex.linear_pair_silu_mul(input, packed_pair, bias, out_features)


def _fake_out(input, packed, out_features, op):
    torch._check(packed.dtype == input.dtype, lambda: f"{op}: packed weight dtype must match input")
    return input.new_empty((*input.shape[:-1], out_features))


@torch.library.register_fake("ipex::linear")
def _linear_fake(input, packed_weight, bias, out_features, epilogue, other=None, other2=None):
    torch._check(epilogue in EPILOGUES, lambda: f"ipex::linear: unknown epilogue {epilogue!r}")
    return _fake_out(input, packed_weight, out_features, "ipex::linear")


@torch.library.register_fake("ipex::linear_pair_silu_mul")
def _linear_pair_fake(input, packed_pair, bias, out_features):
    return _fake_out(input, packed_pair, out_features, "ipex::linear_pair_silu_mul")
