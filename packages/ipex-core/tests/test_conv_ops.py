"""ipex::conv3x3_winograd (Winograd F(4x4, 3x3)) against float64 conv2d and against the reference
implementation (ipex_core.reference.conv), on every kernel variant this CPU runs."""

import pytest
import torch
import torch.nn.functional as F

from ipex_core import isa as ipex_isa
from ipex_core import reference
from ipex_core.ops.conv import (
    BF16X3_COLUMNS,
    WINOGRAD_F43_G,
    column_block,
    conv1x1,
    conv1x1_add_,
    conv1x1_weight,
    conv1x1_weight_matrix,
    conv3x3_winograd,
    winograd_weight,
    winograd_weight_matrices,
)

# Largest error relative to the output's largest magnitude. F(4x4, 3x3) in fp32 measured up to 6e-6 at 64
# input channels and 2.3e-5 at 512 (the direct fp32 convolution: 6e-7 and 2e-6); it grows with the channels
# summed. A wrong transform coefficient or a misplaced tile is off by O(1).
WINOGRAD_TOL = 5e-5


def _case(n, c, k, h, w, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
    g = torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5
    return x, g, torch.randn(k)


def _rel(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("shape", [
    (1, 64, 64, 56, 56),   # ResNet-50 layer1, whole 4x4 tiles
    (2, 3, 5, 9, 7),       # channels below one vector, partial tiles in both directions
    (1, 17, 33, 13, 10),   # channel tails on both sides of the GEMMs
    (3, 32, 48, 14, 14),   # batch: tiles numbered across images
    (2, 512, 32, 7, 7),    # the widest sums (ResNet-50 layer4's input channels)
    (1, 24, 128, 10, 10),  # two weight column blocks of 64
    (1, 16, 96, 6, 6),     # three blocks of 32
])
@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 1)])
@pytest.mark.parametrize("attr", ["none", "relu"])
def test_matches_conv2d(isa, shape, padding, attr):
    n, c, k, h, w = shape
    x, g, b = _case(n, c, k, h, w)
    want = F.conv2d(x.double(), g.double(), b.double(), padding=padding)
    if attr == "relu":
        want = want.relu()
    got = conv3x3_winograd(x, winograd_weight(g), b, padding, attr)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _rel(got, want) < WINOGRAD_TOL
    ref = reference.conv.conv3x3_winograd(x, winograd_weight(g), b, padding, attr)
    assert _rel(ref, want) < 1e-6  # the reference is the same algorithm in float64


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
def test_low_precision_activations(isa, dtype, tol):
    """bf16 / fp16 input and output, fp32 math in between: as close to float64 as one rounding of the output
    (oneDNN's bf16 kernel on the same data: 2.9e-3)."""
    x, g, b = _case(2, 32, 40, 13, 9)
    x, g, b = x.to(dtype), g.to(dtype), b.to(dtype)
    want = F.conv2d(x.double(), g.double(), b.double(), padding=1).relu()
    got = conv3x3_winograd(x, winograd_weight(g), b, (1, 1), "relu")
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert _rel(got, want) < tol
    assert _rel(conv3x3_winograd(x, winograd_weight(g), b.float(), (1, 1), "relu"), want) < tol  # fp32 bias


def test_channels_first_and_strided_input_no_bias():
    x, g, _ = _case(2, 16, 8, 11, 12)
    want = F.conv2d(x.double(), g.double(), padding=1)
    u = winograd_weight(g)
    assert _rel(conv3x3_winograd(x.contiguous(), u, None, (1, 1)), want) < WINOGRAD_TOL
    wide = torch.randn(2, 32, 11, 12).to(memory_format=torch.channels_last)
    wide[:, :16] = x
    assert _rel(conv3x3_winograd(wide[:, :16], u, None, (1, 1)), want) < WINOGRAD_TOL  # channel stride 1, gaps


def test_many_chunks():
    # 8 MiB of transformed tiles per chunk: 64 + 64 channels make chunks of 455 tiles, this input has 1,792.
    x, g, b = _case(2, 64, 64, 112, 112)
    want = F.conv2d(x.double(), g.double(), b.double(), padding=1)
    assert _rel(conv3x3_winograd(x, winograd_weight(g), b, (1, 1)), want) < WINOGRAD_TOL


def test_non_finite_inputs_spread_like_conv2d():
    x, g, b = _case(1, 16, 16, 9, 9)
    x[0, 3, 4, 4] = float("nan")
    got = conv3x3_winograd(x, winograd_weight(g), b, (1, 1))
    want = F.conv2d(x, g, b, padding=1)
    # A 4x4 output tile reads a 6x6 input tile: a NaN reaches at least every output conv2d puts it in, and
    # at most the tiles whose input window holds it (output rows and columns 0-7 here); the rest is exact.
    assert bool(got.isnan()[want.isnan()].all())
    assert bool(got[..., 8, :].isfinite().all()) and bool(got[..., :, 8].isfinite().all())
    assert _rel(got[..., 8, :], want[..., 8, :].double()) < WINOGRAD_TOL
    assert _rel(got[..., :, 8], want[..., :, 8].double()) < WINOGRAD_TOL


@pytest.mark.parametrize("out_channels,block", [(256, 64), (96, 32), (48, 16), (40, 40), (3, 3), (0, 64)])
def test_weight_layout(out_channels, block):
    """winograd_weight: U = G g G^T per (out, in) pair, stored per tile position as [in, out] in contiguous
    column blocks of column_block(out) output channels."""
    g = torch.randn(out_channels, 5, 3, 3)
    u = winograd_weight(g)
    assert column_block(out_channels) == block
    assert u.shape == (36, out_channels // block, 5, block) and u.is_contiguous() and u.dtype == torch.float32
    gm = torch.tensor(WINOGRAD_F43_G, dtype=torch.float64)
    plain = torch.einsum("ij,ocjl,kl->ikco", gm, g.double(), gm).reshape(36, 5, out_channels)
    torch.testing.assert_close(winograd_weight_matrices(u), plain.float())
    if out_channels >= 2 * block:  # the second block holds output channels block..2*block-1
        torch.testing.assert_close(u[:, 1], plain[:, :, block:2 * block].float())


def test_zero_sizes():
    u = winograd_weight(torch.randn(4, 3, 3, 3))
    assert conv3x3_winograd(torch.randn(0, 3, 8, 8), u, None, (1, 1)).shape == (0, 4, 8, 8)
    got = conv3x3_winograd(torch.randn(2, 0, 5, 5), winograd_weight(torch.randn(4, 0, 3, 3)), -torch.ones(4), (1, 1),
                           "relu")
    assert got.shape == (2, 4, 5, 5) and bool((got == 0).all())


def test_bad_input_errors():
    x, g, b = _case(1, 8, 4, 6, 6)
    u = winograd_weight(g)
    with pytest.raises(RuntimeError, match="input dtype must be float32, bfloat16 or float16"):
        conv3x3_winograd(x.double(), u, None)
    with pytest.raises(RuntimeError, match="transformed weight must be float32"):
        conv3x3_winograd(x, u.bfloat16(), None)
    with pytest.raises(RuntimeError, match=r"\[36, out_channels / b, in_channels, b\]"):
        conv3x3_winograd(x, g, None)
    with pytest.raises(RuntimeError, match=r"\[36, out_channels / b, in_channels, b\]"):
        conv3x3_winograd(x[:, :4], u, None)
    with pytest.raises(RuntimeError, match=r"\[36, out_channels / b, in_channels, b\]"):
        conv3x3_winograd(x, winograd_weight_matrices(u), None)  # the plain [36, in, out] matrices
    with pytest.raises(RuntimeError, match="attr must be 'none' or 'relu'"):
        conv3x3_winograd(x, u, None, (1, 1), "gelu")
    with pytest.raises(RuntimeError, match="smaller than the 3x3 kernel"):
        conv3x3_winograd(x[:, :, :2], u, None, (0, 0))
    with pytest.raises(RuntimeError, match="bias must be"):
        conv3x3_winograd(x, u, torch.randn(5))
    with pytest.raises(RuntimeError, match="padding must be two non-negative"):
        conv3x3_winograd(x, u, None, (-1, 1))
    with pytest.raises(ValueError, match=r"3x3 convolution weight"):
        winograd_weight(torch.randn(4, 8, 5, 5))


# ipex::conv1x1 / conv1x1_add_: the 1x1 convolution as one GEMM over channels-last rows. fp32 sums of up to
# 1100 products in another order than conv2d's: measured up to 1e-6 of the output's scale. The bf16x3 form
# (three bf16 GEMMs, 16 mantissa bits per product): 3e-6 to 6e-6 at every shape measured, 8e-8 with fewer than
# 8 input channels; plain bf16 (one GEMM) is 4e-3 off, a wrong part or misplaced k pair O(1e-3) or more.
CONV1X1_TOL = 1e-5
BF16X3_TOL = 2e-5


def _case1x1(n, c, k, h, w, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
    return x, torch.randn(k, c, 1, 1) / c ** 0.5, torch.randn(k), torch.randn(n, k, h, w)


@pytest.mark.parametrize("shape", [
    (1, 64, 256, 56, 56),   # ResNet-50 layer1: 49 row tiles, 4 weight column blocks
    (1, 1100, 96, 5, 7),    # input channels in three reduction slices (512 each), 35 rows (one partial tile)
    (2, 24, 48, 9, 10),     # blocks of 16, rows across images, row tiles across group boundaries
    (3, 5, 7, 3, 3),        # one odd-width block, a reduction shorter than a vector
    (1, 16, 64, 40, 40),    # 25 row tiles: more than one group of 8
    (2, 40, 32, 9, 10),     # bf16x3: 180 rows, a last AMX tile of 16 + 4 rows; 40 channels padded to 64
    (1, 33, 64, 3, 5),      # bf16x3: 15 rows (one partial row tile), 33 channels
])
@pytest.mark.parametrize("attr", ["none", "relu"])
@pytest.mark.parametrize("bf16x3", [False, True])
def test_conv1x1_matches_conv2d(isa, shape, attr, bf16x3):
    """Both weight forms on every kernel variant (the bf16x3 form below the amx level: the float32 GEMM on
    hi + lo)."""
    n, c, k, h, w = shape
    if bf16x3 and k % BF16X3_COLUMNS:
        pytest.skip("the bf16x3 form needs a multiple of 32 output channels")
    x, g, b, r = _case1x1(n, c, k, h, w)
    u = conv1x1_weight(g, bf16x3=bf16x3)
    assert u.dtype == (torch.bfloat16 if bf16x3 else torch.float32)
    tol = BF16X3_TOL if bf16x3 else CONV1X1_TOL
    for residual in (None, r):
        want = F.conv2d(x.double(), g.double(), b.double())
        if residual is not None:
            want = want + residual.double()
        if attr == "relu":
            want = want.relu()
        got = conv1x1(x, u, b, attr, residual)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        assert _rel(got, want) < tol
        # float64, rounded to fp32 once (on the bf16x3 weight's hi + lo: 2^-17 of each weight off)
        assert _rel(reference.conv.conv1x1(x, u, b, attr, residual), want) < (tol if bf16x3 else 1e-7)
    # In place into the residual; the input (channels-first here) is converted.
    acc = r.clone().contiguous(memory_format=torch.channels_last)
    out = conv1x1_add_(acc, x.contiguous(), u, None, attr)
    want = F.conv2d(x.double(), g.double()) + r.double()
    assert out is acc and _rel(acc, want.relu() if attr == "relu" else want) < tol


def test_conv1x1_bf16x3_weight_and_rule(monkeypatch):
    """The bf16x3 form: hi + lo holds each weight to 2^-16, the blocks are 32 output channels of VNNI k pairs,
    the input channels padded with zeros to a multiple of 32. By default only on the amx level, for 128 output
    channels or more (a multiple of 32), and not with IPEX_FP32_BF16X3=0."""
    monkeypatch.delenv("IPEX_FP32_BF16X3", raising=False)
    g = torch.randn(128, 40, 1, 1)
    u = conv1x1_weight(g, bf16x3=True)
    assert u.shape == (4, 2, 32, 32, 2) and u.dtype == torch.bfloat16 and u.is_contiguous()
    m = conv1x1_weight_matrix(u)
    assert m.shape == (64, 128) and bool((m[40:] == 0).all())
    assert ((m[:40] - g.view(128, 40).t()).abs() <= g.view(128, 40).t().abs() * 2.0 ** -16).all()
    torch.testing.assert_close(u[1, 0, 3, 5].float(), g[32 + 5, 6:8, 0, 0].bfloat16().float())  # block 1, pair 3
    with pytest.raises(ValueError, match="multiple of 32 output channels"):
        conv1x1_weight(torch.randn(48, 8, 1, 1), bf16x3=True)
    amx = "amx" in ipex_isa.isa_levels()
    assert (conv1x1_weight(g).dtype == torch.bfloat16) == (amx and ipex_isa.active_isa() == "amx")
    assert conv1x1_weight(torch.randn(64, 40, 1, 1)).dtype == torch.float32  # fewer than 128 outputs
    assert conv1x1_weight(torch.randn(144, 40, 1, 1)).dtype == torch.float32  # not whole blocks of 32
    monkeypatch.setenv("IPEX_FP32_BF16X3", "0")
    assert conv1x1_weight(g).dtype == torch.float32


def test_conv1x1_bf16x3_non_finite_inputs(isa):
    """An infinite or NaN input value makes its output rows non-finite (x_lo is 0 there, and inf * w_lo can be
    inf - inf: NaN where float32 gives +-inf), never finite garbage; the other rows are unaffected."""
    x, g, b, _ = _case1x1(1, 64, 128, 4, 4)
    x[0, 3, 1, 2] = float("inf")
    x[0, 7, 2, 0] = float("nan")
    got = conv1x1(x, conv1x1_weight(g, bf16x3=True), b)
    bad = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    bad[0, 0, 1, 2] = bad[0, 0, 2, 0] = True
    assert bool((~torch.isfinite(got) == bad.expand_as(got)).all())
    want = F.conv2d(x.double(), g.double(), b.double())
    assert _rel(got.masked_fill(bad, 0), want.masked_fill(bad, 0)) < BF16X3_TOL


def test_conv1x1_add_inputs_of_any_layout_and_aliasing():
    """In place, with a bias, from inputs that are views (a channel slice, a crop): none shares memory with the
    residual, so none is refused; an input that is the residual itself (or a view of it) is read from a copy."""
    torch.manual_seed(0)
    g, b = torch.randn(16, 16, 1, 1) / 4, torch.randn(16)
    u = conv1x1_weight(g)
    big = torch.randn(2, 40, 9, 9).to(memory_format=torch.channels_last)
    for x in (big[:, 8:24], big[:, :16, 1:7, 2:8], big[:, :16, ::2, ::2]):
        acc = torch.randn(x.shape[0], 16, *x.shape[2:]).to(memory_format=torch.channels_last)
        want = (F.conv2d(x.double(), g.double(), b.double()) + acc.double()).relu()
        conv1x1_add_(acc, x, u, b, "relu")
        assert _rel(acc, want) < CONV1X1_TOL
    same = torch.randn(1, 16, 4, 4).to(memory_format=torch.channels_last)
    want = F.conv2d(same.double(), g.double(), b.double()) + same.double()
    conv1x1_add_(same, same, u, b)
    assert _rel(same, want) < CONV1X1_TOL


def test_conv1x1_weight_layout():
    g = torch.randn(96, 5, 1, 1)
    u = conv1x1_weight(g)
    assert u.shape == (3, 5, 32) and u.is_contiguous()
    torch.testing.assert_close(conv1x1_weight_matrix(u), g.view(96, 5).t())
    torch.testing.assert_close(u[1], g.view(96, 5)[32:64].t())  # block 1: output channels 32..63


def test_conv1x1_strided_input_and_zero_sizes():
    x, g, b, _ = _case1x1(2, 16, 32, 6, 5)
    wide = torch.randn(2, 40, 6, 5).to(memory_format=torch.channels_last)
    wide[:, 8:24] = x
    want = F.conv2d(x.double(), g.double(), b.double())
    assert _rel(conv1x1(wide[:, 8:24], conv1x1_weight(g), b), want) < CONV1X1_TOL
    assert conv1x1(torch.randn(0, 16, 6, 5), conv1x1_weight(g)).shape == (0, 32, 6, 5)
    got = conv1x1(torch.randn(2, 0, 3, 3), conv1x1_weight(torch.randn(32, 0, 1, 1)), -torch.ones(32), "relu",
                  torch.full((2, 32, 3, 3), 3.0))
    assert bool((got == 2).all())  # relu(-1 + 3)


def test_conv1x1_bad_input_errors():
    x, g, b, r = _case1x1(1, 8, 16, 4, 4)
    u = conv1x1_weight(g)
    with pytest.raises(RuntimeError, match="must be float32"):
        conv1x1(x.bfloat16(), u, None)
    with pytest.raises(RuntimeError, match=r"\[out_channels / b, in_channels, b\]"):
        conv1x1(x, g, None)  # the plain weight
    with pytest.raises(RuntimeError, match=r"\[out_channels / b, in_channels, b\]"):
        conv1x1(x[:, :4], u, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        conv1x1(x, u, torch.randn(5))
    with pytest.raises(RuntimeError, match="attr must be 'none' or 'relu'"):
        conv1x1(x, u, None, "gelu")
    with pytest.raises(RuntimeError, match="other must have the output's shape"):
        conv1x1(x, u, None, "none", r[:, :8])
    with pytest.raises(RuntimeError, match="channels-last and dense"):
        conv1x1_add_(r.contiguous(), x, u)
    with pytest.raises(RuntimeError, match="channels-last and dense"):  # an expanded (stride-0) residual
        conv1x1_add_(torch.zeros(1, 16, 1, 1).expand(1, 16, 4, 4), x, u)
    with pytest.raises(ValueError, match=r"1x1 convolution weight"):
        conv1x1_weight(torch.randn(4, 8, 3, 3))
    u16 = conv1x1_weight(torch.randn(32, 8, 1, 1), bf16x3=True)
    with pytest.raises(RuntimeError, match="the bf16x3 weight"):
        conv1x1(x, u16[:, :, :2].contiguous(), None)  # made for other input channels
    with pytest.raises(RuntimeError, match="the bf16x3 weight"):
        conv1x1(x, u16[:, :1].contiguous(), None)  # one part only
    with pytest.raises(RuntimeError, match="weight must be float32"):
        conv1x1(x, u.half(), None)
