"""The modules ``ipex.optimize`` swaps in: oneDNN-prepacked Linear / Conv / ConvTranspose.

Each one holds its weight once, in the layout its kernel reads (oneDNN's blocked
layout as an opaque mkldnn tensor, or the dense weight for the stock kernel),
and runs its post-ops (activation, residual add) inside the same oneDNN call.
(Under torch.autocast a float32 layer also keeps a low-precision copy of
itself: _PackedModule._autocast_twin.)

What stays as in the module it replaced: the ``state_dict()`` keys, shapes and
dtypes (the blocked weight is converted back to the plain layout on save, and
re-packed on ``load_state_dict``), ``.to()`` / ``.float()`` / ``.bfloat16()``
(re-packs), ``copy.deepcopy`` and ``repr``. A folded BatchNorm keeps its own
parameters in a :class:`FoldedBatchNorm` at its old place, so a checkpoint of
the original model loads into the optimized one and the other way round.

Inputs: a module whose weight is bfloat16/float16 casts a floating-point input
of another dtype to its own dtype, so an fp32 input works on a bf16 model; the
output comes out in the module's dtype.
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ipex_core import env as _env
from ipex_core.ops import onednn as _onednn
from ipex_core.ops.conv import bf16x3_default, conv1x1_weight, winograd_weight
from ipex_core.ops.layout import channels_first
from ipex_core.ops.linear import pack_linear_weight as _pack_ipex_linear_weight
from ipex_core.reference.onednn import apply_binary, apply_unary

__all__ = [
    "FoldedBatchNorm",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConv3d",
    "PackedConvTranspose2d",
    "PackedConvTranspose3d",
    "PackedLinear",
    "PostOp",
]

_mkldnn = torch.ops.mkldnn
_ipex = torch.ops.ipex

# Kernels a swapped module can run (ipex.optimize's auto_kernel_selection picks
# among them): "onednn" = blocked weight + fused oneDNN kernel; "mkl" = MKL
# packed sgemm (fp32 Linear only; keeps the dense weight too); "dense" = stock
# PyTorch kernel on the dense weight, post-ops unfused; "winograd" = ipex's
# Winograd F(4x4, 3x3) kernel (fp32 or bf16 3x3 stride-1 Conv2d, computed in fp32, see
# winograd_supported; keeps the dense weight and the transformed one, ReLU fused); "brgemm" = ipex's
# 1x1 convolution as one GEMM (fp32 1x1 stride-1 Conv2d, see conv1x1_supported; keeps the dense
# weight and a column-blocked copy, in float32 or, on AMX, its bf16x3 form; residual add and ReLU fused);
# for Linear, "brgemm" = ipex's own GEMM (``ipex::linear``, the kernel of ipex.llm's linears; keeps the
# dense weight and a copy in ipex's blocked layout, ReLU / GELU / SiLU / a residual add or multiply fused;
# a float32 Linear on AMX: ``ipex::conv1x1``'s bf16x3 GEMM over its rows, ReLU / a residual add fused).
KERNELS = ("onednn", "mkl", "dense", "winograd", "brgemm")
_REPACK_LOCK = threading.RLock()  # see _PackedModule._repack_for (reentrant: _set_weight may run under it)
# The bytes all layers' packings beyond their own weight take, process-wide (see _PackedModule._add_packing).
_EXTRA_PACKING_BYTES = [0]
# The weight copy each kernel runs on, kept beside the dense weight (rebuilt by _set_weight).
_KERNEL_WEIGHTS = {"mkl": "_mkl_weight", "winograd": "_winograd_weight", "brgemm": "_brgemm_weight"}


def traced(input) -> bool:
    """Whether this call of a layer is being traced (by dynamo, or by make_fx / export on fake tensors) rather than
    run: the layer must not change then. Not torch.compiler.is_compiling() alone: that is one process-wide flag,
    True in every thread while any thread compiles, and an eager call in another thread then skipped packing for
    its shape and, under autocast, computed in float32 (a graph compiled right after froze that state)."""
    return torch.compiler.is_dynamo_compiling() or (torch.compiler.is_compiling() and type(input) is not torch.Tensor)


def packings_budget_bytes() -> int:
    """IPEX_CONV_PACKINGS_MB in bytes: what the packings beyond each convolution's own weight may take in all."""
    value = _env.get("IPEX_CONV_PACKINGS_MB")
    try:
        mib = float(value)
    except ValueError:
        mib = -1.0
    if not 0 <= mib < float("inf"):
        raise ValueError(f"IPEX_CONV_PACKINGS_MB={value!r}: expected a number of MiB, 0 or more (the memory the "
                         "extra per-shape packings of prepacked convolutions may take in all; default 1024)")
    return int(mib * 2**20)


def _account_extra(cell: list, extra: int) -> None:
    """Set one layer's share of _EXTRA_PACKING_BYTES (``cell``) to ``extra``. (Under _REPACK_LOCK.)"""
    _EXTRA_PACKING_BYTES[0] += extra - cell[0]
    cell[0] = extra


def _forget_extra(cell: list) -> None:
    with _REPACK_LOCK:
        _account_extra(cell, 0)


def packings_per_layer() -> int:
    """IPEX_CONV_PACKINGS: for how many input shapes a prepacked convolution keeps a packed weight (see
    _PackedModule._weight_for)."""
    value = _env.get("IPEX_CONV_PACKINGS")
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"IPEX_CONV_PACKINGS={value!r}: expected a whole number of at least 1 (the input shapes "
                         "each prepacked convolution keeps a packed weight for; default 8)")
    return count


class PostOp:
    """What runs after the GEMM/convolution: ``unary(binary(y, other))``.

    ``binary`` is ``None`` or one of add/sub/mul/div with a second input of the
    output's shape; ``unary`` is a name of :data:`ipex_core.ops.onednn.UNARY_ATTRS`.
    """

    __slots__ = ("unary", "scalars", "algorithm", "binary", "inplace")

    def __init__(self, unary: str = "none", scalars=(), algorithm: str | None = None, binary: str | None = None,
                 inplace: bool = False):
        if unary not in _onednn.UNARY_ATTRS:
            raise ValueError(f"unknown unary post-op {unary!r}; use one of {_onednn.UNARY_ATTRS}")
        if binary is not None and binary not in _onednn.BINARY_ATTRS:
            raise ValueError(f"unknown binary post-op {binary!r}; use one of {_onednn.BINARY_ATTRS}")
        self.unary = unary
        self.scalars = list(scalars)
        self.algorithm = algorithm
        self.binary = binary
        # The graph analysis found the second input dead after this layer: a convolution may
        # accumulate into it (oneDNN's sum post-op, ipex::conv1x1_add_) instead of writing a new tensor.
        self.inplace = inplace

    def __repr__(self) -> str:
        parts = []
        if self.binary:
            parts.append(self.binary)
        if self.unary != "none":
            parts.append(self.unary if self.algorithm in (None, "none", "") else f"{self.unary}_{self.algorithm}")
        return "+".join(parts) or "none"

    def __eq__(self, other) -> bool:
        return isinstance(other, PostOp) and repr(self) == repr(other) and self.scalars == other.scalars

    def __hash__(self) -> int:
        return hash(repr(self))

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)

    def apply_unfused(self, y: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        if self.binary is not None:
            y = apply_binary(y, other, self.binary)
        return apply_unary(y, self.unary, self.scalars, self.algorithm)


@functools.cache
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's kernels run ``dtype`` on this CPU: float32 always, bfloat16 / float16 where the CPU
    has them (AVX512-BF16 or AMX; AVX512-FP16 or AMX-FP16), nothing else."""
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False


NO_POST_OP = PostOp()  # what a swapped layer called as a module runs after itself: nothing


class _NoBackward(torch.autograd.Function):
    """Identity forward; a backward that says why there is none."""

    @staticmethod
    def forward(ctx, output, input, layer_name):
        ctx.layer_name = layer_name
        # A copy, not a view: code that changes the output in place (`y += 1`) may not modify a view that a
        # custom Function returned. Only the rare calls that take this path pay for it (see _inference_only).
        return output.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            f"{ctx.layer_name}: ipex.optimize optimized this model for inference, and its packed layers compute "
            "no gradients. Take gradients (saliency maps, Grad-CAM, training) from the original model.")


def _inference_only(layer: nn.Module, input: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``output``, made to refuse a backward when ``input`` asks for gradients: oneDNN's packed kernels have
    none, and the gradients used to come out silently missing (x.grad None, torch only warned)."""
    # The ipex ops refuse a backward themselves (their Autograd kernel, csrc/ops/autograd.cpp, ends the graph
    # in a NotImplemented node); mkldnn's convolutions only warn and give no gradient: they need it added here.
    if input.requires_grad and torch.is_grad_enabled() and type(output.grad_fn).__name__ != "NotImplemented":
        return _NoBackward.apply(output, input, type(layer).__name__)
    return output


def link_folded(layer: _PackedModule, bn: FoldedBatchNorm) -> None:
    """Point ``layer`` and the BatchNorm folded into it at each other (plain references, not submodules)."""
    layer.__dict__["_folded_bn"] = bn
    bn.__dict__["_owner"] = layer


class _PackedModule(nn.Module):
    """Shared machinery: the weight kept in kernel layout, state_dict in plain layout.

    Subclasses implement ``_pack(dense)`` and ``_unpack(packed)`` for the
    ``weight`` parameter. ``_folded_bn`` (set by :func:`link_folded`) is the
    :class:`FoldedBatchNorm` whose scale and shift are baked into the weight;
    the bias the kernel adds is then ``_bias_folded``, while ``bias`` keeps the
    layer's own (unfolded) bias for ``state_dict()``.
    """

    kernel: str

    def _init_common(self, kernel: str, post_op: PostOp | None) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; use one of {KERNELS}")
        self.kernel = kernel
        self.post_op = post_op if post_op is not None else PostOp()
        self.__dict__["_folded_bn"] = None  # FoldedBatchNorm, a plain reference (not a submodule)
        self.register_buffer("_bias_folded", None, persistent=False)

    # -- layout -----------------------------------------------------------------------------------

    def _pack(self, dense: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unpack(self, stored: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _brgemm_weight_of(self, dense: torch.Tensor) -> torch.Tensor:
        """The brgemm kernel's copy of the (dense) weight: a 1x1 convolution's column blocks."""
        return conv1x1_weight(dense)

    def _kernel_runs(self, kernel: str, dtype: torch.dtype) -> bool:
        """Whether ``kernel`` computes this layer in ``dtype``, one of oneDNN's dtypes on this CPU (onednn_runs):
        each kernel's own limits."""
        return {"mkl": dtype == torch.float32, "winograd": dtype in WINOGRAD_DTYPES,
                "brgemm": dtype == torch.float32}.get(kernel, True)

    def _weight_is_packed(self) -> bool:
        # Kept as a flag, not read from the tensor: while torch.compile traces, the packed weight is a fake
        # tensor whose is_mkldnn is False, and the packed [out, in, k] weight went into a dense
        # conv_transpose (output_size=) or linear (Linear + BatchNorm1d on 3-D input) as if it were plain.
        return self.__dict__.get("_packed", False)

    def _set_weight(self, dense: torch.Tensor, kernel: str | None = None) -> None:
        """Store ``dense`` (the effective, folded weight) in the layout of ``kernel`` (default: this module's)."""
        kernel = kernel or self.kernel
        dense = dense.detach()
        self.__dict__.pop("_autocast_copy", None)  # made from the old weights (see _autocast_twin)
        self._drop_packings()  # likewise
        stored = self._pack(dense) if kernel == "onednn" else _dense_layout(self._in_weight_layout(dense))
        self.__dict__["_packed"] = kernel == "onednn"
        self.__dict__.pop("_raw_dense", None)  # new weights: the raw dense copy (if any) is stale
        self._parameters["weight"] = nn.Parameter(stored, requires_grad=False)
        if kernel == "mkl":
            self._mkl_weight = torch.ops.mkl._mkl_reorder_linear_weight(stored, self._mkl_batch)
        if kernel == "winograd":
            self._winograd_weight = winograd_weight(stored)
        if kernel == "brgemm":
            self._brgemm_weight = self._brgemm_weight_of(stored)

    def __setstate__(self, state):
        super().__setstate__(state)
        # A layer pickled before the Winograd weight took column blocks held it as [36, in, out]: rebuilt.
        u = self.__dict__.get("_winograd_weight")
        if u is not None and u.dim() == 3:
            self._winograd_weight = winograd_weight(self.weight.detach())

    def _weight_for(self, input: torch.Tensor) -> torch.Tensor:
        """A convolution's oneDNN weight packed for ``input``'s shape (see _repack_for). Once a layer has seen a
        second shape it keeps a packing for each of the last IPEX_CONV_PACKINGS shapes it was called with
        (``_packings``, least recently used out; the ``weight`` parameter is one of them, that of ``_packed_for``),
        so calls alternating between a few shapes (a server's batch sizes, images of a few sizes, the uneven
        batch slices of ipex.cpu.runtime's streams) reorder no weight once each shape has been seen. (Calls of
        several threads with shapes new to the layer may each run a weight packed for another one's shape:
        right, only slower.)"""
        if self.kernel != "onednn" and "_settle_kernel" not in self.__dict__:
            return self.weight
        packings = self.__dict__.get("_packings")
        if traced(input):
            # A traced call must not change the module. Traced with static shapes (graph mode compiles a model
            # with such layers per input shape, after an eager call at that shape: graph_mode._InferenceCall),
            # the packing that call made goes into the graph; with symbolic shapes, comparing them would
            # specialize the graph, and the parameter goes in.
            if packings and all(type(s) is int for s in input.shape):
                return packings.get(tuple(input.shape), self.weight)
            return self.weight
        shape = tuple(input.shape)
        if packings is None:  # one shape so far: the parameter's
            return self.weight if shape == self.__dict__.get("_packed_for") else self._repack_for(input)
        weight = packings.get(shape)
        if weight is None:
            return self._repack_for(input)
        try:
            packings.move_to_end(shape)
        except KeyError:  # another thread's repack dropped it meanwhile: this call still has it
            pass
        return weight

    def _repack_for(self, input: torch.Tensor) -> torch.Tensor:
        """Pack the oneDNN weight for ``input``'s shape. oneDNN's blocked weight format depends on the input
        shape it was packed for, and a weight packed for another shape does not get reordered but runs a slow
        kernel: ResNet-50's 1024->2048 1x1 stride-2 layer at 14x14, packed for 56x56, took 51 ms against 1.2;
        packed for no shape (no sample_input), its 256->1024 1x1 at 14x14 took 6.6 ms against 0.58 and the
        model ran 2.7x slower than stock (AMD EPYC Zen 4, batch 1); transposed convolutions lost 10-25%. So
        the layer packs for the shape of its first call when none was known, and again whenever a call brings
        another input shape (one weight reorder, what stock's own oneDNN call pays at every call).

        At the first call of a layer ``ipex.optimize`` built without a shape (``_settle_kernel``, its default
        kernel rule; such a layer may also start on the stock kernel, in a model not converted to channels-last),
        the kernel is chosen too, as sample_input would have chosen it: Winograd (in either layout), the 1x1
        GEMM, oneDNN, or the stock one for a channels-first input. A layer that started on the stock kernel
        takes only kernels that keep its ``weight`` a plain tensor (the model's own code may read it, in a
        region FX could not trace, where that is not known), unless ``_may_pack``: a traced forward calls it
        and reads none of its parameters (small fp32 batch-1 channels-first inputs, where stock runs ATen's
        own kernel and oneDNN's prepacked one pays: api._aten_kernel_beats_onednn). Later shapes get
        packings of their own beside the parameter's (_weight_for); with IPEX_CONV_PACKINGS=1 the parameter is
        packed again instead. Not while
        torch.compile traces (a traced call must not change the module): the compiled graph takes the packing
        an eager call made for its shape, if any (graph mode makes that call, _weight_for), else the
        parameter's, so call the model once eagerly before compiling it, or pass sample_input."""
        with _REPACK_LOCK:  # two threads' calls (ipex.cpu.runtime tasks): one packs at a time
            shape = tuple(input.shape)
            packed_for = self.__dict__.get("_packed_for")
            packings = self.__dict__.get("_packings")
            if packings is not None and shape in packings:
                packings.move_to_end(shape)
                return packings[shape]
            if packings is None and packed_for == shape:
                return self.weight
            kernel = self.kernel
            rule = self.__dict__.get("_settle_kernel")  # applied once, at the first call
            count = packings_per_layer()
            if rule is None and packed_for is not None and count > 1:
                weight = self._add_packing(shape, packings, count)
                if weight is not None:
                    return weight
            if rule is not None:
                kernel = rule(self, list(shape), _keeps_channels_last(input))
                if self.kernel == "dense" and kernel == "onednn" and not self.__dict__.get("_may_pack"):
                    kernel = "dense"
            dense = self._plain_weight()
            self._input_size = self._pack_size(list(shape))
            # The new kernel's weights first, then the kernel, then the shape: a concurrent call that skips the
            # lock (another kernel than oneDNN, or this very shape) finds everything it reads in place.
            self._switch_kernel(dense, kernel)
            self.__dict__["_packed_for"] = shape
            self.__dict__.pop("_settle_kernel", None)  # last: until now a concurrent call waits on the lock
            return self.weight

    def _switch_kernel(self, dense: torch.Tensor, kernel: str) -> None:
        """Store ``dense`` (the effective weight, unchanged) for ``kernel`` and run on it from now on; the autocast
        copy holds the same values and stays. The weights first, then the kernel: a concurrent call that skips
        _REPACK_LOCK finds everything it reads in place."""
        twin = self.__dict__.get("_autocast_copy")
        self._set_weight(dense, kernel)
        if twin is not None:
            self.__dict__["_autocast_copy"] = twin
        self.kernel = kernel

    def _add_packing(self, shape: tuple, packings: collections.OrderedDict | None,
                     count: int) -> nn.Parameter | None:
        """A packing for ``shape`` added to ``_packings`` (made at the second shape, holding the parameter's
        first), the least recently used one dropped past ``count``. Dropping the parameter's own packing moves
        the parameter to the new one. The packings beyond each layer's own weight take IPEX_CONV_PACKINGS_MB in
        all, process-wide: past it a layer with packings to spare replaces its least recently used one, and
        one with none returns None (its parameter is packed again for the shape instead): a convolution model of
        several GB called at many shapes would otherwise hold IPEX_CONV_PACKINGS copies of its weights.
        (Under _REPACK_LOCK.)"""
        nbytes = self.weight.element_size() * math.prod(self._plain_weight_shape)  # (no unpacking to know it)
        size = 1 if packings is None else len(packings)
        grow = size < count and _EXTRA_PACKING_BYTES[0] + nbytes <= packings_budget_bytes()
        if not grow and size < 2:
            return None
        weight = nn.Parameter(self._pack(self.dense_weight(), self._pack_size(list(shape))), requires_grad=False)
        if packings is None:
            packings = collections.OrderedDict({self.__dict__["_packed_for"]: self._parameters["weight"]})
        packings[shape] = weight
        while len(packings) > min(count, size + 1 if grow else size):
            dropped, _ = packings.popitem(last=False)
            if dropped == self.__dict__["_packed_for"]:
                self._parameters["weight"] = weight
                self._input_size = self._pack_size(list(shape))
                self.__dict__["_packed_for"] = shape
        cell = self.__dict__.get("_extra_bytes")
        if cell is None:  # this layer's share of _EXTRA_PACKING_BYTES, given back when the layer goes
            cell = self.__dict__["_extra_bytes"] = [0]
            weakref.finalize(self, _forget_extra, cell).atexit = False
        _account_extra(cell, (len(packings) - 1) * nbytes)
        self.__dict__["_packings"] = packings  # last: a concurrent call finds it whole
        return weight

    def _drop_packings(self) -> None:
        """Forget the packings (the weights changed, or their layout), and their share of the memory budget."""
        self.__dict__.pop("_packings", None)
        cell = self.__dict__.get("_extra_bytes")
        if cell is not None and cell[0]:
            _forget_extra(cell)

    def _pack_size(self, shape: list[int]) -> list[int]:
        """The input shape oneDNN's packing is told for an input of ``shape`` (the convolutions adapt it)."""
        return shape

    def _in_weight_layout(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense`` in the memory format the replaced module's weight had: a stock kernel given a channels-last
        weight returns a channels-last output, as the stock module did, and the layers after it are packed for
        that layout. (A weight unpacked from oneDNN, or loaded from a checkpoint, may come row-major.)"""
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(dense.dim())
        if fmt is not None and self.__dict__.get("_weight_channels_last"):
            return dense.contiguous(memory_format=fmt)
        return dense

    def _plain_weight(self) -> torch.Tensor:
        """dense_weight() in the replaced module's memory format (_in_weight_layout)."""
        return self._in_weight_layout(self.dense_weight())

    def _autocast_twin(self, input: torch.Tensor) -> _PackedModule | None:
        """Under CPU autocast (eager), the copy of this float32 layer in autocast's dtype that computes it, as
        the stock layer it replaced would have been computed: autocast casts the inputs of aten's convolutions
        and linear, not those of the oneDNN prepacked ops these layers call, so they ran in float32 (ResNet-50
        optimized in fp32, under bf16 autocast: 1.06x stock under autocast, against 1.52x for the model
        optimized with dtype=torch.bfloat16). The copy is made at the first such call (oneDNN's kernel, or the
        stock one where this layer has it) and dropped when the weights change (_set_weight, .to(),
        load_state_dict). While torch.compile traces, a copy an eager call made is used and none is made (the
        module must not change; graph mode makes that eager call itself). None: compute in this layer, as
        without autocast: not under autocast, no copy while tracing, for a layer that is not float32, for a
        dtype oneDNN does not run here (float16 without AVX512-FP16), and for a Linear with a BatchNorm1d
        folded in fed a 3-D input (_forward_bn_unfolded)."""
        if not torch.is_autocast_enabled("cpu") or (
                self._folded_bn is not None and isinstance(self, PackedLinear) and input.dim() != 2):
            return None
        dtype = torch.get_autocast_dtype("cpu")
        twin = self.__dict__.get("_autocast_copy")
        if traced(input):  # a copy an eager call made is traced; none is made here
            return twin if twin is not None and twin.dtype == dtype else None
        if self.weight.dtype != torch.float32 or dtype == torch.float32 or not onednn_runs(dtype):
            return None
        if twin is None or twin.dtype != dtype:
            with _REPACK_LOCK:
                twin = self.__dict__.get("_autocast_copy")
                if twin is None or twin.dtype != dtype:
                    twin = self._low_precision_copy(dtype, input)
                    twin.train(self.training)
                    self.__dict__["_autocast_copy"] = twin
        return twin

    def _rebuild(self, stock: nn.Module, kernel: str, dtype: torch.dtype, input: torch.Tensor) -> _PackedModule:
        """A layer of this kind made from ``stock`` (a convolution's; PackedLinear has its own), packed for the
        shape of ``input`` (which it is made to compute)."""
        return type(self)(stock, kernel=kernel, post_op=self.post_op, dtype=dtype, input_size=list(input.shape))

    def _run_under_autocast(self, input: torch.Tensor, other: torch.Tensor | None, post: PostOp) -> torch.Tensor:
        """This (low-precision) copy's ``_run`` for its float32 layer under autocast. A residual in another
        dtype is added after the layer, by PyTorch's ops, so that the sum promotes as it does after the stock
        layer under autocast (bf16 output + fp32 residual = fp32); a fused add keeps the layer's dtype."""
        if other is not None and post.binary is not None and (other.dtype != self.dtype or traced(input)):
            # (Traced: the add stays in the graph, as graph mode plans it for oneDNN layers; the in-place
            # oneDNN add on the copy's opaque weight failed inductor's freezing pass.)
            return post.apply_unfused(self._run(input, None, NO_POST_OP), other)
        return self._run(input, other, post)

    def _low_precision_copy(self, dtype: torch.dtype, input: torch.Tensor) -> _PackedModule:
        """This layer in ``dtype``, BatchNorm folded in: a new layer of this kind built from a stock one holding
        the effective weight and bias. On oneDNN's kernel, but where the default rule gives a low-precision
        layer the stock kernel (api._default_kernel): a Conv1d, or a convolution fed channels-first (a float32
        one may be on oneDNN there only because ATen runs small float32 convolutions on a slow kernel)."""
        stock = self._stock_stand_in()
        stock.weight = nn.Parameter(self._plain_weight(), requires_grad=False)
        bias = self._kernel_bias()
        stock.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        stock_kernel = self.kernel == "dense" or (isinstance(self, _PackedConvNd) and (
            self._nd == 1 or not _keeps_channels_last(input)))
        return self._rebuild(stock, "dense" if stock_kernel else "onednn", dtype, input)

    def dense_weight(self) -> torch.Tensor:
        """The effective (folded) weight in the plain layout, as a new dense tensor when packed."""
        return self._unpack(self.weight) if self._weight_is_packed() else self.weight.detach()

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def _kernel_bias(self):
        return self._bias_folded if self._folded_bn is not None else self.bias

    # -- BatchNorm folding ------------------------------------------------------------------------

    def _init_weight(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None,
                     bn: FoldedBatchNorm | None) -> None:
        """Store ``weight``/``bias`` (of the module replaced) in ``dtype``, with ``bn`` folded in (fp32 math)."""
        dtype = dtype or weight.dtype
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        self.__dict__["_weight_channels_last"] = exactly_channels_last(weight)
        # The checkpoint's weight shape: the packed parameter's differs (Conv1d is packed as a
        # 2-D conv, a transposed conv as [out, in, ...]), so load_state_dict checks against this.
        self._plain_weight_shape = tuple(weight.shape)
        self._parameters["weight"] = None  # registered before bias: state_dict order as in nn.Linear / nn.ConvNd
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        with torch.no_grad():
            if bn is None:
                self._set_weight(weight.to(dtype))
            else:
                link_folded(self, bn)
                self._refold(weight.float(), None if bias is None else bias.float(), dtype)

    def _raw_weight(self) -> torch.Tensor:
        """The weight before folding (what the original model's checkpoint holds), fp32."""
        w = self.dense_weight().float()
        bn = self._folded_bn
        if bn is None:
            return w
        if bn._raw_weight_copy is not None:
            return bn._raw_weight_copy.float()
        scale, _ = bn.scale_shift()
        return self._scale_out_channels(w, scale, divide=True)

    def _refold(self, raw_w: torch.Tensor, raw_b: torch.Tensor | None, dtype: torch.dtype | None = None) -> None:
        dtype = dtype or self.dtype
        bn = self._folded_bn
        scale, shift = bn.scale_shift()
        # A zero scale (gamma == 0) makes the folded rows zero and the raw
        # weight unrecoverable from them: keep a copy for state_dict then.
        bn._raw_weight_copy = raw_w.to(dtype).clone() if bool((scale == 0).any()) else None
        w = self._scale_out_channels(raw_w, scale)
        b = shift if raw_b is None else raw_b * scale + shift
        self._set_weight(w.to(dtype))
        self._bias_folded = b.to(dtype)

    def _scale_out_channels(self, w: torch.Tensor, scale: torch.Tensor, divide: bool = False) -> torch.Tensor:
        """``w`` (plain layout) with each output channel's weights multiplied (divided) by its ``scale``."""
        s = scale.view((-1,) + (1,) * (w.dim() - 1))  # output channels are dim 0
        return w / s if divide else w * s

    def _check_folded_inference(self) -> None:
        """A folded BatchNorm computes eval mode only: refuse a call after model.train() (it used to return
        eval-mode outputs silently, 2.09 off on a conv + BatchNorm)."""
        if self.training and self._folded_bn is not None:
            raise RuntimeError(
                f"{type(self).__name__}: ipex.optimize folded a BatchNorm into this layer for inference, but the "
                "model is in training mode (train() was called after optimize). Call .eval(), or train the "
                "original model.")

    # -- state_dict -------------------------------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        stored = self._parameters["weight"]
        plain = self._raw_weight().to(self.dtype) if self._folded_bn is not None else self.dense_weight()
        self._parameters["weight"] = plain  # saved in the plain layout, in the original order
        try:
            super()._save_to_state_dict(destination, prefix, keep_vars)
        finally:
            self._parameters["weight"] = stored

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        self.__dict__.pop("_autocast_copy", None)  # a bias alone may change too
        # The stock loader sees every parameter but the (packed) weight, which is loaded below. The weight is
        # hidden in a copy of the dict, not popped and put back: that moved it after the bias, and state_dict()
        # then listed bias before weight, unlike the original model's.
        params = self._parameters
        self.__dict__["_parameters"] = {name: p for name, p in params.items() if name != "weight"}
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        finally:
            params.update(self._parameters)  # what the loader assigned (assign=True), in the original order
            self.__dict__["_parameters"] = params
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != self._plain_weight_shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {shape} from checkpoint, "
                              f"the shape in current model is {self._plain_weight_shape}.")
            return
        with torch.no_grad():
            if self._folded_bn is not None:
                raw_b = None if self.bias is None else self.bias.detach().float()
                self._refold(value.detach().float(), raw_b)
            else:
                self._set_weight(value.detach().to(self.dtype))

    # -- .to() / .float() / deepcopy ------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_autocast_copy", None)
        self._drop_packings()
        packed = self._weight_is_packed()
        if packed:
            self._parameters["weight"] = nn.Parameter(self._unpack(self.weight), requires_grad=False)
        super()._apply(fn, recurse)
        dtype = self.weight.dtype
        if not onednn_runs(dtype) or not self._kernel_runs(self.kernel, dtype):
            # .double(), or .half() where oneDNN has no float16 kernels: packing raised. PyTorch's kernel on
            # the dense weight runs it (post-ops unfused), as it runs the module this one replaced.
            self.kernel = "dense"
            self.__dict__.pop("_settle_kernel", None)  # the rule would pick a kernel this dtype cannot run
            self.__dict__["_packed"] = False
            for name in (*_KERNEL_WEIGHTS.values(), "_grouped_dense"):
                self.__dict__.pop(name, None)
            return self
        if packed or self.kernel in _KERNEL_WEIGHTS:
            self._set_weight(self.weight.detach())
        return self

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_parameters":
                params = {}
                for name, p in value.items():
                    if p is not None and p.is_mkldnn:  # Parameter.__deepcopy__ cannot clone opaque tensors
                        params[name] = nn.Parameter(p.data.clone(), requires_grad=False)
                    else:
                        params[name] = copy.deepcopy(p, memo)
                new.__dict__[key] = params
            elif key in _KERNEL_WEIGHTS.values():
                new.__dict__[key] = value.clone()
            elif key in ("_autocast_copy", "_packings", "_extra_bytes"):
                continue  # made again when needed
            else:
                new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def _repr_tail(self) -> str:
        s = f", kernel={self.kernel}"
        if repr(self.post_op) != "none":
            s += f", post_op={self.post_op!r}"
        if self._folded_bn is not None:
            s += ", bn_folded"
        return s

    def _unfused(self, y: torch.Tensor, other, post: PostOp) -> torch.Tensor:
        """``post`` applied to the layer's output ``y`` by PyTorch ops (the kernel did not fuse it)."""
        if post.binary is None and post.unary == "none":
            return y
        out = post.apply_unfused(y, other)
        # A float64 operand promotes, as in PyTorch; a float32 residual meeting the output of a
        # layer cast to bf16/fp16 (dtype=) stays in the cast dtype, like the activations around it.
        if out.dtype == y.dtype or (other is not None and other.dtype == torch.float64):
            return out
        return out.to(y.dtype)


# The post-ops ipex::linear (the brgemm kernel of PackedLinear) computes inside it: unary -> its epilogue name.
_BRGEMM_LINEAR_UNARY = {"relu": "relu", "swish": "silu", "gelu": "gelu"}
_BRGEMM_LINEAR_BINARY = {"add": "add", "mul": "mul"}  # a residual added / multiplied (no unary after it)
BRGEMM_LINEAR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what ipex::linear computes


def _brgemm_linear_epilogue(post: PostOp) -> str | None:
    """ipex::linear's epilogue for ``post``, or None where it cannot fuse it (it then runs after the GEMM)."""
    if post.binary is None:
        if post.unary == "gelu":
            return "gelu_tanh" if post.algorithm == "tanh" else "gelu"
        return "none" if post.unary == "none" else _BRGEMM_LINEAR_UNARY.get(post.unary)
    return _BRGEMM_LINEAR_BINARY.get(post.binary) if post.unary == "none" else None


class PackedLinear(_PackedModule):
    """``nn.Linear`` on a prepacked weight, post-ops fused (kernels: onednn, brgemm, mkl, dense)."""

    def __init__(self, linear: nn.Linear, kernel: str = "onednn", post_op: PostOp | None = None,
                 batch_size: int | None = None, dtype: torch.dtype | None = None, bn: FoldedBatchNorm | None = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._batch_size = batch_size
        self._mkl_batch = batch_size or 1
        if kernel == "mkl" and (dtype or linear.weight.dtype) != torch.float32:
            raise ValueError("the mkl kernel runs float32 linears only")
        if kernel == "brgemm" and (dtype or linear.weight.dtype) not in BRGEMM_LINEAR_DTYPES:
            raise ValueError(f"the brgemm kernel runs {BRGEMM_LINEAR_DTYPES} linears only; got "
                             f"{dtype or linear.weight.dtype}")
        self._init_common(kernel, post_op)
        self._init_weight(linear.weight, linear.bias, dtype, bn)

    def _pack(self, dense):
        return _onednn.pack_linear_weight(dense, self._batch_size)

    def _brgemm_weight_of(self, dense: torch.Tensor) -> torch.Tensor:
        """ipex::linear's packed weight; for a float32 layer on a CPU with AMX, ipex::conv1x1's bf16x3 weight
        (bf16x3_default: the rows of the input as the pixels of a 1x1 convolution, three bf16 GEMMs on AMX)."""
        if dense.dtype == torch.float32 and bf16x3_default(self.out_features):
            return conv1x1_weight(dense.view(*dense.shape, 1, 1), bf16x3=True)
        return _pack_ipex_linear_weight(dense)

    def _unpack(self, stored):
        return stored.to_dense()

    def _kernel_runs(self, kernel: str, dtype: torch.dtype) -> bool:
        return dtype in BRGEMM_LINEAR_DTYPES if kernel == "brgemm" else super()._kernel_runs(kernel, dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + self._repr_tail())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _inference_only(self, input, self._run(input, None, NO_POST_OP))

    def _stock_stand_in(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, device="meta")

    def _rebuild(self, stock: nn.Module, kernel: str, dtype: torch.dtype, input: torch.Tensor) -> PackedLinear:
        return PackedLinear(stock, kernel=kernel, post_op=self.post_op, batch_size=self._batch_size, dtype=dtype)

    def _run(self, input: torch.Tensor, other: torch.Tensor | None, post: PostOp) -> torch.Tensor:
        self._check_folded_inference()
        if "_settle_kernel" in self.__dict__ and not traced(input):
            self._settle(input)
        twin = self._autocast_twin(input)
        if twin is not None:
            return twin._run_under_autocast(input, other, post)
        w = self.weight
        if input.dtype != w.dtype and input.is_floating_point():
            input = input.to(w.dtype)
        if self._folded_bn is not None and input.dim() != 2:
            return self._forward_bn_unfolded(input, other, post)
        b = self._kernel_bias()
        fits_other = (other is not None and other.dtype == w.dtype and other.shape[:-1] == input.shape[:-1]
                      and other.shape[-1] == self.out_features)
        if self.kernel == "onednn":
            if post.binary is None:
                return _ipex.onednn_linear(input, w, b, post.unary, post.scalars, post.algorithm)
            if post.unary == "none" and fits_other:
                return _ipex.onednn_linear_binary(input, other, w, b, post.binary)
        if self.kernel == "brgemm" and self._brgemm_weight.dim() == 5:  # float32, bf16x3 (ipex::conv1x1)
            if post.unary in ("none", "relu") and (post.binary is None or (post.binary == "add" and fits_other)):
                return self._conv1x1_rows(input, b, post.unary, other if post.binary else None)
        elif self.kernel == "brgemm":
            epilogue = _brgemm_linear_epilogue(post)
            if epilogue is not None and (post.binary is None or fits_other):
                return _ipex.linear(input, self._brgemm_weight, b, self.out_features, epilogue,
                                    other if post.binary else None, None)
        return self._unfused(self._gemm(input, w, b), other, post)

    def _conv1x1_rows(self, input: torch.Tensor, b: torch.Tensor | None, attr: str,
                      other: torch.Tensor | None) -> torch.Tensor:
        """``attr(input @ W.T + b + other)`` by ipex::conv1x1 on the bf16x3 weight: the input's rows [rows, K]
        are a channels-last [rows, K, 1, 1] image (the same memory), the output's [rows, N, 1, 1] rows too."""
        rows = input.numel() // max(self.in_features, 1)
        x = input.reshape(rows, self.in_features, 1, 1)
        if other is not None:
            other = other.reshape(rows, self.out_features, 1, 1)
        y = _ipex.conv1x1(x, self._brgemm_weight, b, attr, other)
        return y.view(*input.shape[:-1], self.out_features)

    def _settle(self, input: torch.Tensor) -> None:
        """At the first call of a Linear ``ipex.optimize`` built without an input shape (``_settle_kernel``): the
        kernel for that call's shape, as sample_input would have chosen it (api._linear_is_small: the stock one
        for a layer too small for oneDNN's cost per call)."""
        with _REPACK_LOCK:  # (another thread's first call may be settling it)
            rule = self.__dict__.get("_settle_kernel")
            if rule is None:
                return
            kernel = rule(self, list(input.shape))
            if kernel == "mkl":  # MKL packs for a row count: this call's
                self._mkl_batch = max(1, input.numel() // max(self.in_features, 1))
            if kernel != self.kernel:
                self._switch_kernel(self._plain_weight(), kernel)
            self.__dict__.pop("_settle_kernel", None)  # last: until now a concurrent call waits on the lock

    def _gemm(self, input: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """input @ w.T + b on this module's kernel (``w``, ``b``: its weight and bias, the folded ones where a
        BatchNorm was folded), nothing after."""
        if self.kernel == "onednn":
            return _ipex.onednn_linear(input, w, b, "none", [], None)
        if self.kernel == "brgemm" and self._brgemm_weight.dim() == 5:
            return self._conv1x1_rows(input, b, "none", None)
        if self.kernel == "brgemm":
            return _ipex.linear(input, self._brgemm_weight, b, self.out_features, "none", None, None)
        if self.kernel == "mkl" and not traced(input):
            # (Traced, the dense weight goes in instead: inductor cannot lower mkl._mkl_linear unless its packed
            # weight is a frozen constant, so plain torch.compile over such a layer failed; with freezing on,
            # inductor packs the dense F.linear for MKL's sgemm itself.)
            rows = input.numel() // max(self.in_features, 1)
            return torch.ops.mkl._mkl_linear(input.reshape(rows, self.in_features), self._mkl_weight, w, b,
                                             self._mkl_batch).view(*input.shape[:-1], self.out_features)
        return F.linear(input, w, b)

    def _forward_bn_unfolded(self, input: torch.Tensor, other, post: PostOp) -> torch.Tensor:
        """Linear then the folded BatchNorm1d as two steps: BatchNorm1d normalises dim 1, the Linear's
        features only for 2-D input. The fold is planned without knowing the input's rank unless
        sample_input shows it; a 3-D input (BatchNorm1d over [N, C, L]) takes this path instead."""
        scale, shift = self._folded_bn.scale_shift()
        y = F.linear(input, _dense_raw_weight_eager()(self), self.bias)
        if y.dim() != 3 or y.shape[1] != scale.numel():
            raise ValueError(f"BatchNorm1d({scale.numel()}) after this Linear expects a 2-D input or a 3-D "
                             f"[N, {scale.numel()}, L] output; got the output shape {tuple(y.shape)}")
        y = y * scale.to(y.dtype).view(1, -1, 1) + shift.to(y.dtype).view(1, -1, 1)
        return self._unfused(y, other, post)


@functools.cache
def _dense_raw_weight_eager():
    # Wrapped on first use: torch.compiler.disable imports dynamo (tens of MB) at import time otherwise.
    return torch.compiler.disable(_dense_raw_weight_of)


def _dense_raw_weight_of(layer: PackedLinear) -> torch.Tensor:
    """The raw (unfolded) weight in the layer's dtype, made once on first use and kept: dividing the folded
    output back by the scale instead lost precision (0.96 off in bf16 with a scale of 1e-4), and unpacking
    inside a compiled graph fails (inductor cannot read an opaque oneDNN tensor), so under torch.compile this
    runs eagerly (a graph break on this rare path only: Linear + BatchNorm1d met a 3-D input)."""
    cached = layer.__dict__.get("_raw_dense")
    if cached is None or cached.dtype != layer.dtype:
        cached = layer._raw_weight().to(layer.dtype)
        layer.__dict__["_raw_dense"] = cached
    return cached


WINOGRAD_DTYPES = (torch.float32, torch.bfloat16)  # the layer dtypes the Winograd kernel runs (its math: fp32)


def winograd_fuses(post_op: PostOp) -> bool:
    """Whether the Winograd kernel runs ``post_op`` inside it (nothing, or ReLU); others run after it."""
    return post_op.binary is None and post_op.unary in ("none", "relu")


def winograd_supported(conv: nn.Module, dtype: torch.dtype) -> bool:
    """Whether ipex's Winograd kernel (``ipex::conv3x3_winograd``) computes ``conv`` in ``dtype``: a float32 or
    bfloat16 ungrouped 3x3 Conv2d with stride 1 and dilation 1 and explicit symmetric padding (any
    padding_mode)."""
    return (dtype in WINOGRAD_DTYPES and isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3)
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and _explicit_padding(conv) is not None)


def conv1x1_fuses(post_op: PostOp) -> bool:
    """Whether the 1x1 GEMM kernel runs ``post_op`` inside it: nothing, ReLU, a residual add, add then ReLU."""
    return post_op.binary in (None, "add") and post_op.unary in ("none", "relu")


def conv1x1_supported(conv: nn.Module, dtype: torch.dtype) -> bool:
    """Whether ipex's 1x1 GEMM kernel (``ipex::conv1x1``) computes ``conv`` in ``dtype``: a float32 ungrouped
    1x1 Conv2d with no padding and dilation 1. A stride takes every stride-th pixel first (a strided view the op
    copies densely: ResNet-50's stride-2 downsampling layers at batch 1, bf16x3: 1.3-2.0x oneDNN's kernel)."""
    return (dtype == torch.float32 and isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and _explicit_padding(conv) == [0, 0])


def single_input_channel(module: nn.Module) -> bool:
    """A convolution (stock or swapped) over one input channel, whose input is NCHW and channels-last at once:
    inductor lays such convolutions' outputs out wrongly (see ipex.optimize's _default_kernel and graph mode's
    static shapes for them)."""
    return getattr(module, "in_channels", None) == 1 and hasattr(module, "kernel_size")


def _row_major_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def channels_last_strides(shape) -> tuple[int, ...]:
    """The strides of a channels-last tensor of ``shape`` (rank 4 or 5)."""
    _, c, *spatial = shape
    strides, step = [0] * len(spatial), c
    for i in range(len(spatial) - 1, -1, -1):
        strides[i] = step
        step *= spatial[i]
    return (step, 1, *strides)


def exactly_channels_last(t: torch.Tensor) -> bool:
    """Whether a rank-4/5 tensor has channels-last strides and not row-major ones. Exact strides: a 1x1 or
    depthwise kernel is ``is_contiguous`` in both layouts, its strides tell them apart."""
    return t.dim() in (4, 5) and t.stride() == channels_last_strides(t.shape) != _row_major_strides(t.shape)


def _dense_layout(t: torch.Tensor) -> torch.Tensor:
    """The dense weight as the stock layer would hold it: channels-last when it is so without doubt (a
    converted model's conv weight: its output stays channels-last, as stock's), else with row-major strides.
    ``contiguous()`` kept the strides of a weight contiguous in both layouts (a [8, 1, 3, 3] weight of a
    channels-last model): the stock convolution took it for channels-last, and inductor's conv + ReLU fusion
    laid that output out as contiguous after a dynamic-shape recompile (graph mode 1.46 off)."""
    if t.dim() in (4, 5) and t.shape[1] > 1 and exactly_channels_last(t):
        return t
    return t if t.stride() == _row_major_strides(t.shape) else t.clone(memory_format=torch.contiguous_format)


def _keeps_channels_last(input: torch.Tensor) -> bool:
    """Whether ``input`` is channels-last as PyTorch's convolutions judge it (then the output is too).

    A tensor that is both contiguous and channels-last (C == 1, or 1x1
    spatial) counts as contiguous, as in ``suggest_memory_format``.
    """
    if input.dim() not in (4, 5) or input.is_contiguous():
        return False
    return input.is_contiguous(memory_format=torch.channels_last if input.dim() == 4 else torch.channels_last_3d)


def _pair_of(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


def _explicit_padding(conv) -> list[int] | None:
    """The symmetric zero padding of ``conv`` as a list, or None when oneDNN cannot express it."""
    n = len(conv.kernel_size)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [0] * n
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            if total % 2:
                return None  # 'same' with an even kernel pads one side more
            pads.append(total // 2)
        return pads
    return _pair_of(conv.padding, n)


class _PackedConvNd(_PackedModule):
    """Convolution on a prepacked weight, post-ops fused; Conv1d runs as a 2-D convolution with H=1."""

    _nd = 2

    def __init__(self, conv: nn.modules.conv._ConvNd, kernel: str = "onednn", post_op: PostOp | None = None,
                 input_size: list[int] | None = None, dtype: torch.dtype | None = None,
                 bn: FoldedBatchNorm | None = None):
        super().__init__()
        padding = _explicit_padding(conv)
        if padding is None:
            raise ValueError(f"{type(conv).__name__} with padding={conv.padding!r} has no symmetric explicit padding")
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups", "padding_mode"):
            setattr(self, attr, getattr(conv, attr))
        self.padding = tuple(padding)
        if conv.padding_mode != "zeros":
            # Same pre-padding as nn.Conv's _conv_forward, then a convolution without padding.
            self._pre_pad = [p for p in reversed(padding) for _ in range(2)]
            padding = [0] * len(padding)
        else:
            self._pre_pad = None
        self._padding = padding
        self._stride = list(conv.stride)
        self._dilation = list(conv.dilation)
        # The input shape the oneDNN weight is packed for (see _PackedModule._repack_for); None: none known yet.
        self.__dict__["_packed_for"] = None if input_size is None else tuple(input_size)
        if self._nd == 1:  # oneDNN's packing has no 1-D form: H=1 2-D convolution
            self._padding, self._stride, self._dilation = [0, *padding], [1, *self._stride], [1, *self._dilation]
        self._input_size = None if input_size is None else self._pack_size(list(input_size))
        if kernel == "winograd" and not winograd_supported(conv, dtype or conv.weight.dtype):
            raise ValueError("the winograd kernel runs float32 or bfloat16 3x3 Conv2d layers with stride 1, dilation "
                             f"1 and groups 1 only; got {conv} in {dtype or conv.weight.dtype}")
        if kernel == "brgemm" and not conv1x1_supported(conv, dtype or conv.weight.dtype):
            raise ValueError("the brgemm kernel runs float32 1x1 Conv2d layers with no padding, dilation 1 "
                             f"and groups 1 only; got {conv} in {dtype or conv.weight.dtype}")
        self._init_common(kernel, post_op)
        self._init_weight(conv.weight, conv.bias, dtype, bn)

    def _pack(self, dense, input_size: list[int] | None = None):
        """``dense`` in oneDNN's blocked layout for an input of ``input_size`` (as _pack_size gives it; default
        the one this layer is packed for)."""
        if self._nd == 1:
            dense = dense.unsqueeze(2)
        return _mkldnn._reorder_convolution_weight(dense.contiguous(), self._padding, self._stride, self._dilation,
                                                   self.groups, input_size or self._input_size)

    def _unpack(self, stored):
        dense = stored.to_dense()
        return dense.squeeze(2) if self._nd == 1 else dense

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + self._repr_tail()

    def _out_spatial(self, input: torch.Tensor) -> list[int]:
        return [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, p, d, k, st in zip(input.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _inference_only(self, input, self._run(input, None, NO_POST_OP))

    def _pack_size(self, shape: list[int]) -> list[int]:
        """What the kernel sees of an input of ``shape``: the pre-padded input (padding_mode other than
        zeros), as a 2-D one with H=1 for Conv1d."""
        if self._pre_pad is not None and len(shape) == self._nd + 2:
            shape = shape[:2] + [s + 2 * p for s, p in zip(shape[2:], self.padding)]
        if self._nd == 1 and len(shape) == 3:
            shape = [shape[0], shape[1], 1, shape[2]]
        return shape

    def _stock_stand_in(self) -> nn.Module:
        return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self._nd - 1](
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, padding_mode=self.padding_mode, device="meta")

    def _run(self, input: torch.Tensor, other: torch.Tensor | None, post: PostOp) -> torch.Tensor:
        self._check_folded_inference()
        if input.dim() == self._nd + 1:  # unbatched, as nn.Conv accepts: a batch of one
            return self._run(input.unsqueeze(0), None if other is None else other.unsqueeze(0), post).squeeze(0)
        if awaits_first_call(self):  # first: a first call under autocast settles the layer too
            self._weight_for(input)
        twin = self._autocast_twin(input)
        if twin is not None:  # (which packs its own weight for this shape: this layer's would go unused)
            return twin._run_under_autocast(input, other, post)
        w = self._weight_for(input)
        dense = self.kernel == "dense"  # (the layout and fusion checks below do not concern it: skipped)
        fuse_binary = (not dense and post.binary is not None and other is not None and other.dtype == w.dtype
                       and self.groups == 1 and other.dim() == input.dim() and other.shape[1] == self.out_channels
                       and other.shape[0] == input.shape[0] and list(other.shape[2:]) == self._out_spatial(input))
        keep_cl = not dense and _keeps_channels_last(input)
        if self._pre_pad is not None:
            input = F.pad(input, self._pre_pad, mode=self.padding_mode)
        if input.dtype != w.dtype and input.is_floating_point():  # after the padding, which autocast runs in fp32
            input = input.to(w.dtype)
        b = self._kernel_bias()
        if dense:
            return self._unfused(self._dense_forward(input, w, b), other, post)
        if self.kernel == "winograd":
            fused = winograd_fuses(post)
            y = _ipex.conv3x3_winograd(input, self._winograd_weight, b, self._padding, post.unary if fused else "none")
            if not keep_cl:
                y = channels_first(y)
            return y if fused else self._unfused(y, other, post)
        if self.kernel == "brgemm":
            return self._run_conv1x1(input, other, post, b, fuse_binary, keep_cl)
        if self._nd == 1:
            input = input.unsqueeze(2)
        if fuse_binary and post.inplace and post.binary == "add" and self._nd != 1 and _keeps_channels_last(other) \
                and (keep_cl or input.is_contiguous(memory_format=torch.channels_last if self._nd == 2
                                                    else torch.channels_last_3d)):
            _ipex.onednn_conv_add_(other, input, w, b, self._padding, self._stride, self._dilation, self.groups,
                                   post.unary)
            return other
        if fuse_binary:
            y = _ipex.onednn_conv_binary(input, other.unsqueeze(2) if self._nd == 1 else other, w, b, self._padding,
                                         self._stride, self._dilation, self.groups, post.binary, post.unary)
        else:
            unary = post if post.binary is None else PostOp()
            y = _mkldnn._convolution_pointwise(input, w, b, self._padding, self._stride, self._dilation, self.groups,
                                               unary.unary, unary.scalars, unary.algorithm)
        # oneDNN writes channels-last; a model fed contiguous (NCHW) tensors gets them back
        # contiguous, as from nn.Conv (its code may .view() the output). Conv1d's before the squeeze,
        # while it is a 4-D channels-last tensor that ipex's transpose takes.
        if not keep_cl:
            y = channels_first(y)
        if self._nd == 1:
            y = y.squeeze(2)
        if post.binary is not None and not fuse_binary:
            y = self._unfused(y, other, post)
        return y

    def _run_conv1x1(self, input, other, post: PostOp, b, fuse_binary: bool, keep_cl: bool) -> torch.Tensor:
        """The brgemm kernel: residual add and ReLU inside it where they fit, else after it."""
        if self._stride != [1, 1]:  # every stride-th pixel: the 1x1 convolution of that (a view)
            input = input[:, :, ::self._stride[0], ::self._stride[1]]
        fused = conv1x1_fuses(post) and (post.binary is None or fuse_binary)
        unary = post.unary if fused else "none"
        if (fused and post.binary is not None and post.inplace and other is not input
                and other.is_contiguous(memory_format=torch.channels_last)):
            _ipex.conv1x1_add_(other, input, self._brgemm_weight, b, unary)
            return other
        y = _ipex.conv1x1(input, self._brgemm_weight, b, unary, other if fused and post.binary is not None else None)
        if not keep_cl:
            y = channels_first(y)
        return y if fused else self._unfused(y, other, post)

    def _dense_forward(self, input, w, b):
        conv = (F.conv1d, F.conv2d, F.conv3d)[self._nd - 1]
        padding = self._padding[1:] if self._nd == 1 else self._padding
        stride = self._stride[1:] if self._nd == 1 else self._stride
        dilation = self._dilation[1:] if self._nd == 1 else self._dilation
        return conv(input, w, b, stride, padding, dilation, self.groups)


class PackedConv1d(_PackedConvNd):
    _nd = 1


class PackedConv2d(_PackedConvNd):
    _nd = 2


class PackedConv3d(_PackedConvNd):
    _nd = 3


def awaits_first_call(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution on a oneDNN weight not yet packed for any input shape: its first
    eager call packs it (and may choose its kernel); see _PackedModule._repack_for. (Not a Linear waiting for
    its first call, PackedLinear._settle: graph mode gives Linears no such rule, and a traced call keeps its
    Linear's kernel.)"""
    return (isinstance(module, (_PackedConvNd, _PackedConvTransposeNd)) and module.__dict__.get("_packed_for") is None
            and (module.kernel == "onednn" or "_settle_kernel" in module.__dict__))


class _PackedConvTransposeNd(_PackedModule):
    """Transposed convolution on a prepacked weight, post-ops fused (unary only)."""

    _nd = 2

    def __init__(self, conv: nn.modules.conv._ConvTransposeNd, kernel: str = "onednn",
                 post_op: PostOp | None = None, input_size: list[int] | None = None, dtype: torch.dtype | None = None,
                 bn: FoldedBatchNorm | None = None):
        super().__init__()
        if post_op is not None and post_op.binary is not None:
            raise ValueError("transposed convolutions fuse unary post-ops only")
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
                     "dilation", "groups"):
            setattr(self, attr, getattr(conv, attr))
        self._padding = list(conv.padding)
        self._output_padding = list(conv.output_padding)
        self._stride = list(conv.stride)
        self._dilation = list(conv.dilation)
        self._input_size = input_size
        self.__dict__["_packed_for"] = None if input_size is None else tuple(input_size)  # see _repack_for
        self._init_common(kernel, post_op)
        self._init_weight(conv.weight, conv.bias, dtype, bn)

    @staticmethod
    def supports(conv: nn.modules.conv._ConvTransposeNd) -> bool:
        """oneDNN's limits (as inductor's): output_padding below stride or dilation."""
        if conv.padding_mode != "zeros":
            return False
        return all(op < max(s, d) for op, s, d in zip(conv.output_padding, conv.stride, conv.dilation))

    def _set_weight(self, dense: torch.Tensor, kernel: str | None = None) -> None:
        super()._set_weight(dense, kernel)
        # A grouped layer packed for oneDNN keeps its dense weight beside the packed one (see _unpack): a copy,
        # `dense` may be another tensor's memory (load_state_dict, inplace=True). Packings for other input
        # shapes (_add_packing) read it and leave it alone.
        if self.groups != 1 and self._weight_is_packed():
            self.__dict__["_grouped_dense"] = dense.detach().clone(memory_format=torch.contiguous_format)
        else:
            self.__dict__.pop("_grouped_dense", None)

    def _pack(self, dense, input_size: list[int] | None = None):
        """As _PackedConvNd._pack."""
        return _mkldnn._reorder_convolution_transpose_weight(dense.contiguous(), self._padding, self._output_padding,
                                                             self._stride, self._dilation, self.groups,
                                                             input_size or self._input_size)

    def _unpack(self, stored):
        # oneDNN stores [out, in, k...]; nn.ConvTranspose keeps [in, out, k...]. A grouped weight packs and runs,
        # but its to_dense() comes back scrambled (a [in, out/g, k] weight of 2 groups reads back as [out, in/g,
        # k] holding the first group's values only): state_dict(), .to() and output_size= were wrong from it, so
        # a grouped layer reads the dense copy _set_weight kept (its weight's memory twice).
        if self.groups != 1:
            return self.__dict__["_grouped_dense"].clone()
        return stored.to_dense().transpose(0, 1).contiguous()

    def _scale_out_channels(self, w: torch.Tensor, scale: torch.Tensor, divide: bool = False) -> torch.Tensor:
        # The weight is [in, out / groups, k...]: output channel g * (out / groups) + j is column j of group g's
        # rows, so view it as [groups, in / groups, out / groups, k...].
        g = self.groups
        wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])
        s = scale.view(g, 1, -1, *(1,) * (w.dim() - 2))
        return (wg / s if divide else wg * s).reshape(w.shape)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, output_padding={self.output_padding}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + self._repr_tail()

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return _inference_only(self, input, self._run(input, output_size, NO_POST_OP))

    def _stock_stand_in(self) -> nn.Module:
        return (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[self._nd - 1](
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.output_padding,
            self.groups, dilation=self.dilation, device="meta")

    def _run(self, input: torch.Tensor, output_size: list[int] | None, post: PostOp) -> torch.Tensor:
        if input.dim() == self._nd + 1:  # unbatched, as nn.ConvTranspose accepts: a batch of one
            if output_size is not None and len(output_size) == self._nd + 1:
                output_size = list(output_size)[1:]
            return self._run(input.unsqueeze(0), output_size, post).squeeze(0)
        if awaits_first_call(self):  # as in _PackedConvNd._run
            self._weight_for(input)
        twin = self._autocast_twin(input)
        if twin is not None:
            return twin._run(input, output_size, post)
        w = self._weight_for(input)
        if input.dtype != w.dtype and input.is_floating_point():
            input = input.to(w.dtype)
        b = self._kernel_bias()
        output_padding = self._output_padding
        if output_size is not None:
            output_padding = nn.modules.conv._ConvTransposeNd._output_padding(
                self, input, output_size, list(self.stride), self._padding, list(self.kernel_size), self._nd,
                list(self.dilation))
        if self.kernel == "dense":
            conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self._nd - 1]
            y = conv(input, w, b, self._stride, self._padding, list(output_padding), self.groups, self._dilation)
            return self._unfused(y, None, post)
        # output_size= may ask for another output_padding than the one packed for: the packed weight serves it
        # too (unpacking it to a dense kernel instead failed under torch.compile: inductor cannot read an
        # opaque oneDNN tensor).
        y = _ipex.onednn_conv_transpose(input, w, b, self._padding, [int(p) for p in output_padding], self._stride,
                                        self._dilation, self.groups, post.unary, post.scalars, post.algorithm)
        return y if _keeps_channels_last(input) else channels_first(y)


class PackedConvTranspose2d(_PackedConvTransposeNd):
    _nd = 2


class PackedConvTranspose3d(_PackedConvTransposeNd):
    _nd = 3


class FoldedBatchNorm(nn.Module):
    """A BatchNorm folded into the convolution/linear before it: identity in ``forward``.

    It keeps the BatchNorm's parameters and running statistics so that the
    ``state_dict()`` keys stay those of the original model; loading new values
    re-folds them into the owning module's weight.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.momentum = bn.momentum
        self.affine = bn.affine
        self.track_running_stats = bn.track_running_stats
        self._bn_type = type(bn).__name__
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{self._bn_type} without running statistics cannot be folded")
        if bn.affine:
            self.weight = nn.Parameter(bn.weight.detach(), requires_grad=False)
            self.bias = nn.Parameter(bn.bias.detach(), requires_grad=False)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", bn.running_mean.detach())
        self.register_buffer("running_var", bn.running_var.detach())
        self.register_buffer("num_batches_tracked", getattr(bn, "num_batches_tracked", None))
        self.__dict__["_owner"] = None  # the PackedLinear / PackedConv* holding the folded weight
        self._raw_weight_copy = None

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, shift)`` of this BatchNorm in inference: ``y * scale + shift``, fp32."""
        inv_std = torch.rsqrt(self.running_var.detach().float() + self.eps)
        scale = inv_std if self.weight is None else self.weight.detach().float() * inv_std
        shift = -self.running_mean.detach().float() * scale
        if self.bias is not None:
            shift = shift + self.bias.detach().float()
        return scale, shift

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        owner = self._owner
        raw = None
        if owner is not None:
            raw_w = owner._raw_weight()
            raw = (raw_w, None if owner.bias is None else owner.bias.detach().float())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if raw is not None:
            with torch.no_grad():
                owner._refold(*raw)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, folded {self._bn_type}"


def _has_forward_hooks(module: nn.Module) -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module._forward_hooks or module._forward_pre_hooks or module_mod._global_forward_hooks
                or module_mod._global_forward_pre_hooks)


def run_fused(layer: _PackedModule, input: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """How a graph rewritten by ``ipex.optimize`` calls a layer with the activation / residual add
    that followed it fused in (``fx_passes.plan_post_ops``): one kernel, post-ops included.

    The post-ops run only here. Called as a module (``model[0](x)``, iterating a Sequential),
    the layer computes what the module it replaced computed: the activation module is still in
    the tree after it, and applying the post-op inside the layer too ran it twice. A layer with
    forward hooks is called as a module, so the hooks see its own output, and the post-ops follow
    unfused.
    """
    if _has_forward_hooks(layer):
        return layer._unfused(layer(input), other, layer.post_op)
    if isinstance(layer, _PackedConvTransposeNd):
        return _inference_only(layer, input, layer._run(input, None, layer.post_op))
    return _inference_only(layer, input, layer._run(input, other, layer.post_op))
