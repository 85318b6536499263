"""Graph-level analysis for ``ipex.optimize``: which BatchNorm folds into which layer, which
activation / residual add fuses into which layer, which Linears share an input.

The model is traced with ``torch.fx`` region by region: the whole model first,
and where that fails, each child in turn (a module FX cannot trace is skipped,
its children are tried). A traced region's graph is rewritten (BatchNorm,
dropout and fused activation nodes removed, residual adds turned into a second
input of the layer) and its regenerated ``forward`` is bound to the region's
own module object, so the model keeps its class, attributes and methods; only
the swapped submodules and that ``forward`` change.
"""

from __future__ import annotations

import functools
import inspect
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ipex_core.optimize.modules import PostOp, run_fused

__all__ = ["Plan", "Region", "trace_regions"]

# ConvTranspose2d/3d too (where they are swappable): their swapped modules scale the weight's dim 1, each group's
# output channels of a transposed convolution ([in, out / groups, k...]). (Inductor's freezing folds into dim 0 there, wrongly: see
# graph_mode._KeepBinaryOpsOffTransposedConvs; folded here, torch.compile over the optimized model is right too.)
_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
            nn.ConvTranspose2d: nn.BatchNorm2d, nn.ConvTranspose3d: nn.BatchNorm3d}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DROPOUT_FNS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                torch.dropout, torch.nn.functional.dropout}
_FUSABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_INTERESTING = (*_FUSABLE, nn.modules.batchnorm._BatchNorm, *_DROPOUT)


@dataclass
class Plan:
    """What the graph analysis decided for one Linear/Conv module (by qualified name)."""

    bn: str | None = None  # qualified name of the BatchNorm to fold into it
    post_op: PostOp | None = None
    concat_group: int | None = None  # index into Region.concat_groups


@dataclass
class Region:
    """One traced module whose graph was rewritten."""

    name: str  # qualified name in the model ('' for the model itself)
    module: nn.Module
    graph: fx.Graph
    concat_groups: list[list[str]] = field(default_factory=list)  # qualified names, in output order
    changed: bool = False  # whether the graph now differs from the module's own forward (then it is bound)
    frozen: frozenset[str] = frozenset()  # local names of modules the passes must leave alone (see _frozen_names)

    def modules(self) -> dict[str, nn.Module]:
        """The region's submodules by local name, less the frozen ones (the passes see those as opaque calls)."""
        return {n: m for n, m in self.module.named_modules() if n not in self.frozen}


def _qual(prefix: str, target: str) -> str:
    return f"{prefix}.{target}" if prefix else target


class _Tracer(fx.Tracer):
    """torch.fx's default tracer with ipex's swapped modules also kept as leaves, and (``hooked_leaves``)
    any module with forward hooks: traced through, a container's hooks ran on FX proxies at optimize time
    and never again (the rewritten forward calls only the leaves), so feature-extraction hooks on a block
    silently stopped firing. As a leaf it is called as a module, hooks and all (and is its own region)."""

    def __init__(self, hooked_leaves: bool = False):
        super().__init__()
        self.hooked_leaves = hooked_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from ipex_core.optimize import modules as ipex_modules

        if isinstance(m, (ipex_modules._PackedModule, ipex_modules.FoldedBatchNorm)):
            return True
        if self.hooked_leaves and _has_hooks(m):
            return True
        return super().is_leaf_module(m, qualname)


def _contains_interesting(module: nn.Module) -> bool:
    return any(isinstance(m, _INTERESTING) for m in module.modules())


def _signature_problem(module: nn.Module) -> str | None:
    """Why FX's trace of ``module.forward`` may not be its general behaviour, or None.

    FX feeds a proxy for every argument, so ``if mask is None`` always takes
    the "given" branch: a forward with optional arguments traces without error
    into a graph that is wrong when they are omitted. Such modules are not
    rewritten (their children are tried instead).
    """
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return "forward has no inspectable signature"
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return "forward takes *args/**kwargs"
        if p.default is not p.empty:
            return f"forward has optional argument '{p.name}'"
    return None


_MODULE_KEYS = frozenset(nn.Module().__dict__)  # nn.Module's own bookkeeping, not user state


def _state_snapshot(module: nn.Module) -> list:
    """The user attributes of ``module`` and its submodules, per module: key -> (value, shallow copy of
    it if a list, dict or set), to tell whether tracing its forward changed any."""
    return [(m, {k: (v, type(v)(v) if isinstance(v, (list, dict, set)) else None)
                 for k, v in m.__dict__.items() if k not in _MODULE_KEYS})
            for m in module.modules()]


def _same_contents(value, copy_) -> bool:
    if isinstance(value, list):
        return len(value) == len(copy_) and all(a is b for a, b in zip(value, copy_))
    if isinstance(value, set):
        return value == copy_
    return value.keys() == copy_.keys() and all(value[k] is copy_[k] for k in value)


def _changed_state(snap: list) -> str | None:
    """The first attribute the trace changed or added (each restored to its value before), or None."""
    changed = None
    for m, attrs in snap:
        for key in [k for k in m.__dict__ if k not in _MODULE_KEYS and k not in attrs]:  # added
            changed = changed or f"{type(m).__name__}.{key}"
            del m.__dict__[key]
        for key, (value, copy_) in attrs.items():
            if m.__dict__.get(key) is value and (copy_ is None or _same_contents(value, copy_)):
                continue
            changed = changed or f"{type(m).__name__}.{key}"
            m.__dict__[key] = value
            if isinstance(value, list):
                value[:] = copy_
            elif copy_ is not None:
                value.clear()
                value.update(copy_)
    return changed


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _outermost_hooked(module: nn.Module):
    """(name, submodule) of the descendants of ``module`` with forward hooks, not inside another one."""
    for child_name, child in module.named_children():
        if _has_hooks(child):
            yield child_name, child
        else:
            for sub_name, sub in _outermost_hooked(child):
                yield _qual(child_name, sub_name), sub


def _frozen_names(model: nn.Module) -> set[str]:
    """Qualified names of the modules no pass may fold, fuse, merge or drop.

    - A module with weights or buffers reachable under several names (tied or shared layers): a region
      sees only its own calls, so folding a BatchNorm or fusing an activation into it would change the
      other users. A stateless one (a ReLU shared by several blocks) stays fusable: fusing removes one
      call of it from one graph, the module itself stays.
    - A module with forward hooks or pre-hooks: folded or fused away, its hooks would never fire, and a
      hook on a layer would see the activation's output instead of the layer's.
    """
    by_id: dict[int, list[str]] = {}
    frozen = set()
    for name, m in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(m), []).append(name)
        if _has_hooks(m):
            frozen.add(name)
    stateful = {id(m) for m in model.modules()
                if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None}
    for key, names in by_id.items():
        if len(names) > 1 and key in stateful:
            frozen.update(names)
    return frozen


def _local(frozen: set[str], region_name: str) -> frozenset[str]:
    if not region_name:
        return frozenset(frozen)
    prefix = region_name + "."
    return frozenset(n[len(prefix):] for n in frozen if n.startswith(prefix))


def trace_regions(model: nn.Module) -> tuple[list[Region], list[tuple[str, str]]]:
    """Trace ``model`` top-down; returns the traced regions and ``(name, reason)`` of those skipped.

    Only modules that contain something ipex can fold, fuse or drop are traced.
    A module that cannot be traced is named in ``skipped`` when it has a
    Linear / convolution / BatchNorm of its own (those lose folding and fusion).
    """
    regions: list[Region] = []
    skipped: list[tuple[str, str]] = []
    leaf_check = _Tracer()
    frozen = _frozen_names(model)

    def visit(name: str, module: nn.Module) -> None:
        if not _contains_interesting(module):
            return
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            for child_name, child in module.named_children():
                visit(_qual(name, child_name), child)
            return
        if leaf_check.is_leaf_module(module, name):
            return
        reason = _signature_problem(module)
        if reason is None:
            snap = _state_snapshot(module)
            try:
                graph = _Tracer(hooked_leaves=True).trace(module)
            except Exception as exc:  # any failure means "not traceable": go one level down
                text = str(exc).strip().splitlines()
                reason = f"{type(exc).__name__}: {text[0][:100] if text else ''}"
            # A forward that keeps state (a counter, a stored attention map, an appended cache) ran once
            # on proxies here, and the rewritten forward would not keep that state at all: restore it
            # and leave this forward as it is.
            changed = _changed_state(snap)
            if reason is None and changed is not None:
                reason = f"forward changes {changed}, which a rewritten forward would not"
            if reason is None and any(n.op == "get_attr" and not n.users for n in graph.nodes):
                # A parameter read and then only looked at in Python (T5's `isinstance(self.wo.weight,
                # torch.Tensor)` is False for FX's proxy): the trace may have taken another branch than the
                # real forward does (T5's cast to the projection's dtype was dropped).
                reason = "forward inspects a parameter in Python; the trace may take another branch"
        if reason is None:
            regions.append(Region(name, module, graph, frozen=_local(frozen, name)))
            # Modules with hooks were leaves of this trace (called as modules, hooks and all): their own
            # insides are regions of their own.
            for sub_name, sub in _outermost_hooked(module):
                visit(_qual(name, sub_name), sub)
            return
        if any(isinstance(c, (*_FUSABLE, nn.modules.batchnorm._BatchNorm)) for c in module.children()):
            skipped.append((name or type(module).__name__, reason))
        for child_name, child in module.named_children():
            visit(_qual(name, child_name), child)

    visit("", model)
    return regions, skipped


# -- node classification --------------------------------------------------------------------------

def _module_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def unary_of_module(m: nn.Module) -> PostOp | None:
    """The fusable post-op a stock activation module computes, or None."""
    if type(m) is nn.ReLU:
        return PostOp("relu")
    if type(m) is nn.GELU:
        return PostOp("gelu", algorithm=m.approximate)
    if type(m) is nn.SiLU:
        return PostOp("swish")
    if type(m) is nn.Sigmoid:
        return PostOp("sigmoid")
    if type(m) is nn.Tanh:
        return PostOp("tanh")
    if type(m) is nn.Hardswish:
        return PostOp("hardswish")
    if type(m) is nn.Hardsigmoid:
        return PostOp("hardsigmoid")
    if type(m) is nn.LeakyReLU:
        return PostOp("leaky_relu", scalars=[m.negative_slope])
    if type(m) in (nn.Hardtanh, nn.ReLU6):
        return PostOp("hardtanh", scalars=[m.min_val, m.max_val])
    return None


_UNARY_FNS = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    F.silu: "swish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
}
_UNARY_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
                  "tanh_": "tanh"}


def _unary_of_node(node: fx.Node, src: fx.Node, modules) -> PostOp | None:
    """The post-op ``node`` applies to ``src`` (its only tensor input), or None."""
    if not node.args or node.args[0] is not src:
        return None
    rest = list(node.args[1:])
    kwargs = dict(node.kwargs)
    kwargs.pop("inplace", None)
    if node.op == "call_module":
        m = modules.get(node.target)  # absent: frozen (see _frozen_names)
        return unary_of_module(m) if m is not None and not rest and not kwargs else None
    if node.op == "call_method":
        name = _UNARY_METHODS.get(node.target)
        return PostOp(name) if name and not rest and not kwargs else None
    if node.op != "call_function":
        return None
    target = node.target
    if target is F.gelu:
        approximate = kwargs.pop("approximate", rest.pop(0) if rest else "none")
        return PostOp("gelu", algorithm=approximate) if not rest and not kwargs and approximate in ("none", "tanh") \
            else None
    if target is F.leaky_relu:
        slope = kwargs.pop("negative_slope", rest.pop(0) if rest else 0.01)
        rest = [r for r in rest if not isinstance(r, bool)]
        return PostOp("leaky_relu", scalars=[slope]) if not rest and not kwargs and isinstance(slope, float) else None
    if target in (F.hardtanh, F.relu6):
        if target is F.relu6:
            lo, hi = 0.0, 6.0
        else:
            lo = kwargs.pop("min_val", rest.pop(0) if rest else -1.0)
            hi = kwargs.pop("max_val", rest.pop(0) if rest else 1.0)
        rest = [r for r in rest if not isinstance(r, bool)]
        ok = not rest and not kwargs and all(isinstance(v, (int, float)) for v in (lo, hi))
        return PostOp("hardtanh", scalars=[float(lo), float(hi)]) if ok else None
    name = _UNARY_FNS.get(target)
    rest = [r for r in rest if not isinstance(r, bool)]  # the positional `inplace` of F.relu & co.
    return PostOp(name) if name and not rest and not kwargs else None


def _add_other(node: fx.Node, src: fx.Node) -> fx.Node | None:
    """For ``src + other`` (any spelling, in place or not, alpha 1), the node ``other``; else None."""
    is_add = (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or \
             (node.op == "call_method" and node.target in ("add", "add_"))
    if not is_add or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    if set(node.kwargs) - {"alpha"}:
        return None
    a, b = node.args
    if node.op == "call_method" and a is not src:  # other.add_(src) would mutate other: not ours to fuse
        return None
    if a is src and isinstance(b, fx.Node) and b is not src:
        return b
    if b is src and isinstance(a, fx.Node) and a is not src and node.target is not operator.iadd:
        return a
    return None


def _is_dropout(node: fx.Node, modules) -> bool:
    """Whether ``node`` is a dropout that does nothing in this model (see remove_dropout)."""
    if node.op == "call_module":
        m = modules.get(node.target)  # absent: frozen
        return isinstance(m, _DROPOUT) and not m.training
    if node.op != "call_function" or node.target not in _DROPOUT_FNS:
        return False
    # F.dropout(input, p=0.5, training=True, ...) and torch.dropout(input, p, train): the flag is argument 2.
    training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", node.kwargs.get("train", True))
    return training is False


# -- passes -------------------------------------------------------------------------------------------

def _call_counts(graph: fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def layers_read_directly(region: Region) -> set[str]:
    """Qualified names of the region's Linear / convolution layers whose parameters its forward reads
    itself (``F.conv2d(x, self.conv.weight)``, ``x.to(self.q.weight.dtype)``): folding a BatchNorm into
    such a layer, packing, casting or merging its weight would change what that code reads (a folded
    weight, an opaque oneDNN tensor, or no ``weight`` at all in a concat group), so they stay as they are."""
    modules = region.modules()
    read = set()
    for node in region.graph.nodes:
        if node.op == "get_attr":
            owner = node.target.rpartition(".")[0]
            if isinstance(modules.get(owner), _FUSABLE):
                read.add(_qual(region.name, owner))
    return read


def layers_called_as_modules(region: Region) -> set[str]:
    """Qualified names of the region's Linear / convolution layers its forward calls as modules (before any
    rewrite). Together with layers_read_directly: a layer called so and not read is used by nothing but its
    call, so its weight may change layout (a convolution's, packed at its first call)."""
    modules = region.modules()
    return {_qual(region.name, node.target) for node in region.graph.nodes
            if node.op == "call_module" and isinstance(modules.get(node.target), _FUSABLE)}


def remove_dropout(region: Region) -> None:
    """Drop dropout calls that are identities in eval: modules in eval mode (one left in training mode,
    as Monte Carlo dropout does, stays) and functional calls traced with ``training=False``."""
    modules = region.modules()
    for node in list(region.graph.nodes):
        if _is_dropout(node, modules) and node.args and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            region.graph.erase_node(node)


def plan_folding(region: Region, plans: dict[str, Plan], conv_bn: bool, linear_bn: bool,
                 input_dims: dict[str, int], swappable) -> None:
    """Fold ``bn(layer(x))`` where the layer output feeds only that BatchNorm and neither is shared.

    ``swappable(qualified_name)`` says whether the layer can become an ipex module (which does the folding).
    """
    modules = region.modules()
    counts = _call_counts(region.graph)
    for node in list(region.graph.nodes):
        layer = _module_of(node, modules)
        if layer is None or len(node.users) != 1 or counts[node.target] != 1:
            continue
        bn_node = next(iter(node.users))
        bn = _module_of(bn_node, modules)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or counts[bn_node.target] != 1 \
                or len(bn_node.args) != 1 or bn_node.kwargs:
            continue
        if bn.training:  # left in training mode under an eval model: it normalises with batch statistics
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        name = _qual(region.name, node.target)
        if not swappable(name):
            continue
        if conv_bn and type(layer) in _CONV_BN and type(bn) is _CONV_BN[type(layer)]:
            ok = bn.num_features == layer.out_channels
        elif linear_bn and type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d:
            # BatchNorm1d normalises dim 1: the same features as the linear's only for a 2-D input.
            ok = bn.num_features == layer.out_features and input_dims.get(name, 2) == 2
        else:
            ok = False
        if not ok:
            continue
        plans.setdefault(name, Plan()).bn = _qual(region.name, bn_node.target)
        bn_node.replace_all_uses_with(node)
        region.graph.erase_node(bn_node)
        region.changed = True


def plan_concat_linear(region: Region, plans: dict[str, Plan], swappable) -> None:
    """Group unshared Linears (no folded BatchNorm) that read the same input node.

    ``swappable(qualified_name)`` says whether a Linear can become an ipex module (float64 ones cannot).
    """
    modules = region.modules()
    counts = _call_counts(region.graph)
    by_input: dict[fx.Node, list[fx.Node]] = {}
    for node in region.graph.nodes:
        m = _module_of(node, modules)
        if type(m) is not nn.Linear or counts[node.target] != 1 or len(node.args) != 1 or node.kwargs:
            continue
        if not isinstance(node.args[0], fx.Node) or plans.get(_qual(region.name, node.target), Plan()).bn:
            continue
        if not swappable(_qual(region.name, node.target)):
            continue
        by_input.setdefault(node.args[0], []).append(node)
    for nodes in by_input.values():
        groups: dict[tuple, list[fx.Node]] = {}
        for n in nodes:
            m = modules[n.target]
            groups.setdefault((m.in_features, m.weight.dtype, m.bias is not None), []).append(n)
        for members in groups.values():
            if len(members) < 2:
                continue
            index = len(region.concat_groups)
            region.concat_groups.append([_qual(region.name, n.target) for n in members])
            for n in members:
                plans.setdefault(_qual(region.name, n.target), Plan()).concat_group = index
            region.changed = True


def plan_post_ops(region: Region, plans: dict[str, Plan], packable, conv_binary=None) -> None:
    """Fuse a following activation, residual add, or add then activation, into the layer.

    ``packable(qualified_name)`` says whether the layer will be swapped for a
    packed module (only those fuse). The residual add becomes the layer's second input.
    ``conv_binary(qualified_name)`` False leaves that convolution's residual add in
    the graph (graph mode: inductor fuses it into its oneDNN call, in place, itself);
    None fuses every one.
    """
    modules = region.modules()
    counts = _call_counts(region.graph)
    graph = region.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in modules:
            continue
        layer = modules[node.target]
        name = _qual(region.name, node.target)
        plan = plans.get(name, Plan())
        if not isinstance(layer, _FUSABLE) or counts[node.target] != 1 or plan.concat_group is not None:
            continue
        if not packable(name) or len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
            continue
        user = next(iter(node.users))
        unary = _unary_of_node(user, node, modules)
        if unary is not None:
            plans.setdefault(name, plan).post_op = unary
            _call_fused(graph, node, user, (node.args[0],))
            region.changed = True
            continue
        other = _add_other(user, node)
        if other is None or isinstance(layer, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            continue
        if not isinstance(layer, nn.Linear) and (layer.groups != 1 or (conv_binary is not None
                                                                       and not conv_binary(name))):
            continue  # the kernels fuse the add into ungrouped convolutions only; graph mode: see conv_binary
        post = PostOp(binary="add")
        last = user
        # oneDNN applies the activation after the add for convolutions (conv + add + relu).
        if not isinstance(layer, nn.Linear) and len(user.users) == 1:
            after = next(iter(user.users))
            unary = _unary_of_node(after, user, modules)
            if unary is not None and unary.unary == "relu":
                post = PostOp("relu", binary="add")
                last = after
        if not isinstance(layer, nn.Linear):
            post.inplace = _dead_after(other, node.args[0], user, graph, modules)
        if last is not user:
            last.replace_all_uses_with(user)
            graph.erase_node(last)
        _call_fused(graph, node, user, (node.args[0], other))
        plans.setdefault(name, plan).post_op = post
        region.changed = True


def _call_fused(graph: fx.Graph, node: fx.Node, last: fx.Node, args: tuple) -> None:
    """Replace the layer call ``node`` and the post-op nodes it feeds, ending at ``last`` (its only
    user), by ``run_fused(layer, *args)``: the layer's own call (``forward``) keeps computing the
    layer alone (see :func:`ipex_core.optimize.modules.run_fused`)."""
    with graph.inserting_before(last):
        layer = graph.get_attr(node.target)
        fused = graph.call_function(run_fused, (layer, *args))
    last.replace_all_uses_with(fused)
    graph.erase_node(last)
    graph.erase_node(node)


_FRESH_OUTPUT = (*_FUSABLE, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _dead_after(other: fx.Node, layer_input, at: fx.Node, graph: fx.Graph, modules) -> bool:
    """Whether ``other`` may be overwritten at ``at`` by a layer reading ``layer_input``: a tensor of its own
    that nothing reads after ``at`` and that nothing else aliases.

    Its producer and every other reader must be layer or pooling modules (they make new tensors, no views),
    every other reader must come before ``at``, and the layer must not read ``other`` itself.
    """
    if other is layer_input or not _fresh_output(other, modules):
        return False
    order = {n: i for i, n in enumerate(graph.nodes)}
    for u in other.users:
        if u is at:
            continue
        if not _fresh_output(u, modules) or order[u] > order[at]:
            return False
    return True


def _fresh_output(node: fx.Node, modules) -> bool:
    """Whether ``node`` is a layer or pooling call (a new tensor, not a view of its input), fused or not."""
    if node.op == "call_function" and node.target is run_fused:
        return True
    return node.op == "call_module" and isinstance(modules.get(node.target), _FRESH_OUTPUT)


def rewrite_concat(region: Region, names: list[str]) -> None:
    """Replace each concat group's Linear calls by one call of the group module plus getitem."""
    modules = dict(region.module.named_modules())
    graph = region.graph
    prefix = f"{region.name}." if region.name else ""
    for index, members in enumerate(region.concat_groups):
        local = [m[len(prefix):] for m in members]
        nodes = [n for n in graph.nodes if n.op == "call_module" and n.target in local]
        nodes.sort(key=lambda n: local.index(n.target))
        first = min(nodes, key=lambda n: list(graph.nodes).index(n))
        assert all(isinstance(modules.get(t), nn.Module) for t in local)
        with graph.inserting_before(first):
            call = graph.call_module(names[index], (first.args[0],))
        for i, n in enumerate(nodes):
            with graph.inserting_before(n):
                item = graph.call_function(operator.getitem, (call, i))
            n.replace_all_uses_with(item)
            graph.erase_node(n)


def _check_own_forward_runs(module: nn.Module) -> None:
    """The module's own forward computes the optimized model's result unless a BatchNorm was folded: then its
    placeholder is an identity, and a branch that normalises something else than the folded layer's output
    (reached only with the argument given as None) would skip the normalisation."""
    from ipex_core.optimize.modules import FoldedBatchNorm

    if any(isinstance(m, FoldedBatchNorm) for m in module.modules()):
        raise ValueError(
            f"{type(module).__name__}: ipex.optimize traced this forward with every argument given and folded a "
            "BatchNorm into the layer before it; called with an argument set to None, it may take a branch the "
            "trace did not see. Optimize with conv_bn_folding=False (and linear_bn_folding=False) to call it "
            "this way.")


def bind_forward(region: Region) -> None:
    """Give ``region.module`` the forward generated from its rewritten graph.

    The generated code reads submodules by attribute path at call time, so it
    runs on the swapped modules. It is bound to the module object itself (an
    instance attribute): class, methods and other attributes stay.
    """
    region.graph.lint()
    gm = fx.GraphModule(region.module, region.graph)
    generated = type(gm).forward
    own = type(region.module).forward

    # FX traced every argument as a tensor, so `if mask is not None:` took the "given" branch: an argument
    # passed as None runs the module's own forward instead (a TypeError inside the generated code before).
    # That forward is right on the swapped modules too: a folded BatchNorm is an identity placeholder, a
    # layer called as a module computes the layer alone (its post-ops run only in the generated code), a
    # concat member computes its slice.
    @functools.wraps(own)
    def forward(self, *args, **kwargs):
        if any(a is None for a in args) or any(v is None for v in kwargs.values()):
            _check_own_forward_runs(self)
            return own(self, *args, **kwargs)
        return generated(self, *args, **kwargs)

    region.module.forward = forward.__get__(region.module, type(region.module))
    del gm
