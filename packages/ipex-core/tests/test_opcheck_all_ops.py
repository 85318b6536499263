"""torch.library.opcheck over every overload of every ``torch.ops.ipex`` op, per dtype.

``CASES`` maps each overload's qualified name to a builder of tiny argument tuples;
``test_every_overload_has_a_case`` fails when an op (or overload) is registered without one,
so a new op cannot silently miss its schema / fake-kernel / autograd-registration /
AOT-dispatch checks.

dtypes: the ipex kernels (norms, element-wise, linear, attention) run float32, bfloat16 and
float16 everywhere (float16 is converted to fp32 for the math, so it runs on CPUs without
AVX512-FP16 such as AMD Zen 4). The oneDNN ops run a low-precision dtype only where oneDNN has
kernels for it (``mkldnn::_is_mkldnn_{bf16,fp16}_supported``); elsewhere they raise a clear
error, which tests/optimize/test_onednn_ops.py checks.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ipex_core  # noqa: F401  (registers the ops and their fake kernels)
from ipex_core.ops import linear_ops as L
from ipex_core.ops import onednn_ops as O

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ONEDNN_SUPPORTS = {
    torch.float32: True,
    torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported(),
}

CASES = {}  # "ipex::name[.overload]" -> (builder(dtype) -> list of argument tuples, uses oneDNN)


def case(name, onednn=False):
    def register(builder):
        CASES[name] = (builder, onednn)
        return builder
    return register


def _overload(name):
    base, _, overload = name.removeprefix("ipex::").partition(".")
    return getattr(getattr(torch.ops.ipex, base), overload or "default")


def _rand(*shape, dtype):
    return torch.randn(shape, dtype=dtype)


# ------------------------------------------------------------------ norms ---


@case("ipex::rms_norm")
def _(dt):
    x = _rand(3, 40, dtype=dt)
    return [(x, _rand(40, dtype=dt), 1e-6), (_rand(40, 3, dtype=dt).t(), _rand(40, dtype=dt), 1e-6)]  # + strided


@case("ipex::add_rms_norm")
def _(dt):
    x = _rand(2, 3, 40, dtype=dt)
    return [(x, _rand(2, 3, 40, dtype=dt), _rand(40, dtype=dt), 1e-6)]


@case("ipex::add_rms_norm_")
def _(dt):
    return [(_rand(3, 40, dtype=dt), _rand(3, 40, dtype=dt), _rand(40, dtype=dt), 1e-6)]


# ----------------------------------------------------------- element-wise ---


@case("ipex::silu_mul")
def _(dt):
    return [(_rand(3, 32, dtype=dt), _rand(3, 32, dtype=dt)),
            (_rand(32, 3, dtype=dt).t(), _rand(3, 32, dtype=dt))]  # strided input: fake must match real strides


@case("ipex::gelu_mul")
def _(dt):
    x, y = _rand(3, 32, dtype=dt), _rand(3, 32, dtype=dt)
    return [(x, y, "none"), (x, y, "tanh"), (_rand(32, 3, dtype=dt).t(), y, "tanh")]


@case("ipex::rotary_embedding")
def _(dt):
    sin, cos = _rand(16, 32, dtype=dt), _rand(16, 32, dtype=dt)
    return [(_rand(2, 3, 4, 32, dtype=dt), sin, cos, 32, True, torch.randint(0, 16, (2, 3))),
            (_rand(5, 2, 32, dtype=dt), sin[:5, :8], cos[:5, :8], 16, False, None)]  # 3-D, partial, interleaved


@case("ipex::layer_norm")
def _(dt):
    x = _rand(3, 32, dtype=dt)
    return [(x, [32], _rand(32, dtype=dt), _rand(32, dtype=dt), 1e-5), (x, [32], None, None, 1e-5),
            (_rand(32, 3, dtype=dt).t(), [32], _rand(32, dtype=dt), None, 1e-5)]


@case("ipex::add_layer_norm")
def _(dt):
    x, r = _rand(2, 3, 32, dtype=dt), _rand(2, 3, 32, dtype=dt)
    return [(x, r, [32], None, None, 1e-5), (x, r, [32], _rand(32, dtype=dt), _rand(32, dtype=dt), 1e-5)]


# ----------------------------------------------------------------- linear ---


@case("ipex::linear")
def _(dt):
    x = _rand(3, 64, dtype=dt)
    p = L.pack_linear_weight(_rand(40, 64, dtype=dt))
    o = _rand(3, 40, dtype=dt)
    return [(x, p, _rand(40, dtype=dt), 40, "silu_mul", o, None), (x, p, None, 40, "add_add", o, o.clone()),
            (_rand(2, 1, 64, dtype=dt), p, None, 40, "gelu", None, None)]


@case("ipex::linear_pair_silu_mul")
def _(dt):
    pp = L.pack_linear_weight_pair(_rand(40, 64, dtype=dt), _rand(40, 64, dtype=dt))
    return [(_rand(3, 64, dtype=dt), pp, None, 40), (_rand(1, 64, dtype=dt), pp, _rand(80, dtype=dt), 40)]


# -------------------------------------------------------------- attention ---


def _paged(dt, batch=2, H=4, Hkv=2, D=32, bs=8, ctx=(9, 14)):
    max_blocks = max((c + bs - 1) // bs for c in ctx)
    nb = batch * max_blocks + 1
    kc, vc = _rand(nb, bs, Hkv, D, dtype=dt), _rand(nb, bs, Hkv, D, dtype=dt)
    tables = torch.randperm(nb)[: batch * max_blocks].view(batch, max_blocks).int()
    hm = (torch.arange(H) // (H // Hkv)).int()
    return _rand(batch, H, D, dtype=dt), kc, vc, hm, tables, torch.tensor(ctx, dtype=torch.int32)


@case("ipex::paged_attention_decode")
def _(dt):
    q, kc, vc, hm, bt, cl = _paged(dt)
    return [(torch.empty_like(q), q, kc, vc, hm, 0.1, bt, cl, 8, 14, None, -1),
            (torch.empty_like(q), q, kc, vc, hm, 0.1, bt, cl, 8, 14, torch.rand(4), 5)]  # alibi + window


@case("ipex::reshape_and_cache")
def _(dt):
    _, kc, vc, *_ = _paged(dt)
    return [(_rand(3, 2, 32, dtype=dt), _rand(3, 2, 32, dtype=dt), kc, vc, torch.tensor([0, 7, -1])),
            (_rand(2, 2, 32, dtype=dt), _rand(2, 2, 32, dtype=dt), kc, vc, torch.tensor([3, 12], dtype=torch.int32))]


def _iakv(dt, B=2, S=1, H=4, Hkv=2, D=32, offset=5):
    max_seq = offset + S + 2
    kc, vc = _rand(max_seq, B, Hkv, D, dtype=dt), _rand(max_seq, B, Hkv, D, dtype=dt)
    return _rand(B, S, H, D, dtype=dt), kc, vc, torch.randint(0, B, (max_seq, B))


@case("ipex::iakv_attention")
def _(dt):
    q, kc, vc, hist = _iakv(dt)
    q3 = _rand(2, 3, 4, 32, dtype=dt)
    return [(q, kc, vc, hist, 5, 0.1, None, True),  # decode step
            (q3, kc, vc, hist, 0, 0.1, torch.zeros(2, 1, 3, 3), True),  # prompt with an fp32 bias
            (q3, kc, vc, hist, 2, 0.1, None, False)]


@case("ipex::iakv_attention.offset_tensor")
def _(dt):
    q, kc, vc, hist = _iakv(dt)
    q3 = _rand(2, 3, 4, 32, dtype=dt)
    return [(q, kc, vc, hist, torch.tensor(5), 0.1, None, True),
            (q, kc, vc, hist, torch.tensor([5], dtype=torch.int32), 0.1, None, True),
            (q3, kc, vc, hist, torch.tensor(0), 0.1, torch.zeros(2, 1, 3, 3), True)]


@case("ipex::varlen_attention")
def _(dt):
    cu = torch.tensor([0, 3, 9], dtype=torch.int32)
    q, k, v = _rand(9, 4, 32, dtype=dt), _rand(9, 2, 32, dtype=dt), _rand(9, 2, 32, dtype=dt)  # GQA
    ck = torch.tensor([0, 5, 9])
    return [(q, k, v, torch.empty_like(q), cu, cu, 6, 6, 0.1, True),
            (q, k, v, torch.empty_like(q), cu, ck, 6, 5, 0.1, False)]  # different q / k lengths


# ----------------------------------------------------------------- oneDNN ---
# These ops take their weight dense or packed into an opaque mkldnn tensor. opcheck's
# schema / fake-tensor / autograd-registration checks copy and read every tensor argument's
# storage, which an mkldnn tensor does not have ("Cannot access data pointer of Tensor that
# doesn't have storage"), so the full opcheck runs on DENSE weights only; the packed path gets
# test_aot_dispatch_dynamic plus a hand-written fake-vs-real comparison below.


@case("ipex::onednn_linear", onednn=True)
def _(dt):
    x, w = _rand(3, 32, dtype=dt), _rand(16, 32, dtype=dt)
    return [(x, w, _rand(16, dtype=dt), "gelu", [], "tanh"), (_rand(2, 3, 32, dtype=dt), w, None, "leaky_relu",
                                                              [0.1], None)]


@case("ipex::onednn_linear_binary", onednn=True)
def _(dt):
    x, w = _rand(3, 32, dtype=dt), _rand(16, 32, dtype=dt)
    return [(x, _rand(3, 16, dtype=dt), w, None, "add"), (x, _rand(3, 16, dtype=dt), w, _rand(16, dtype=dt), "mul")]


def _conv(dt):
    x = _rand(1, 4, 6, 6, dtype=dt).to(memory_format=torch.channels_last)
    return x, _rand(8, 4, 3, 3, dtype=dt)


@case("ipex::onednn_conv_binary", onednn=True)
def _(dt):
    x, w = _conv(dt)
    return [(x, _rand(1, 8, 6, 6, dtype=dt), w, None, [1, 1], [1, 1], [1, 1], 1, "add", "relu"),
            (x, _rand(1, 8, 3, 3, dtype=dt), w, _rand(8, dtype=dt), [1, 1], [2, 2], [1, 1], 1, "mul", "none")]


@case("ipex::onednn_conv_add_", onednn=True)
def _(dt):
    x, w = _conv(dt)
    acc = _rand(1, 8, 6, 6, dtype=dt).to(memory_format=torch.channels_last)
    return [(acc, x, w, None, [1, 1], [1, 1], [1, 1], 1, "relu"), (acc, x, w, _rand(8, dtype=dt), [1, 1], [1, 1],
                                                                    [1, 1], 1, "none")]


def _packed_transpose_weight(dt, groups=1):
    # [in, out/groups, k, k]; this op takes packed weights only (a dense one is refused).
    w = _rand(4, 6 // groups, 3, 3, dtype=dt)
    return torch.ops.mkldnn._reorder_convolution_transpose_weight(w, [1, 1], [0, 0], [2, 2], [1, 1], groups,
                                                                  [1, 4, 5, 5])


@case("ipex::conv3x3_winograd")
def _(dt):
    from ipex_core.ops.conv import winograd_weight

    x = _rand(2, 5, 7, 6, dtype=dt).to(memory_format=torch.channels_last)
    u = winograd_weight(_rand(3, 5, 3, 3, dtype=torch.float32))  # always float32 (the math is)
    return [(x, u, _rand(3, dtype=dt), [1, 1], "relu"), (x.contiguous(), u, None, [0, 2], "none")]


@case("ipex::to_memory_format")
def _(dt):
    cl = _rand(2, 5, 7, 6, dtype=dt).to(memory_format=torch.channels_last)
    return [(cl, False), (cl.contiguous(), True), (_rand(1, 3, 4, 5, 6, dtype=dt), True), (cl, True)]


@case("ipex::conv1x1")
def _(dt):  # float32 only (bf16/fp16 layers run oneDNN's kernels): every dtype's case is float32
    from ipex_core.ops.conv import conv1x1_weight

    x = _rand(2, 5, 7, 6, dtype=torch.float32).to(memory_format=torch.channels_last)
    u = conv1x1_weight(_rand(48, 5, 1, 1, dtype=torch.float32))
    other = _rand(2, 48, 7, 6, dtype=torch.float32)
    u16 = conv1x1_weight(_rand(64, 5, 1, 1, dtype=torch.float32), bf16x3=True)  # the bf16x3 form
    return [(x, u, _rand(48, dtype=torch.float32), "relu", other), (x.contiguous(), u, None, "none", None),
            (x, u16, _rand(64, dtype=torch.float32), "relu", None)]


@case("ipex::conv1x1_add_")
def _(dt):
    from ipex_core.ops.conv import conv1x1_weight

    x = _rand(2, 5, 7, 6, dtype=torch.float32).to(memory_format=torch.channels_last)
    other = _rand(2, 48, 7, 6, dtype=torch.float32).to(memory_format=torch.channels_last)
    return [(other, x, conv1x1_weight(_rand(48, 5, 1, 1, dtype=torch.float32)), None, "relu")]


# Ops that refuse dense weights, so only test_opcheck_packed_onednn_weights covers them.
PACKED_ONLY = {"ipex::onednn_conv_transpose"}
PACKED_ONEDNN_CASES = {
    "ipex::onednn_linear": lambda dt: (_rand(3, 32, dtype=dt), O.pack_linear_weight(_rand(16, 32, dtype=dt), 3),
                                       _rand(16, dtype=dt), "relu", [], None),
    "ipex::onednn_linear_binary": lambda dt: (_rand(3, 32, dtype=dt), _rand(3, 16, dtype=dt),
                                              O.pack_linear_weight(_rand(16, 32, dtype=dt), 3), None, "add"),
    "ipex::onednn_conv_binary": lambda dt: (
        _conv(dt)[0], _rand(1, 8, 6, 6, dtype=dt),
        torch.ops.mkldnn._reorder_convolution_weight(_rand(8, 4, 3, 3, dtype=dt), [1, 1], [1, 1], [1, 1], 1,
                                                     [1, 4, 6, 6]),
        None, [1, 1], [1, 1], [1, 1], 1, "add", "none"),
    "ipex::onednn_conv_transpose": lambda dt: (_rand(1, 4, 5, 5, dtype=dt), _packed_transpose_weight(dt), None,
                                               [0, 0], [1, 1], [2, 2], [1, 1], 1, "sigmoid", [], None),
}


# ------------------------------------------------------------------ tests ---


def _registered_overloads():
    return {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ipex::")}


def test_every_overload_has_a_case():
    registered = _registered_overloads()
    assert "ipex::iakv_attention.offset_tensor" in registered
    assert PACKED_ONLY <= set(PACKED_ONEDNN_CASES) and not PACKED_ONLY & set(CASES)
    covered = set(CASES) | PACKED_ONLY
    assert covered == registered, (f"ops without an opcheck case: {sorted(registered - covered)}; "
                                   f"cases for unknown ops: {sorted(covered - registered)}")


def _params():
    for name in sorted(CASES):
        for dt in DTYPES:
            marks = []
            if CASES[name][1] and not ONEDNN_SUPPORTS[dt]:
                marks = pytest.mark.skip(reason=f"oneDNN has no {dt} kernels on this CPU (a clear error instead)")
            yield pytest.param(name, dt, id=f"{name[6:]}-{str(dt)[6:]}", marks=marks)


@pytest.mark.parametrize("name,dtype", list(_params()))
def test_opcheck(name, dtype):
    torch.manual_seed(0)
    builder, _ = CASES[name]
    calls = builder(dtype)
    assert calls
    op = _overload(name)
    for args in calls:
        torch.library.opcheck(op, args)  # raises OpCheckError on any failing check


@pytest.mark.parametrize("name", sorted(PACKED_ONEDNN_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_packed_onednn_weights(name, dtype):
    """Packed (opaque mkldnn) weights: AOT dispatch through opcheck, and the fake kernel against a real call."""
    if not ONEDNN_SUPPORTS[dtype]:
        pytest.skip(f"oneDNN has no {dtype} kernels on this CPU")
    torch.manual_seed(0)
    args = PACKED_ONEDNN_CASES[name](dtype)
    assert any(isinstance(a, torch.Tensor) and a.is_mkldnn for a in args)
    op = _overload(name)
    torch.library.opcheck(op, args, test_utils="test_aot_dispatch_dynamic")
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


def test_every_overload_refuses_a_backward():
    """Inference kernels: an Autograd kernel that keeps the graph and raises on backward. Without one, inputs that
    required grad gave outputs detached from them and backward() left the gradients silently None."""
    for name in sorted(_registered_overloads()):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd"), name
    x = torch.randn(3, 8, requires_grad=True)
    y = torch.ops.ipex.rms_norm(x, torch.ones(8), 1e-6)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="derivative for ipex::rms_norm is not implemented"):
        y.sum().backward()
