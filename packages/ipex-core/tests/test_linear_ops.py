"""ipex::linear / ipex::linear_pair_silu_mul on the packed layout, against the reference."""

import os
import subprocess
import sys

import pytest
import torch

from ipex_core import reference
from ipex_core.isa import forced_isa, isa_levels
from ipex_core.ops import linear_ops as L


@pytest.fixture(params=isa_levels())
def isa(request):
    """Every level, not only the compiled element-wise variants: which GEMM runs (brgemm
    for bf16 needs avx512_bf16/amx) depends on the level too."""
    with forced_isa(request.param):
        yield request.param

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative to the output scale: bf16 output rounding and K-long fp32 sums in another order.
RTOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def close(out, ref, dtype):
    scale = ref.float().abs().max().clamp_min(1e-6)
    err = (out.float() - ref.float()).abs().max() / scale
    assert err <= RTOL[dtype], f"max error {err:.3g} relative to output scale"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 8, 33])  # decode kernel and brgemm paths, row tails
@pytest.mark.parametrize("k,n", [(64, 32), (200, 70), (129, 45)])  # padded K, partial blocks
def test_linear_epilogues(isa, dtype, m, k, n):
    torch.manual_seed(m * 1000 + k + n)
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype) / k**0.5
    b = torch.randn(n, dtype=dtype)
    o1, o2 = torch.randn(m, n, dtype=dtype), torch.randn(m, n, dtype=dtype)
    p = L.pack_linear_weight(w)
    for epilogue in L.EPILOGUES:
        out = L.linear(x, p, b, n, epilogue, o1, o2)
        close(out, reference.linear(x, w, b, epilogue, o1, o2), dtype)
    close(L.linear(x, p, None, n), reference.linear(x, w, None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 300])  # the decode kernel and the large-M paths
def test_linear_no_input_features(isa, dtype, m):
    """in_features = 0: every output is the bias through the epilogue (nn.Linear(0, n) gives the bias)."""
    w, b = torch.randn(8, 0, dtype=dtype), torch.randn(8, dtype=dtype)
    x, o1, o2 = torch.randn(m, 0, dtype=dtype), torch.randn(m, 8, dtype=dtype), torch.randn(m, 8, dtype=dtype)
    p = L.pack_linear_weight(w)
    for epilogue in L.EPILOGUES:
        close(L.linear(x, p, b, 8, epilogue, o1, o2), reference.linear(x, w, b, epilogue, o1, o2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_deep_k_chunks(isa, dtype):
    """K past the brgemm path's 2048-deep chunks (two whole chunks and a padded tail), at an M that
    takes that path where the ISA has it (two row tiles), for the plain and the paired weights."""
    torch.manual_seed(0)
    m, k, n = 40, 4100, 64
    x = torch.randn(m, k, dtype=dtype)
    w, w2 = torch.randn(n, k, dtype=dtype) / k**0.5, torch.randn(n, k, dtype=dtype) / k**0.5
    b = torch.randn(n, dtype=dtype)
    close(L.linear(x, L.pack_linear_weight(w), b, n), reference.linear(x, w, b), dtype)
    close(L.linear_pair_silu_mul(x, L.pack_linear_weight_pair(w, w2), None, n),
          reference.linear_pair_silu_mul(x, w, w2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, 40])
def test_linear_pair_silu_mul(isa, dtype, m):
    k, n = 96, 80
    x = torch.randn(2, m, k, dtype=dtype)  # 3-D input keeps its leading dims
    wg, wu = torch.randn(n, k, dtype=dtype) / 10, torch.randn(n, k, dtype=dtype) / 10
    bg, bu = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    pp = L.pack_linear_weight_pair(wg, wu)
    out = L.linear_pair_silu_mul(x, pp, torch.cat([bg, bu]), n)
    assert out.shape == (2, m, n)
    close(out, reference.linear_pair_silu_mul(x, wg, wu, bg, bu), dtype)
    close(L.linear_pair_silu_mul(x, pp, None, n), reference.linear_pair_silu_mul(x, wg, wu), dtype)


@pytest.mark.parametrize("small_m", ["0", "64"])
def test_both_paths_agree(small_m):
    # The decode kernel and brgemm must give the same answer for the same M.
    code = (
        "import torch; from ipex_core.ops import linear_ops as L; torch.manual_seed(0);"
        "x=torch.randn(6,300); w=torch.randn(50,300); p=L.pack_linear_weight(w);"
        "print(repr((L.linear(x,p,None,50)-x@w.T).abs().max().item()))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "IPEX_LINEAR_SMALL_M": small_m})
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 1e-3


def test_pack_roundtrip_and_layout():
    w = torch.randn(70, 129, dtype=torch.bfloat16)
    p = L.pack_linear_weight(w)
    assert p.shape == (3, 65, L.BLOCK_N, 2)  # 3 blocks of 32 columns, K padded to 130, k pairs
    assert torch.equal(L.unpack_linear_weight(p, 70, 129), w)
    # Element (n, k) lives at [n // 32, k // 2, n % 32, k % 2].
    assert p[1, 10, 5, 1] == w[37, 21]
    wg, wu = torch.randn(40, 16), torch.randn(40, 16)
    g, u = L.unpack_linear_weight_pair(L.pack_linear_weight_pair(wg, wu), 40, 16)
    assert torch.equal(g, wg) and torch.equal(u, wu)


def test_strided_input_and_other():
    x = torch.randn(4, 256)[:, ::2]
    w = torch.randn(48, 128)
    other = torch.randn(48, 4).t()
    p = L.pack_linear_weight(w)
    close(L.linear(x, p, None, 48, "add", other), reference.linear(x, w, None, "add", other), torch.float32)


def test_bad_input():
    w = torch.randn(40, 64)
    p = L.pack_linear_weight(w)
    with pytest.raises(RuntimeError, match="has 63 features but the packed weight was made for 64"):
        L.linear(torch.randn(2, 63), p, None, 40)
    with pytest.raises(RuntimeError, match="packed weight dtype"):
        L.linear(torch.randn(2, 64, dtype=torch.bfloat16), p, None, 40)
    with pytest.raises(RuntimeError, match="not in ipex's packed layout"):
        L.linear(torch.randn(2, 64), w, None, 40)
    with pytest.raises(RuntimeError, match="unknown epilogue 'swish'"):
        torch.ops.ipex.linear(torch.randn(2, 64), p, None, 40, "swish")
    with pytest.raises(RuntimeError, match="needs 'other'"):
        L.linear(torch.randn(2, 64), p, None, 40, "mul")
    with pytest.raises(RuntimeError, match="other must have the output's shape"):
        L.linear(torch.randn(2, 64), p, None, 40, "add", torch.randn(2, 41))
    with pytest.raises(RuntimeError, match="out_features 80 does not match"):
        L.linear(torch.randn(2, 64), p, None, 80)
    with pytest.raises(RuntimeError, match="bias must be 1-D of 40"):
        L.linear(torch.randn(2, 64), p, torch.randn(39), 40)
    with pytest.raises(ValueError, match="must be 2-D"):
        L.pack_linear_weight(torch.randn(4))
    with pytest.raises(ValueError, match="one shape and dtype"):
        L.pack_linear_weight_pair(torch.randn(4, 4), torch.randn(4, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = torch.randn(3, 64, dtype=dtype)
    p = L.pack_linear_weight(torch.randn(40, 64, dtype=dtype))
    torch.library.opcheck(torch.ops.ipex.linear.default, (x, p, torch.randn(40, dtype=dtype), 40, "silu_mul",
                                                          torch.randn(3, 40, dtype=dtype), None))
    pp = L.pack_linear_weight_pair(torch.randn(40, 64, dtype=dtype), torch.randn(40, 64, dtype=dtype))
    torch.library.opcheck(torch.ops.ipex.linear_pair_silu_mul.default, (x, pp, None, 40))


def test_compile_fullgraph():
    w = torch.randn(40, 64)
    p = L.pack_linear_weight(w)

    def f(x):
        return L.linear(x, p, None, 40, "gelu") * 2

    x = torch.randn(5, 64)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


@pytest.mark.parametrize("m", [17, 257, 300])  # row tiles of 16/32 with tails, tasks of 256 rows
@pytest.mark.parametrize("k", [64, 1056])  # one K chunk; two of 512 and a 32-k tail
def test_bf16_large_m_amx_tiles(isa, m, k):
    # bf16 past 16 rows with K in whole 32-k steps runs our AMX kernel (where the level has
    # AMX), else brgemm; both against the reference, plain, with an epilogue and as a pair.
    torch.manual_seed(m + k)
    n = 70  # a partial last block
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w, wu = (torch.randn(n, k, dtype=torch.bfloat16) / k**0.5 for _ in range(2))
    b, other = torch.randn(n, dtype=torch.bfloat16), torch.randn(m, n, dtype=torch.bfloat16)
    p = L.pack_linear_weight(w)
    close(L.linear(x, p, None, n), reference.linear(x, w, None), torch.bfloat16)
    close(L.linear(x, p, b, n, "add", other), reference.linear(x, w, b, "add", other), torch.bfloat16)
    pp = L.pack_linear_weight_pair(w, wu)
    close(L.linear_pair_silu_mul(x, pp, None, n), reference.linear_pair_silu_mul(x, w, wu), torch.bfloat16)


@pytest.mark.parametrize("m", [2, 16, 17])  # AMX-tile rows up to 16, large-M tiles / brgemm past that
def test_bf16_small_m_tiles_and_brgemm_interleave(isa, m):
    # The small-M AMX kernel loads its own tile config; brgemm (prefill) must still be
    # right when it runs next on the same threads, and vice versa.
    torch.manual_seed(m)
    k, n = 576, 96
    w = torch.randn(n, k, dtype=torch.bfloat16) / k**0.5
    p = L.pack_linear_weight(w)
    small, large = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(64, k, dtype=torch.bfloat16)
    # K = 200 is not in whole 32-k steps: brgemm at every M > 1 there.
    w_odd = torch.randn(n, 200, dtype=torch.bfloat16) / 200**0.5
    p_odd, x_odd = L.pack_linear_weight(w_odd), torch.randn(64, 200, dtype=torch.bfloat16)
    for _ in range(3):
        close(L.linear(small, p, None, n), reference.linear(small, w, None), torch.bfloat16)
        close(L.linear(large, p, None, n), reference.linear(large, w, None), torch.bfloat16)
        close(L.linear(x_odd, p_odd, None, n), reference.linear(x_odd, w_odd, None), torch.bfloat16)


@pytest.mark.parametrize("packed_as,run_as", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_packed_weight_of_another_dtype_is_refused(packed_as, run_as):
    """A weight packed in one dtype and cast to another keeps the first one's k-grouping: read as the other's,
    values landed on the wrong k (max error 25 on a unit-scale linear), silently."""
    if L._vnni_factor(packed_as) == L._vnni_factor(run_as):
        pytest.skip("both dtypes use the same k-grouping here")
    packed = L.pack_linear_weight(torch.randn(45, 64).to(packed_as)).to(run_as)
    with pytest.raises(RuntimeError, match="packed weight groups k by"):
        L.linear(torch.randn(2, 64, dtype=run_as), packed, None, 45, "none")
