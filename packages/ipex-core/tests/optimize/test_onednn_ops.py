"""ipex::onednn_linear / _binary / onednn_conv_binary / onednn_conv_transpose against the references."""

import pytest
import torch
import torch.nn.functional as F
from dtype_marks import LOW_PRECISION

from ipex_core.ops import onednn_ops as O
from ipex_core.optimize.api import cpu_supports
from ipex_core.reference import onednn as R

DTYPES = [torch.float32, *LOW_PRECISION]
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
UNARY = [("none", [], None), ("relu", [], None), ("gelu", [], "none"), ("gelu", [], "tanh"), ("swish", [], None),
         ("sigmoid", [], None), ("tanh", [], None), ("hardswish", [], None), ("leaky_relu", [0.1], None),
         ("hardtanh", [-0.5, 0.5], None)]


def close(out, ref, dtype):
    scale = ref.float().abs().max().clamp_min(1e-6)
    err = (out.float() - ref.float()).abs().max() / scale
    assert err <= RTOL[dtype], f"max error {err:.3g} relative to output scale"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("packed", [True, False])
def test_linear_unary_and_binary(dtype, packed):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48, dtype=dtype)  # 3-D input keeps its leading dims
    w = torch.randn(40, 48, dtype=dtype) / 7
    b = torch.randn(40, dtype=dtype)
    wk = O.pack_linear_weight(w, 10) if packed else w
    for attr, scalars, alg in UNARY:
        out = O.onednn_linear(x, wk, b, attr, scalars, alg)
        assert out.shape == (2, 5, 40) and out.dtype == dtype
        close(out, R.onednn_linear(x, w, b, attr, scalars, alg), dtype)
    other = torch.randn(2, 5, 40, dtype=dtype)
    for attr in O.BINARY_ATTRS:
        o = other.abs() + 1 if attr == "div" else other
        close(O.onednn_linear_binary(x, o, wk, None, attr), R.onednn_linear_binary(x, o, w, None, attr), dtype)
    x_t = torch.randn(48, 10, dtype=dtype).t()  # strided input
    close(O.onednn_linear(x_t, wk, None), R.onednn_linear(x_t, w, None), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_binary(dtype):
    torch.manual_seed(0)
    for shape, w_shape, pad, stride, groups in (((2, 8, 9, 9), (16, 8, 3, 3), [1, 1], [2, 2], 1),
                                                ((1, 4, 5, 6, 6), (8, 4, 3, 3, 3), [1, 1, 1], [1, 1, 1], 1)):
        x = torch.randn(shape, dtype=dtype)
        w = torch.randn(w_shape, dtype=dtype) / 6
        b = torch.randn(w_shape[0], dtype=dtype)
        conv = F.conv2d if len(shape) == 4 else F.conv3d
        y = conv(x.float(), w.float(), b.float(), stride, pad, 1, groups)
        other = torch.randn(y.shape, dtype=dtype)
        pw = torch.ops.mkldnn._reorder_convolution_weight(w, pad, stride, [1] * len(pad), groups, list(shape))
        for unary in ("none", "relu"):
            ref = y + other.float()
            ref = F.relu(ref) if unary == "relu" else ref
            out = O.onednn_conv_binary(x, other, pw, b, pad, stride, [1] * len(pad), groups, "add", unary)
            close(out, ref, dtype)
            acc = other.to(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
            assert O.onednn_conv_add_(acc, x, pw, b, pad, stride, [1] * len(pad), groups, unary) is acc
            close(acc, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_transpose(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5, dtype=dtype)
    w = torch.randn(8, 3, 3, 3, dtype=dtype) / 5  # [in, out/groups, k, k], groups 2 -> 6 outputs
    b = torch.randn(6, dtype=dtype)
    pw = torch.ops.mkldnn._reorder_convolution_transpose_weight(w, [1, 1], [1, 1], [2, 2], [1, 1], 2, [2, 8, 5, 5])
    out = O.onednn_conv_transpose(x, pw, b, [1, 1], [1, 1], [2, 2], [1, 1], 2, "sigmoid")
    ref = torch.sigmoid(F.conv_transpose2d(x.float(), w.float(), b.float(), 2, 1, 1, 2))
    assert out.shape == ref.shape
    close(out, ref, dtype)


def test_opcheck():
    x = torch.randn(3, 32)
    w = torch.randn(16, 32)
    torch.library.opcheck(torch.ops.ipex.onednn_linear.default, (x, w, torch.randn(16), "gelu", [], "tanh"))
    torch.library.opcheck(torch.ops.ipex.onednn_linear_binary.default, (x, torch.randn(3, 16), w, None, "add"))
    xc = torch.randn(1, 4, 6, 6).to(memory_format=torch.channels_last)
    wc = torch.randn(8, 4, 3, 3)
    torch.library.opcheck(torch.ops.ipex.onednn_conv_binary.default,
                          (xc, torch.randn(1, 8, 6, 6), wc, None, [1, 1], [1, 1], [1, 1], 1, "add", "relu"))
    acc = torch.randn(1, 8, 6, 6).to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.ipex.onednn_conv_add_.default,
                          (acc, xc, wc, None, [1, 1], [1, 1], [1, 1], 1, "relu"))


def test_fake_matches_packed_transpose():
    # The transposed convolution takes packed weights only; check its fake kernel against a real call.
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(1, 4, 5, 5)
    pw = torch.ops.mkldnn._reorder_convolution_transpose_weight(torch.randn(4, 6, 3, 3), [0, 0], [0, 0], [2, 2],
                                                                [1, 1], 1, None)
    real = O.onednn_conv_transpose(x, pw, None, [0, 0], [0, 0], [2, 2], [1, 1], 1)
    with FakeTensorMode() as mode:
        fake = O.onednn_conv_transpose(mode.from_tensor(x), mode.from_tensor(pw), None, [0, 0], [0, 0], [2, 2],
                                       [1, 1], 1)
    assert fake.shape == real.shape and fake.stride() == real.stride()


def test_bad_inputs():
    x = torch.randn(3, 32)
    w = torch.randn(16, 32)
    with pytest.raises(RuntimeError, match="input has 31 features in its last dimension but the weight expects 32"):
        O.onednn_linear(torch.randn(3, 31), w)
    with pytest.raises(RuntimeError, match="differs from weight dtype"):
        O.onednn_linear(x.bfloat16(), w)
    with pytest.raises(RuntimeError, match="bias must be 1-D with out_features"):
        O.onednn_linear(x, w, torch.randn(15))
    with pytest.raises(RuntimeError, match="other must have the output's shape"):
        O.onednn_linear_binary(x, torch.randn(3, 15), w)
    with pytest.raises(RuntimeError, match="input must be 4-D"):
        O.onednn_conv_binary(torch.randn(1, 4, 6), torch.randn(1, 8, 6), torch.randn(8, 4, 3), None, [1], [1], [1], 1)
    with pytest.raises(RuntimeError, match="ungrouped convolutions only; got groups=2"):
        O.onednn_conv_binary(torch.randn(1, 4, 6, 6), torch.randn(1, 8, 6, 6), torch.randn(8, 2, 3, 3), None, [1, 1],
                             [1, 1], [1, 1], 2)
    pc = torch.ops.mkldnn._reorder_convolution_weight(torch.randn(8, 4, 3, 3), [1, 1], [1, 1], [1, 1], 1, None)
    with pytest.raises(RuntimeError, match="must be a channels-last"):
        O.onednn_conv_add_(torch.randn(1, 8, 6, 6), torch.randn(1, 4, 6, 6), pc, None, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="must be packed by"):
        O.onednn_conv_transpose(torch.randn(1, 4, 5, 5), torch.randn(4, 6, 3, 3), None, [0, 0], [0, 0], [1, 1],
                                [1, 1], 1)
    with pytest.raises(ValueError, match="must be 2-D"):
        O.pack_linear_weight(torch.randn(3, 4, 5))


@pytest.mark.skipif(cpu_supports(torch.float16), reason="this CPU runs float16 in oneDNN")
def test_float16_without_cpu_support_is_a_clear_error():
    x, w = torch.randn(4, 16, dtype=torch.float16), torch.randn(8, 16, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="ipex::onednn_linear: oneDNN has no Half kernels on this CPU .*AVX512-FP16"):
        O.onednn_linear(x, w)
    xc, wc = torch.randn(1, 3, 8, 8, dtype=torch.float16), torch.randn(4, 3, 3, 3, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="ipex::onednn_conv_binary: oneDNN has no Half kernels"):
        O.onednn_conv_binary(xc, torch.zeros(1, 4, 6, 6, dtype=torch.float16), wc, None, [0, 0], [1, 1], [1, 1], 1)
