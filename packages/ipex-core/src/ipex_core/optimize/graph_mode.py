"""``graph_mode=True``: the optimized model compiled by ``torch.compile`` (inductor, freezing on).

No TorchScript. The model is compiled in place (``nn.Module.compile``), so it
keeps its class and ``state_dict()``. The compiled call runs under
``torch.no_grad()`` (the model is for inference, and inductor freezes weights
only without autograd). Inductor's freezing constant-folds the prepacked
weights and applies its own oneDNN pattern fusions on top of ipex's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import threading
import warnings
import weakref

import torch
from torch import nn

from ipex_core import env
from ipex_core.optimize.modules import (
    PackedConv3d,
    _PackedConvNd,
    _PackedConvTransposeNd,
    awaits_first_call,
    packings_per_layer,
    single_input_channel,
)

__all__ = ["GRAPH_MODE_OUTPUT_ASSERTS", "NO_OUTPUT_ASSERTS", "ROOT_ARG", "compile_model", "deployed_step",
           "deployment_guard_filter", "inductor_freezing_backend"]


# Inductor's wrapper checks the size, strides and alignment of every extern kernel's
# output at every call (two Python-level calls per ipex/oneDNN op): they cost BERT-base
# bf16 graph mode 2% of a call (22.3 -> 21.9 ms) and SmolLM2's decode step 3% (14.5 ->
# 14.1 ms, interleaved). The LLM decode graph runs without them: its extern kernels are
# ipex ops, whose fake (meta) strides torch.library.opcheck checks against the kernels in
# the tests. ipex.optimize's graph mode keeps the size/stride checks
# (GRAPH_MODE_OUTPUT_ASSERTS): there inductor's own oneDNN convolution fusions choose
# layouts, and one of them laid a channels-last output out as contiguous (a 1-channel
# convolution + ReLU after a dynamic-shape recompile): with the checks off graph mode
# returned that garbage silently (1.46 off), with them on it is an error.
NO_OUTPUT_ASSERTS = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
GRAPH_MODE_OUTPUT_ASSERTS = {"size_asserts": True, "alignment_asserts": False, "scalar_asserts": False}


def cpp_wrapper() -> bool:
    """Whether graph mode compiles with inductor's C++ wrapper (``IPEX_GRAPH_MODE_CPP_WRAPPER``, default on).

    The C++ wrapper makes the graph's calls of extern kernels (oneDNN, ipex ops) and its output size checks
    from C++, where the Python wrapper runs Python code per call; at the cost of a C++ compilation at the first
    call of each input shape (figures: ipex_core.optimize.api's docstring)."""
    return env.get_bool("IPEX_GRAPH_MODE_CPP_WRAPPER")


# Graph mode compiles a graph of its own for at most this many input shapes (each costs a compilation, ResNet-50:
# about 5 s here, and the memory of its frozen weights); further shapes share one graph with dynamic shapes.
MAX_SHAPE_GRAPHS = 4

ROOT_ARG = "_ipex_deployed_root"  # the compiled step's argument holding the deployed model (see deployed_step)
_STEP_NUMBERS = itertools.count()  # names the deployed steps apart (see deployed_step)


def deployment_guard_filter(guard_entries) -> list[bool]:
    """Which of dynamo's guards a deployed model's compiled call checks on every call (``guard_filter_fn``).

    In the frame of :func:`deployed_step` (the deployed model's own call), kept: every guard on
    what is not one of the model's modules (inputs, caches, globals), including every guard on an
    input tensor (dtype, shape, device, strides: a new shape or dtype recompiles). Dropped: the
    guards on module attributes, types, hook dictionaries and the model's own tensors (weights
    and buffers). For SmolLM2's 30 layers that is about 5,200 guards down to 1,100, of which 180
    tensor guards on the weights cost 0.58 ms of a 14.1 ms decode step (interleaved); ResNet-50
    graph mode (weights frozen into the graph): 2,578 down to about 110. A deployed model is
    used as it is: like the retired extension's frozen TorchScript graphs, the compiled call does
    not see modules swapped, attributes set, hooks added or weights replaced by tensors of
    another dtype or shape afterwards; optimize again after such changes. Its callers drop the
    compiled call when the model itself is cast, moved or loaded (``.to()``, ``load_state_dict``),
    and the next call compiles anew.

    Every other frame (one dynamo compiles on its own after a graph break, such as a
    submodule's ``_call_impl``) keeps all its guards: its code is shared by every module that
    runs it, and without the guards on ``self``'s type and attributes one module's graph ran
    for another (graph mode on ``Sequential(Linear(8, 8), Linear(8, 4))`` returned the first
    Linear's output). Used by ``ipex.optimize(graph_mode=True)`` and by ``ipex.llm.optimize``'s
    ``deployment_mode``.
    """
    # The frame is recognised by a guard naming the root argument. Torch 2.13 names sources
    # "_ipex_deployed_root._modules[...]" (earlier: "L['_ipex_deployed_root']..."); a prefix test on one
    # spelling matched nothing and silently kept every guard (ResNet-50: 2,578 per call).
    if not any(ROOT_ARG in e.name for e in guard_entries):
        return [True] * len(guard_entries)
    return [
        (entry.guard_type == "TENSOR_MATCH" and not _of_model(entry.name))
        or not entry.orig_guard.source.is_unspecialized_nn_module()
        for entry in guard_entries
    ]


def _of_model(source_name: str) -> bool:
    """Whether a guard's source is the deployed model or something reached through it."""
    return source_name.startswith((ROOT_ARG + ".", ROOT_ARG + "[", f"L['{ROOT_ARG}']"))


def deployed_step(fn):
    """``step(root, *args, **kwargs) = fn(root, *args, **kwargs)`` with a code object of its own, for
    ``torch.compile`` of one deployed model (pass the model as ``root``).

    Dynamo keeps compiled graphs per code object, and deployment_guard_filter drops the guards on
    the model's attributes: compiling a shared code object (``nn.Module._call_impl``, a class's
    ``forward``) let a second model of the same class run the first one's graph, with its Python
    constants baked in (two Llamas with different RMSNorm eps: logits 0.5 off). One code object
    per model keeps their graphs apart; the model as an argument named ROOT_ARG marks the frame
    whose guards the filter may drop.
    """
    def _ipex_step(_ipex_deployed_root, *args, **kwargs):
        return fn(_ipex_deployed_root, *args, **kwargs)

    # A new code object: a cache of its own. Named apart too: dynamo keeps what it learned about a frame's
    # inputs (automatic dynamic shapes) per (file, line, name) of its code. Under one name, a second ResNet-50
    # in the process whose 1x1 layers held weights of other shapes (float32 against bf16x3) got them traced as
    # dynamic, and the C++ wrapper of its graph failed to compile ("'s33' was not declared").
    name = f"_ipex_step_{next(_STEP_NUMBERS)}"
    names = {"co_name": name} | ({"co_qualname": name} if sys.version_info >= (3, 11) else {})  # (3.11 added it)
    _ipex_step.__code__ = _ipex_step.__code__.replace(**names)
    return _ipex_step


class _KeepBinaryOpsOffTransposedConvs:
    """An inductor joint-graph pass (``joint_custom_post_pass``) against a wrong fold of inductor's freezing.

    Freezing's binary folding (torch/_inductor/fx_passes/binary_folding.py, torch 2.13) folds a per-channel
    multiply or add after a convolution into its weight along dim 0, the output channels of a convolution. A
    transposed convolution's weight is [in, out / groups, k...]: dim 0 is its input channels. Where the two
    counts are equal the shapes broadcast and the fold goes through, scaling the wrong channels: a
    ConvTranspose2d(8, 8) + BatchNorm2d compiled with freezing came out 0.31 off (relative to the output's
    largest value). In ipex's graph mode that reaches the transposed convolutions left on the stock kernel
    (weights_prepack=False, ConvTranspose1d, conv_bn_folding=False with a multiply after): 0.24 off.

    The fold matches ``binary(convolution(...), constant)`` with the convolution's output read directly. This
    pass, run before freezing, puts a clone between each transposed convolution and its readers: freezing's
    folding passes then see no match (its constant folding cannot fold the clone away: its input is not a
    constant), and inductor's post-grad passes drop the clone as a no-op before they lower the graph (no cost
    per call; the convolution's own oneDNN fusions come after that). The BatchNorm or multiply stays a pointwise
    op, fused with its neighbours. (Reading the weight through a clone instead did not help: freezing's constant
    folding runs before each round of binary folding and turned it back into a frozen constant.)"""

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        binary = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}  # what the fold matches
        for node in list(graph.find_nodes(op="call_function", target=aten.convolution.default)):
            if len(node.args) > 6 and node.args[6] and any(user.target in binary for user in node.users):
                with graph.inserting_after(node):
                    read = graph.call_function(aten.clone.default, (node,))
                read.meta.update(node.meta)
                node.replace_all_uses_with(read, delete_user_cb=lambda user, read=read: user is not read)

    def uuid(self) -> str:  # inductor's FX graph cache keys custom passes by this
        return "ipex-keep-binary-ops-off-transposed-convs-1"


@functools.cache
def _custom_pass_type():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    return type("KeepBinaryOpsOffTransposedConvs", (_KeepBinaryOpsOffTransposedConvs, CustomGraphPass), {})


def inductor_freezing_backend(gm: torch.fx.GraphModule, example_inputs, *, concat_linear: bool = False,
                              generated: list | None = None):
    """A ``torch.compile`` backend: inductor with freezing, ipex's settings scoped to this compilation. The Python
    modules inductor generates for it are appended to ``generated`` (see release_generated_code)."""
    from torch._inductor import config
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.compile_fx import compile_fx

    # (A joint_custom_post_pass the user set runs too, before ours.)
    user_passes = config.joint_custom_post_pass
    user_passes = () if user_passes is None else tuple(user_passes) if isinstance(user_passes, (list, tuple)) \
        else (user_passes,)
    patches = {"freezing": True, "cpp.enable_concat_linear": concat_linear, "cpp_wrapper": cpp_wrapper(),
               "joint_custom_post_pass": [*user_passes, _custom_pass_type()()], **GRAPH_MODE_OUTPUT_ASSERTS}
    loaded = getattr(PyCodeCache, "modules", None)  # (inductor's internals: absent elsewhere, nothing is recorded)
    # The modules loaded before, held (so that no new module can take the id of one freed meanwhile). Compared by
    # identity, not by position: a finalizer of another collected graph-mode model may drop its own modules from
    # the list while inductor compiles (release_generated_code), and the new modules then sat before the old end.
    before = list(loaded) if isinstance(loaded, list) else None
    with config.patch(patches):
        compiled = compile_fx(gm, example_inputs)
    if generated is not None and before is not None:
        known = {id(m) for m in before}
        generated.extend(m for m in loaded if id(m) not in known)
    return compiled


def release_generated_code(generated: list) -> None:
    """Drop inductor's own references to the Python modules in ``generated``: its code cache and ``sys.modules``
    keep every module it loads, for the life of the process, and with freezing a module holds the graph's frozen
    weights as globals. A graph-mode model compiled anew (``load_state_dict``, ``.to()``) or deleted left its old
    graphs' weights behind: 36 MB per reload of one 512-channel 3x3 convolution (its Winograd weight), for ever.
    A graph still in use keeps its module alive itself."""
    import sys

    from torch._inductor.codecache import PyCodeCache

    if not generated:
        return
    doomed = {id(m) for m in generated}
    PyCodeCache.modules[:] = [m for m in PyCodeCache.modules if id(m) not in doomed]
    by_path = getattr(PyCodeCache, "modules_no_attr", {})
    for path in [p for p, m in by_path.items() if id(m) in doomed]:
        del by_path[path]
    for module in generated:
        if sys.modules.get(module.__name__) is module:
            del sys.modules[module.__name__]
    generated.clear()


@contextlib.contextmanager
def trace_settings(trace_lstm: bool):
    """What dynamo must see while it traces a graph-mode model: inductor's freezing (parameters become graph
    constants, see _InferenceCall) and, for ``trace_lstm``, dynamo's ``allow_rnn``. Config values are context
    variables in torch 2.13: the patch holds in the tracing thread alone."""
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config

    with config.patch(freezing=True), (dynamo_config.patch(allow_rnn=True) if trace_lstm
                                       else contextlib.nullcontext()):
        yield


def tracing_with(settings, fn, *, backend, dynamic, guard_filter_fn):
    """``torch.compile(fn, backend=backend, dynamic=dynamic)`` that enters the context manager ``settings()``
    around dynamo's work on a frame it has no graph for (tracing and compiling), and never on a call its
    cache answers.

    How: dynamo's optimize context calls its ``callback`` on a cache miss only; that is wrapped here, the way
    dynamo wraps its own callbacks (``_torchdynamo_orig_backend``: dynamo finds the backend of a cached graph
    through that chain, so the wrapper does not recompile anything). A delayed-compile stance
    (``torch.compiler.set_stance("eager_then_compile")``) would compile through a callback of its own, without
    these settings; in torch 2.13 it fails earlier on any model holding oneDNN-packed weights, graph mode or
    plain torch.compile of an optimized model (it copies every frame's locals to the meta device, which a
    mkldnn tensor refuses)."""
    context = torch._dynamo.optimize(backend=backend, dynamic=dynamic, guard_filter_fn=guard_filter_fn)
    inner = context.callback

    def callback(*args, **kwargs):
        with settings():
            return inner(*args, **kwargs)

    # The wrapped one's own link, so the chain keeps its depth: dynamo's delayed-compile stances
    # (set_stance("eager_then_compile")) take the backend two links down from the callback.
    callback._torchdynamo_orig_backend = inner._torchdynamo_orig_backend
    context.callback = callback
    return context(fn)


class _InferenceCall:
    """The compiled ``__call__`` of a graph-mode model, run without autograd, traced with freezing on.

    Freezing must be on while dynamo traces (at a call, lazily), not only while inductor compiles: dynamo
    then keeps parameters as graph constants, which freezing folds and inductor prepacks. Patching it in the
    backend alone leaves the weights as graph inputs (and ``torch.compile(options={"freezing": True})`` does
    not freeze in torch 2.13 for the same reason). The patches are entered only when dynamo traces
    (tracing_with): entered around every call, ``config.patch`` cost each call 27 us, and the config
    writes slowed the compiled call after it (a 4-Linear MLP at 64 wide: 228 against 152 us a call,
    as fast as the eager model once gone).

    ``trace_lstm``: dynamo traces ``nn.LSTM`` (``allow_rnn``) instead of breaking the graph at it. By
    default it runs every ``nn.RNNBase`` eagerly between two compiled graphs, and the stock LSTM kernel
    reorders its weights for oneDNN at each call; traced, the LSTM decomposes into one
    ``mkldnn_rnn_layer`` per layer and direction, whose weights freezing packs once, inside the one
    graph of the model (a 2-layer biLSTM net, batch 8: 18.4 -> 15.1 ms, faster than eager ipex's
    PackedLSTM). Only for models whose RNNs are all ``nn.LSTM`` without ``proj_size``: GRU, RNN and a
    projected LSTM decompose into one set of ops per time step (a graph as long as the sequence,
    recompiled for each length). Not either where sample_input showed an LSTM called more than once per
    forward (a decoder stepping it in a Python loop): traced, that loop unrolls into one graph per
    sequence length, 10-24 s of compilation each (with the graph break: 0.2 s, then reused).

    ``compile_for_shape`` / ``shape_graphs``: a model with convolutions on oneDNN weights, whose blocked format
    depends on the input shape (modules._PackedModule._weight_for), gets a compiled function of its own
    (``compile_for_shape()``, its own dynamo cache) for each of the first ``shape_graphs`` input shapes (tensor
    shapes, under each autocast dtype), after an eager call at that shape packs the weights for it: its graph
    freezes those packings. Further shapes share ``compiled`` (dynamic shapes after the first of them), on the
    weight parameter's packing (that of sample_input's shape, or of the first call's). One graph with dynamic
    shapes for all (what dynamo does by itself) ran every shape but the first on weights packed for that one:
    ResNet-50 compiled at 224x224 and called at 160x160 took 37.4 ms, against 27.7 with a graph of its own
    (AMD EPYC Zen 4, batch 1). A function per shape rather than one with static shapes for all: that one
    recompiled for every new value of a Python number argument (dynamo specializes them under static shapes)
    and, past dynamo's recompile_limit (8), ran every call eagerly; each per-shape function keeps dynamo's
    usual handling of them (automatic dynamic after a second value).
    """

    def __init__(self, compiled, trace_lstm: bool, eager, settle_first: bool, compile_for_shape=None,
                 shape_graphs: int = 0, generated: list | None = None):
        self.compiled = compiled
        self.trace_lstm = trace_lstm
        self.eager = eager  # the model's eager call
        self.settle_first = settle_first
        self.compile_for_shape = compile_for_shape
        self.shape_graphs = shape_graphs
        self.per_shape: dict[tuple, object] = {}  # (autocast dtype, input shapes) -> its compiled function
        self.ready: set[tuple] = set()  # (autocast dtype, None) an eager call ran for
        # One thread prepares a new shape (eager call, compiled function) at a time; reentrant: the model's own
        # forward may call it again.
        self.lock = threading.RLock()
        self.generated = [] if generated is None else generated  # inductor's modules for these graphs

    def __call__(self, *args, **kwargs):
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        compiled = None
        if self.compile_for_shape is not None:
            key = (autocast, _tensor_shapes(args, kwargs))
            compiled = self.per_shape.get(key)
            if compiled is None and len(self.per_shape) < self.shape_graphs:
                with self.lock:
                    compiled = self._prepare_shape(key, args, kwargs)
        if compiled is None:
            key = (autocast, None)
            if self.settle_first or (autocast is not None and key not in self.ready):
                with self.lock:
                    self._eager_call(key, args, kwargs)
            compiled = self.compiled
        with torch.no_grad():
            return compiled(*args, **kwargs)

    def _eager_call(self, key, args, kwargs) -> None:
        """One eager call before dynamo traces, where the model must change first: layers built without an input
        shape (no sample_input) pack for the shape of their first call (modules._PackedModule._repack_for), a
        model compiled per input shape packs for each new one, and under CPU autocast float32 layers make the
        low-precision copies the traced graph then computes them with (modules._PackedModule._autocast_twin:
        none can be made while dynamo traces). Autocast state is part of dynamo's guards: a call under another
        autocast dtype recompiles, after its own eager call. (Under self.lock.)"""
        if key in self.ready and not self.settle_first:
            return
        with torch.no_grad():
            self.eager(*args, **kwargs)
        self.settle_first = False  # after it ran: a first call that raised leaves the next one to settle
        self.ready.add(key)

    def _prepare_shape(self, key, args, kwargs):
        """The compiled function for a new input shape (None: past shape_graphs), made after an eager call at that
        shape. (Under self.lock.)"""
        compiled = self.per_shape.get(key)
        if compiled is None and len(self.per_shape) < self.shape_graphs:
            self._eager_call(key, args, kwargs)
            compiled = self.per_shape[key] = self.compile_for_shape()
        return compiled


def _tensor_shapes(args, kwargs) -> tuple:
    """The shapes of the tensors among a call's arguments (nested ones too), in order. (Tensors alone, the usual
    call, skip pytree's flattening: 0.5 against 4.3 us a call.)"""
    if not kwargs and all(type(a) is torch.Tensor for a in args):
        return tuple(tuple(a.shape) for a in args)
    return tuple(tuple(t.shape) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor))


def compile_model(model: nn.Module, concat_linear: bool = False, trace_lstm: bool = True) -> None:
    """Compile ``model`` in place; ``model.load_state_dict`` and ``model.to()`` (``.float()``,
    ``.bfloat16()``, ...) afterwards compile it anew. ``trace_lstm=False`` keeps dynamo's graph break at
    every LSTM (see _InferenceCall).

    Freezing makes the weights constants of the compiled graph, so new values loaded into the
    modules, or a new dtype, were not seen (the old weights kept running: 4.5 off on a Linear
    after load_state_dict, fp32 outputs after .to(torch.bfloat16)). Only calls on the model
    itself are seen: optimize again after loading into a submodule or changing parameters in place.
    """
    _compile(model, concat_linear, trace_lstm)
    model.register_load_state_dict_post_hook(lambda module, incompatible: _compile(module, concat_linear, trace_lstm))
    # An instance attribute in front of nn.Module._apply (what .to() & co. call on the model).
    model._apply = functools.partial(_apply_then_compile, model, concat_linear, trace_lstm)


def _apply_then_compile(model: nn.Module, concat_linear: bool, trace_lstm: bool, fn, recurse: bool = True
                        ) -> nn.Module:
    before = _tensor_kinds(model)
    type(model)._apply(model, fn, recurse)
    if _tensor_kinds(model) != before:  # a no-op .to("cpu") / .float() keeps the compiled graph (and its memory)
        _compile(model, concat_linear, trace_lstm)
    return model


def _tensor_kinds(model: nn.Module) -> list:
    return [(t.dtype, t.device) for t in (*model.parameters(), *model.buffers())]


def _has_single_channel_conv(model: nn.Module) -> bool:
    return any(single_input_channel(m) for m in model.modules())


def _has_strided_conv3d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv3d, PackedConv3d)) and any(s > 1 for s in m.stride) for m in model.modules())


def _compile(model: nn.Module, concat_linear: bool, trace_lstm: bool = True) -> None:
    # Two inductor bugs under freezing, both in the dynamic-shape recompile after an input shape change
    # (stock torch.compile with freezing fails the same way), make a model recompile per input shape with
    # static shapes instead:
    # * a convolution over 1 channel (a grayscale/audio front end, or a 1-channel bottleneck inside): its
    #   output laid out with the wrong strides (an error with the output checks, 1.35 off without);
    # * a strided Conv3d: lowering fails ("ValueRangeError: Invalid ranges [0:-1]" at
    #   inductor_force_stride_order; nn.Conv3d(2, 16, 3, stride=2, padding=1) alone, 8x16x16 then 6x12x12).
    dynamic = None
    hazard = ("a convolution over 1 input channel" if _has_single_channel_conv(model)
              else "a strided Conv3d" if _has_strided_conv3d(model) else None)
    if hazard is not None:
        dynamic = False
        warnings.warn(f"ipex.optimize(graph_mode=True): the model has {hazard}, so it is compiled for each input "
                      "shape (static shapes; inductor's dynamic-shape recompile under freezing mishandles such "
                      "a convolution). Past torch._dynamo.config.recompile_limit distinct shapes (8 by default) "
                      "further shapes run eagerly: raise the limit, or pad inputs to a few sizes.",
                      UserWarning, stacklevel=3)

    old = model.__dict__.get("_compiled_call_impl")
    if isinstance(old, _InferenceCall):  # compiled anew: the old graphs go (those still running keep theirs)
        release_generated_code(old.generated)
    generated: list = []  # inductor's modules for this model's graphs
    weakref.finalize(model, release_generated_code, generated).atexit = False  # (nothing to release at exit)

    def compile_step():
        return functools.partial(tracing_with(
            functools.partial(trace_settings, trace_lstm), deployed_step(type(model)._call_impl),
            backend=functools.partial(inductor_freezing_backend, concat_linear=concat_linear, generated=generated),
            dynamic=dynamic, guard_filter_fn=deployment_guard_filter), model)

    # Convolutions whose oneDNN weights are packed per input shape (a layer on another kernel may settle on
    # oneDNN at its first call, and under autocast computes through a low-precision copy on oneDNN): a compiled
    # function for each of the first shapes (as many as each layer keeps packings for, MAX_SHAPE_GRAPHS at
    # most), see _InferenceCall.
    per_shape = any(isinstance(m, (_PackedConvNd, _PackedConvTransposeNd)) for m in model.modules())
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    trace_lstm = trace_lstm and bool(rnns) and all(type(m) is nn.LSTM and m.proj_size == 0 for m in rnns)
    # What nn.Module.compile sets: __call__ runs _compiled_call_impl instead of _call_impl.
    model._compiled_call_impl = _InferenceCall(compile_step(), trace_lstm,
                                               functools.partial(type(model)._call_impl, model),
                                               any(awaits_first_call(m) for m in model.modules()),
                                               compile_for_shape=compile_step if per_shape else None,
                                               shape_graphs=min(packings_per_layer(), MAX_SHAPE_GRAPHS) if per_shape
                                               else 0, generated=generated)
