"""``RotaryEmbedding`` on the ``ipex::rotary_embedding`` kernel."""

from __future__ import annotations

import torch
from torch import nn

from ipex_llm.functional import elementwise as F

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with a cached sin/cos table.

    Args:
        max_position_embeddings: positions the table covers at first; it grows (recomputed)
            when a longer position comes, instead of failing, up to
            ``max(2 * max_position_embeddings, RotaryEmbedding.max_grown_positions)`` positions
            (``1 << 20`` by default, 1 GiB of table at ``pos_embd_dim`` 128). A position id at or
            past that is refused (a ValueError naming it): such an id is almost always a bug
            (uninitialised or padding ids), and the table for it could take gigabytes. A model that
            really needs more positions: a larger ``max_position_embeddings`` (or set
            ``max_grown_positions`` on the class or the instance).
        pos_embd_dim: the rotary dimension the angles are made for.
        base: frequency base (10000 in most models).
        backbone: the model class name (e.g. ``"GPTJForCausalLM"``); recorded for
            reference. The angles follow the standard formula ``base ** (-2i / dim)`` for
            every backbone; model-specific scalings (NTK, YaRN, LongRoPE) are not applied.
    """

    # Positions the table may grow to beyond 2 * max_position_embeddings; see the class docstring.
    max_grown_positions = 1 << 20

    def __init__(self, max_position_embeddings: int, pos_embd_dim: int, base=10000, backbone: str | None = None):
        super().__init__()
        if pos_embd_dim <= 0 or pos_embd_dim % 2:
            raise ValueError(f"RotaryEmbedding: pos_embd_dim must be a positive even number; got {pos_embd_dim}")
        self.max_position_embeddings = max_position_embeddings
        self.pos_embd_dim = pos_embd_dim
        self.base = base
        self.backbone = backbone
        self._reset(torch.device("cpu"), max_position_embeddings)

    def _reset(self, device: torch.device, length: int) -> None:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.pos_embd_dim, 2, dtype=torch.float32,
                                                     device=device) / self.pos_embd_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(length)

    def _build(self, length: int) -> None:
        t = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)

    def _apply(self, fn, recurse=True):
        # The tables stay float32 whatever the module is cast to (model.to(torch.bfloat16)):
        # the kernel takes fp32 sin/cos with inputs of every dtype, and angles computed from
        # a bf16 inv_freq are far off at large positions (2.6 at position 3000). After a
        # cast they are recomputed in fp32 (on the buffers' device); a move alone just moves them.
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32 or self.sin_cached.dtype != torch.float32:
            self._reset(self.inv_freq.device, self.sin_cached.shape[0])
        return self

    def _positions(self, position_ids: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        if position_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"RotaryEmbedding: position_ids must be int64 or int32; got {position_ids.dtype}")
        shape = tuple(position_ids.shape)
        # The shapes are checked, not only the element count: [seq, batch] ids (or any other shape of
        # batch * seq elements) would rotate each token by another token's position, silently.
        if shape == (batch, seq):
            pass
        elif shape in ((1, seq), (seq,)):
            position_ids = position_ids.reshape(1, seq).expand(batch, seq)  # one row shared by the batch
        elif position_ids.numel() == 1:
            # A single element is the past length: positions continue from it.
            start = position_ids.reshape(1, 1).to(torch.long)
            position_ids = (start + torch.arange(seq, device=start.device)).expand(batch, seq)
        else:
            raise ValueError(
                f"RotaryEmbedding: position_ids must be [batch, seq] = [{batch}, {seq}], [1, seq], [seq] or one "
                f"element (the past length); got shape {shape}"
            )
        # Growing the table needs the positions' values; under torch.compile the
        # kernel's own range check reports a position beyond the table instead.
        if position_ids.numel() and not torch.compiler.is_compiling():
            needed = int(position_ids.max()) + 1
            if needed > self.sin_cached.shape[0]:
                limit = max(2 * self.max_position_embeddings, self.max_grown_positions)
                if needed > limit:
                    raise ValueError(
                        f"RotaryEmbedding: position id {needed - 1} is far past max_position_embeddings="
                        f"{self.max_position_embeddings}; the sin/cos table grows to at most {limit} positions "
                        "(max(2 * max_position_embeddings, RotaryEmbedding.max_grown_positions)). Check the "
                        "position_ids (padding or uninitialised ids?), or build the module with a larger "
                        "max_position_embeddings"
                    )
                self._build(min(max(needed, 2 * self.sin_cached.shape[0]), limit))
        return position_ids

    def forward(self, input: torch.Tensor, position_ids: torch.Tensor, num_head: int, head_dim: int, offset: int,
                rotary_ndims: int) -> torch.Tensor:
        if input.dim() != 4 or input.shape[2] != num_head or input.shape[3] != head_dim:
            raise ValueError(
                f"RotaryEmbedding: input must be [batch, seq, num_head={num_head}, head_dim={head_dim}]; got "
                f"{tuple(input.shape)}"
            )
        if rotary_ndims > self.pos_embd_dim:
            raise ValueError(f"RotaryEmbedding: rotary_ndims {rotary_ndims} exceeds pos_embd_dim {self.pos_embd_dim}")
        if offset == 1:
            rotary_half = False
        elif offset == rotary_ndims // 2:
            rotary_half = True
        else:
            raise ValueError(
                f"RotaryEmbedding: offset must be 1 (GPT-J/ChatGLM, neighbouring pairs) or rotary_ndims/2 = "
                f"{rotary_ndims // 2} (Llama, halves); got {offset}"
            )
        positions = self._positions(position_ids, input.shape[0], input.shape[1])
        # The table holds cat(f, f) for pos_embd_dim; the kernel reads the first
        # rotary_ndims/2 angles of each row (the frequencies of pos_embd_dim).
        half = rotary_ndims // 2
        sin, cos = self.sin_cached[:, :half], self.cos_cached[:, :half]
        return F.rotary_embedding(input, None, sin, cos, rotary_ndims, rotary_half, positions)[0]

    @classmethod
    def apply_function(cls, query, key, sin, cos, rotary_dim, rotary_half, position_ids=None):
        """Rotate query and key with given sin/cos; see :func:`ipex.llm.functional.rotary_embedding`."""
        return F.rotary_embedding(query, key, sin, cos, rotary_dim, rotary_half, position_ids)

    def extra_repr(self) -> str:
        return f"{self.max_position_embeddings}, {self.pos_embd_dim}, base={self.base}, backbone={self.backbone!r}"
