"""MultiStreamModule: throughput-mode inference, one Task per slice of a CPU pool."""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ipex_runtime.cpupool import CPUPool, pin
from ipex_runtime.task import Task

__all__ = ["MultiStreamModule", "MultiStreamModuleHint"]


def _check_hint(hint, where: str) -> None:
    if hint is None or (isinstance(hint, int) and not isinstance(hint, bool)):
        return
    if isinstance(hint, tuple | list):
        for i, h in enumerate(hint):
            _check_hint(h, f"{where}[{i}]")
    elif isinstance(hint, dict):
        for k, h in hint.items():
            _check_hint(h, f"{where}[{k!r}]")
    else:
        raise TypeError(
            f"MultiStreamModuleHint entry {where} is {type(hint).__name__} {hint!r}; each entry must be None "
            "(do not split/concat), an int (the dim to split/concat along), or a tuple/list/dict of those"
        )


class MultiStreamModuleHint:
    """How MultiStreamModule splits the inputs or concatenates the outputs.

    Each argument is ``None`` (do not split / concat: every stream gets the whole
    value, or the first stream's output is returned), an ``int`` (the dim to
    split / concat along), or a tuple / list / dict nesting those, mirroring the
    structure of the value. Positional hints match the positional arguments of
    ``forward`` and keyword hints its keyword arguments; arguments or container
    items without a hint are passed whole, hints without an argument are ignored.

    For outputs, one positional hint describes the module's output, several
    positional hints a tuple output, keyword hints a dict output; a tensor output
    the hint does not mention (a key left out, a shorter tuple) is an error, as
    returning the first stream's slice of it would be wrong.
    """

    def __init__(self, *args, **kwargs):
        for i, h in enumerate(args):
            _check_hint(h, f"args[{i}]")
        for k, h in kwargs.items():
            _check_hint(h, f"kwargs[{k!r}]")
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"MultiStreamModuleHint({', '.join(parts)})"


def _split_sizes(batch: int, num_streams: int) -> list[int]:
    """Mini-batch per stream: even, the remainder one each to the first streams;
    fewer items than streams uses the first ``batch`` streams with 1 each."""
    if batch < num_streams:
        return [1] * batch
    base, extra = divmod(batch, num_streams)
    return [base + (i < extra) for i in range(num_streams)]


def _items(hint, value, where: str):
    """(key, child hint) for each child of ``value``; children the hint does not cover get None."""
    if isinstance(hint, tuple | list):
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise TypeError(f"{where}: the hint is a {type(hint).__name__} but the value is {type(value).__name__}")
        return [(i, hint[i] if i < len(hint) else None) for i in range(len(value))]
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: the hint is a dict but the value is {type(value).__name__}")
    return [(k, hint.get(k)) for k in value]


def _rebuild(template, items: dict):
    if isinstance(template, Mapping):
        try:
            return type(template)(**items) if all(isinstance(k, str) for k in items) else type(template)(items)
        except TypeError:
            return dict(items)
    values = [items[i] for i in range(len(items))]
    if hasattr(template, "_fields"):  # namedtuple
        return type(template)(*values)
    return type(template)(values)


def _split_lengths(hint, value, where: str, found: list) -> None:
    if hint is None or value is None:  # None: an optional input left out of this call (e.g. attention_mask)
        return
    if isinstance(hint, int):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: the split hint is dim {hint} but the value is {type(value).__name__}, "
                            "not a tensor; give None for it in input_split_hint")
        if not -value.dim() <= hint < value.dim():
            raise ValueError(f"{where}: cannot split along dim {hint} of a tensor of shape {tuple(value.shape)}")
        found.append((where, value.size(hint)))
        return
    for key, h in _items(hint, value, where):
        _split_lengths(h, value[key], f"{where}[{key!r}]", found)


def _split(hint, value, start: int, length: int):
    if hint is None or value is None:
        return value
    if isinstance(hint, int):
        part = value.narrow(hint, start, length)  # a view, no copy, along dim 0
        # Along another dim the view is not contiguous and a model's .view() would fail where
        # the direct call worked: one copy per stream then.
        return part if hint % value.dim() == 0 else part.contiguous()
    return _rebuild(value, {key: _split(h, value[key], start, length) for key, h in _items(hint, value, "")})


_UNCOVERED = object()  # an output the concat hint does not mention (unlike an explicit None)


def _holds_tensor(value) -> bool:
    """Whether ``value`` is a tensor or a (nested) tuple / list / dict holding one."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return False


def _concat(hint, outputs: list, where: str):
    if hint is _UNCOVERED:
        if len(outputs) > 1 and any(_holds_tensor(o) for o in outputs):
            # Each stream's tensor is its slice of the batch: returning the first one (what this did) gave
            # stream 0's part only, silently.
            raise ValueError(
                f"{where}: this output is a tensor per stream, but output_concat_hint does not mention it; add its "
                "concat dim to the hint (e.g. MultiStreamModuleHint(logits=0, hidden=0)), None to take the first "
                "stream's value on purpose, or pass concat_output=False to get the per-stream outputs")
        return outputs[0]
    if hint is None:
        return outputs[0]
    if isinstance(hint, int):
        bad = [type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)]
        if bad:
            raise TypeError(f"{where}: the concat hint is dim {hint} but the stream outputs are {bad[0]}, not tensors; "
                            "give an output_concat_hint that matches the output structure, or concat_output=False")
        return torch.cat(outputs, dim=hint)
    first = outputs[0]
    if isinstance(hint, Mapping) and isinstance(first, Mapping) and set(hint) - set(first):
        raise ValueError(f"{where}: output_concat_hint names {sorted(set(hint) - set(first))}, which the outputs do "
                         f"not have (they have {sorted(first)})")
    items = _items(hint, first, where)
    if isinstance(hint, Mapping):
        items = [(key, hint.get(key, _UNCOVERED)) for key, _ in items]
    else:
        items = [(key, hint[key] if key < len(hint) else _UNCOVERED) for key, _ in items]
    return _rebuild(first, {key: _concat(h, [o[key] for o in outputs], f"{where}[{key!r}]") for key, h in items})


_DEFAULT_POOL = CPUPool()


class MultiStreamModule(nn.Module):
    """Throughput-mode inference: the batch is split over streams, each a :class:`Task`
    bound to its share of ``cpu_pool``, and the outputs concatenated.

    If the number of cores inside ``cpu_pool`` is divisible by ``num_streams``,
    the cores are allocated equally to each stream; with remainder N, one extra
    core goes to each of the first N streams. If the inputs' batch size is larger
    than ``num_streams``, it is allocated equally, with remainder N one extra item
    going to each of the first N streams; if it is smaller, only the first
    batch-size streams are used, with mini-batch 1. ``num_streams="AUTO"`` uses
    one stream per core (usually the best throughput; batch sizes divisible by the
    core count split evenly). More streams than cores are reduced to one per core.
    With one stream the module runs in the calling thread under ``pin(cpu_pool)``.

    Args:
        model: an ``nn.Module``, a ``torch.compile``\\ d module or any callable; the
            streams share it (and its weights).
        num_streams (Union[int, str]): number of streams, or ``"AUTO"``.
        cpu_pool (CPUPool): all cores used; the default is every core this
            process may use when the module is created.
        concat_output (bool): concatenate the stream outputs (default) or return
            the list of each stream's output.
        input_split_hint (MultiStreamModuleHint): how to split the inputs: a dim per
            input (nested like the input), None to pass an input whole to every stream.
            An input the hint does not mention is passed whole too, except a tensor
            with the batch size along dim 0 (when splitting along dim 0): that is an
            error, since it would broadcast silently. A hinted input given as None
            (an optional argument left out) passes through. Slices along a dim other
            than 0 are made contiguous (one copy per stream).
        output_concat_hint (MultiStreamModuleHint): how to concat the outputs.
    """

    def __init__(
        self,
        model,
        num_streams: int | str = "AUTO",
        cpu_pool: CPUPool = _DEFAULT_POOL,
        concat_output: bool = True,
        input_split_hint: MultiStreamModuleHint = MultiStreamModuleHint(0),  # noqa: B008
        output_concat_hint: MultiStreamModuleHint = MultiStreamModuleHint(0),  # noqa: B008
    ):
        super().__init__()
        if cpu_pool is _DEFAULT_POOL:
            cpu_pool = CPUPool()  # the cores allowed now, not at import
        if not isinstance(cpu_pool, CPUPool):
            raise TypeError(f"cpu_pool must be an ipex.cpu.runtime.CPUPool, got {type(cpu_pool).__name__}")
        if not callable(model):
            raise TypeError(f"model must be a module or other callable, got {type(model).__name__}")
        for name, hint in (("input_split_hint", input_split_hint), ("output_concat_hint", output_concat_hint)):
            if not isinstance(hint, MultiStreamModuleHint):
                raise TypeError(f"{name} must be an ipex.cpu.runtime.MultiStreamModuleHint, "
                                f"got {type(hint).__name__}")
        self.model = model
        self.cpu_pool = cpu_pool
        self.num_streams = self._resolve_num_streams(num_streams, len(cpu_pool))
        self.concat_output = concat_output
        self.input_split_hint = input_split_hint
        self.output_concat_hint = output_concat_hint
        self._output_hint = self._output_structure(output_concat_hint)
        self.tasks: list[Task] = []
        if self.num_streams > 1:
            start = 0
            for size in _split_sizes(len(cpu_pool), self.num_streams):  # cores per stream: same rule as batches
                self.tasks.append(Task(model, CPUPool(cpu_pool.core_ids[start:start + size])))
                start += size

    @staticmethod
    def _resolve_num_streams(num_streams, cores: int) -> int:
        if isinstance(num_streams, str):
            if num_streams.upper() != "AUTO":
                raise ValueError(f"num_streams must be a positive int or 'AUTO', got {num_streams!r}")
            return cores
        if isinstance(num_streams, bool) or not isinstance(num_streams, int):
            raise TypeError(f"num_streams must be a positive int or 'AUTO', got {type(num_streams).__name__}")
        if num_streams < 1:
            raise ValueError(f"num_streams must be at least 1, got {num_streams}")
        if num_streams > cores:
            warnings.warn(f"num_streams={num_streams} is more than the {cores} core(s) of cpu_pool; "
                          f"using {cores} streams of one core", UserWarning, stacklevel=3)
            return cores
        return num_streams

    @staticmethod
    def _output_structure(hint: MultiStreamModuleHint):
        if hint.args and hint.kwargs:
            raise ValueError("output_concat_hint takes positional hints (the output, or a tuple output) or keyword "
                             "hints (a dict output), not both")
        if hint.kwargs:
            return dict(hint.kwargs)
        if not hint.args:
            raise ValueError("output_concat_hint is empty; pass e.g. MultiStreamModuleHint(0), or "
                             "concat_output=False to get each stream's output")
        return hint.args[0] if len(hint.args) == 1 else tuple(hint.args)

    def get_stream_number(self) -> int:
        return self.num_streams

    def _split_inputs(self, args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
        hint = self.input_split_hint
        arg_hints = [hint.args[i] if i < len(hint.args) else None for i in range(len(args))]
        kwarg_hints = {k: hint.kwargs.get(k) for k in kwargs}
        found: list = []
        for i, (h, a) in enumerate(zip(arg_hints, args)):
            _split_lengths(h, a, f"args[{i}]", found)
        for k, h in kwarg_hints.items():
            _split_lengths(h, kwargs[k], f"kwargs[{k!r}]", found)
        if not found:
            raise ValueError(f"input_split_hint {hint!r} selects no tensor of this call to split "
                             f"({len(args)} positional, keyword {sorted(kwargs)}); give the dim to split for "
                             "at least one tensor input")
        batch = found[0][1]
        mismatched = [(w, n) for w, n in found if n != batch]
        if mismatched:
            raise ValueError(f"inputs to split disagree on the batch size: {found}; split only inputs that share it")
        if batch == 0:
            raise ValueError(f"cannot split an empty batch ({found[0][0]} has size 0 along its split dim)")
        self._check_unhinted(args, kwargs, arg_hints, kwarg_hints, batch)
        streams = []
        start = 0
        for length in _split_sizes(batch, self.num_streams):
            streams.append((tuple(_split(h, a, start, length) for h, a in zip(arg_hints, args)),
                            {k: _split(h, kwargs[k], start, length) for k, h in kwarg_hints.items()}))
            start += length
        return streams

    def _check_unhinted(self, args, kwargs, arg_hints, kwarg_hints, batch: int) -> None:
        """Refuse a batch-sized tensor that no hint mentions: given whole to every stream it would broadcast
        against each stream's slice, silently (the retired implementation raised here too). A hint of None
        for it says "pass it whole" on purpose."""
        hint = self.input_split_hint
        dims = {h for h in (*arg_hints, *kwarg_hints.values()) if isinstance(h, int)}
        if dims != {0}:
            return  # split along other dims: a size match along dim 0 means nothing
        unhinted = [(f"args[{i}]", a) for i, a in enumerate(args) if i >= len(hint.args)]
        unhinted += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items() if k not in hint.kwargs]
        for where, value in unhinted:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == batch:
                raise ValueError(
                    f"{where} is a tensor with the batch size {batch} along dim 0 but input_split_hint "
                    f"{hint!r} does not mention it, so every stream would get all of it. Add its split dim "
                    "to the hint (e.g. MultiStreamModuleHint(0, 0) for two positional inputs), or None to pass "
                    "it whole on purpose")

    def forward(self, *args, **kwargs):
        if self.num_streams == 1:
            with pin(self.cpu_pool):
                output = self.model(*args, **kwargs)
            return output if self.concat_output else [output]
        futures = [task(*a, **k) for task, (a, k) in zip(self.tasks, self._split_inputs(args, kwargs))]
        # Wait for every stream before raising: none may still read the inputs.
        concurrent.futures.wait(futures)
        outputs = [f.get() for f in futures]
        if not self.concat_output:
            return outputs
        return _concat(self._output_hint, outputs, "output")
