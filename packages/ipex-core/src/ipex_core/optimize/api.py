"""``ipex.optimize``: the inference optimizations of the Intel Extension for PyTorch API.

Pipeline (each step behind its knob; ``level='O1'`` turns on all but
``auto_kernel_selection``, ``graph_mode`` and ``concat_linear``; at O1,
``graph_mode=True`` turns ``concat_linear`` on too unless it is passed, as
``torch.jit.freeze`` merges Linears sharing an input in the retired
extension's TorchScript graphs: BERT-base bf16 batch 1 measured 1.03-1.05x
with it, batch 8 unchanged, while in eager mode it was neutral or slower):

1. ``inplace=False`` deep-copies the model; the caller's model is untouched.
2. ``sample_input`` is run once to record each layer's input shape and layout
   (block formats, the default convolution kernel, kernel measurements,
   Linear+BatchNorm1d checks). Without it, each prepacked convolution packs
   its weight at its first call, for that input's shape, and takes the kernel
   the default rule below gives that shape; with or without it, a call with
   another input shape packs a weight for that shape too (oneDNN's block
   format depends on the shape, and a weight packed for another one ran a
   slow kernel, not a reorder: ResNet-50 without sample_input was 2.7x slower
   than stock). Each convolution keeps packings for the last
   ``IPEX_CONV_PACKINGS`` input shapes it was called with (default 8, least
   recently used out; each costs its weight bytes again, and all of them
   beyond each layer's own weight take ``IPEX_CONV_PACKINGS_MB`` at most,
   1 GiB by default, process-wide), so calls
   alternating between a few batch sizes or image sizes reorder nothing
   (ResNet-50 alternating 224 and 160 pixels, interleaved in one process:
   46.5 / 28.4 ms, against 80.4 / 56.9 when each change of shape repacked and
   77.4 / 53.1 for stock). The first call must be an eager one:
   ``torch.compile`` of an optimized model that never ran keeps the weights
   packed for no shape (call it once first). Graph mode makes that call
   itself, and compiles a model with such convolutions once for each of its
   first ``IPEX_CONV_PACKINGS`` input shapes (4 at most), each graph frozen on its own
   shape's packing (one graph with dynamic shapes for all ran ResNet-50 at
   160x160 after 224x224 in 37.4 ms, against 27.7 with a graph of its own);
   further shapes share one graph with dynamic shapes. Each graph holds the
   weights it froze (these packings, and those inductor packs itself for
   layers left on the stock kernel): graph mode's memory grows with each
   compiled shape, on top of the eager packings. A plain ``torch.compile``
   of the optimized model reads the packings too: an eager call that adds
   or drops one in between recompiles it.
3. ``torch.fx`` traces the model region by region (fx_passes.py) to find
   BatchNorms to fold (into the Conv1d/2d/3d, ConvTranspose2d/3d or Linear
   before them), activations / residual adds to fuse and Linears sharing
   an input; a region FX cannot trace is optimized module by module and named
   in one warning. A traced region's ``forward`` becomes its traced graph, so
   Python branches on plain attributes (``if self.use_relu:``) are fixed at
   ``optimize`` time, as they are in any traced or TorchScript graph: set such
   flags before calling ``optimize`` (or pass ``conv_bn_folding=False``,
   ``linear_bn_folding=False``, ``concat_linear=False`` and turn off
   ``ipex.enable_onednn_fusion`` to keep the original ``forward``).
4. Dropout becomes ``nn.Identity``; Linear / Conv1d/2d/3d / ConvTranspose2d/3d
   become the prepacked modules of modules.py, LSTM the oneDNN one of lstm.py,
   with weights cast per the API's dtype rules.
5. ``graph_mode=True`` compiles the result with ``torch.compile`` (inductor,
   freezing on) and ipex's graph passes (graph_mode.py). There ``nn.LSTM``
   stays and is traced into the graph (plain ``torch.compile`` breaks the
   graph at it), where freezing packs its weights for oneDNN.

``level='O0'`` applies no optimization; ``dtype=`` still casts, as in the
retired extension, where the dtype conversion did not depend on the level.

Dtype rules (``dtype=torch.bfloat16`` / ``torch.float16``), as the API
documents: the weights of Conv2d, Linear and ConvTranspose2d are cast, and for
inference those of Embedding and LSTM too; every other module keeps its dtype.
Each cast module casts a floating-point input of another dtype to its own
dtype (so fp32 inputs work) and returns its output in that dtype: the model's
outputs come out in bf16/fp16 when its last layer is a cast one. Stock layers
that keep float32 weights and need an input of their weights' dtype (Conv1d/3d
left unpacked, ConvTranspose1d/3d, GRU, RNN, Bilinear) cast their floating-point
inputs to it, so a bf16 activation from a cast layer before them works.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the retired extension's
usual recipe, with or without ``dtype=``), a float32 prepacked layer (Linear,
convolution, transposed convolution, LSTM) computes in autocast's dtype, as
the stock layer would: autocast does not reach oneDNN's prepacked ops, so each
such layer keeps a low-precision copy of itself, made at its first call under
autocast (memory: the layer's weights again, in half the bytes) and dropped
when its weights change. No copy can be made while dynamo traces: graph mode
makes them in one eager call before it compiles under an autocast dtype (a
change of autocast state recompiles), while plain ``torch.compile`` of an
optimized model computes such layers in float32 unless an eager call under
autocast made the copies before. float16 autocast on a CPU whose oneDNN has no
float16 kernels computes them in float32. ResNet-50 optimized in fp32, under
bf16 autocast: eager 1.06x -> 1.41-1.50x stock under autocast, graph mode
1.78x; an optimized LSTM raised there before.

``auto_kernel_selection``: ``False`` (the default) runs every Linear,
transposed convolution and channels-last convolution on oneDNN with a
prepacked weight, except fp32 Conv2d layers whose input shape ``sample_input``
(or, without one, the layer's first call) showed, where ipex's own kernels pay (the rules, with their measurements, are
``_winograd_pays`` and ``_conv1x1_pays``): 3x3 stride-1 layers run Winograd
F(4x4, 3x3) (4x fewer multiplications, 1e-5 of the output's scale instead of
1e-6), and 1x1 stride-1 layers of at most 4096 rows (N*H*W, channels-last) one
GEMM with ReLU and the residual add fused (oneDNN's call costs 25-30 us each);
on CPUs with AMX, that GEMM runs for layers of 128 output channels or more (a
multiple of 32) as three bf16 GEMMs on AMX tiles over each value's two bf16
parts (bf16x3: within a few 1e-6 of the output's scale, 1.3-1.9x the float32
GEMM; ``IPEX_FP32_BF16X3=0`` keeps float32; ``ipex_core.ops.conv.conv1x1_weight``).
bf16 / fp16 Linears with few input rows (bf16: up to 16, fp16: 1; up to 256 for
weights of at most 256x256; on CPUs with AMX, bf16 up to 64 rows, and up to 1024
for outputs of at most 768 features and no more than the inputs; as
``sample_input`` or the first eager call shows)
and weights of at most 4M elements run ipex's own GEMM, ``ipex::linear`` (the
kernel of ``ipex.llm``'s linears), on a copy of the weight in its blocked layout
(the dense weight stays: parameters keep their shapes), ReLU / GELU / SiLU / a
residual add fused: 1.2-3.9x oneDNN's prepacked kernel there (the rule and its
measurements: ``_brgemm_linear_pays``). On CPUs with AMX, float32 Linears of 128
output features or more (a multiple of 32) fed 16 rows or more take that
kernel too, as ipex's 1x1 GEMM in the bf16x3 form (1.75-2.5x MKL's sgemm at
BERT-base's shapes; ``IPEX_FP32_BF16X3=0`` keeps float32).
Other Linears too small for oneDNN's cost per call (16-20 us, against 3-6 us for stock
F.linear; the rule and its measurements: ``_linear_is_small``) keep the stock
kernel on their dense (folded, cast) weight, their post-ops after it; without
``sample_input`` a Linear chooses at its first eager call, for that call's shape
(not under graph_mode, where it stays on oneDNN), and keeps that kernel.
Convolutions whose input is channels-first (NCHW/NCDHW, as
``sample_input`` or the first call shows; ``optimize`` itself, without a
sample, goes by whether the model was converted with
``model.to(memory_format=torch.channels_last)``) and every Conv1d keep the stock
kernel on their (BatchNorm-folded, cast) dense weight: oneDNN's prepacked
kernels reorder such inputs and outputs to and from channels-last at each call,
1.1-3x slower than stock's own oneDNN call. Except where ATen would not call
oneDNN: small fp32 batch-1 inputs (N*C*H*W <= 20480, kernels up to 3x3, as
``sample_input`` shows) run on ATen's own kernel, and such layers are
prepacked where that pays in spite of oneDNN's cost per call (about 30 us):
3x3 Conv2d from 0.3M multiply-adds channels-first (3M channels-last), Conv3d
from 0.5M; Conv1d and 1x1 layers keep ATen's kernel (``_aten_kernel_beats_onednn``).
"Converted" is read per rank from the exact weight strides (Conv2d
and Conv3d apart: ``.to(memory_format=torch.channels_last)`` converts rank-4
weights only). For the fastest convolutions convert the model and its inputs
to channels-last. Under ``graph_mode`` on Intel CPUs, other fp32 Linears
stay dense so that inductor packs them for MKL's sgemm, as
plain ``torch.compile`` does (faster than oneDNN's fp32 GEMM at BERT shapes
here, at the cost of the dense copy inductor keeps). ``True`` times, per layer, on
the layer's input shape recorded from ``sample_input``, the oneDNN prepacked
kernel against the stock PyTorch kernel on the dense weight (and, for fp32
Linear, MKL's packed sgemm, which keeps the dense weight as well: more memory;
for every Linear, ipex::linear on its blocked weight; for Conv2d layers they
fit, the Winograd and 1x1 GEMM kernels) and keeps the
fastest; layers without a recorded shape keep the default.

Post-op fusion (``ipex.enable_onednn_fusion``, read when ``optimize`` runs):
with it on (the default) a Linear/convolution followed by ReLU, GELU (erf or
tanh), SiLU, sigmoid, tanh, hardswish, hardsigmoid, LeakyReLU or Hardtanh runs
them in its oneDNN call; a Linear/convolution followed by a residual add (and,
for a convolution, add then ReLU) takes the residual as a second input, and a
convolution accumulates into the residual in place when the graph shows
nothing else reads it. ``enable_onednn_fusion(False)`` turns all of these off
(BatchNorm folding and prepacking stay). ``graph_mode`` then compiles modules
without fused post-ops; inductor's own oneDNN pattern fusions, which plain
``torch.compile`` applies too, are inductor's and stay on.

``graph_mode=True`` compiles the model in place (``nn.Module.compile``) with
inductor, freezing on, and runs the compiled call under ``torch.no_grad()``;
the model keeps its class and ``state_dict()``. ``copy.deepcopy`` or
unpickling gives back the eager model (PyTorch drops compiled state there).
A model with a convolution over one input channel is compiled per input shape
(static shapes, with a warning): under freezing, inductor's dynamic-shape
recompile laid such a convolution's output out wrongly. Past dynamo's
recompile limit (8 shapes) further shapes run eagerly. The graph runs from
inductor's C++ wrapper, which takes the compiled graph's per-call Python
overhead off (Intel Xeon with AMX, 2 cores, batch 1: BERT-base bf16 23.9 ->
22.2 ms, ResNet-50 bf16 10.5 -> 9.5 ms, fp32 29.9 -> 28.4 ms), at a longer
first call of each input shape (BERT-base 9 -> 22 s); set
``IPEX_GRAPH_MODE_CPP_WRAPPER=0`` for inductor's Python wrapper.

New weights: ``load_state_dict`` re-packs and re-folds them (and, under
``graph_mode``, compiles anew, as ``.to()`` does). Writing into parameters in
place after ``optimize`` (``layer.weight.mul_(2)``, a folded BatchNorm's
``running_mean``, an LSTM's weights) is not guaranteed to reach the packed and
folded copies the kernels read: load them through ``load_state_dict``, or
optimize again. The layers compute inference only; a backward through them
raises (take gradients from the original model).

``inplace=True`` changes the model object itself and returns it, except when the
model is itself a single swappable layer (a bare ``nn.Linear``, ``nn.Conv2d``,
...): a module cannot change its class in place, so the new layer is returned.

Not supported: pickling the whole optimized model (``torch.save(model)``): its
rewritten ``forward`` is generated code and its packed weights are opaque
oneDNN tensors. Save ``state_dict()`` instead; it loads into the original model.
Its weights are the optimized model's: where a BatchNorm was folded, the saved
conv/linear weight is the folded one divided back by the BatchNorm's scale
(equal to the original up to rounding, ~1e-7 relative in fp32) and, with
``dtype=``, in that dtype.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

from ipex_core.fusion import is_onednn_fusion_enabled
from ipex_core.isa import active_isa, cpu_features
from ipex_core.ops.conv import bf16x3_default
from ipex_core.optimize import fx_passes
from ipex_core.optimize.concat_linear import ConcatLinear, ConcatLinearMember
from ipex_core.optimize.lstm import PackedLSTM
from ipex_core.optimize.modules import (
    BRGEMM_LINEAR_DTYPES,
    NO_POST_OP,
    FoldedBatchNorm,
    PackedConv1d,
    PackedConv2d,
    PackedConv3d,
    PackedConvTranspose2d,
    PackedConvTranspose3d,
    PackedLinear,
    PostOp,
    _explicit_padding,
    _keeps_channels_last,
    _PackedConvNd,
    _PackedConvTransposeNd,
    conv1x1_fuses,
    conv1x1_supported,
    exactly_channels_last,
    link_folded,
    onednn_runs,
    packings_budget_bytes,
    packings_per_layer,
    run_fused,
    single_input_channel,
    winograd_fuses,
    winograd_supported,
)
from ipex_core.plugins import load_backend_plugins

__all__ = ["optimize"]

_LEVELS = {
    "O0": dict(conv_bn_folding=False, linear_bn_folding=False, weights_prepack=False,
               replace_dropout_with_identity=False, optimize_lstm=False, auto_kernel_selection=False,
               graph_mode=False, concat_linear=False),
    "O1": dict(conv_bn_folding=True, linear_bn_folding=True, weights_prepack=True,
               replace_dropout_with_identity=True, optimize_lstm=True, auto_kernel_selection=False,
               graph_mode=False, concat_linear=False),
}
_SWAPS = {
    nn.Linear: PackedLinear,
    nn.Conv1d: PackedConv1d,
    nn.Conv2d: PackedConv2d,
    nn.Conv3d: PackedConv3d,
    nn.ConvTranspose2d: PackedConvTranspose2d,
    nn.ConvTranspose3d: PackedConvTranspose3d,
}
# The API's cast list: always Conv2d, Linear, ConvTranspose2d; for inference also Embedding and LSTM.
_CAST_TYPES = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d, nn.Embedding, nn.LSTM)
_PACKED_CAST_TYPES = (PackedLinear, PackedConv2d, PackedConvTranspose2d)  # the swapped forms of the cast layers
# Stock layers outside that list (Conv1d/3d left unpacked, GRU, RNN, MultiheadAttention, ...) keep
# float32 weights under dtype=, and their kernels refuse a bfloat16 input from a cast layer before
# them: a pre-hook casts their floating-point (positional) inputs to their weights' dtype.
_SAME_DTYPE_INPUT_TYPES = (nn.modules.conv._ConvNd, nn.RNNBase, nn.Bilinear, nn.MultiheadAttention)
_DROPOUT = fx_passes._DROPOUT


def cpu_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs ``dtype`` (bfloat16 / float16) natively on this CPU."""
    return onednn_runs(dtype)


def _check_dtype(dtype) -> None:
    if dtype is None:
        return
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"ipex.optimize: dtype must be None (keep the model's dtype), torch.bfloat16 or torch.float16; got "
            f"{dtype!r}. For float32 inference leave dtype=None.")
    if not cpu_supports(dtype):
        name = "bfloat16" if dtype == torch.bfloat16 else "float16"
        need = "AVX512-BF16 or AMX" if dtype == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
        raise RuntimeError(
            f"ipex.optimize: dtype=torch.{name} needs a CPU with {need} (oneDNN reports no {name} support on this "
            f"one). Run in float32 (dtype=None) on this machine.")


def _resolve(level: str, explicit: dict[str, Any]) -> dict[str, bool]:
    if level not in _LEVELS:
        raise ValueError(f"ipex.optimize: level must be 'O0' or 'O1'; got {level!r}")
    knobs = dict(_LEVELS[level])
    for name, value in explicit.items():
        if value is None:
            continue
        if not isinstance(value, bool):
            raise TypeError(f"ipex.optimize: {name} must be a bool or None; got {type(value).__name__}")
        knobs[name] = value
    return knobs


class _CastInputs:
    """Forward pre-hook of a stock module: floating-point inputs to ``dtype``, or (None) to its weight's dtype."""

    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype

    @staticmethod
    def _cast(value, dtype: torch.dtype):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
        if isinstance(value, nn.utils.rnn.PackedSequence):  # a namedtuple rebuilt as a tuple lost its type
            return value._replace(data=_CastInputs._cast(value.data, dtype))
        if isinstance(value, tuple):
            items = [_CastInputs._cast(v, dtype) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        if isinstance(value, list):
            return [_CastInputs._cast(v, dtype) for v in value]
        return value

    def _cast_any(self, value):
        if isinstance(value, dict):
            return {k: self._cast(v, self.dtype) for k, v in value.items()}
        return self._cast(value, self.dtype)

    def __call__(self, module, args, kwargs):
        """A ``with_kwargs`` pre-hook: keyword inputs too (an attention mask passed by keyword stayed bf16 and
        met an fp32 query)."""
        dtype = self.dtype
        if dtype is None:
            weight = next(module.parameters(recurse=False), None)
            if weight is None or not weight.is_floating_point():
                return args, kwargs
            dtype = weight.dtype
        return self._cast(args, dtype), {k: self._cast(v, dtype) for k, v in kwargs.items()}


def _needs_input_cast(module: nn.Module) -> bool:
    """A leaf module of the model's own code (not torch.nn: HF's GPT-2 Conv1D, a custom projection) or a
    PReLU, with floating-point weights that dtype= leaves as they are: under dtype=, the bf16 activations of
    the cast layers before it met its fp32 weights in an addmm ("mat1 and mat2 must have the same dtype").
    Norms (1-D weights) take mixed dtypes and are left alone (casting would cost them time), as are ipex's own
    modules (they cast their inputs themselves, or are placeholders)."""
    if isinstance(module, nn.PReLU):
        return True
    if next(module.children(), None) is not None or type(module).__module__.startswith(("torch.", "ipex_core.")):
        return False
    return any(p.is_floating_point() and p.dim() >= 2 for p in module.parameters(recurse=False))


def _call_with(model: nn.Module, sample_input):
    if isinstance(sample_input, dict):
        return model(**sample_input)
    if isinstance(sample_input, (tuple, list)):
        return model(*sample_input)
    return model(sample_input)


class _SampleRun:
    """What one run of ``sample_input`` showed: each layer's input shape and whether that input was
    channels-last (first call), how often each layer ran, and which Linears read the very same input tensor
    (concat_linear candidates)."""

    def __init__(self, model: nn.Module | None = None, sample_input=None):
        self.shapes: dict[str, list[int]] = {}
        self.channels_last: dict[str, bool] = {}
        self.calls: dict[str, int] = {}
        self.looped_lstms: set[str] = set()  # LSTMs called more than once in the run (stepped in a loop)
        self.shared_inputs: list[list[str]] = []
        if model is not None:
            self._run(model, sample_input)

    def _run(self, model: nn.Module, sample_input) -> None:
        handles = []
        inputs: dict[str, torch.Tensor] = {}  # Linear name -> the tensor it read (kept alive: ids stay unique)
        kinds = (*_SWAPS, nn.LSTM)
        for name, module in model.named_modules():
            if type(module) in kinds:
                def hook(mod, args, name=name):
                    self.calls[name] = self.calls.get(name, 0) + 1
                    if type(mod) is nn.LSTM and self.calls[name] > 1:
                        self.looped_lstms.add(name)
                    if args and isinstance(args[0], torch.Tensor) and name not in self.shapes:
                        self.shapes[name] = list(args[0].shape)
                        self.channels_last[name] = _keeps_channels_last(args[0])
                        if type(mod) is nn.Linear:
                            inputs[name] = args[0]
                handles.append(module.register_forward_pre_hook(hook))
        # The shapes are what matters: run in the model's own dtype whatever dtype the sample comes in.
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        if param is not None:
            sample_input = _CastInputs(param.dtype)._cast_any(sample_input)
        try:
            with torch.no_grad():
                try:
                    _call_with(model, sample_input)
                except TypeError as exc:
                    raise TypeError(
                        f"ipex.optimize: calling the model with sample_input failed ({exc}). A tuple or list is "
                        "passed as positional arguments and a dict as keyword arguments; wrap a single list "
                        "argument as ([a, b],)") from exc
        finally:
            for h in handles:
                h.remove()
        by_tensor: dict[int, list[str]] = {}
        for name, tensor in inputs.items():
            if self.calls[name] == 1:
                by_tensor.setdefault(id(tensor), []).append(name)
        self.shared_inputs = [names for names in by_tensor.values() if len(names) > 1]


def _swappable(module: nn.Module) -> bool:
    if type(module) not in _SWAPS or module.weight is None or module.weight.device.type != "cpu":
        return False
    if module.weight.numel() == 0:  # nn.Linear(0, n) & co.: oneDNN has no empty primitives
        return False
    if torch.nn.utils.parametrize.is_parametrized(module):
        return False
    if not module.weight.is_floating_point() or module.weight.dtype == torch.float64:
        return False
    if module.weight.dtype != torch.float32 and not cpu_supports(module.weight.dtype):
        return False  # a model already in bf16/fp16 on a CPU whose oneDNN lacks it: PyTorch's kernels run it
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _PackedConvTransposeNd.supports(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _explicit_padding(module) is not None
    return True


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    if isinstance(old, nn.Module):
        new._forward_hooks.update(old._forward_hooks)
        new._forward_pre_hooks.update(old._forward_pre_hooks)
        new.train(old.training)  # a new module starts in training mode; keep the model's mode
    setattr(parent, attr, new)


def _single_input_channel(module: nn.Module) -> bool:
    """A convolution over one input channel, whose input is NCHW and channels-last at once: under
    torch.compile inductor then lays out the prepacked kernel's (channels-last) output as contiguous, and
    after an input shape change graph mode returned garbage (1.63 off) and plain torch.compile of the
    optimized model failed a stride assert. Such layers (audio or grayscale front ends) run the stock kernel."""
    return isinstance(module, nn.modules.conv._ConvNd) and single_input_channel(module)


def _default_kernel(module: nn.Module, cast, prepack: bool, graph_mode: bool, channels_last: bool = True,
                    shape: list[int] | None = None, post_op: PostOp | None = None) -> str:
    """The kernel without auto_kernel_selection: ipex's Winograd or 1x1 GEMM kernel where _winograd_pays or
    _conv1x1_pays, else oneDNN on a prepacked weight, except

    * a convolution (not transposed) whose input is not channels-last (``channels_last`` False: so recorded
      from sample_input or, without one, in a model whose convolution weights of that rank are not
      channels-last), and every Conv1d: the prepacked kernels work in channels-last and reorder a
      channels-first input and output on every call, 1.1-3x slower than stock's own oneDNN call here (AMD
      EPYC Zen 4, single layers: Conv3d 64->64 on 16x48x48 bf16 5.8 ms against 3.3; Conv1d 64->64 grouped
      1.3 ms against 0.44). They keep the stock kernel on the dense weight (BatchNorm folded, dtype cast):
      as fast as stock. Not where stock itself would not call oneDNN: ATen runs small fp32 convolutions
      (batch 1, N*C*H*W <= 20480, kernels up to 3x3) on its own kernel, and there the prepacked one was up
      to 2.8x faster where the work outweighs oneDNN's cost per call (_aten_kernel_beats_onednn tells where
      not); without a recorded shape that case cannot be told and the layer keeps stock's kernel.
      Transposed convolutions stay prepacked: there oneDNN's kernel was as fast or faster in both layouts
      (ConvTranspose3d fp32 4.5x).
    * a convolution that small in any layout where ATen's kernel wins (_aten_kernel_beats_onednn), and a
      Linear too small for oneDNN's cost per call (_linear_is_small).
    * an fp32 Linear under graph_mode on an Intel CPU (one _brgemm_linear_pays does not give the bf16x3 GEMM),
      left dense so that inductor's freezing packs it for
      MKL's sgemm (faster than oneDNN's fp32 GEMM at BERT shapes on Intel Xeon, as plain torch.compile does).
      Elsewhere MKL runs a slow path: BERT-base fp32 graph mode on AMD EPYC (Zen 4) took 376 ms dense against
      216 ms on oneDNN.
    * an fp32 Linear called on fewer than 16 rows, in eager mode: stock's kernel on the dense weight for one row,
      MKL's packed sgemm for 2-15 on Intel (_fp32_linear_few_rows_kernel)."""
    if not prepack or _single_input_channel(module):
        return "dense"
    if _winograd_pays(module, cast or module.weight.dtype, shape, post_op):
        return "winograd"
    if channels_last and _conv1x1_pays(module, cast or module.weight.dtype, shape, post_op):
        return "brgemm"
    if type(module) is nn.Linear and _brgemm_linear_pays(module, cast or module.weight.dtype, shape):
        return "brgemm"
    if type(module) is nn.Linear and _linear_is_small(module, cast or module.weight.dtype, shape):
        return "dense"
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        dtype = cast or module.weight.dtype
        if (type(module) is nn.Conv1d or not channels_last) and not _aten_skips_onednn(module, dtype, shape):
            return "dense"
        if _aten_kernel_beats_onednn(module, dtype, shape, channels_last):
            return "dense"
    if (graph_mode and type(module) is nn.Linear and (cast or module.weight.dtype) == torch.float32
            and _mkl_is_fast()):
        return "dense"
    if not graph_mode and type(module) is nn.Linear and (cast or module.weight.dtype) == torch.float32:
        few_rows = _fp32_linear_few_rows_kernel(shape, post_op)
        if few_rows is not None:
            return few_rows
    return "onednn"


def _fp32_linear_few_rows_kernel(shape: list[int] | None, post_op: PostOp | None) -> str | None:
    """The eager kernel of a float32 Linear called on fewer than _BF16X3_LINEAR_MIN_ROWS rows, or None (no shape,
    or more rows): oneDNN's prepacked GEMM costs more per call than MKL there. Per layer, ms (Intel Xeon with AMX,
    2 threads, in cache), stock / oneDNN / MKL packed / stock's kernel on the dense weight: 1 row 768 -> 768 0.030
    / 0.054 / 0.031 / 0.028, 3072 -> 768 0.190 / 0.319 / 0.238 / 0.200, 2048 -> 1000 0.164 / 0.218 / 0.196 /
    0.170; 4 rows 768 -> 768 0.037 / 0.053 / 0.038, 3072 -> 768 0.369 / 0.248 / 0.232, 2048 -> 1000 0.319 /
    0.222 / 0.203; 8 rows 0.058 / 0.071 / 0.049, 0.542 / 0.308 / 0.253, 0.476 / 0.280 / 0.214. So one row keeps
    stock's kernel (as fast as stock wherever it runs), and 2-15 rows take MKL's packed sgemm where MKL is fast
    (Intel; elsewhere oneDNN stays), unless a post-op is fused into the layer (MKL's sgemm fuses none: oneDNN's
    call with it stays). As with every rule here, the kernel follows the rows optimize sees
    (sample_input, or the first eager call): a layer optimized at one row keeps stock's kernel at later, larger
    batches too."""
    if not shape:
        return None
    rows = math.prod(shape[:-1])
    if rows == 1:
        return "dense"
    if 1 < rows < _BF16X3_LINEAR_MIN_ROWS and _mkl_is_fast() and (post_op is None or post_op == NO_POST_OP):
        return "mkl"
    return None


# Input rows up to which ipex::linear beats oneDNN's prepacked GEMM at every weight size measured, per dtype; and
# up to _BRGEMM_LINEAR_SMALL_ROWS for weights of at most _BRGEMM_LINEAR_SMALL_WEIGHT elements (_brgemm_linear_pays).
_BRGEMM_LINEAR_ROWS = {torch.bfloat16: 16, torch.float16: 1}
_BRGEMM_LINEAR_SMALL_ROWS = 256
_BRGEMM_LINEAR_SMALL_WEIGHT = 256 * 256
# bf16 on AMX: every weight up to _BRGEMM_LINEAR_AMX_ROWS rows, and narrow outputs (at most this many features,
# no more than the inputs) up to _BRGEMM_LINEAR_NARROW_ROWS (_brgemm_linear_pays).
_BRGEMM_LINEAR_AMX_ROWS = 64
_BRGEMM_LINEAR_NARROW_OUT = 768
_BRGEMM_LINEAR_NARROW_ROWS = 1024
# float32 Linears run ipex::conv1x1's bf16x3 GEMM (on AMX) from this many input rows: below it the weight's read
# from memory bounds both it and MKL's sgemm (768 x 768 at 1-4 rows: 0.77-0.90x MKL; 8 rows 0.98-1.30x).
_BF16X3_LINEAR_MIN_ROWS = 16
# The layer keeps its dense weight beside the kernel's copy (code may read ``weight``): up to this many elements
# (8 MB in bf16; BERT-base's largest Linear has 2.4M, ResNet-50's 2M), no default choice doubles more.
_BRGEMM_LINEAR_MAX_WEIGHT = 4 * 2**20


def _brgemm_linear_pays(linear: nn.Linear, dtype: torch.dtype, shape: list[int] | None) -> bool:
    """Whether a bf16 / fp16 Linear called on inputs of ``shape`` runs faster on ipex::linear (the brgemm kernel:
    its decode kernel up to 16 rows, AMX tiles of its own above, one call with no primitive lookup) than on
    oneDNN's prepacked kernel, which costs 17-22 us a call whatever the size. oneDNN / ipex time, ReLU fused
    (Intel Xeon with AMX, 2 threads, weights in cache), [rows, K -> N]:

    * bf16 at 1-16 rows: 1.24-1.28x (768 -> 3072), 1.35-1.51x (3072 -> 768), 1.46-1.48x (2048 -> 1000), 1.9-2.6x
      (768 -> 768), 3.2-3.9x (up to 256 -> 256); 1.39-3.3x up to 256 rows for 256 x 256 and smaller.
    * bf16 with more rows, on AMX (interleaved, in cache; ipex's large-M AMX loop): [32] 768 -> 2304 1.15x,
      768 -> 3072 1.14x, 1024 -> 1024 1.34x, 1024 -> 4096 1.20x, 4096 -> 1024 1.01x; [64] the same 1.01-1.22x,
      768 -> 768 1.25x, 3072 -> 768 1.40x, 2048 -> 768 1.44x, 1024 -> 512 1.28x; [128] 768 -> 768 0.98x, 3072 ->
      768 1.34x; [256] 768 -> 768 0.85x, 3072 -> 768 1.05x, 2048 -> 768 0.95x, 1024 -> 512 1.60x, 1024 -> 1024
      0.85x, 4096 -> 1024 0.78x; [512] the same six 1.42x, 2.01x, 1.82x, 1.66x, 0.86x, 0.82x; [1024] 768 -> 768
      1.53x, 3072 -> 768 1.94x; [2048] 0.71-0.96x; wide outputs (768 -> 2304 / 3072) 0.76-0.88x at 128-1024
      rows. So on AMX every bf16 weight takes it up to _BRGEMM_LINEAR_AMX_ROWS rows, and outputs of at most
      _BRGEMM_LINEAR_NARROW_OUT features, no more than the inputs, up to _BRGEMM_LINEAR_NARROW_ROWS rows. BERT-base
      bf16 graph mode (its attention output and FFN-down Linears take it): 21.4 -> 20.1 ms at batch 1, 165.7 ->
      125.4 ms at batch 8 (interleaved against the rules without it; auto_kernel_selection picked the same
      kernels, 130.1 ms).
    * fp16 (no AMX-FP16 here: both run AVX512-FP16): 1 row 2.9-3.1x, 16 rows 0.86-0.92x (768 -> 768, 2048 ->
      1000) but 2.8x (64 x 64), up to 256 rows 1.5-2.9x (64 x 64).
    * float32: ipex::linear is no faster than MKL's packed sgemm or stock's (0.5-1.0x at up to 8 rows); but on
      CPUs with AMX, for 128 output features or more (a multiple of 32) and at least _BF16X3_LINEAR_MIN_ROWS rows,
      the brgemm kernel of a float32 Linear is ipex::conv1x1's bf16x3 GEMM (three bf16 GEMMs on AMX, within a few
      1e-6 of the output's scale): against MKL's packed sgemm at BERT-base's shapes, 128 and 1024 rows, 768 ->
      768 / 2304 / 3072 and 3072 -> 768, 1.95-2.48x; 16 rows 1.75x; 1-8 rows 0.77-1.30x.

    Weights over _BRGEMM_LINEAR_MAX_WEIGHT elements stay on oneDNN (the kernel's copy would double them; LLMs
    have ipex.llm.optimize, which runs ipex::linear on its packed weights alone). Unknown shape: no (oneDNN, or
    the first eager call's rule). benchmarks/bench_packed_linear.py measures the chosen kernel against the
    other and stock, per layer."""
    weight = linear.in_features * linear.out_features
    if not shape or weight > _BRGEMM_LINEAR_MAX_WEIGHT:
        return False
    rows = math.prod(shape[:-1])
    if dtype == torch.float32:  # on AMX, ipex::conv1x1's bf16x3 GEMM (PackedLinear._brgemm_weight_of)
        return bf16x3_default(linear.out_features) and rows >= _BF16X3_LINEAR_MIN_ROWS
    if dtype not in _BRGEMM_LINEAR_ROWS:
        return False
    if rows <= _BRGEMM_LINEAR_ROWS[dtype]:
        return True
    if dtype == torch.bfloat16 and active_isa() == "amx" and (
            rows <= _BRGEMM_LINEAR_AMX_ROWS or (rows <= _BRGEMM_LINEAR_NARROW_ROWS and linear.out_features
                                                <= min(_BRGEMM_LINEAR_NARROW_OUT, linear.in_features))):
        return True
    return rows <= _BRGEMM_LINEAR_SMALL_ROWS and weight <= _BRGEMM_LINEAR_SMALL_WEIGHT


def _linear_is_small(linear: nn.Linear, dtype: torch.dtype, shape: list[int] | None) -> bool:
    """Whether a Linear called on inputs of ``shape`` is too small for oneDNN: its call costs 16-20 us whatever
    the size (primitive lookup and execution), against 3-6 us for stock F.linear on the dense weight, so small
    layers ran slower than stock (a 4-Linear MLP at 32 wide, batch 1: 119 against 77 us). Measured per layer
    with ReLU, square weights, stock/oneDNN time (AMD EPYC Zen 4, 2 threads): fp32 [rows, K=N] [1, 32] 0.21,
    [64, 64] 0.51, [512, 64] 0.83, [64, 128] 0.70, [8, 256] 0.80, [1, 384] 0.67, [1, 512] 0.94, and oneDNN ahead
    from [8, 384] 1.15, [1, 768] 1.15, [64, 256] 1.10, [512, 128] 1.03 up; bf16 (stock takes oneDNN too from
    2 rows): [1, 32] 0.28, [1, 64] 0.32, and oneDNN ahead from [1, 128] 1.09, [8, 32] 1.24 (fp16 takes bf16's
    rule, unmeasured: no float16 oneDNN kernels here). Such layers keep the stock kernel on their (folded, cast)
    dense weight, post-ops after it. Unknown shape: not small. Under graph_mode (with sample_input) inductor's
    freezing packs such a dense Linear for its own GEMM: MKL's packed sgemm in fp32, 3-15 us at these sizes
    (mlpbn-small in bench_optimize: graph mode 2.08x stock, torch.compile 1.91x), oneDNN in bf16."""
    if shape is None or not shape:
        return False
    rows = math.prod(shape[:-1])
    k, n = linear.in_features, linear.out_features
    macs = rows * k * n
    if dtype == torch.float32:
        return (macs < 1_100_000 and k * n < 300_000) or (min(k, n) <= 64 and macs <= 2_200_000)
    return macs <= 4096


# Winograd's 36 GEMMs are [tiles, C] x [C, K]: with fewer than this many 4x4 output tiles per call they
# read the 4x larger transformed weight for little work (ResNet-50's 7x7x512 layer, 4 tiles: 0.41x the
# oneDNN kernel; 14x14x256, 16 tiles: 1.6x; 28x28x128: 2.5x; 56x56x64: 2.2x; one thread, AMD EPYC Zen 4).
_WINOGRAD_MIN_TILES = 16
_GEMM_MIN_CHANNELS = 16  # below this the GEMMs (Winograd's, conv1x1's) are too thin to run at speed
# The kernel transforms 8 MiB of tiles per chunk and reads the whole transformed weight (36 * C * K floats)
# once per chunk: wide layers get few tiles per chunk and re-read it over and over (4096 -> 512 channels:
# 12 tiles a chunk, 0.78x the oneDNN kernel and 302 MB more memory; 2048 -> 2048: 0.59x, 604 MB). Up to
# 1024 channels in and out together (ResNet's and VGG's widest 3x3 layers), a chunk holds 56 tiles or more.
_WINOGRAD_MAX_CHANNELS = 1024


def _winograd_pays(conv: nn.Module, dtype: torch.dtype, shape: list[int] | None, post_op: PostOp | None) -> bool:
    """The Winograd F(4x4, 3x3) kernel (``ipex::conv3x3_winograd``) instead of oneDNN's direct convolution,
    which runs at this CPU's FMA peak: 4x fewer multiplications, at 1e-5 of the output's scale instead of
    1e-6 in fp32. For a float32 3x3 stride-1 ungrouped Conv2d whose input shape sample_input showed (at least
    16 channels in and out, at most 1024 together, and 16 output tiles), with no post-op or ReLU (the ones the
    kernel fuses). ResNet-50 has 13 such layers (11 at batch 1). The kernel works in channels-last; a
    channels-first input is converted and its output converted back, which still beat the stock kernel
    (ResNet-50 fed NCHW at batch 1: 57.4 -> 53.5 ms; channels-last: 37 ms). Memory: the layer keeps its dense
    weight (state_dict, .to()) and the transformed one, 4x its size (ResNet-50 fp32 at batch 1: 56 MB more).

    Not for bf16 layers, though the kernel runs them (bf16 activations, fp32 math; auto_kernel_selection
    times it): a lone layer was 1.22-1.73x oneDNN's bf16 kernel on AVX512-BF16 (ResNet-50's 56x56x64 and
    28x28x128 layers, warm), but in the model it gained nothing (ResNet-50 bf16 batch 1: graph mode 1.58x ->
    1.53x, within noise): its fp32 transformed weight is 8x the bf16 weight's bytes, read cold at every call,
    and with wider layers it lost (1.35x). With AMX the bf16 kernel is several times faster again."""
    if not _ipex_conv_applies(conv, dtype, shape, post_op, winograd_supported, winograd_fuses):
        return False
    if conv.in_channels + conv.out_channels > _WINOGRAD_MAX_CHANNELS:
        return False
    pads = _explicit_padding(conv)
    out_h, out_w = shape[2] + 2 * pads[0] - 2, shape[3] + 2 * pads[1] - 2
    return shape[0] * -(-out_h // 4) * -(-out_w // 4) >= _WINOGRAD_MIN_TILES


# ipex::conv1x1 saves oneDNN's fixed cost per convolution call (25-30 us: ideep's descriptors and
# allocations) and ran ResNet-50's batch-1 1x1 layers (49-3136 rows) 1.02-1.18x faster than the prepacked
# kernel; at batch 32 (1568-100352 rows) it was 0.95-1.04x, so above this many rows oneDNN keeps them.
_CONV1X1_MAX_ROWS = 4096


def _conv1x1_pays(conv: nn.Module, dtype: torch.dtype, shape: list[int] | None, post_op: PostOp | None) -> bool:
    """ipex's 1x1 GEMM kernel (``ipex::conv1x1``) instead of oneDNN's convolution: for a float32 1x1
    ungrouped Conv2d without padding (any stride, see conv1x1_supported) with channels-last input whose shape
    sample_input showed, at most 4096 output rows (N*H*W: batch 1 up to 64x64 pixels), at least 16 channels
    in and out, and no post-op but ReLU and a residual add (the ones the kernel fuses). ResNet-50 at batch 1:
    36 of its 53 convolutions (its 3 stride-2 downsampling layers included)."""
    return (_ipex_conv_applies(conv, dtype, shape, post_op, conv1x1_supported, conv1x1_fuses)
            and shape[0] * -(-shape[2] // conv.stride[0]) * -(-shape[3] // conv.stride[1]) <= _CONV1X1_MAX_ROWS)


def _ipex_conv_applies(conv: nn.Module, dtype: torch.dtype, shape: list[int] | None, post_op: PostOp | None,
                       supported, fuses) -> bool:
    """What ipex's own convolution kernels' rules share: float32, an input shape sample_input showed, a layer
    the kernel runs (``supported``), a post-op it fuses (``fuses``), 16+ channels in and out, and output
    channels a multiple of 16 (the weight's column blocks, ops.conv.column_block: otherwise one block of
    all of them, as wide as the layer, which no measurement covered)."""
    return (dtype == torch.float32 and shape is not None and len(shape) == 4 and supported(conv, dtype)
            and (post_op is None or fuses(post_op)) and min(conv.in_channels, conv.out_channels) >= _GEMM_MIN_CHANNELS
            and conv.out_channels % 16 == 0)


def _layer_channels_last(module: nn.Module, name: str, sample, model_channels_last: dict) -> bool:
    """Whether the layer's input is channels-last: as sample_input showed, else as the model's weights are."""
    channels_last = sample.channels_last.get(name)
    return model_channels_last.get(module.weight.dim(), False) if channels_last is None else channels_last


def _conv1x1_by_default(module: nn.Module, dtype, prepack: bool, shape, sample, model_channels_last: dict,
                        name: str, auto_kernel_selection: bool) -> bool:
    """Whether the default rule (_default_kernel, as the swap will ask it) gives ``module`` the 1x1 GEMM kernel
    with a residual add fused: graph mode plans the add into such layers. auto_kernel_selection decides later,
    by timing, so not there."""
    if auto_kernel_selection or not isinstance(module, nn.Conv2d):
        return False
    cast = dtype if type(module) in _CAST_TYPES else None
    channels_last = _layer_channels_last(module, name, sample, model_channels_last)
    return _default_kernel(module, cast, prepack, True, channels_last, shape, PostOp("relu", binary="add")) == "brgemm"


def _settled_kernel(layer: nn.Module, shape: list[int], channels_last: bool) -> str:
    """The kernel _default_kernel gives a convolution that optimize built without an input shape (no
    sample_input: oneDNN, prepacked), now that its first call shows one (_PackedModule._repack_for)."""
    if not onednn_runs(layer.dtype):  # (.double(), or .half() without float16 kernels, after optimize)
        return "dense"
    return _default_kernel(layer._stock_stand_in(), layer.dtype, True, False, channels_last, shape, layer.post_op)


def _settled_linear_kernel(layer: nn.Module, shape: list[int]) -> str:
    """The kernel a Linear that optimize built without an input shape (oneDNN) takes at its first call: ipex's
    own GEMM where _brgemm_linear_pays, the stock one where that call shows it small (_linear_is_small), else
    oneDNN still."""
    if _brgemm_linear_pays(layer, layer.dtype, shape):
        return "brgemm"
    few_rows = _fp32_linear_few_rows_kernel(shape, layer.post_op) if layer.dtype == torch.float32 else None
    if few_rows is not None:
        return few_rows
    return "dense" if _linear_is_small(layer, layer.dtype, shape) else layer.kernel


def _aten_kernel_beats_onednn(conv: nn.Module, dtype: torch.dtype, shape: list[int] | None,
                              channels_last: bool) -> bool:
    """Where stock runs a convolution on ATen's own kernel (_aten_skips_onednn: small fp32 batch-1 inputs),
    whether that kernel is still the faster one: oneDNN's call costs about 30 us whatever the size, so it
    pays only from some work up. Measured against stock, oneDNN prepacked + ReLU (AMD EPYC Zen 4, 2 threads,
    batch 1, C->C): Conv1d 0.23-0.82x at every size of that range (up to 128 channels x 160, 7.9M MACs); 1x1
    kernels 0.24-0.56x channels-first (Conv2d, 16-256 channels) and 0.26x (Conv3d); 3x3 Conv2d channels-last
    0.36-0.73x up to 2.4M MACs (64 channels at 8x8), 1.09x from 7.2M; channels-first 0.52-0.99x up to 0.15M,
    1.35x from 0.45M (0.97x at 0.59M on 4x4); 3x3x3 Conv3d 0.56x at 0.11M, 0.88x at 0.44M, 1.68x from 0.88M.
    (Channels-last 1x1 Conv2d layers take ipex's 1x1 GEMM before this is asked: 1.1-1.75x stock there.)"""
    if not _aten_skips_onednn(conv, dtype, shape):
        return False
    if type(conv) is nn.Conv1d or all(k == 1 for k in conv.kernel_size):
        return True
    spatial = shape[-(conv.weight.dim() - 2):]
    macs = (math.prod(spatial) // math.prod(conv.stride) * conv.in_channels * conv.out_channels
            * math.prod(conv.kernel_size))
    if conv.weight.dim() == 4:
        return macs < (3_000_000 if channels_last else 300_000)
    return macs < 500_000


def _aten_skips_onednn(conv: nn.Module, dtype: torch.dtype, shape: list[int] | None) -> bool:
    """Whether ATen runs this fp32 convolution on its own (slow) kernel instead of oneDNN for an input of
    ``shape``: the size clause of its use_mkldnn condition (ATen's ConvUtils.h)."""
    if dtype != torch.float32 or shape is None:
        return False
    if conv.groups > 1:
        return False
    k = list(conv.kernel_size)
    if len(k) >= 2 and k[-1] > 3 and k[-2] > 3:
        return False
    n = shape[0] if len(shape) == conv.weight.dim() else 1  # unbatched input: a batch of one
    channels, *spatial = shape[-(conv.weight.dim() - 1):]
    if conv.padding_mode != "zeros" and isinstance(conv.padding, tuple):  # ATen sees the pre-padded input
        spatial = [s + 2 * p for s, p in zip(spatial, conv.padding)]
    dims = ([n, channels, *spatial] + [1])[:4]  # N, C, and the first spatial sizes
    return n == 1 and math.prod(dims) <= 20480


def _model_channels_last(model: nn.Module) -> dict[int, bool]:
    """Per convolution rank (4: Conv2d, 5: Conv3d), whether the model's weights of that rank were converted to
    channels-last (``model.to(memory_format=torch.channels_last)``, which converts rank-4 tensors only). Told by
    the exact strides, which differ from row-major ones even for 1x1 and depthwise kernels (for which
    ``is_contiguous`` holds in both layouts)."""
    found: dict[int, bool] = {}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and isinstance(m.weight, torch.Tensor) and not m.weight.is_mkldnn:
            w = m.weight
            cl = exactly_channels_last(w)
            found[w.dim()] = found.get(w.dim(), False) or cl
    return found


@functools.cache
def _mkl_is_fast() -> bool:
    return cpu_features().get("genuine_intel", False)


def _build(module: nn.Module, kernel: str, plan: fx_passes.Plan | None, bn: FoldedBatchNorm | None,
           dtype: torch.dtype | None, shape: list[int] | None) -> nn.Module:
    cls = _SWAPS[type(module)]
    post_op = plan.post_op if plan is not None else None
    if cls is PackedLinear:
        batch = None if shape is None else max(1, int(torch.Size(shape).numel() // max(shape[-1], 1)))
        return cls(module, kernel=kernel, post_op=post_op, batch_size=batch, dtype=dtype, bn=bn)
    return cls(module, kernel=kernel, post_op=post_op, input_size=shape, dtype=dtype, bn=bn)


def _time_module(module: nn.Module, example: torch.Tensor, other: torch.Tensor | None) -> float:
    """Median time of the layer as the optimized graph runs it: its post-ops fused (run_fused)."""
    with torch.no_grad():
        for _ in range(3):
            run_fused(module, example, other)
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            run_fused(module, example, other)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _binary_operand(candidate: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """A residual of the layer's output shape, to time a layer whose fused post-op adds one
    (calling the candidate without it would run the post-op on nothing)."""
    if isinstance(candidate, PackedLinear):
        shape = [*example.shape[:-1], candidate.out_features]
    else:
        shape = [example.shape[0], candidate.out_channels, *candidate._out_spatial(example)]
    other = torch.randn(shape, dtype=example.dtype)
    fmt = _CHANNELS_LAST.get(example.dim())
    if fmt is not None and other.dim() == example.dim() and example.is_contiguous(memory_format=fmt):
        other = other.contiguous(memory_format=fmt)
    return other


def _select_kernel(module: nn.Module, plan, bn_source: nn.Module | None, dtype, shape,
                   channels_last: bool) -> nn.Module:
    """auto_kernel_selection: build each candidate, time it on the recorded shape and layout, keep the fastest."""
    target = dtype or module.weight.dtype
    kernels = ["dense"] if _single_input_channel(module) else ["onednn", "dense"]
    if type(module) is nn.Linear and target == torch.float32:
        kernels.append("mkl")
    if type(module) is nn.Linear and target in BRGEMM_LINEAR_DTYPES:
        kernels.append("brgemm")
    if winograd_supported(module, target) and len(shape) == 4:
        kernels.append("winograd")
    if conv1x1_supported(module, target) and len(shape) == 4:
        kernels.append("brgemm")
    example = torch.randn(shape, dtype=target)
    if channels_last and example.dim() in _CHANNELS_LAST:
        example = example.to(memory_format=_CHANNELS_LAST[example.dim()])
    best, best_t = None, float("inf")
    for kernel in kernels:
        bn = FoldedBatchNorm(bn_source) if bn_source is not None else None
        candidate = _build(module, kernel, plan, bn, dtype, shape).eval()  # a folded BatchNorm runs in eval only
        other = _binary_operand(candidate, example) if candidate.post_op.binary is not None else None
        t = _time_module(candidate, example, other)
        if t < best_t:
            best, best_t = candidate, t
    return best


def optimize(model, dtype=None, optimizer=None, level="O1", inplace=False, conv_bn_folding=None,
             linear_bn_folding=None, weights_prepack=None, replace_dropout_with_identity=None, optimize_lstm=None,
             split_master_weight_for_bf16=None, fuse_update_step=None, auto_kernel_selection=None,
             sample_input=None, graph_mode=None, concat_linear=None):
    """Optimize ``model`` for inference on this CPU; see ``reference/api.md`` (ipex.optimize) and this module.

    Returns the optimized model (the same object when ``inplace=True``, unless ``model`` is itself a single
    Linear / convolution / LSTM / Dropout, which is returned replaced).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"ipex.optimize: model must be a torch.nn.Module; got {type(model).__name__}")
    load_backend_plugins()
    if optimizer is not None:
        raise NotImplementedError(
            "ipex.optimize: training optimizations (optimizer=...) are not implemented yet. For inference call "
            "model.eval() and pass no optimizer; for training use the stock model and optimizer for now.")
    _check_dtype(dtype)
    knobs = _resolve(level, dict(
        conv_bn_folding=conv_bn_folding, linear_bn_folding=linear_bn_folding, weights_prepack=weights_prepack,
        replace_dropout_with_identity=replace_dropout_with_identity, optimize_lstm=optimize_lstm,
        auto_kernel_selection=auto_kernel_selection, graph_mode=graph_mode, concat_linear=concat_linear))
    if concat_linear is None and level == "O1" and knobs["graph_mode"]:
        # A frozen graph merges Linears that share an input, as torch.jit.freeze does (the retired
        # extension's graph path ran it): at O1 graph_mode implies concat_linear unless it is set.
        knobs["concat_linear"] = True
    for name, value in (("split_master_weight_for_bf16", split_master_weight_for_bf16),
                        ("fuse_update_step", fuse_update_step)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"ipex.optimize: {name} must be a bool or None; got {type(value).__name__}")
        if value:  # the optimizer case raised above: these only change how a training step runs
            warnings.warn(f"ipex.optimize: {name}=True has no effect without an optimizer (inference); it applies "
                          "to training, which needs optimizer=...", UserWarning, stacklevel=2)
    if not isinstance(inplace, bool):
        raise TypeError(f"ipex.optimize: inplace must be a bool; got {type(inplace).__name__}")
    changes = any(knobs.values()) or dtype is not None
    if not changes:
        return model if inplace else copy.deepcopy(model)
    if model.training:
        raise ValueError(
            "ipex.optimize: the model is in training mode, but without an optimizer ipex.optimize optimizes for "
            "inference (BatchNorm folding, dropout removal). Call model.eval() first.")
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise ValueError(f"ipex.optimize: the model has tensors on {sorted(devices - {'cpu'})}; ipex.optimize "
                         "optimizes CPU models. Move it with model.to('cpu') first.")

    if knobs["weights_prepack"]:
        packings_per_layer(), packings_budget_bytes()  # bad IPEX_CONV_PACKINGS(_MB) fail here, not at a later call
    model = model if inplace else copy.deepcopy(model)
    sample = _SampleRun(model, sample_input) if sample_input is not None else _SampleRun()
    if knobs["auto_kernel_selection"] and sample_input is None:
        warnings.warn("ipex.optimize: auto_kernel_selection=True measures kernels on the input shapes of "
                      "sample_input; none was given, so every layer keeps the default kernel rule (applied to the "
                      "input shape of its first call).",
                      stacklevel=2)
    if type(model) in (*_SWAPS, nn.LSTM, *_DROPOUT):
        # The model is itself one swappable layer: swap it inside a holder, return the new layer.
        holder = nn.Sequential(model)
        sample.shapes = {f"0.{k}" if k else "0": v for k, v in sample.shapes.items()}
        sample.channels_last = {f"0.{k}" if k else "0": v for k, v in sample.channels_last.items()}
        _transform(holder, dtype, knobs, sample)
        model = holder[0]
    else:
        _transform(model, dtype, knobs, sample)
    if knobs["graph_mode"]:
        from ipex_core.optimize.graph_mode import compile_model

        # An LSTM the sample run called more than once per forward is stepped in a Python loop: keep
        # dynamo's graph break there (traced, the loop unrolls into a graph per sequence length).
        compile_model(model, concat_linear=knobs["concat_linear"], trace_lstm=not sample.looped_lstms)
    return model


def _transform(model: nn.Module, dtype, knobs: dict[str, bool], sample: _SampleRun) -> None:
    shapes = sample.shapes
    prepack = knobs["weights_prepack"]
    model_channels_last = _model_channels_last(model)  # for layers sample_input did not show (or no sample)
    fusion = prepack and is_onednn_fusion_enabled()
    plans: dict[str, fx_passes.Plan] = {}
    regions: list[fx_passes.Region] = []
    if dtype is not None:
        # Before tracing: FX inlines a module of the model's own code, so a hook added afterwards never ran
        # inside a rewritten forward; with the hook, the tracer keeps it a leaf (called as a module).
        for m in model.modules():
            if _needs_input_cast(m):
                m.register_forward_pre_hook(_CastInputs(None), with_kwargs=True)
    read_directly: set[str] = set()  # layers whose parameters the model's own code reads: left as they are
    called_only: set[str] = set()  # layers a traced forward calls as modules and does not read (see below)
    need_graph = knobs["conv_bn_folding"] or knobs["linear_bn_folding"] or fusion or knobs["concat_linear"]
    if need_graph:
        regions, skipped = fx_passes.trace_regions(model)
        if skipped:
            shown = ", ".join(f"{n} ({why})" for n, why in skipped[:6])
            more = f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
            warnings.warn(
                f"ipex.optimize: torch.fx cannot trace {len(skipped)} module(s): {shown}{more}. Their own layers are "
                "still optimized one by one (prepack, dtype, dropout; concat_linear with sample_input), but "
                "BatchNorm folding and post-op fusion are skipped there.", stacklevel=3)
        input_dims = {name: len(s) for name, s in shapes.items()}
        modules = dict(model.named_modules(remove_duplicate=False))
        for region in regions:
            read_directly |= fx_passes.layers_read_directly(region)
            called_only |= fx_passes.layers_called_as_modules(region)
        called_only -= read_directly

        def swappable(name: str) -> bool:
            return name not in read_directly and _swappable(modules[name])

        for region in regions:
            if knobs["replace_dropout_with_identity"]:
                fx_passes.remove_dropout(region)
            fx_passes.plan_folding(region, plans, knobs["conv_bn_folding"], knobs["linear_bn_folding"], input_dims,
                                   swappable)
            if knobs["concat_linear"]:
                fx_passes.plan_concat_linear(region, plans, swappable)
            if fusion:
                # Under graph_mode inductor turns conv + add (+ relu) into its in-place oneDNN call itself,
                # so those adds stay in the graph; a layer that will run ipex's 1x1 GEMM kernel, which
                # inductor cannot fuse into, takes its residual add (in place where the residual is dead:
                # ipex::conv1x1_add_, a mutating extern call in the compiled graph).
                graph_binary = None
                if knobs["graph_mode"]:
                    def graph_binary(name: str) -> bool:
                        return _conv1x1_by_default(modules[name], dtype, prepack, shapes.get(name), sample,
                                                   model_channels_last, name, knobs["auto_kernel_selection"])
                fx_passes.plan_post_ops(region, plans, swappable, conv_binary=graph_binary)
    shared_groups = _plan_shared_input_groups(model, plans, sample) if knobs["concat_linear"] else []
    if need_graph:
        del modules, swappable  # hold no reference to a module that is about to be replaced (peak memory)

    # Module swaps. Collect first: the tree changes as we go.
    folded: dict[str, FoldedBatchNorm] = {}
    for name, plan in plans.items():
        if plan.bn is not None:
            folded[name] = FoldedBatchNorm(model.get_submodule(plan.bn))
    for name, plan in plans.items():
        if plan.bn is not None:
            _set_submodule(model, plan.bn, folded[name])

    # Walk by name, fetching each module when its turn comes: a list of the modules themselves would keep
    # every replaced weight alive to the end (with inplace=True, twice the model's memory at the peak).
    replaced: dict[int, nn.Module] = {}  # a module reachable under several names is swapped once
    for name in [n for n, _ in model.named_modules(remove_duplicate=False)]:
        if not name:
            continue
        module = model.get_submodule(name)
        if id(module) in replaced:
            if replaced[id(module)] is not module:
                _set_submodule(model, name, replaced[id(module)])
            continue
        replaced[id(module)] = module
        if name in read_directly:
            if dtype is not None:  # left in its dtype: inputs cast to it, as for the other layers left as they are
                module.register_forward_pre_hook(_CastInputs(None), with_kwargs=True)
            continue
        plan = plans.get(name)
        if plan is not None and plan.concat_group is not None:
            continue  # built with its group below
        if isinstance(module, _DROPOUT) and knobs["replace_dropout_with_identity"] and not module.training:
            replaced[id(module)] = nn.Identity()
            _set_submodule(model, name, replaced[id(module)])
        elif (type(module) is nn.LSTM and knobs["optimize_lstm"] and not knobs["graph_mode"]
              and PackedLSTM.supports(module) and not (module.training and module.dropout > 0)):
            # (Under graph_mode the stock LSTM stays: graph mode has dynamo trace it into the model's graph
            # (graph_mode._InferenceCall) and inductor's freezing packs it for oneDNN itself; its pass would try
            # to re-pack PackedLSTM's already packed weights.)
            if dtype is not None:
                module.to(dtype)
            size = shapes.get(name)
            if size is not None and module.batch_first and len(size) == 3:
                size = [size[1], size[0], size[2]]
            replaced[id(module)] = PackedLSTM(module, size if size and len(size) == 3 else None)
            _set_submodule(model, name, replaced[id(module)])
        elif _swappable(module) and (prepack or name in folded):
            cast = dtype if type(module) in _CAST_TYPES else None
            channels_last = _layer_channels_last(module, name, sample, model_channels_last)
            kernel = _default_kernel(module, cast, prepack, knobs["graph_mode"], channels_last, shapes.get(name),
                                     plan.post_op if plan is not None else None)
            bn = folded.get(name)
            if knobs["auto_kernel_selection"] and prepack and name in shapes:
                bn_source = model.get_submodule(plans[name].bn) if bn is not None else None
                new = _select_kernel(module, plan, bn_source, cast, shapes[name], channels_last)
                if bn is not None:  # the winner folded its own copy: point the placeholder at it
                    link_folded(new, bn)
            else:
                new = _build(module, kernel, plan, bn, cast, shapes.get(name))
                if prepack and shapes.get(name) is None and isinstance(new, _PackedConvNd) \
                        and new.kernel in ("onednn", "dense"):  # (transposed ones stay on oneDNN)
                    new.__dict__["_settle_kernel"] = _settled_kernel  # applied at the first call
                    # One that starts on the stock kernel may still take oneDNN's there where nothing but its
                    # own call uses its weight: called from a traced forward, which reads none of it.
                    new.__dict__["_may_pack"] = name in called_only
                # Likewise for Linears (PackedLinear._settle), in eager mode only: graph mode would make a first eager
                # call for them (_InferenceCall.settle_first), running every such model twice at its first call
                # (side effects too: a cache the model appends to), and inductor's freezing repacks a dense Linear
                # for its own GEMM anyway.
                if prepack and shapes.get(name) is None and type(new) is PackedLinear and new.kernel == "onednn" \
                        and not knobs["graph_mode"]:
                    new.__dict__["_settle_kernel"] = _settled_linear_kernel
            replaced[id(module)] = new
            _set_submodule(model, name, new)
        elif dtype is not None and type(module) in _CAST_TYPES:
            module.to(dtype)
            module.register_forward_pre_hook(_CastInputs(dtype), with_kwargs=True)
        elif dtype is not None and type(module) in _PACKED_CAST_TYPES:
            module.to(dtype)  # optimized before: re-packed in dtype (it casts its inputs itself)
        elif dtype is not None and isinstance(module, _SAME_DTYPE_INPUT_TYPES):
            module.register_forward_pre_hook(_CastInputs(None), with_kwargs=True)

    # nn.TransformerEncoderLayer's inference fast path hands linear1/linear2.weight to one fused aten op,
    # which cannot read a packed (oneDNN) weight. Where they were swapped, turn the fast path off: an
    # instance attribute the layer checks (the stock activations set it); the regular path then calls
    # the swapped modules.
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer) and not (type(m.linear1) is type(m.linear2) is nn.Linear):
            m.activation_relu_or_gelu = 0
        # The encoder turns a padded batch into a NestedTensor on its own (use_nested_tensor), which the packed
        # layers cannot take ("Could not run 'ipex::onednn_linear' with ... NestedTensorCPU"). Without it the
        # padded positions of the output hold computed values, where the stock fast path leaves zeros.
        if isinstance(m, nn.TransformerEncoder) and any(
                isinstance(layer, nn.TransformerEncoderLayer) and type(layer.linear1) is not nn.Linear
                for layer in m.layers):
            m.use_nested_tensor = False

    for region in regions:
        names = [_concat_group(model, region.module, members, dtype, prepack, shapes, knobs["graph_mode"])
                 for members in region.concat_groups]
        if names:
            fx_passes.rewrite_concat(region, names)
        if region.changed:
            fx_passes.bind_forward(region)
    for members in shared_groups:
        parent = os.path.commonprefix([m.split(".")[:-1] for m in members])
        _concat_group(model, model.get_submodule(".".join(parent)), members, dtype, prepack, shapes,
                      knobs["graph_mode"])


def _plan_shared_input_groups(model: nn.Module, plans: dict[str, fx_passes.Plan], sample: _SampleRun):
    """concat_linear where FX could not see the graph: Linears that read the same tensor in the sample run.

    Each member then takes its slice of one GEMM at run time (ConcatLinearMember); only Linears with
    nothing else planned (no folded BatchNorm, no fused post-op, not in an FX group) take part.
    """
    groups = []
    for names in sample.shared_inputs:
        candidates: dict[tuple, list[str]] = {}
        for name in names:
            module = model.get_submodule(name)
            if name in plans or type(module) is not nn.Linear or not _swappable(module):
                continue
            candidates.setdefault((module.in_features, module.weight.dtype), []).append(name)
        for members in candidates.values():
            if len(members) > 1:
                groups.append(members)
                for name in members:
                    plans[name] = fx_passes.Plan(concat_group=-1)
    return groups


def _concat_group(model: nn.Module, parent: nn.Module, members: list[str], dtype, prepack: bool,
                  shapes: dict[str, list[int]], graph_mode: bool) -> str:
    """Build the ConcatLinear of ``members``, register it on ``parent``, put a member stand-in at each
    member's place; returns the attribute name."""
    linears = [model.get_submodule(m) for m in members]
    batch = None
    if members[0] in shapes:
        s = shapes[members[0]]
        batch = max(1, int(torch.Size(s).numel() // max(s[-1], 1)))
    # The kernel rule for the merged layer, on the members' input shape.
    merged = nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears), device="meta",
                       dtype=linears[0].weight.dtype)  # (a model already in bf16, optimized with dtype=None)
    group = ConcatLinear([lin if dtype is None else _cast_copy(lin, dtype) for lin in linears],
                         _default_kernel(merged, dtype, prepack, graph_mode, shape=shapes.get(members[0])), batch)
    index = 0
    while hasattr(parent, f"ipex_concat_linear_{index}"):
        index += 1
    attr = f"ipex_concat_linear_{index}"
    parent.add_module(attr, group)
    for i, (member, lin) in enumerate(zip(members, linears)):
        _set_submodule(model, member, ConcatLinearMember(group, i, lin))
    return attr


def _cast_copy(linear: nn.Linear, dtype: torch.dtype) -> nn.Linear:
    new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    new.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
    return new
