"""silu_mul, gelu_mul, rotary_embedding, layer_norm, add_layer_norm against references."""

import pytest
import torch

from ipex_core import reference
from ipex_core.ops import elementwise_ops as E

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
       torch.float16: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 11008), (7, 100), (3, 5, 64)])
def test_gated_activations(isa, dtype, shape):
    x, y = torch.randn(shape, dtype=dtype) * 3, torch.randn(shape, dtype=dtype)
    torch.testing.assert_close(E.silu_mul(x, y), reference.silu_mul(x, y), **TOL[dtype])
    for approx in ("none", "tanh"):
        torch.testing.assert_close(E.gelu_mul(x, y, approx), reference.gelu_mul(x, y, approx), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_extreme_inputs_like_torch(isa, dtype):
    """Where exp(-x) overflows, SiLU is -0 (and NaN for -inf), as torch's silu: the reciprocal
    estimate that replaces the division must not turn these into NaN or -inf."""
    x = torch.tensor([-float("inf"), -200.0, -100.0, -88.0, -20.0, 0.0, 20.0, 100.0, float("inf"), float("nan")] * 2,
                     dtype=dtype)
    y = torch.ones_like(x)
    out, ref = E.silu_mul(x, y), torch.nn.functional.silu(x) * y
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out, ref, atol=1e-30, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu_mul_accuracy_over_the_whole_range(isa, approx):
    """Both GELU forms run on a fast exp and reciprocal (no Sleef tanh, no division): against a float64
    reference on [-12, 12] the error stays at ATen's level (max |error| 1.2e-6 for stock's erf form,
    4e-7 for its tanh form; ours measured 4.2e-7 and 5.4e-7, 9.5e-7 on AVX2's 12-bit reciprocal estimate), and where |x| < 3 the relative error
    stays small (stock's erf form: 2.4e-4 from the cancellation in 1 + erf(z) for z < 0, which ours avoids)."""
    x = torch.linspace(-12, 12, 200_001)
    out = E.gelu_mul(x, torch.ones_like(x), approx).double()
    ref = torch.nn.functional.gelu(x.double(), approximate=approx)
    assert (out - ref).abs().max().item() < 1.5e-6
    rel = ((out - ref).abs() / ref.abs().clamp_min(1e-30))[x.abs() < 3]
    assert rel.max().item() < (1e-4 if approx == "none" else 5e-6)
    specials = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -200.0, 200.0])
    got = E.gelu_mul(specials, torch.ones_like(specials), approx)
    # gelu(inf) = inf (stock's erf form gives NaN there); gelu(-inf) = -inf * 0 = NaN as stock's.
    expect = torch.tensor([float("inf"), float("nan"), float("nan"), 0.0, -0.0, 200.0])
    torch.testing.assert_close(got, expect, equal_nan=True, atol=0, rtol=1e-6)  # AVX2: 1 ulp off at 200
    assert torch.signbit(got[4]) and not torch.signbit(got[3])  # gelu(-200) = -0.0, gelu(0) = +0.0


def test_gated_strided_and_errors():
    base = torch.randn(4, 256)
    x, y = base[:, :128], base[:, 128:]  # the halves of a fused gate_up output
    torch.testing.assert_close(E.silu_mul(x, y), reference.silu_mul(x, y))
    with pytest.raises(RuntimeError, match="other shape"):
        E.silu_mul(x, torch.randn(4, 127))
    with pytest.raises(RuntimeError, match="approximate must be 'none' or 'tanh'"):
        E.gelu_mul(x, y, "fast")
    with pytest.raises(RuntimeError, match="dtype must be float32, bfloat16 or float16"):
        E.silu_mul(x.double(), y.double())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("half", [True, False])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (256, 64), (80, 32)])
def test_rotary_embedding(isa, dtype, half, head_dim, rotary_dim):
    torch.manual_seed(head_dim + rotary_dim)
    b, s, h = 2, 5, 3
    x = torch.randn(b, s, h, head_dim, dtype=dtype)
    inv = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    pos = torch.arange(64).float()
    freqs = torch.outer(pos, inv)
    emb = torch.cat([freqs, freqs], -1)
    table_sin, table_cos = emb.sin(), emb.cos()
    position_ids = torch.randint(0, 64, (b, s))
    out = E.rotary_embedding(x, table_sin, table_cos, rotary_dim, half, position_ids)
    ref = reference.rotary_embedding(x, table_sin, table_cos, rotary_dim, half, position_ids)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    # per-token sin/cos [tokens, rotary_dim/2] in the input dtype, 3-D input
    x3 = x.reshape(b * s, h, head_dim)
    s2 = freqs[position_ids.reshape(-1)].sin().to(dtype)
    c2 = freqs[position_ids.reshape(-1)].cos().to(dtype)
    torch.testing.assert_close(E.rotary_embedding(x3, s2, c2, rotary_dim, half),
                               reference.rotary_embedding(x3, s2, c2, rotary_dim, half), **TOL[dtype])


def test_rotary_embedding_bf16_bit_exact_with_transformers_formula(isa):
    """bf16 half layout with a bf16 table: bit for bit transformers' `q * cos + rotate_half(q) * sin`
    at every ISA level (AVX512-BF16 rounds with vcvtneps2bf16, the others with integer rounding)."""
    torch.manual_seed(0)
    x = (torch.randn(300, 8, 128) * 100).to(torch.bfloat16)
    f = torch.rand(300, 64) * 50
    sin, cos = (t.to(torch.bfloat16) for t in (torch.cat([f, f], -1).sin(), torch.cat([f, f], -1).cos()))
    halves = torch.cat((-x[..., 64:], x[..., :64]), -1)
    ref = x * cos[:, None] + halves * sin[:, None]
    out = E.rotary_embedding(x, sin, cos, 128, True)
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))


def test_rotary_embedding_strided_and_errors():
    qkv = torch.randn(4, 3 * 2 * 64)  # fused projection output: q is a strided view
    q = qkv.view(4, 3, 2, 64)[:, 0]
    sn, cs = torch.randn(4, 64), torch.randn(4, 64)
    torch.testing.assert_close(E.rotary_embedding(q, sn, cs, 64, True), reference.rotary_embedding(q, sn, cs, 64, True))
    with pytest.raises(RuntimeError, match="rotary_dim must be even"):
        E.rotary_embedding(q, sn, cs, 63, True)
    with pytest.raises(RuntimeError, match="one row per token"):
        E.rotary_embedding(q, sn[:3], cs[:3], 64, True)
    with pytest.raises(RuntimeError, match=r"position_ids must be in \[0, 4\)"):
        E.rotary_embedding(q, sn, cs, 64, True, torch.tensor([0, 1, 2, 9]))
    with pytest.raises(RuntimeError, match="last dimension must be rotary_dim"):
        E.rotary_embedding(q, sn[:, :10], cs[:, :10], 64, True)
    with pytest.raises(RuntimeError, match="must be"):
        E.rotary_embedding(torch.randn(64), sn, cs, 64, True)


@pytest.mark.parametrize("layout", ["contiguous", "qkv_slice", "from_bhsd", "seq1", "batch1_slice"])
def test_rotary_embedding_4d_layouts(isa, layout):
    """4-D inputs whose tokens are one stride apart are read in place (no reshape); the rest are copied
    first: both against the reference, with int64, int32 and strided position ids."""
    torch.manual_seed(0)
    b, s, h, d = 2, 5, 3, 32
    if layout == "contiguous":
        x = torch.randn(b, s, h, d)
    elif layout == "qkv_slice":  # [b, s, 3 * h, d] projection output, q = the first h heads
        x = torch.randn(b, s, 3 * h, d)[:, :, :h]
    elif layout == "from_bhsd":  # transformers' [b, h, s, d] transposed back: tokens not one stride apart
        x = torch.randn(b, h, s, d).transpose(1, 2)
    elif layout == "seq1":  # decode: one token per sequence, batch strided
        x = torch.randn(b, 4, h, d)[:, 1:2]
    else:
        x = torch.randn(1, 2 * s, h, d)[:, ::2]
    table = torch.randn(64, d)
    sn, cs = table.sin(), table.cos()
    tokens = x.shape[0] * x.shape[1]
    for pos in (torch.randperm(64)[:tokens].view(x.shape[0], x.shape[1]),
                torch.randperm(64)[:tokens].int().view(x.shape[0], x.shape[1]),
                torch.randperm(64)[: 2 * tokens].view(x.shape[0], 2 * x.shape[1])[:, ::2]):
        out = E.rotary_embedding(x, sn, cs, d, True, pos)
        assert out.shape == x.shape and out.is_contiguous()
        torch.testing.assert_close(out, reference.rotary_embedding(x, sn, cs, d, True, pos))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [17, 64, 1000, 4096])  # tails below and past the 4-accumulator blocks
def test_layer_norms(isa, dtype, n):
    x, r = torch.randn(6, n, dtype=dtype) * 2 + 1, torch.randn(6, n, dtype=dtype)
    w, b = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    torch.testing.assert_close(E.layer_norm(x, (n,), w, b, 1e-5), reference.layer_norm(x, (n,), w, b, 1e-5), **TOL[dtype])
    torch.testing.assert_close(E.layer_norm(x, (n,), None, None), reference.layer_norm(x, (n,)), **TOL[dtype])
    out, s = E.add_layer_norm(x, r, (n,), w.float(), b.float(), 1e-6)
    ref_out, ref_s = reference.add_layer_norm(x, r, (n,), w.float(), b.float(), 1e-6)
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


def test_layer_norm_errors():
    with pytest.raises(RuntimeError, match="normalized_shape must be the input's last dimension"):
        E.layer_norm(torch.randn(3, 8), (4, 2))
    with pytest.raises(RuntimeError, match="weight/bias must be 1-D of 8"):
        E.layer_norm(torch.randn(3, 8), (8,), torch.randn(7))


def test_opcheck_all():
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    torch.library.opcheck(torch.ops.ipex.silu_mul.default, (x, y))
    torch.library.opcheck(torch.ops.ipex.gelu_mul.default, (x, y, "tanh"))
    q = torch.randn(2, 3, 4, 32)
    torch.library.opcheck(torch.ops.ipex.rotary_embedding.default,
                          (q, torch.randn(16, 32), torch.randn(16, 32), 32, True, torch.randint(0, 16, (2, 3))))
    torch.library.opcheck(torch.ops.ipex.layer_norm.default, (x, [32], torch.randn(32), torch.randn(32), 1e-5))
    torch.library.opcheck(torch.ops.ipex.add_layer_norm.default, (x, y, [32], None, None, 1e-5))


def test_rotary_position_ids_must_match_batch_and_seq():
    """[seq, batch] ids for a [batch, seq, ...] input hold the right count in the wrong order: they rotated
    tokens by other tokens' positions, silently."""
    q = torch.randn(2, 3, 1, 8)
    sin, cos = torch.randn(16, 8), torch.randn(16, 8)
    pos = torch.tensor([[5, 6, 7], [0, 1, 2]])
    good = torch.ops.ipex.rotary_embedding(q, sin, cos, 8, True, pos)
    torch.testing.assert_close(torch.ops.ipex.rotary_embedding(q, sin, cos, 8, True, pos.flatten()), good)
    with pytest.raises(RuntimeError, match=r"position_ids of shape \[3, 2\] do not match the input's"):
        torch.ops.ipex.rotary_embedding(q, sin, cos, 8, True, pos.t().contiguous())
    assert torch.ops.ipex.rotary_embedding(torch.randn(2, 3, 0, 8), sin, cos, 8, True, pos).shape == (2, 3, 0, 8)
