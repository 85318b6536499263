"""Linear + epilogue fusions of ``ipex.llm.modules`` on ``ipex::linear``.

Each module takes an ``nn.Linear`` (two for ``Linear2SiluMul``), packs its
weight once into ipex's blocked layout and runs one kernel per call: bf16/fp16
through oneDNN's brgemm (AMX) or ipex's streaming decode kernel, with the
activation / multiply / add applied while the output is stored, not in a
second pass. The original weight is not kept (one copy of the weights in
memory); ``state_dict()`` unpacks it under the ``nn.Linear`` keys and
``load_state_dict`` repacks, so checkpoints move both ways.
"""

from __future__ import annotations

import torch
from torch import nn

from ipex_core.ops import linear_ops as L

__all__ = [
    "Linear2SiluMul",
    "LinearAdd",
    "LinearAddAdd",
    "LinearGelu",
    "LinearMul",
    "LinearNewGelu",
    "LinearRelu",
    "LinearSilu",
    "LinearSiluMul",
]


def _check_linear(cls: str, linear) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{cls} takes a torch.nn.Linear; got {type(linear).__name__}")
    if linear.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{cls}: weight dtype must be float32, bfloat16 or float16; got {linear.weight.dtype}")
    if linear.weight.device.type != "cpu":
        raise ValueError(f"{cls}: the ipex CPU kernels need the Linear on cpu; got {linear.weight.device}")


def _broadcasts(*shapes) -> bool:
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        return False
    return True


class _PackedLinear(nn.Module):
    """One packed weight (or a gate/up pair) plus bias, exposed as nn.Linear-style state."""

    _epilogue = "none"
    _pair = False

    def __init__(self, *linears: nn.Linear):
        super().__init__()
        for lin in linears:
            _check_linear(type(self).__name__, lin)
        first = linears[0]
        if any(lin.weight.shape != first.weight.shape for lin in linears):
            raise ValueError(f"{type(self).__name__}: the Linears must have one shape")
        self.in_features = first.in_features
        self.out_features = first.out_features
        self._keys = ("s", "m") if self._pair else ("",)
        self._pack([lin.weight for lin in linears])
        bias = [lin.bias for lin in linears]
        if any(b is not None for b in bias):
            full = [b if b is not None else torch.zeros(self.out_features, dtype=first.weight.dtype) for b in bias]
            self.bias = nn.Parameter(torch.cat([b.detach() for b in full]), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def _pack(self, weights) -> None:
        packed = L.pack_linear_weight_pair(*weights) if self._pair else L.pack_linear_weight(weights[0])
        self.register_buffer("packed_weight", packed, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """A meta tensor with the nn.Linear weight's shape and dtype.

        Model code reads ``layer.weight.dtype`` / ``.shape`` (T5 does, every step);
        unpacking for that would cost a copy per call. The values live only in
        ``packed_weight``; :meth:`unpacked_weights` gives them back. Computing with
        this tensor fails loudly (meta), never silently.
        """
        return torch.empty(self.out_features, self.in_features, dtype=self.packed_weight.dtype, device="meta")

    def unpacked_weights(self) -> list[torch.Tensor]:
        """The weight(s) in nn.Linear's [out_features, in_features] layout."""
        if self._pair:
            return list(L.unpack_linear_weight_pair(self.packed_weight, self.out_features, self.in_features))
        return [L.unpack_linear_weight(self.packed_weight, self.out_features, self.in_features)]

    def _names(self):
        return [f"weight_{k}" if k else "weight" for k in self._keys], [f"bias_{k}" if k else "bias" for k in self._keys]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        wnames, bnames = self._names()
        for name, w in zip(wnames, self.unpacked_weights()):
            destination[prefix + name] = w
        if self.bias is not None:
            for name, b in zip(bnames, self.bias.detach().chunk(len(bnames))):
                destination[prefix + name] = b.clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        wnames, bnames = self._names()
        if all(prefix + n in state_dict for n in wnames):
            weights = [state_dict[prefix + n] for n in wnames]
            expected = (self.out_features, self.in_features)
            bad = [tuple(w.shape) for w in weights if tuple(w.shape) != expected]
            if bad:
                error_msgs.append(f"{type(self).__name__}: weight shape {bad[0]} != {expected}")
            else:
                dtype = self.packed_weight.dtype
                self._pack([w.to(dtype) for w in weights])
        elif strict:
            missing_keys.extend(prefix + n for n in wnames if prefix + n not in state_dict)
        if self.bias is not None:
            if all(prefix + n in state_dict for n in bnames):
                with torch.no_grad():
                    self.bias.copy_(torch.cat([state_dict[prefix + n] for n in bnames]))
            elif strict:
                missing_keys.extend(prefix + n for n in bnames if prefix + n not in state_dict)
        # A module without a bias does not take one: a checkpoint's bias is unexpected, as for nn.Linear
        # (it used to be dropped silently, "All keys matched").
        known = set(wnames) | (set(bnames) if self.bias is not None else set())
        if strict:
            unexpected_keys.extend(
                k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):] and k[len(prefix):] not in known
            )

    def _apply(self, fn, recurse=True):
        # Casting or moving must go through the unpacked weight: the packed
        # layout depends on the dtype (k pairs for bf16, single k for fp32).
        weights = [fn(w) for w in self.unpacked_weights()]
        super()._apply(fn, recurse)
        if weights[0].device.type == "cpu" and weights[0].dtype in (torch.float32, torch.bfloat16, torch.float16):
            self._pack(weights)
        else:
            raise RuntimeError(
                f"{type(self).__name__} runs on ipex's CPU kernels in float32/bfloat16/float16; cannot move or cast "
                f"it to {weights[0].device}/{weights[0].dtype}"
            )
        return self

    def _run(self, input: torch.Tensor, other: torch.Tensor | None = None,
             other_2: torch.Tensor | None = None) -> torch.Tensor:
        if input.dim() == 0:
            raise ValueError(f"{type(self).__name__}: input is 0-d (a scalar); like nn.Linear it needs at least one "
                             f"dimension, the last of in_features={self.in_features} (e.g. input.reshape(1, -1))")
        # The packed weight is padded along in_features (to pairs for bf16), so the kernel
        # alone cannot tell in_features from in_features + 1: check it here, as nn.Linear would.
        if input.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {input.shape[-1]} features in its last dimension; "
                             f"the wrapped Linear takes in_features={self.in_features}")
        if self._pair:
            return L.linear_pair_silu_mul(input, self.packed_weight, self.bias, self.out_features)
        if other is not None:
            out_shape = (*input.shape[:-1], self.out_features)
            # The common case (other already of the output's shape) costs one shape comparison.
            if not (isinstance(other, torch.Tensor) and other.shape == out_shape and (
                    other_2 is None or (isinstance(other_2, torch.Tensor) and other_2.shape == out_shape))):
                return self._run_broadcast(input, out_shape, other, other_2)
        return L.linear(input, self.packed_weight, self.bias, self.out_features, self._epilogue, other, other_2)

    # The fused epilogue with its other operand(s) taken out: (epilogue the kernel still applies, the rest).
    _UNFUSED = {
        "mul": ("none", lambda y, o: y * o[0]),
        "add": ("none", lambda y, o: y + o[0]),
        "add_add": ("none", lambda y, o: y + o[0] + o[1]),
        "silu_mul": ("silu", lambda y, o: y * o[0]),
    }

    def _run_broadcast(self, input: torch.Tensor, out_shape: tuple, other: torch.Tensor,
                       other_2: torch.Tensor | None) -> torch.Tensor:
        """The documented ``linear(input) * other`` (etc.) with PyTorch's broadcasting of ``other``.

        The kernel reads ``other`` as dense rows of the output's shape: an operand that broadcasts
        to that shape is expanded to it (and made contiguous) and the epilogue stays fused. One that
        would make the result larger than ``linear(input)`` (as ``linear(input) * other`` does in
        PyTorch) runs unfused: the linear on the kernel, then the plain PyTorch ops. As in the fused
        path, the operands are cast to the input's dtype and the result has it.
        """
        name = type(self).__name__
        labels = ["other_1", "other_2"] if self._epilogue == "add_add" else ["other"]
        others = [other, other_2][: len(labels)]
        for label, o in zip(labels, others):
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{name}: {label} must be a torch.Tensor; got {type(o).__name__}")
        try:
            target = torch.broadcast_shapes(out_shape, *(o.shape for o in others))
        except RuntimeError:
            bad = [f"{label} {tuple(o.shape)} does not" for label, o in zip(labels, others)
                   if not _broadcasts(out_shape, o.shape)]
            what = bad[0] if bad else " and ".join(f"{lb} {tuple(o.shape)}" for lb, o in zip(labels, others)) + " do not"
            raise ValueError(
                f"{name}: {what} broadcast with the linear's output {tuple(out_shape)} (input "
                f"{tuple(input.shape)}, out_features={self.out_features}); pass a tensor of the output's shape or "
                "one that broadcasts to it (e.g. [out_features] or [..., 1])"
            ) from None
        dtype = input.dtype
        others = [o.to(dtype) for o in others]
        if target == out_shape:
            others = [o if o.shape == out_shape else o.expand(out_shape).contiguous() for o in others]
            return L.linear(input, self.packed_weight, self.bias, self.out_features, self._epilogue, *others)
        epilogue, rest = self._UNFUSED[self._epilogue]
        y = L.linear(input, self.packed_weight, self.bias, self.out_features, epilogue)
        return rest(y, others)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._run(input)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.packed_weight.dtype}")


class _PackedLinearWithOther(_PackedLinear):
    """The fusions whose epilogue reads one more tensor, ``other`` (the documented keyword)."""

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self._run(input, other)


class LinearSilu(_PackedLinear):
    """``silu(linear(input))``."""

    _epilogue = "silu"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearSiluMul(_PackedLinearWithOther):
    """``silu(linear(input)) * other``."""

    _epilogue = "silu_mul"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class Linear2SiluMul(_PackedLinear):
    """``silu(linear_s(input)) * linear_m(input)``, both weights read in one pass (a gated MLP's gate/up)."""

    _pair = True

    def __init__(self, linear_s: nn.Linear, linear_m: nn.Linear):
        super().__init__(linear_s, linear_m)


class LinearRelu(_PackedLinear):
    """``relu(linear(input))``."""

    _epilogue = "relu"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearNewGelu(_PackedLinear):
    """``NewGELUActivation(linear(input))`` (the tanh approximation of GELU)."""

    _epilogue = "gelu_tanh"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearGelu(_PackedLinear):
    """``gelu(linear(input))`` (exact, erf form)."""

    _epilogue = "gelu"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearMul(_PackedLinearWithOther):
    """``linear(input) * other``."""

    _epilogue = "mul"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearAdd(_PackedLinearWithOther):
    """``linear(input) + other``."""

    _epilogue = "add"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)


class LinearAddAdd(_PackedLinear):
    """``linear(input) + other_1 + other_2``."""

    _epilogue = "add_add"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)

    def forward(self, input: torch.Tensor, other_1: torch.Tensor, other_2: torch.Tensor) -> torch.Tensor:
        return self._run(input, other_1, other_2)
