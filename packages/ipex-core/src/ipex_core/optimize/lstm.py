"""``nn.LSTM`` on oneDNN with prepacked weights (``aten.mkldnn_rnn_layer``), for inference."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["PackedLSTM"]

_LSTM_MODE = 2  # ideep's rnn kind for LSTM (RNN_RELU=0, RNN_TANH=1, LSTM=2, GRU=3)
_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


class PackedLSTM(nn.Module):
    """An ``nn.LSTM`` replacement whose forward calls oneDNN once per layer and direction on prepacked weights.

    Same parameters (names, order, dtypes), ``state_dict()`` and outputs as the
    ``nn.LSTM`` it replaces, for layers, ``bidirectional``, ``batch_first``,
    unbatched input, with or without ``(h0, c0)``; a ``PackedSequence`` input
    runs the stock LSTM kernel. The weights reordered for oneDNN are kept beside
    the dense ones (the LSTM weights take twice their memory) and rebuilt after
    ``.to()`` and ``load_state_dict``. Inputs are cast to the LSTM's dtype.
    Not an ``nn.LSTM`` subclass: dynamo refuses to trace those, and this one
    compiles without a graph break.
    """

    def __init__(self, lstm: nn.LSTM, input_size: list[int] | None = None):
        super().__init__()
        if not self.supports(lstm):
            raise ValueError("PackedLSTM replaces a plain nn.LSTM without proj_size")
        for name in _CONFIG:
            setattr(self, name, getattr(lstm, name))
        self._weight_names = list(lstm._flat_weights_names)
        for name in self._weight_names:
            self.register_parameter(name, nn.Parameter(getattr(lstm, name).detach(), requires_grad=False))
        self._sample_size = input_size
        self._repack()

    @classmethod
    def supports(cls, lstm: nn.Module) -> bool:
        return type(lstm) is nn.LSTM and lstm.proj_size == 0

    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _repack(self) -> None:
        h = self.hidden_size
        packed = []
        for layer in range(self.num_layers):
            for d in range(self._directions()):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(self, "weight_ih" + sfx).detach()
                w_hh = getattr(self, "weight_hh" + sfx).detach()
                size = list(self._sample_size) if layer == 0 and self._sample_size is not None else None
                w0, w1 = torch.ops.mkldnn._reorder_mkldnn_rnn_layer_weight(w_ih, w_hh, h, bool(d), self.bias, False,
                                                                           size)
                if self.bias:
                    b0, b1 = getattr(self, "bias_ih" + sfx).detach(), getattr(self, "bias_hh" + sfx).detach()
                else:  # oneDNN's LSTM always takes biases: zeros are the same as none
                    b0 = b1 = torch.zeros(4 * h, dtype=w_ih.dtype)
                packed.append((w0, w1, b0, b1))
        self._packed = packed

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_autocast_copy", None)  # made from the old weights
        super()._apply(fn, recurse)
        self._repack()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_autocast_copy", None)
        super()._load_from_state_dict(*args, **kwargs)
        self._repack()

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key not in ("_packed", "_autocast_copy"):  # opaque oneDNN tensors: rebuilt from the copied weights
                new.__dict__[key] = copy.deepcopy(value, memo)
        new._repack()
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + ", kernel=onednn"

    def forward(self, input, hx=None):
        if torch.is_autocast_enabled("cpu"):
            twin = self._autocast_twin(input.data if isinstance(input, PackedSequence) else input)
            if twin is not None:
                return twin._forward(input, hx)
            # Autocast casts mkldnn_rnn_layer's arguments, and casting the opaque oneDNN weights failed
            # ("Could not run 'aten::empty_strided' with arguments from the 'MkldnnCPU' backend"): float32 then.
            with torch.autocast("cpu", enabled=False):
                return self._forward(input, hx)
        return self._forward(input, hx)

    def _autocast_twin(self, input: torch.Tensor) -> PackedLSTM | None:
        """Under CPU autocast (eager), this float32 LSTM's copy in autocast's dtype, which computes it as
        autocast computes the stock LSTM (mkldnn_rnn in bfloat16): made at the first such call, dropped by
        ``.to()`` and ``load_state_dict``. None (float32, autocast off around the call) while torch.compile
        traces, for an LSTM not in float32, or for a dtype oneDNN does not run on this CPU."""
        from ipex_core.optimize.modules import onednn_runs, traced

        dtype = torch.get_autocast_dtype("cpu")
        if (traced(input) or self._packed[0][2].dtype != torch.float32 or dtype == torch.float32
                or not onednn_runs(dtype)):
            return None
        made = self.__dict__.get("_autocast_copy")
        if made is None or made._packed[0][2].dtype != dtype:
            made = copy.deepcopy(self).to(dtype)
            self.__dict__["_autocast_copy"] = made
        return made

    def _forward(self, input, hx=None):
        dtype = self._packed[0][2].dtype
        if isinstance(input, PackedSequence):
            return self._packed_sequence_forward(input, hx, dtype)
        if input.dtype != dtype and input.is_floating_point():
            input = input.to(dtype)
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        # oneDNN reads [time, batch, feature], contiguous.
        x = (input.transpose(0, 1) if self.batch_first else input).contiguous()
        h = self.hidden_size
        dirs = self._directions()
        if hx is None:
            h0 = c0 = x.new_zeros(self.num_layers * dirs, x.size(1), h)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            h0, c0 = h0.to(dtype), c0.to(dtype)
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                i = layer * dirs + d
                w0, w1, b0, b1 = self._packed[i]
                out, hy, cy, _ = torch.ops.aten.mkldnn_rnn_layer(
                    x, w0, w1, b0, b1, h0[i], c0[i], d == 1, [], _LSTM_MODE, h, 1, True, self.bidirectional, False,
                    False)
                outs.append(out)
                hs.append(hy)
                cs.append(cy)
            x = outs[0] if dirs == 1 else torch.cat(outs, -1)
        output = x.transpose(0, 1) if self.batch_first else x
        h_n, c_n = torch.stack(hs), torch.stack(cs)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _packed_sequence_forward(self, input: PackedSequence, hx, dtype):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dtype != dtype and data.is_floating_point():
            data = data.to(dtype)
        shape = (self.num_layers * self._directions(), int(batch_sizes[0]), self.hidden_size)
        if hx is None:
            hx = (data.new_zeros(shape), data.new_zeros(shape))
        else:
            hx = tuple(t.to(dtype) for t in hx)
            if sorted_indices is not None:
                hx = tuple(t.index_select(1, sorted_indices) for t in hx)
        weights = [getattr(self, n) for n in self._weight_names]
        out, h_n, c_n = torch._VF.lstm(data, batch_sizes, hx, weights, self.bias, self.num_layers, 0.0, False,
                                       self.bidirectional)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
