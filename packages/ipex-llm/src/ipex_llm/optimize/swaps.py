"""Generic module swaps: every family is served by the same class-pattern rules.

* ``nn.Linear`` -> :class:`IpexLinear` (weight packed once for the ipex GEMM kernels;
  AMX brgemm for bf16, the streaming decode kernel for small fp32 batches).
* A gated MLP (``gate_proj``/``up_proj``/``down_proj`` with SiLU, or a fused
  ``gate_up_proj``) -> :class:`IpexGatedMLP` (gate and up read in one pass with the
  SiLU-multiply fused, then the down projection).
* RMSNorm modules (``*RMSNorm``, T5's ``T5LayerNorm``) -> the ipex RMSNorm kernel,
  sharing the original weight; ``nn.LayerNorm`` -> the ipex LayerNorm kernel.

Swaps never copy weights they can share, and each one records its name in the
returned report so callers (and tests) can see exactly what runs on ipex kernels.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ipex_core.ops import linear_ops as L
from ipex_llm.functional import elementwise as FE
from ipex_llm.functional import norm as FN
from ipex_llm.modules.linear_fusion import Linear2SiluMul, _PackedLinear

__all__ = ["IpexLinear", "IpexGatedMLP", "IpexRMSNorm", "IpexLayerNorm", "IpexPackedEmbedding", "apply_swaps"]


class IpexLinear(_PackedLinear):
    """A plain ``nn.Linear`` on a packed weight (state_dict keys stay ``weight``/``bias``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)

    def add(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``self(input) + other`` with the add in the GEMM epilogue (a residual connection)."""
        return L.linear(input, self.packed_weight, self.bias, self.out_features, "add", other, None)


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU") or act is torch.nn.functional.silu


class IpexGatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one kernel.

    ``state_dict()`` keeps the original keys (``gate_proj``/``up_proj``, or Phi-3's
    concatenated ``gate_up_proj``), so checkpoints load both ways.
    """

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, concatenated: bool = False):
        super().__init__()
        self.gate_up = Linear2SiluMul(gate, up)
        self.down_proj = IpexLinear(down)
        self._ipex_concatenated = concatenated
        self.register_state_dict_post_hook(_gated_mlp_original_keys)
        self.register_load_state_dict_pre_hook(_gated_mlp_fused_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up(x))


def _gated_mlp_original_keys(module, state_dict, prefix, local_metadata):
    for suffix in ("weight", "bias"):
        gate = state_dict.pop(f"{prefix}gate_up.{suffix}_s", None)
        up = state_dict.pop(f"{prefix}gate_up.{suffix}_m", None)
        if gate is None:
            continue
        if module._ipex_concatenated:
            state_dict[f"{prefix}gate_up_proj.{suffix}"] = torch.cat([gate, up])
        else:
            state_dict[f"{prefix}gate_proj.{suffix}"], state_dict[f"{prefix}up_proj.{suffix}"] = gate, up


def _gated_mlp_fused_keys(module, state_dict, prefix, *args):
    for suffix in ("weight", "bias"):
        if module._ipex_concatenated:
            fused = state_dict.pop(f"{prefix}gate_up_proj.{suffix}", None)
            parts = None if fused is None else fused.chunk(2)
        else:
            keys = (f"{prefix}gate_proj.{suffix}", f"{prefix}up_proj.{suffix}")
            parts = [state_dict.pop(k) for k in keys] if all(k in state_dict for k in keys) else None
        if parts is not None:
            state_dict[f"{prefix}gate_up.{suffix}_s"], state_dict[f"{prefix}gate_up.{suffix}_m"] = parts


def _split_gate_up(fused: nn.Linear) -> tuple[nn.Linear, nn.Linear]:
    half = fused.out_features // 2
    parts = []
    for i in range(2):
        lin = nn.Linear(fused.in_features, half, bias=fused.bias is not None, device="meta")
        lin.weight = nn.Parameter(fused.weight.detach()[i * half : (i + 1) * half], requires_grad=False)
        if fused.bias is not None:
            lin.bias = nn.Parameter(fused.bias.detach()[i * half : (i + 1) * half], requires_grad=False)
        parts.append(lin)
    return parts[0], parts[1]


def _gated_mlp(module: nn.Module) -> IpexGatedMLP | None:
    act = getattr(module, "act_fn", None) or getattr(module, "activation_fn", None)
    if act is None or not _is_silu(act):
        return None
    down = getattr(module, "down_proj", None)
    if not isinstance(down, nn.Linear):
        return None
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    if isinstance(gate, nn.Linear) and isinstance(up, nn.Linear):
        return IpexGatedMLP(gate, up, down)
    fused = getattr(module, "gate_up_proj", None)  # Phi-3: gate then up in one Linear
    if isinstance(fused, nn.Linear) and fused.out_features % 2 == 0:
        return IpexGatedMLP(*_split_gate_up(fused), down, concatenated=True)
    return None


class IpexRMSNorm(nn.Module):
    """RMSNorm on the ipex kernel, sharing the original module's weight."""

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return FN.rms_norm(hidden_states, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class IpexLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension on the ipex kernel, sharing its parameters."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return FE.fast_layer_norm(hidden_states, self.normalized_shape, self.weight, self.bias, self.eps)


def _rms_norm(module: nn.Module) -> IpexRMSNorm | None:
    name = type(module).__name__
    if not (name.endswith("RMSNorm") or name == "T5LayerNorm"):
        return None
    # Gemma-style norms scale by (1 + weight): a different formula, left alone.
    if "Gemma" in name or getattr(module, "bias", None) is not None:
        return None
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or eps is None:
        return None
    return IpexRMSNorm(weight, float(eps))


def _layer_norm(module: nn.Module) -> IpexLayerNorm | None:
    if type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
        return IpexLayerNorm(module)
    return None


# nn.Linear subclasses whose forward is x @ W^T + b (nothing else): swapped like nn.Linear.
_LINEAR_EQUIVALENTS = frozenset({"FalconLinear"})


def _plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear or (isinstance(module, nn.Linear)
                                         and type(module).__name__ in _LINEAR_EQUIVALENTS)


_RULES = (("gated_mlp", _gated_mlp), ("rms_norm", _rms_norm), ("layer_norm", _layer_norm))


class IpexPackedEmbedding(nn.Module):
    """The input embedding of a model whose output layer shares its weight (tied).

    The output layer packs the vocabulary matrix for the GEMM kernel; this embedding
    reads its rows from that packed buffer, so the matrix is kept once, not twice.
    ``state_dict()`` still has ``weight`` (unpacked), and loading it repacks the head.
    """

    def __init__(self, embedding: nn.Embedding, head: IpexLinear):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self._head = (head,)  # a tuple: the head is not a submodule here (its parameters are its own)

    @property
    def weight(self) -> torch.Tensor:
        """A meta tensor with the table's shape and dtype (see ``IpexLinear.weight``)."""
        return self._head[0].weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The packed rows are padded to the kernel's block, so an id past the vocabulary could read
        # padding (or wrap, if negative) instead of failing as nn.Embedding does: check, outside
        # compiled graphs (a data check would break them).
        if not torch.compiler.is_compiling() and input_ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(input_ids))
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise IndexError(f"token id {bad} is out of range of the embedding table's {self.num_embeddings} rows")
        packed = self._head[0].packed_weight  # [N/32, K_pad/V, 32, V]
        block_n = packed.shape[2]
        rows = packed[input_ids // block_n, :, input_ids % block_n, :]  # [..., K_pad/V, V]
        return rows.reshape(*input_ids.shape, -1)[..., : self.embedding_dim]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self._head[0].unpacked_weights()[0]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight = state_dict.get(prefix + "weight")
        if weight is not None:
            head = self._head[0]
            head._pack([weight.to(head.packed_weight.dtype)])
        elif strict:
            missing_keys.append(prefix + "weight")

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim} (rows of the tied output layer's packed weight)"


def apply_swaps(model: nn.Module, *, skip: tuple[str, ...] = ()) -> Counter:
    """Swap modules in place; returns a count of what was swapped, by kind."""
    report: Counter = Counter()
    # Embeddings whose weight an output layer shares: swapped along with that layer.
    embeddings = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Embedding and child.max_norm is None:
                embeddings[id(child.weight)] = (parent, name, child)

    def visit(parent: nn.Module) -> None:
        # Bloom's tensor-parallel emulation (pretraining_tp > 1 with slow_but_exact) slices
        # its Linears' weights in its own forward: those Linears must stay stock.
        keep_linears = getattr(parent, "slow_but_exact", False) and getattr(parent, "pretraining_tp", 1) > 1
        for name, child in list(parent.named_children()):
            replacement, kind = None, None
            for rule_kind, rule in _RULES:
                if rule_kind in skip:
                    continue
                replacement = rule(child)
                if replacement is not None:
                    kind = rule_kind
                    break
            if replacement is None and _plain_linear(child) and "linear" not in skip and not keep_linears:
                if child.weight.dtype in (torch.float32, torch.bfloat16, torch.float16):
                    replacement, kind = IpexLinear(child), "linear"
                    tied = embeddings.pop(id(child.weight), None)
                    if tied is not None:
                        emb_parent, emb_name, emb = tied
                        setattr(emb_parent, emb_name, IpexPackedEmbedding(emb, replacement))
                        report["tied_embedding"] += 1
            if replacement is not None:
                setattr(parent, name, replacement)
                report[kind] += 1
            else:
                visit(child)

    visit(model)
    return report
