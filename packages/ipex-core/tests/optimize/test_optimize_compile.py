"""torch.compile over ipex.optimize (no graph break from ipex modules) and graph_mode=True. Few, small models:
each compilation takes seconds."""

from pathlib import Path

import optimize_models as M
import pytest
import torch
from torch import nn

import ipex
from ipex_core.optimize import PackedLinear

# bf16 against the fp32 model, max error relative to the output's scale (every layer rounds its output to
# bf16's 8-bit mantissa). Measured on AVX512-BF16 without AMX (Zen 4), each test seeded: Mixed 4.1e-3,
# LSTMNet 4.6e-3, 2-layer BERT 8.7e-3; these tolerances are ~3x each (they were 6e-2).
BF16_TOL, BF16_BERT_TOL = 1.5e-2, 2.5e-2


def close(out, ref, tol):
    scale = ref.float().abs().max().clamp_min(1e-6)
    assert ((out.float() - ref.float()).abs().max() / scale).item() <= tol


class Mixed(nn.Module):
    """Every ipex module kind in one graph: packed conv (+ folded BN, fused add+relu), transposed conv,
    Conv1d, LSTM, Linear (+ fused gelu, fused residual add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, 2)
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.lstm = nn.LSTM(8, 8, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.conv2(y) + y)
        y = torch.sigmoid(self.up(y))  # [N, 4, 2H, 2W]
        s = self.c1(y.flatten(2))  # [N, 8, L]
        out, _ = self.lstm(s.transpose(1, 2))
        h = nn.functional.gelu(self.fc(out))
        return self.fc2(h) + h


def test_torch_compile_fullgraph_over_optimized_model():
    torch.manual_seed(0)
    model = M.randomize_bn(Mixed()).eval()
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        opt = ipex.optimize(model, dtype=torch.bfloat16)
        eager = opt(x)
        torch._dynamo.reset()
        compiled = torch.compile(opt, fullgraph=True)  # stock inductor, no freezing: a graph break would raise
        out = compiled(x)
    close(eager, ref, BF16_TOL)
    close(out, eager, 2e-2)


def test_graph_mode_cnn(monkeypatch):
    from ipex_core.optimize import graph_mode

    decisions = []  # (guard type, kept) of every guard of the deployed call's frame

    def spy(entries):
        keep = graph_mode.deployment_guard_filter.__wrapped__(entries)
        if any(graph_mode.ROOT_ARG in e.name for e in entries):
            decisions.extend((e.guard_type, k) for e, k in zip(entries, keep, strict=True))
        return keep

    spy.__wrapped__ = graph_mode.deployment_guard_filter
    monkeypatch.setattr(graph_mode, "deployment_guard_filter", spy)
    torch.manual_seed(0)
    model = M.resnet50(width=4, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    torch._dynamo.reset()
    opt = ipex.optimize(model, graph_mode=True, sample_input=x)
    assert type(opt) is type(model) and list(opt.state_dict()) == list(model.state_dict())
    explained = torch._dynamo.explain(opt.forward)(x)
    assert explained.graph_break_count == 0
    out = opt(x)  # runs the compiled call, under no_grad
    assert not out.requires_grad
    close(out, ref, 1e-4)
    # The deployed frame drops its module-attribute guards (thousands for ResNet-50) and keeps the input's.
    # A filter that did not recognise the frame kept all of them, silently (torch renamed the sources).
    assert decisions and ("TENSOR_MATCH", True) in decisions
    assert sum(kept for _, kept in decisions) < len(decisions) / 4
    # The call keeps its tensor guards (deployment_guard_filter): a new batch size recompiles.
    with torch.no_grad():
        close(opt(x[:1]), model(x[:1]), 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_mode_bert_encoder(dtype):
    model = M.bert(hidden=64, layers=2, heads=4, intermediate=128, vocab=100)
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        ref = model(ids).last_hidden_state
    torch._dynamo.reset()
    opt_dtype = None if dtype == torch.float32 else dtype
    opt = ipex.optimize(model, dtype=opt_dtype, graph_mode=True, sample_input=ids)
    # At O1 graph mode merges Q/K/V into one GEMM unless concat_linear is passed (as torch.jit.freeze does).
    assert any(hasattr(m, "ipex_concat_linear_0") for m in opt.modules())
    with torch.no_grad():
        assert torch._dynamo.explain(opt.forward)(ids).graph_break_count == 0  # ipex modules included
    close(opt(ids).last_hidden_state, ref, 1e-4 if dtype == torch.float32 else BF16_BERT_TOL)
    for kwargs in (dict(concat_linear=False), dict(level="O0")):
        plain = ipex.optimize(model, dtype=opt_dtype, graph_mode=True, sample_input=ids, **kwargs)  # compiles lazily: no cost
        assert not any(hasattr(m, "ipex_concat_linear_0") for m in plain.modules())


def test_graph_mode_runs_small_bf16_linears_on_ipex_linear():
    """bf16 Linears with few rows (the brgemm kernel) run ipex::linear in the compiled graph too: an op inductor's
    freezing leaves alone, where it repacked the dense layers of the stock-kernel rule for oneDNN (17-22 us a
    call: this model's graph mode ran at 0.75x stock eager)."""
    torch.manual_seed(0)
    model = M.randomize_bn(M.MLPBN(d=32, width=32)).eval()
    x = torch.randn(1, 32)
    torch._dynamo.reset()
    opt = ipex.optimize(model, dtype=torch.bfloat16, graph_mode=True, sample_input=x)
    assert {m.kernel for m in opt.modules() if isinstance(m, PackedLinear)} == {"brgemm"}
    with torch.no_grad():
        opt(x)  # compiles
        with torch.profiler.profile() as prof:
            out = opt(x)
    names = [e.name for e in prof.events()]
    assert names.count("ipex::linear") == 4 and not any("linear_pointwise" in n for n in names)
    close(out, model(x), BF16_TOL)


def test_deployment_guard_filter_keeps_tensor_guards():
    """The compiled step drops module-attribute guards but still sees new weights, dtypes and shapes."""
    from ipex_core.optimize.graph_mode import deployment_guard_filter

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.lin(x) * 2

    net = Net().eval()
    step = torch.compile(net, fullgraph=True, options={"guard_filter_fn": deployment_guard_filter})
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(step(x), net(x))
        net.lin.weight = torch.nn.Parameter(torch.randn(4, 8))  # a new weight tensor: read at the call
        torch.testing.assert_close(step(x), net(x))
        net.lin.weight.mul_(3)  # new values in place
        torch.testing.assert_close(step(x), net(x))
        net.to(torch.float64)  # a new dtype: the tensor guards fail and it recompiles
        torch.testing.assert_close(step(x.double()), net(x.double()))
        net.lin = torch.nn.Linear(8, 6).double()  # a new shape
        assert step(x.double()).shape == (3, 6)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_graph_mode_with_lstm(dtype):
    # Inductor's freezing packs a stock LSTM for oneDNN itself; a PackedLSTM's already packed weights
    # made its pass fail ("could not find kernel for mkldnn._reorder_mkldnn_rnn_layer_weight").
    torch.manual_seed(0)
    model = M.LSTMNet().eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        ref = model(ids)
    torch._dynamo.reset()
    opt = ipex.optimize(model, dtype=dtype, graph_mode=True)
    with torch.no_grad():
        close(opt(ids), ref, 1e-4 if dtype is None else BF16_TOL)


def _aten_ops_run(fn, *args) -> set[str]:
    from torch.profiler import profile

    with torch.no_grad(), profile() as prof:
        fn(*args)
    return {e.key for e in prof.key_averages()}


def test_graph_mode_traces_lstm_into_the_graph():
    # Dynamo breaks the graph at an nn.LSTM by default, and the stock LSTM then reorders its weights for
    # oneDNN at every call (graph mode was 0.98x plain torch.compile on a biLSTM net). Graph mode traces it:
    # one mkldnn_rnn_layer per layer and direction inside the model's one graph, on frozen packed weights.
    torch.manual_seed(0)
    model = M.LSTMNet().eval()
    opt = ipex.optimize(model, graph_mode=True)
    torch._dynamo.reset()
    with torch.no_grad():
        for seq in (7, 7, 11):  # a new sequence length recompiles (dynamic) and stays traced
            ids = torch.randint(0, 50, (2, seq))
            close(opt(ids), model(ids), 1e-4)
    ops = _aten_ops_run(opt, ids)
    assert "aten::lstm" not in ops  # no eager LSTM (a graph break would run it through the dispatcher)
    assert sum(k.startswith("Torch-Compiled Region") for k in ops) == 1
    # Inside the graph: inductor's C++ wrapper calls the layer through its C shim, which the profiler does not
    # see; the generated code shows it.
    code = "".join(Path(m.__file__).read_text() for m in opt._compiled_call_impl.generated)
    assert "mkldnn_rnn_layer" in code and "aten.lstm" not in code


@pytest.mark.parametrize("setting", [None, "0"])
def test_graph_mode_compiles_a_cpp_wrapper_unless_told_not_to(monkeypatch, setting):
    """Graph mode calls its graph's kernels from inductor's C++ wrapper (their C shims), or from the Python
    wrapper with IPEX_GRAPH_MODE_CPP_WRAPPER=0; the same answer either way."""
    if setting is None:
        monkeypatch.delenv("IPEX_GRAPH_MODE_CPP_WRAPPER", raising=False)
    else:
        monkeypatch.setenv("IPEX_GRAPH_MODE_CPP_WRAPPER", setting)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 40)).eval()
    opt = ipex.optimize(model, graph_mode=True)
    torch._dynamo.reset()
    x = torch.randn(6, 48)
    with torch.no_grad():
        close(opt(x), model(x), 1e-4)
    code = "".join(Path(m.__file__).read_text() for m in opt._compiled_call_impl.generated)
    assert code and (("aoti_torch_" in code) == (setting is None))


def test_graph_mode_enters_its_trace_settings_only_when_dynamo_compiles(monkeypatch):
    """Dynamo must trace a graph-mode model with inductor's freezing on (and allow_rnn for traced LSTMs). Entered
    around every call, the config patch cost each call 27 us and slowed the compiled call after it (a small MLP:
    228 against 152 us); it is now entered when dynamo has no graph for a call, and a recompile (a new batch
    size) still freezes the weights into its graph."""
    import contextlib

    from ipex_core.optimize import graph_mode

    entered = []
    real = graph_mode.trace_settings

    @contextlib.contextmanager
    def counting(trace_lstm):
        entered.append(trace_lstm)
        with real(trace_lstm):
            yield

    monkeypatch.setattr(graph_mode, "trace_settings", counting)
    torch._dynamo.reset()  # (dynamo's automatic-dynamic record of earlier tests' batch sizes: no recompile below)
    torch.manual_seed(0)
    model = M.randomize_bn(M.MLPBN()).eval()
    opt = ipex.optimize(model, graph_mode=True)
    with torch.no_grad():
        x = torch.randn(4, 32)
        close(opt(x), model(x), 1e-5)
        traced = len(entered)
        assert traced >= 1 and not any(entered)  # no LSTM: freezing alone
        for _ in range(3):
            close(opt(x), model(x), 1e-5)
        assert len(entered) == traced  # dynamo's cache answered: nothing entered
        x = torch.randn(6, 32)
        close(opt(x), model(x), 1e-5)
        assert len(entered) > traced  # a new batch size recompiles, under the settings
    generated = opt._compiled_call_impl.generated
    assert len(generated) >= 2  # a module per graph, and each holds the weights frozen into it
    assert all(any(name.startswith("_frozen_param") for name in vars(m)) for m in generated)


class PackedGRUAndLSTM(nn.Module):
    """A padded-batch LSTM (PackedSequence), a GRU, a projected LSTM: graph mode breaks the graph at the last
    two (traced, they unroll over time steps)."""

    def __init__(self, rnn: str):
        super().__init__()
        if rnn == "proj":
            self.rnn = nn.LSTM(6, 10, batch_first=True, proj_size=8)
        else:
            self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return self.fc(out)


@pytest.mark.filterwarnings("ignore:ipex.optimize. torch.fx cannot trace")
@pytest.mark.parametrize("rnn", ["lstm", "gru", "proj"])
def test_graph_mode_with_packed_sequence_gru_and_projection(rnn):
    torch.manual_seed(0)
    model = PackedGRUAndLSTM(rnn).eval()
    x, lengths = torch.randn(3, 5, 6), torch.tensor([5, 2, 4])
    torch._dynamo.reset()
    opt = ipex.optimize(model, graph_mode=True)
    with torch.no_grad():
        close(opt(x, lengths), model(x, lengths), 1e-4)


class LoopedLSTMDecoder(nn.Module):
    """An LSTM stepped one token at a time in a Python loop (a seq2seq decoder)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTM(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        h, outs = None, []
        for t in range(x.shape[1]):
            y, h = self.cell(x[:, t : t + 1], h)
            outs.append(self.fc(y))
        return torch.cat(outs, 1)


def test_graph_mode_keeps_the_graph_break_for_looped_lstms_and_rnn_free_models():
    """Traced, an LSTM stepped in a Python loop unrolls into one graph per sequence length (10-24 s of compilation
    each); sample_input shows the loop and graph mode keeps dynamo's graph break there. A model without RNNs
    skips the allow_rnn patch (entering it cost every call 28 us)."""
    torch.manual_seed(0)
    model = LoopedLSTMDecoder().eval()
    x = torch.randn(2, 5, 6)
    torch._dynamo.reset()
    opt = ipex.optimize(model, graph_mode=True, sample_input=x)
    assert opt._compiled_call_impl.trace_lstm is False
    with torch.no_grad():
        for seq in (5, 7):
            xs = torch.randn(2, seq, 6)
            close(opt(xs), model(xs), 1e-4)
    assert ipex.optimize(model, graph_mode=True)._compiled_call_impl.trace_lstm is True  # no sample: not seen
    plain = ipex.optimize(nn.Sequential(nn.Linear(4, 4)).eval(), graph_mode=True)
    assert plain._compiled_call_impl.trace_lstm is False


def test_graph_mode_conv_transpose_after_a_channels_first_conv():
    """The convolution ops whose output is channels-last whatever the input's layout are flexible_layout: under
    torch.compile inductor passes a channels-last activation as it is. With the default (the strides eager
    tracing saw) it copied the stem's channels-last output to NCHW and the kernel copied it back: the decoder
    benchmark's graph mode was 0.78x plain torch.compile, 0.98x after. The results stay the stock model's."""
    for op in ("onednn_conv_transpose", "onednn_conv_binary", "conv3x3_winograd", "conv1x1"):
        assert torch.Tag.flexible_layout in getattr(torch.ops.ipex, op).default.tags, op
    torch.manual_seed(0)
    model = M.randomize_bn(M.Decoder(c=16)).eval()
    x = (torch.randn(1, 3, 96, 96), torch.randn(1, 2, 4, 8, 8))  # a stem large enough for stock's oneDNN call
    with torch.no_grad():
        ref = model(*x)
    torch._dynamo.reset()
    opt = ipex.optimize(model, graph_mode=True, sample_input=x)
    assert opt.up1.kernel == "onednn" and opt.stem.kernel == "dense"
    for got, want in zip(opt(*x), ref, strict=True):
        close(got, want, 1e-4)


class ConvTransposeBN(nn.Module):
    def __init__(self, dims, groups):
        super().__init__()
        # in == out channels: the wrong fold broadcasts
        self.up = (nn.ConvTranspose1d, nn.ConvTranspose2d)[dims - 1](8, 8, 4, 2, 1, groups=groups)
        self.bn = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](8)

    def forward(self, x):
        return torch.relu(self.bn(self.up(x)) * 1.5)


@pytest.mark.parametrize("dims, groups, prepack", [(2, 1, False), (2, 2, False), (1, 1, True)])
def test_graph_mode_keeps_batchnorm_off_transposed_convolution_weights(dims, groups, prepack):
    """Inductor's freezing folds a per-channel multiply after a convolution into its weight's dim 0, the input
    channels of a transposed convolution (torch 2.13): stock torch.compile with freezing and, before
    graph_mode's guard pass, ipex's graph mode of a ConvTranspose2d(8, 8) + BatchNorm that ipex itself did not
    fold came out 0.24 off. The guard keeps the BatchNorm a pointwise op there: transposed convolutions on the
    stock kernel (weights_prepack=False, or ConvTranspose1d, which ipex leaves stock), with folding off."""
    torch.manual_seed(groups)
    model = M.randomize_bn(ConvTransposeBN(dims, groups)).eval()
    x = torch.randn(1, 8, 16) if dims == 1 else torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        ref = model(x)
        torch._dynamo.reset()
        got = ipex.optimize(model, graph_mode=True, weights_prepack=prepack, conv_bn_folding=False)(x)
    close(got, ref, 1e-5)
