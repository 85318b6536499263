"""``ipex.llm.optimize``: make a Hugging Face transformers model generate fast on CPU."""

from __future__ import annotations

import copy
import functools
import types
import warnings

import torch
from torch import nn

from ipex_core.plugins import load_backend_plugins
from ipex_llm.optimize import decoder, iakv_cache
from ipex_llm.optimize.families import REMOTE_CODE_FAMILIES, SUPPORTED_MODEL_TYPES, is_supported, model_type_of
from ipex_llm.optimize.swaps import apply_swaps

__all__ = ["optimize"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_dtype(dtype) -> None:
    if dtype not in _DTYPES:
        raise ValueError(
            f"ipex.llm.optimize: dtype must be torch.float32, torch.bfloat16 or torch.float16; got {dtype!r}"
        )
    if dtype == torch.bfloat16:
        import ipex_core

        if not ipex_core.cpu_features().get("avx512f") and not ipex_core.cpu_features().get("avx2"):
            raise RuntimeError("ipex.llm.optimize: bfloat16 needs at least AVX2 on this CPU; use dtype=torch.float32")


def _fallback(model: nn.Module, dtype, inplace: bool) -> nn.Module:
    warnings.warn(
        f"ipex.llm.optimize: {type(model).__name__} is not one of the supported model families "
        f"({', '.join(sorted(set(SUPPORTED_MODEL_TYPES.values())))}); applying ipex.optimize instead "
        "(no LLM-specific optimizations, no quantization).",
        UserWarning,
        stacklevel=3,
    )
    try:
        from ipex_core.optimize import optimize as core_optimize
    except ImportError:
        core_optimize = None
    # The whole model in dtype, as for the supported families: ipex.optimize(dtype=) casts only the layers
    # its API lists (Linear, Conv2d, Embedding, ...), and GPT-2's Conv1D or Gemma's norms left in fp32
    # then met bf16 activations (a dtype error at the first generate). ipex.optimize packs the cast layers.
    target = model if inplace else copy.deepcopy(model)
    if dtype != torch.float32:
        target.to(dtype)
    if core_optimize is None:
        return target
    return core_optimize(target, inplace=True)


def optimize(
    model: nn.Module,
    optimizer=None,
    dtype: torch.dtype = torch.float32,
    inplace: bool = False,
    device: str = "cpu",
    quantization_config=None,
    qconfig_summary_file=None,
    low_precision_checkpoint=None,
    sample_inputs=None,
    deployment_mode: bool = True,
):
    """Optimize a transformers model for generation on ipex kernels.

    Returns the optimized model; ``model.generate()`` and ``model(...)`` work as before.
    See the API reference for the parameters. What this release does:

    * casts to ``dtype`` and swaps modules by class pattern (every ``nn.Linear`` onto
      packed-weight GEMM kernels, gated MLPs onto one fused gate/up kernel, RMSNorm and
      LayerNorm onto ipex kernels); ``model._ipex_optimized`` reports what was swapped;
    * ``deployment_mode=True`` makes ``generate()`` run the decode step as one
      ``torch.compile`` graph over a pre-allocated (static) KV cache, for models whose
      transformers class supports it (``_can_compile_fullgraph``); the first
      ``generate()`` of a given total length compiles, later ones reuse the graph. Beam
      search's decode step is compiled the same way, over the IAKV cache (see below).
      ``False`` keeps everything eager; a direct ``model(...)`` call is always eager.
      The compiled step re-checks its input tensors (dtype, shape, device) but not
      module attributes, hooks or its own weights at each call (see
      ``deployment_guard_filter``): change the modules after ``optimize`` and optimize
      again (``.to()`` and ``load_state_dict`` on the model itself compile anew). Inductor's C++ wrapper
      (``torch._inductor.config.cpp_wrapper = True``) takes the step's Python overhead
      off: SmolLM2 bf16 14.5 -> 13.4 ms/token, but the first ``generate()`` compiles
      for 74 s instead of 28 s on 2 cores; it is not the default;
    * beam search on the families of ``iakv_cache.IAKV_MODEL_TYPES`` runs on the
      indirect-access KV cache: beams are reordered by recording indices, never by
      copying the cache;
    * quantization arguments raise ``NotImplementedError`` (not built yet).
    """
    if quantization_config is not None or qconfig_summary_file is not None or low_precision_checkpoint is not None:
        name = next(
            n
            for n, v in (
                ("quantization_config", quantization_config),
                ("qconfig_summary_file", qconfig_summary_file),
                ("low_precision_checkpoint", low_precision_checkpoint),
            )
            if v is not None
        )
        raise NotImplementedError(
            f"ipex.llm.optimize: {name} (weight-only / static quantization) is not implemented yet in ipex-llm; "
            "call it without quantization arguments"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"ipex.llm.optimize takes a torch.nn.Module; got {type(model).__name__}")
    if isinstance(device, torch.device) or (isinstance(device, str) and ":" in device):
        device = torch.device(device).type  # torch.device("cpu"), "cpu:0"
    if sample_inputs is not None:
        warnings.warn("ipex.llm.optimize: sample_inputs is not used by this release (it served TorchScript tracing "
                      "and quantization calibration, neither of which runs here); it is ignored.",
                      UserWarning, stacklevel=2)
    if device == "xpu":
        import importlib.util

        if importlib.util.find_spec("ipex_xpu") is None:
            raise RuntimeError(
                "ipex.llm.optimize(device='xpu') needs the XPU backend, which is not installed: pip install ipex-xpu"
            )
        raise NotImplementedError("ipex.llm.optimize(device='xpu'): the XPU backend has no LLM path yet")
    if device != "cpu":
        raise ValueError(f"ipex.llm.optimize: device must be 'cpu' or 'xpu'; got {device!r}")
    _check_dtype(dtype)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"ipex.llm.optimize: optimizer must be a torch.optim.Optimizer or None; got {optimizer!r}. (Pass the "
            "dtype by keyword: ipex.llm.optimize(model, dtype=torch.bfloat16); the second positional argument "
            "is the optimizer.)")
    load_backend_plugins()  # their kernels for the ipex ops, before the model runs
    if optimizer is not None or model.training:
        warnings.warn(
            "ipex.llm.optimize optimizes inference (generation) only: "
            + ("an optimizer was given" if optimizer is not None else "the model is in training mode")
            + "; returning the model unchanged. Call model.eval() and pass no optimizer.",
            UserWarning,
            stacklevel=2,
        )
        return model if optimizer is None else (model, optimizer)

    model_type = model_type_of(model)
    if not is_supported(model_type):
        return _fallback(model, dtype, inplace)
    if model_type in REMOTE_CODE_FAMILIES:
        warnings.warn(
            f"ipex.llm.optimize: {REMOTE_CODE_FAMILIES[model_type]} runs remote modeling code; applying the generic "
            "module swaps only.",
            UserWarning,
            stacklevel=2,
        )

    if not inplace:
        model = copy.deepcopy(model)
    counts = _parameter_counts(model)
    with torch.no_grad():
        if next(model.parameters()).dtype != dtype:
            model.to(dtype)
        fused_qkv = decoder.fuse_qkv(model)  # before apply_swaps, which packs the fused Linear
        report = apply_swaps(model)
        report.update(fused_qkv=fused_qkv, fused_decoder_layer=decoder.fuse_decoder_layers(model))
    report = +report  # only the kinds that occurred
    # The ipex kernels have no backward: with parameters still requiring grad, model.train() and
    # loss.backward() ran and silently left every gradient None. Now backward says no graph exists.
    model.requires_grad_(False)
    if counts is not None:
        model.num_parameters = types.MethodType(functools.partial(_num_parameters, counts=counts), model)
    _disable_compiled_decode(model)  # a model optimized before: back to transformers' own generation settings
    compiled = deployment_mode and _enable_compiled_decode(model)
    iakv = iakv_cache.install(model, compiled_decode=compiled)
    model._ipex_optimized = {"model_type": model_type, "dtype": dtype, "swaps": dict(report),
                             "deployment_mode": deployment_mode, "compiled_decode": compiled,
                             "iakv_beam_search": iakv}
    return model


def _parameter_counts(model: nn.Module) -> dict[bool, int] | None:
    """transformers' num_parameters() of the model before its weights are packed, with and without the
    embeddings: packed weights are buffers, and the optimized model counted only what stayed a parameter
    (16,704 of a 106,816-parameter Llama)."""
    count = getattr(model, "num_parameters", None)
    if count is None:
        return None
    return {False: count(exclude_embeddings=False), True: count(exclude_embeddings=True)}


def _num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False, *, counts) -> int:
    """num_parameters() of the model as it was before ipex.llm.optimize (nothing is trainable after it)."""
    return 0 if only_trainable else counts[bool(exclude_embeddings)]


def _enable_compiled_decode(model: nn.Module) -> bool:
    """Ask this model's generate() for a static cache and a compiled decode step.

    Uses transformers' own switches on the model's (copied) generation config, so
    nothing global changes: the static cache gives the decode step fixed shapes, and
    ``compile_config`` (with ``_compile_all_devices``, as transformers only auto-compiles
    on accelerators otherwise) compiles it once per total length.
    """
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None or not getattr(model, "_can_compile_fullgraph", False):
        return False
    if _has_windowed_layers(model):
        # transformers' static sliding-window layer guards on a Python int that changes at every
        # step: compiled, each step recompiles until dynamo's limit ends the generation.
        return False
    text_config = model.config.get_text_config(decoder=True)
    if getattr(text_config, "alibi", False):
        return False  # Falcon-RW's ALiBi mask does not fit transformers' static cache (a shape error)
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        # Dynamic NTK branches on the positions' values (no graph); Phi-3's longrope drops the cache
        # for a dynamic one past original_max_position_embeddings.
        return False
    from transformers import CompileConfig

    # mode=None: torch.compile takes `options` only without a mode (transformers' default,
    # "reduce-overhead", only adds CUDA graphs, which do not exist on CPU).
    # The torch.compile options (a function among them) stay off the generation config, which
    # save_pretrained() and repr() serialise to JSON; get_compiled_call adds them (iakv_cache.compile_kwargs).
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode=None)
    compile_config._compile_all_devices = True
    model._ipex_stock_generation = (generation_config.cache_implementation, generation_config.compile_config)
    generation_config.cache_implementation = "static"
    generation_config.compile_config = compile_config
    model.save_pretrained = types.MethodType(_save_pretrained_stock_generation, model)
    model._prepare_generation_config = types.MethodType(_prepare_generation_config_without_cache, model)
    # Bound to this model object only (a deepcopy rebinds them to the copy): cache sizes in
    # powers of two, a cache passed by the caller accepted, eager decode past the recompile limit.
    model._ipex_static_cache = True
    model._prepare_cache_for_generation = types.MethodType(iakv_cache.prepare_cache_for_generation, model)
    model._prepare_static_cache = types.MethodType(iakv_cache.prepare_static_cache, model)
    model.get_compiled_call = types.MethodType(iakv_cache.get_compiled_call, model)
    return True


_COMPILED_DECODE_ATTRS = ("_ipex_static_cache", "_prepare_cache_for_generation", "_prepare_static_cache",
                          "get_compiled_call", "save_pretrained", "_prepare_generation_config",
                          "_ipex_stock_generation")


def _disable_compiled_decode(model: nn.Module) -> None:
    """Undo _enable_compiled_decode (optimizing again with deployment_mode=False used to keep compiling)."""
    stock = model.__dict__.get("_ipex_stock_generation")
    if stock is None:
        return
    model.generation_config.cache_implementation, model.generation_config.compile_config = stock
    for name in _COMPILED_DECODE_ATTRS:
        model.__dict__.pop(name, None)


def _save_pretrained_stock_generation(self, *args, **kwargs):
    """``save_pretrained`` with transformers' own generation settings in the saved generation config: the
    static cache and compile config are this process's deployment choice, and a checkpoint carrying
    ``"cache_implementation": "static"`` made every later plain-transformers generate() use a static cache
    (and refuse a cache passed in)."""
    config = self.generation_config
    deployed = config.cache_implementation, config.compile_config
    config.cache_implementation, config.compile_config = self._ipex_stock_generation
    try:
        return type(self).save_pretrained(self, *args, **kwargs)
    finally:
        config.cache_implementation, config.compile_config = deployed


def _prepare_generation_config_without_cache(self, generation_config=None, **kwargs):
    """transformers' generation config for this call; a call without a cache (``use_cache=False``) gets
    transformers' own cache and compile settings: deployment_mode's static cache and compile config mean
    nothing there, and transformers logged two warnings about them at every such call ("generation flags
    are not valid ... ['cache_implementation']", "unable to meet the criteria for compilation"). Only the
    call's own copy is changed (transformers validates it later): the model's config is shared by threads."""
    config, model_kwargs = type(self)._prepare_generation_config(self, generation_config, **kwargs)
    if config.use_cache is False and config.cache_implementation == "static" \
            and config.compile_config is not None:
        config.cache_implementation, config.compile_config = self._ipex_stock_generation
    return config, model_kwargs


def _has_windowed_layers(model: nn.Module) -> bool:
    """Whether the model's static cache would have sliding-window or chunked layers."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        layer_types, _ = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    except (ImportError, AttributeError, TypeError):
        return True  # cannot tell: stay eager
    return any(t not in ("full_attention", "dummy") for t in layer_types)
