"""``concat_linear``: Linears that read the same input run as one GEMM.

The group's weights are concatenated along the output dimension into one
:class:`ConcatLinear` (registered on the members' parent module as
``ipex_concat_linear_<i>``, contributing nothing to ``state_dict()``). Each
original Linear is replaced by a :class:`ConcatLinearMember` that holds no
tensor of its own but saves and loads its slice under its old keys, so
checkpoints stay interchangeable with the original model.

Two ways a group is used: where torch.fx traced the module, its rewritten
forward calls the group once and takes the slices; elsewhere (groups found by
watching which Linears read the same tensor in the ``sample_input`` run) each
member is called as before, the first one runs the group's GEMM and the others
take their slices of it while the input is the same, unmodified tensor. Under
``torch.compile`` every member computes the group's GEMM and slices it: the
compiler's common-subexpression elimination leaves one GEMM.
"""

from __future__ import annotations

import torch
from torch import nn

from ipex_core.optimize.modules import PackedLinear, traced

__all__ = ["ConcatLinear", "ConcatLinearMember"]


class ConcatLinear(PackedLinear):
    """One Linear whose output is the concatenation of its members' outputs; returns the slices."""

    def __init__(self, linears: list[nn.Linear], kernel: str, batch_size: int | None):
        weight = torch.cat([m.weight.detach() for m in linears])
        bias = None
        if any(m.bias is not None for m in linears):
            bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features)
                              for m in linears])
        merged = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        merged.weight = nn.Parameter(weight, requires_grad=False)
        merged.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        super().__init__(merged, kernel=kernel, batch_size=batch_size)
        self.sizes = [m.out_features for m in linears]
        self._shared = None  # ConcatLinearMember's run-time cache (eager)

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(input).split(self.sizes, dim=-1)

    # New weights (load_state_dict, .to()) make cached outputs stale.
    def _set_weight(self, dense: torch.Tensor, kernel: str | None = None) -> None:
        self._shared = None
        super()._set_weight(dense, kernel)

    def _apply(self, fn, recurse=True):
        self._shared = None
        return super()._apply(fn, recurse)

    # The members own the state_dict entries.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        pass

    def _offsets(self, index: int) -> tuple[int, int]:
        start = sum(self.sizes[:index])
        return start, start + self.sizes[index]

    def read_slice(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo, hi = self._offsets(index)
        w = self.dense_weight()[lo:hi].clone()
        return w, None if self.bias is None else self.bias.detach()[lo:hi].clone()

    def write_slice(self, index: int, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        lo, hi = self._offsets(index)
        full = self.dense_weight().clone()
        full[lo:hi] = weight.to(full.dtype)
        self._set_weight(full)
        if bias is not None and self.bias is not None:
            with torch.no_grad():
                self.bias[lo:hi] = bias.to(self.bias.dtype)
        self._shared = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split={self.sizes}"


class ConcatLinearMember(nn.Module):
    """Stands where one Linear of a concat group was: its ``state_dict`` slice, no compute."""

    def __init__(self, group: ConcatLinear, index: int, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.has_bias = linear.bias is not None
        self.index = index
        object.__setattr__(self, "_group", [group])  # a plain reference: the group is registered elsewhere

    @property
    def group(self) -> ConcatLinear:
        return self._group[0]

    # Code that reads a projection's parameters (``x.to(self.q.weight.dtype)``, a common transformers
    # idiom) gets this member's slice of the group: a new dense tensor per read, so writing into it
    # changes nothing (load_state_dict does).
    @property
    def weight(self) -> torch.Tensor:
        return self.group.read_slice(self.index)[0]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.group.read_slice(self.index)[1] if self.has_bias else None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        w, b = self.group.read_slice(self.index)
        destination[prefix + "weight"] = w
        if self.has_bias:
            destination[prefix + "bias"] = b

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        keys = ["weight"] + (["bias"] if self.has_bias else [])
        shapes = {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}
        values = {}
        for k in keys:
            if prefix + k not in state_dict:
                if strict:
                    missing_keys.append(prefix + k)
                continue
            v = state_dict[prefix + k]
            if tuple(v.shape) != shapes[k]:
                error_msgs.append(f"size mismatch for {prefix + k}: copying a param with shape {tuple(v.shape)} "
                                  f"from checkpoint, the shape in current model is {shapes[k]}.")
                return
            values[k] = v.detach()
        if "weight" in values or "bias" in values:
            w, b = self.group.read_slice(self.index)
            self.group.write_slice(self.index, values.get("weight", w), values.get("bias", b))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.group
        if traced(input):
            return group(input)[self.index]
        # The cache is one tuple, read and replaced whole: (input, its version, outputs, members that read it).
        # A member reading twice means a new forward pass (one that did not call every member): recompute.
        # An inference tensor (made under torch.inference_mode) has no version counter: there the cache
        # trusts the tensor's identity alone (an in-place change of the shared input between two sibling
        # projections is not seen).
        version = -1 if input.is_inference() else input._version
        cache = group._shared
        if cache is not None and cache[0] is input and cache[1] == version and self.index not in cache[3]:
            read = cache[3] | {self.index}
            group._shared = None if len(read) == len(cache[2]) else (cache[0], cache[1], cache[2], read)
            return cache[2][self.index]
        outs = group(input)
        group._shared = (input, version, outs, frozenset((self.index,)))
        return outs[self.index]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
                f"computed in concat group slice {self.index}")
