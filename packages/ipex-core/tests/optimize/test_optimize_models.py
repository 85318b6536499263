"""ipex.optimize on the issue's model zoo, against the original model (fp32 / bf16 / fp16)."""

import copy
import warnings

import optimize_models as M
import pytest
import torch
from dtype_marks import LOW_PRECISION, SUPPORTED_LOW_PRECISION
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ipex
from ipex_core.optimize import (
    FoldedBatchNorm,
    PackedConv1d,
    PackedConv2d,
    PackedConv3d,
    PackedConvTranspose2d,
    PackedConvTranspose3d,
    PackedLinear,
    PackedLSTM,
)

# Relative to the output's scale. fp32: oneDNN sums in another order and the folded weights are rounded
# once more. bf16/fp16: every layer rounds its output (8 / 11 mantissa bits), errors grow with depth.
# bf16, measured against the fp32 model on AVX512-BF16 without AMX (Zen 4), the worst case over repeated
# draws where a test's inputs are unseeded: convs / ResNet-50 / LSTMs / Linear stacks / nn.TransformerEncoder
# <= 5.9e-3, a 2-layer BERT 1.08e-2, a bf16 model with BatchNorm folded in bf16 (against the stock bf16
# model) 7.5e-3, and test_optimize_model_code's unseeded Conv2d + Linear (a small output, so a heavy
# tail): p99.9 1.05e-2, max 1.56e-2 over 3000 draws. 3e-2 is ~3x those (it was 6e-2). fp16: left as it
# was, not measurable here (oneDNN has no float16 kernels without AVX512-FP16 / AMX-FP16; those tests skip).
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
# BERT-base (12 layers of LayerNorm, softmax and GELU in bf16): measured 1.58e-2; ~3x.
BERT_BASE_TOL = {**TOL, torch.bfloat16: 5e-2}


def assert_close(out, ref, dtype=torch.float32, tol=TOL):
    if isinstance(ref, (tuple, list)):
        for o, r in zip(out, ref):
            assert_close(o, r, dtype, tol)
        return
    assert out.shape == ref.shape
    scale = ref.float().abs().max().clamp_min(1e-6)
    err = ((out.float() - ref.float()).abs().max() / scale).item()
    assert err <= tol[dtype], f"relative error {err:.3g} > {tol[dtype]} ({dtype})"


def run(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def types_of(model):
    return {type(m) for m in model.modules()}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return M.resnet50(width=8, num_classes=10)


@pytest.mark.parametrize("channels_last", [True, False])
def test_resnet50_fp32(resnet, channels_last):
    x = torch.randn(2, 3, 64, 64)
    model = resnet
    if channels_last:
        model = copy.deepcopy(resnet).to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    ref = run(model, x)
    opt = ipex.optimize(model)
    assert_close(run(opt, x), ref)
    # Every conv is packed with its BatchNorm folded; the shared ReLU module and the residual
    # adds are fused (conv3 of each block: add + relu).
    convs = [m for m in opt.modules() if isinstance(m, PackedConv2d)]
    assert len(convs) == 53 and all(c._folded_bn is not None for c in convs)
    assert not any(type(m) is nn.BatchNorm2d for m in opt.modules())
    assert repr(opt.layer1[0].conv1.post_op) == "relu"
    assert repr(opt.layer1[0].conv3.post_op) == "add+relu"
    assert repr(opt.layer1[0].downsample[0].post_op) == "none"
    assert isinstance(opt.fc, PackedLinear)
    # The residual is dead after the add: conv3 accumulates into it (oneDNN sum post-op).
    assert opt.layer1[1].conv3.post_op.inplace and opt.layer1[0].conv3.post_op.inplace


@pytest.mark.usefixtures("small_layer_kernels")
def test_residual_input_is_never_overwritten():
    # A block traced on its own: its residual is the caller's tensor, so the add is fused out of place.
    torch.manual_seed(0)
    block = M.randomize_bn(M.Bottleneck(32, 8)).eval()
    x = torch.randn(1, 32, 8, 8).to(memory_format=torch.channels_last)
    keep = x.clone()
    opt = ipex.optimize(block)
    assert repr(opt.conv3.post_op) == "add+relu" and not opt.conv3.post_op.inplace
    assert_close(run(opt, x), run(block, x))
    assert torch.equal(x, keep)

    class SelfResidual(nn.Module):  # conv(y) + y: the conv reads the residual, so no accumulation into it
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv2d(8, 8, 1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.pre(x)
            return self.conv(y) + y

    model = SelfResidual().eval()
    opt = ipex.optimize(model)
    assert repr(opt.conv.post_op) == "add" and not opt.conv.post_op.inplace
    x = torch.randn(1, 8, 6, 6).to(memory_format=torch.channels_last)
    assert_close(run(opt, x), run(model, x))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_resnet50_low_precision(resnet, dtype):
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    ref = run(resnet, x)
    opt = ipex.optimize(resnet, dtype=dtype, sample_input=x)
    out = run(opt, x)  # fp32 input: cast by the first layer
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(run(opt, x.to(dtype)), ref, dtype)
    assert opt.conv1.weight.dtype == dtype and opt.conv1._input_size == [2, 3, 64, 64]


def test_conv_transpose_decoder():
    torch.manual_seed(0)
    model = M.randomize_bn(M.Decoder()).eval()
    x, v = torch.randn(2, 3, 16, 16), torch.randn(1, 2, 4, 4, 4)
    ref = run(model, x, v)
    opt = ipex.optimize(model)
    assert_close(run(opt, x, v), ref)
    assert isinstance(opt.up1, PackedConvTranspose2d) and isinstance(opt.up3d, PackedConvTranspose3d)
    # The BatchNorm after a transposed conv folds into its weight's dim 1 (output channels); ReLU fuses after it.
    assert isinstance(opt.bn1, FoldedBatchNorm) and repr(opt.up1.post_op) == "relu"
    assert isinstance(opt.up2, PackedConvTranspose2d) and repr(opt.up2.post_op) == "swish"  # grouped, output_padding
    assert repr(opt.up3d.post_op) == "tanh"
    assert repr(opt.out.post_op) == "sigmoid"
    out = run(opt, x, v)
    assert out[0].is_contiguous()  # NCHW in, NCHW out
    opt16 = ipex.optimize(model, dtype=torch.bfloat16)
    assert opt16.up1.weight.dtype == torch.bfloat16 and opt16.up3d.weight.dtype == torch.float32  # API cast list
    assert_close(run(opt16, x, v), ref, torch.bfloat16)


@pytest.mark.parametrize("prepack", [True, False])
def test_conv_transpose_batchnorm_folds_into_output_channels(prepack):
    """ConvTranspose2d/3d + BatchNorm fold with in != out channels and in == out (where folding into the wrong
    weight dim would still broadcast); torch.compile over the optimized model gives the same result (inductor's
    freezing would fold a BatchNorm left in the graph into a transposed conv's input channels)."""
    torch.manual_seed(0)
    for up, bn, x in ((nn.ConvTranspose2d(6, 6, 4, 2, 1), nn.BatchNorm2d(6), torch.randn(2, 6, 8, 8)),
                      (nn.ConvTranspose2d(6, 4, 3, 2, 1, output_padding=1), nn.BatchNorm2d(4), torch.randn(1, 6, 7, 5)),
                      (nn.ConvTranspose3d(3, 3, 3, 2, 1), nn.BatchNorm3d(3), torch.randn(1, 3, 4, 5, 6))):
        model = M.randomize_bn(nn.Sequential(up, bn)).eval()
        ref = run(model, x)
        opt = ipex.optimize(model, weights_prepack=prepack)
        assert isinstance(opt[1], FoldedBatchNorm) and opt[0].kernel == ("onednn" if prepack else "dense")
        assert_close(run(opt, x), ref)
        assert list(opt.state_dict()) == list(model.state_dict())
        assert_close(opt.state_dict()["0.weight"], model.state_dict()["0.weight"])  # divided back by the scale
        torch._dynamo.reset()
        with torch._inductor.config.patch(freezing=True):
            assert_close(run(torch.compile(opt), x), ref)


def test_conv1d_conv3d():
    torch.manual_seed(0)
    model = M.randomize_bn(M.ConvNd()).eval()
    s, v = torch.randn(2, 4, 32), torch.randn(1, 2, 6, 6, 6)
    ref = run(model, s, v)
    opt = ipex.optimize(model)
    out = run(opt, s, v)
    assert_close(out, ref)
    assert out[0].is_contiguous()
    assert isinstance(opt.c1, PackedConv1d) and isinstance(opt.c3, PackedConv3d)
    assert isinstance(opt.b1, FoldedBatchNorm) and isinstance(opt.b3, FoldedBatchNorm)
    assert repr(opt.c1.post_op) == "gelu_tanh" and repr(opt.c3.post_op) == "hardswish"
    assert repr(opt.c3b.post_op) == "leaky_relu" and opt.c1c.padding_mode == "reflect"
    vc = v.to(memory_format=torch.channels_last_3d)
    assert_close(run(opt, s, vc), ref)
    opt_bf16 = ipex.optimize(model, dtype=torch.bfloat16)
    assert opt_bf16.c1.weight.dtype == torch.float32  # Conv1d / Conv3d are not in the API's cast list
    assert_close(run(opt_bf16, s, v), ref)


@pytest.mark.parametrize("make, inputs", [
    (M.Decoder, lambda: (torch.randn(2, 3, 16, 16), torch.randn(1, 2, 4, 4, 4))),
    (M.ConvNd, lambda: (torch.randn(2, 4, 32), torch.randn(1, 2, 6, 6, 6))),
], ids=["conv_transpose", "conv1d_conv3d"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_original_checkpoint_loads_into_every_packed_conv(make, inputs, dtype):
    # Conv1d is packed as a 2-D conv and a transposed conv as [out, in, ...]: the checkpoint's
    # shapes must be checked against the original layout, not the packed one.
    torch.manual_seed(0)
    opt = ipex.optimize(M.randomize_bn(make()).eval(), dtype=dtype)
    torch.manual_seed(1)
    other = M.randomize_bn(make()).eval()
    opt.load_state_dict(other.state_dict())
    x = inputs()
    assert_close(run(opt, *x), run(other, *x), dtype or torch.float32)
    sd = opt.state_dict()
    assert all(sd[k].shape == v.shape for k, v in other.state_dict().items())


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm(batch_first):
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 16, num_layers=2, bidirectional=True, batch_first=batch_first).eval()
    x = torch.randn(3, 7, 12) if batch_first else torch.randn(7, 3, 12)
    h0, c0 = torch.randn(4, 3, 16), torch.randn(4, 3, 16)
    opt = ipex.optimize(lstm)
    assert isinstance(opt, PackedLSTM)
    for args in ((x,), (x, (h0, c0))):
        assert_close(run(opt, *args), run(lstm, *args))
    assert_close(run(opt, x[0]), run(lstm, x[0]))  # unbatched input
    lengths = torch.tensor([7, 5, 2])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, (h, c) = run(opt, packed)
    ref, (h_ref, c_ref) = run(lstm, packed)
    assert_close(out.data, ref.data)
    assert_close(h, h_ref)
    single = nn.LSTM(12, 16, bias=False).eval()
    assert_close(run(ipex.optimize(single), x), run(single, x))


def test_lstm_model_dtypes():
    torch.manual_seed(0)
    model = M.LSTMNet().eval()
    ids = torch.randint(0, 50, (4, 9))
    ref = run(model, ids)
    opt = ipex.optimize(model, sample_input=ids)
    assert isinstance(opt.lstm, PackedLSTM)
    assert_close(run(opt, ids), ref)
    opt16 = ipex.optimize(model, dtype=torch.bfloat16)
    assert opt16.emb.weight.dtype == torch.bfloat16 and opt16.lstm.weight_ih_l0.dtype == torch.bfloat16
    assert_close(run(opt16, ids), ref, torch.bfloat16)
    off = ipex.optimize(model, optimize_lstm=False, dtype=torch.bfloat16)
    assert type(off.lstm) is nn.LSTM
    assert_close(run(off, ids), ref, torch.bfloat16)


def test_bert_encoder():
    model = M.bert(hidden=64, layers=2, heads=4, intermediate=128, vocab=100)
    ids = torch.randint(0, 100, (2, 16))
    ref = run(model, ids).last_hidden_state
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = ipex.optimize(model)
    # HF's attention takes an optional mask: not rewritten, named once in one warning.
    msgs = [str(w.message) for w in caught if "torch.fx cannot trace" in str(w.message)]
    assert len(msgs) == 1 and "encoder.layer.0.attention.self" in msgs[0]
    assert_close(run(opt, ids).last_hidden_state, ref)
    layer = opt.encoder.layer[0]
    assert repr(layer.intermediate.dense.post_op) == "gelu"
    assert repr(layer.output.dense.post_op) == "add"  # dropout removed, residual fused
    assert isinstance(layer.attention.self.query, PackedLinear)
    for dtype in SUPPORTED_LOW_PRECISION:
        low = ipex.optimize(model, dtype=dtype)
        assert low.embeddings.word_embeddings.weight.dtype == dtype
        assert low.embeddings.LayerNorm.weight.dtype == torch.float32
        assert_close(run(low, ids).last_hidden_state, ref, dtype)


def test_fast_bert_inference():
    # The retired extension's BERT entry point, on the inference path of ipex.optimize.
    model = M.bert(hidden=64, layers=2, heads=4, intermediate=128, vocab=100)
    ids = torch.randint(0, 100, (2, 16))
    ref = run(model, ids).last_hidden_state
    opt = ipex.fast_bert(model)
    assert isinstance(opt.encoder.layer[0].intermediate.dense, PackedLinear)
    assert repr(opt.encoder.layer[0].intermediate.dense.post_op) == "gelu"
    assert_close(run(opt, ids).last_hidden_state, ref)
    assert_close(run(ipex.fast_bert(model, dtype=torch.bfloat16), ids).last_hidden_state, ref, torch.bfloat16)
    with pytest.warns(UserWarning, match="unpad=True is not implemented"):
        assert_close(run(ipex.fast_bert(model, unpad=True, seed=7), ids).last_hidden_state, ref)
    with pytest.raises(NotImplementedError, match="training"):
        ipex.fast_bert(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="float32 or torch.bfloat16"):
        ipex.fast_bert(model, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="already passed through ipex.optimize"):
        ipex.fast_bert(opt)
    with pytest.warns(UserWarning, match="meant for BERT-style encoders"):
        ipex.fast_bert(M.MLPBN().eval())


def test_bert_base_config():
    # The real BERT-base shape (random weights) at a short sequence, fp32 and bf16.
    model = M.bert()
    ids = torch.randint(0, 30522, (1, 12))
    ref = run(model, ids).last_hidden_state
    opt = ipex.optimize(model, concat_linear=True, sample_input=ids)
    assert_close(run(opt, ids).last_hidden_state, ref)
    opt16 = ipex.optimize(model, dtype=torch.bfloat16, inplace=True)
    assert opt16 is model
    assert_close(run(opt16, ids).last_hidden_state, ref, torch.bfloat16, BERT_BASE_TOL)


@pytest.mark.usefixtures("small_layer_kernels")
def test_linear_batchnorm1d_and_dropout():
    torch.manual_seed(0)
    model = M.randomize_bn(M.MLPBN()).eval()
    x = torch.randn(8, 32)
    ref = run(model, x)
    opt = ipex.optimize(model)
    assert_close(run(opt, x), ref)
    assert isinstance(opt.bn1, FoldedBatchNorm) and isinstance(opt.bn2, FoldedBatchNorm)
    assert isinstance(opt.drop, nn.Identity)
    assert repr(opt.fc1.post_op) == "relu"  # dropout after the relu is gone from the graph
    assert repr(opt.fc2.post_op) == "gelu" and repr(opt.fc3.post_op) == "add"
    # A 3-D input to a Linear + BatchNorm1d is not the same features: seen through sample_input, not folded.
    seq = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)).eval()
    x3 = torch.randn(2, 5, 6)
    kept = ipex.optimize(seq, sample_input=x3)
    assert type(kept[1]) is nn.BatchNorm1d
    assert_close(run(kept, x3), run(seq, x3))


def test_untraceable_model_is_optimized_module_by_module():
    torch.manual_seed(0)
    model = M.randomize_bn(M.Untraceable()).eval()
    x = torch.randn(2, 3, 12, 12)
    ref = run(model, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = ipex.optimize(model)
    msgs = [str(w.message) for w in caught if "torch.fx cannot trace" in str(w.message)]
    assert len(msgs) == 1 and "Untraceable (TraceError" in msgs[0]  # the model itself, by class name
    assert_close(run(opt, x), ref)
    assert isinstance(opt.conv, PackedConv2d) and opt.conv._folded_bn is None  # its BatchNorm is in the skipped forward
    assert type(opt.bn) is nn.BatchNorm2d
    assert isinstance(opt.block[1], FoldedBatchNorm) and repr(opt.block[0].post_op) == "relu"  # Sequential traced
    assert isinstance(opt.block[3], nn.Identity)


ACTIVATIONS = [
    (nn.ReLU(), "relu"), (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.SiLU(), "swish"),
    (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"), (nn.Hardswish(), "hardswish"),
    (torch.relu, "relu"), (nn.functional.gelu, "gelu"), (nn.functional.silu, "swish"), (torch.sigmoid, "sigmoid"),
    (torch.tanh, "tanh"), (nn.functional.hardswish, "hardswish"), (lambda t: t.relu(), "relu"),
]


class _Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = act

    def forward(self, x):
        f = self.act if self.act is not None else self.fn
        y = f(self.conv(x)).mean((2, 3))
        return f(self.fc(y))


_ACTIVATION_OPS = {"relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "hardtanh"}


class _OpLog(TorchDispatchMode):
    """Names of the ops a forward dispatches (top level: a kernel's own inner calls are not seen)."""

    def __enter__(self):
        self.names = set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__.rstrip("_"))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("act,name", ACTIVATIONS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(ACTIVATIONS)])
def test_post_op_fusion(act, name, monkeypatch):
    from ipex_core.optimize import api

    # This Linear is small enough for the stock kernel (api._linear_is_small), which runs its activation unfused.
    monkeypatch.setattr(api, "_linear_is_small", lambda linear, dtype, shape: False)
    torch.manual_seed(0)
    model = _Act(act).eval().to(memory_format=torch.channels_last)  # channels-last: oneDNN's conv (see api.py)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    ref = run(model, x)
    opt = ipex.optimize(model)
    assert repr(opt.conv.post_op) == name and repr(opt.fc.post_op) == name
    assert_close(run(opt, x), ref)
    # Fused means one oneDNN call per layer and no activation op of its own.
    with _OpLog() as log:
        run(opt, x)
    assert not (log.names & _ACTIVATION_OPS), log.names
    assert {"_convolution_pointwise", "onednn_linear"} <= log.names, log.names


def test_fused_layer_called_alone_computes_the_layer_only():
    """The activation fused into a layer runs only in the rewritten graph: called as a module (a Sequential
    iterated or sliced, a submodule called alone) the layer is the layer, and hooks see its own output.
    The post-op used to run inside the layer on every call: sigmoid(conv) from model[0], sigmoid twice
    when iterating."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(144, 8), nn.GELU()).eval()
    x = torch.randn(2, 4, 8, 8)
    opt = ipex.optimize(model)
    assert repr(opt[0].post_op) == "sigmoid" and repr(opt[3].post_op) == "gelu"
    with torch.no_grad():
        assert_close(opt(x), model(x))
        assert_close(opt[0](x), model[0](x))
        assert_close(opt[:2](x), model[:2](x))
        y = x
        for layer in opt:
            y = layer(y)
        assert_close(y, model(x))
        seen = []
        handle = opt[0].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
        assert_close(opt(x), model(x))
        handle.remove()
        assert_close(seen[0], model[0](x))


def test_auto_kernel_selection_with_folded_batchnorm():
    """Candidates are timed in eval mode: a folded BatchNorm used to make every candidate refuse to run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 6),
                          nn.BatchNorm1d(6)).eval()
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    opt = ipex.optimize(model, auto_kernel_selection=True, sample_input=x)
    assert isinstance(opt[1], FoldedBatchNorm) and not opt[0].training
    with torch.no_grad():
        assert_close(opt(x), model(x))


def test_fusion_switch():
    torch.manual_seed(0)
    model = M.resnet50(width=4, num_classes=5)
    x = torch.randn(1, 3, 32, 32)
    ipex.enable_onednn_fusion(False)
    try:
        opt = ipex.optimize(model)
    finally:
        ipex.enable_onednn_fusion(True)
    # Folding and prepacking stay; no activation or residual add is fused.
    convs = [m for m in opt.modules() if isinstance(m, PackedConv2d)]
    assert convs and all(repr(c.post_op) == "none" and c._folded_bn is not None for c in convs)
    assert_close(run(opt, x), run(model, x))


def test_concat_linear():
    torch.manual_seed(0)
    model = M.QKV().eval()
    x = torch.randn(2, 5, 32)
    ref = run(model, x)
    opt = ipex.optimize(model, concat_linear=True)
    assert_close(run(opt, x), ref)
    assert opt.ipex_concat_linear_0.sizes == [32, 32, 16]
    assert list(opt.state_dict()) == list(model.state_dict())
    assert not hasattr(ipex.optimize(model), "ipex_concat_linear_0")  # off by default (level O1)
    bf16 = ipex.optimize(model, concat_linear=True, dtype=torch.bfloat16)
    assert_close(run(bf16, x), ref, torch.bfloat16)
    # Checkpoints stay interchangeable: load the original's into the concat model, and back.
    other = M.QKV().eval()
    opt.load_state_dict(other.state_dict())
    assert_close(run(opt, x), run(other, x))
    model2 = M.QKV().eval()
    model2.load_state_dict(opt.state_dict())
    assert_close(run(model2, x), run(other, x))


class _CrossAttention(nn.Module):
    """q reads x; k and v read y (an optional argument: FX does not rewrite this forward)."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)

    def forward(self, x, y=None):
        y = x if y is None else y
        a = torch.softmax(self.q(x) @ self.k(y).transpose(-1, -2), -1)
        return a @ self.v(y)


def test_concat_linear_from_the_sample_run():
    torch.manual_seed(0)
    model = _CrossAttention().eval()
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    opt = ipex.optimize(model, concat_linear=True, sample_input=(x, y))
    assert opt.ipex_concat_linear_0.sizes == [16, 16]  # k and v read the same tensor; q did not
    assert isinstance(opt.q, PackedLinear)
    assert_close(run(opt, x, y), run(model, x, y))
    assert_close(run(opt, x), run(model, x))  # now all three read x: still right (k and v share one GEMM)
    y2 = y.clone()
    out = run(opt, x, y2)
    assert_close(out, run(model, x, y2))
    # The members' shared GEMM is never reused across weights or forward passes.
    other = _CrossAttention().eval()
    opt.load_state_dict(other.state_dict())
    assert_close(run(opt, x, y2), run(other, x, y2))  # same input tensor, new weights: recomputed
    with torch.no_grad():
        k_only = opt.k(y2)  # a pass that reads only k, then one that reads k again: not the stale slice
        opt.load_state_dict(model.state_dict())
        assert_close(opt.k(y2), model.k(y2))
        assert not torch.allclose(k_only, model.k(y2))
    bert = M.bert(hidden=64, layers=2, heads=4, intermediate=128, vocab=100)
    ids = torch.randint(0, 100, (2, 16))
    ob = ipex.optimize(bert, concat_linear=True, sample_input=ids)
    assert ob.encoder.layer[1].attention.self.ipex_concat_linear_0.sizes == [64, 64, 64]
    assert list(ob.state_dict()) == list(bert.state_dict())
    assert_close(run(ob, ids).last_hidden_state, run(bert, ids).last_hidden_state)


# -- models that once broke (review cases) ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("batch_first", [True, False])
def test_stock_transformer_encoder(dtype, batch_first):
    # nn.TransformerEncoderLayer's inference fast path hands linear1.weight to one fused aten op, which
    # cannot read a packed weight ("Could not run 'aten::_transformer_encoder_layer_fwd' ... MkldnnCPU").
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = True
    ref, ref_masked = run(model, x), run(model, x, None, mask)
    opt = ipex.optimize(model, dtype=dtype)
    assert isinstance(opt.layers[0].linear1, PackedLinear)
    tol = dtype or torch.float32
    assert_close(run(opt, x), ref, tol)
    keep = ~mask if batch_first else ~mask.T
    assert_close(run(opt, x, None, mask)[keep], ref_masked[keep], tol)
    if dtype is not None:  # a bf16 input too: the stock MultiheadAttention keeps fp32 weights
        assert_close(run(opt, x.to(dtype)), ref, tol)


class _SharedLinear(nn.Module):
    """One Linear under two names (tied), in two children traced separately (forward has an optional argument,
    so the model itself is not traced): the BatchNorm after it in `enc` must not fold into it, nor the Tanh
    in `dec` fuse."""

    def __init__(self):
        super().__init__()
        lin = nn.Linear(8, 8)
        self.enc = nn.Sequential(lin, nn.BatchNorm1d(8))
        self.dec = nn.Sequential(lin, nn.Tanh())

    def forward(self, x, scale=None):
        y = self.dec(self.enc(x))
        return y if scale is None else y * scale


def test_shared_module_is_not_folded_or_fused():
    torch.manual_seed(0)
    model = M.randomize_bn(_SharedLinear()).eval()
    x = torch.randn(4, 8)
    ref = run(model, x)
    for kwargs in (dict(), dict(weights_prepack=False)):
        opt = ipex.optimize(model, **kwargs)
        assert_close(run(opt, x), ref)
        assert opt.enc[0] is opt.dec[0]  # still one module
        assert not isinstance(opt.enc[1], FoldedBatchNorm)


def test_forward_hooks_keep_firing():
    # A folded BatchNorm or a fused activation never runs: modules with hooks are left out of folding/fusion.
    torch.manual_seed(0)
    model = M.randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    fired = []
    model[1].register_forward_hook(lambda m, i, o: fired.append("bn"))
    model[2].register_forward_hook(lambda m, i, o: fired.append("relu"))
    x = torch.randn(1, 3, 8, 8)
    ref = run(model, x)
    fired.clear()
    opt = ipex.optimize(model)
    assert_close(run(opt, x), ref)
    assert fired == ["bn", "relu"]
    assert isinstance(opt[0], PackedConv2d)  # still prepacked


@pytest.mark.usefixtures("small_layer_kernels")
def test_linear_batchnorm1d_on_3d_input_without_sample_input():
    # BatchNorm1d normalises dim 1: over the Linear's features only for 2-D input. Without sample_input the
    # fold cannot know the rank, so a 3-D input runs the two steps (it was silently 4.09 off).
    torch.manual_seed(0)
    model = M.randomize_bn(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())).eval()
    x3, x2 = torch.randn(5, 16, 8), torch.randn(5, 8)
    opt = ipex.optimize(model)
    assert isinstance(opt[1], FoldedBatchNorm)
    assert_close(run(opt, x3), run(model, x3))
    assert_close(run(opt, x2), run(model, x2))


@pytest.mark.usefixtures("small_layer_kernels")
def test_float64_model_and_operands():
    torch.manual_seed(0)
    qkv = M.QKV().double().eval()  # float64 Linears are left to PyTorch, also when concat_linear groups them
    x = torch.randn(2, 5, qkv.q.in_features, dtype=torch.float64)
    ref = run(qkv, x)
    opt = ipex.optimize(qkv, concat_linear=True)
    assert_close(run(opt, x), ref)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x, y):
            return self.fc(x) + y

    model = Residual().eval()
    x, y = torch.randn(3, 8), torch.randn(3, 8, dtype=torch.float64)
    out = run(ipex.optimize(model), x, y)
    assert out.dtype == torch.float64  # promoted as in PyTorch, not cast back to float32
    assert_close(out, run(model, x, y))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])  # float16 too where oneDNN lacks it
def test_model_already_in_low_precision(dtype):
    # dtype=None keeps the model's dtype; where oneDNN lacks it (float16 without AVX512-FP16) the layers
    # stay on PyTorch's kernels instead of failing in the weight packer.
    torch.manual_seed(0)
    model = M.MLPBN().to(dtype).eval()
    x = torch.randn(4, 32, dtype=dtype)
    ref = run(model, x)
    opt = ipex.optimize(model)
    assert_close(run(opt, x), ref, dtype)


def test_train_after_optimize_is_refused_where_batchnorm_was_folded():
    # A folded BatchNorm computes eval mode only: a train-mode call returned eval outputs silently.
    torch.manual_seed(0)
    model = M.randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    opt = ipex.optimize(model)
    x = torch.randn(1, 3, 8, 8)
    opt.train()
    with pytest.raises(RuntimeError, match=r"folded a BatchNorm .*train\(\) was called after optimize"):
        run(opt, x)
    assert_close(run(opt.eval(), x), run(model, x))


def test_sample_input_call_error_names_sample_input():
    class ListInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, xs):
            return sum(self.fc(t) for t in xs)

    a, b = torch.randn(2, 4), torch.randn(2, 4)
    model = ListInput().eval()
    with pytest.raises(TypeError, match=r"sample_input failed .* wrap a single list argument"):
        ipex.optimize(model, sample_input=[a, b])
    opt = ipex.optimize(model, sample_input=([a, b],))
    assert_close(run(opt, [a, b]), run(model, [a, b]))


class _Stateful(nn.Module):
    """A forward that keeps state: a call counter, the last attention map, an appended cache."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.o = nn.Linear(8, 8)
        self.calls = 0
        self.last_attn = None
        self.cache = []

    def forward(self, x):
        self.calls += 1
        a = torch.softmax(self.q(x) @ x.transpose(-1, -2), -1)
        self.last_attn = a
        y = torch.relu(self.o(a @ x))
        self.cache.append(y)
        return y


def test_forward_that_keeps_state_is_not_rewritten():
    # Traced once on proxies and rewritten, such a forward kept an FX Proxy in last_attn and never
    # counted or appended again (silently).
    torch.manual_seed(0)
    model = _Stateful().eval()
    x = torch.randn(2, 3, 8)
    ref = run(model, x)
    with pytest.warns(UserWarning, match=r"forward changes _Stateful\.calls"):
        opt = ipex.optimize(model)
    assert opt.calls == 1 and len(opt.cache) == 1  # as copied: the trace's changes were undone
    assert_close(run(opt, x), ref)
    run(opt, x)
    assert opt.calls == 3 and len(opt.cache) == 3 and isinstance(opt.last_attn, torch.Tensor)
    assert isinstance(opt.q, PackedLinear)  # its layers are still optimized one by one
