"""ipex::rms_norm and ipex::add_rms_norm against the plain-PyTorch reference."""

import pytest
import torch

import ipex_core
from ipex_core import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (tokens, hidden): hidden 64..8192 incl. sizes that leave a vector tail; tokens 1..2048.
SHAPES = [(1, 64), (3, 100), (16, 4096), (128, 1000), (2048, 256), (7, 8192), (1, 8191)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_reference(isa, tol, dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype) * 3
    w = torch.randn(shape[-1], dtype=dtype)
    out = torch.ops.ipex.rms_norm(x, w, 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out, reference.rms_norm(x, w, 1e-6), **tol[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm_matches_reference(isa, tol, dtype, shape):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype)
    r = torch.randn(shape, dtype=dtype)
    w = torch.randn(shape[-1], dtype=dtype)
    out, res = torch.ops.ipex.add_rms_norm(x, r, w, 1e-5)
    ref_out, ref_res = reference.add_rms_norm(x, r, w, 1e-5)
    # The residual is rounded exactly like an unfused `x + r`.
    assert torch.equal(res, ref_res)
    torch.testing.assert_close(out, ref_out, **tol[dtype])
    # Inputs are not modified.
    assert not torch.equal(res, r)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_weight_with_reduced_input(isa, tol, dtype):
    x = torch.randn(5, 4096, dtype=dtype)
    w = torch.randn(4096)
    torch.testing.assert_close(
        torch.ops.ipex.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), **tol[dtype]
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(isa, tol, dtype):
    base = torch.randn(2, 9, 2 * 512, dtype=dtype)
    x = base[..., ::2]  # stride 2 along hidden: needs a copy
    r = torch.randn(4, 9, 512, dtype=dtype)[::2]  # strided rows, unit inner stride
    w = torch.randn(512, dtype=dtype)
    torch.testing.assert_close(torch.ops.ipex.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), **tol[dtype])
    out, res = torch.ops.ipex.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_res = reference.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(res, ref_res)
    torch.testing.assert_close(out, ref_out, **tol[dtype])
    xt = torch.randn(256, 6, dtype=dtype).t()  # transposed: rows not unit-stride
    torch.testing.assert_close(
        torch.ops.ipex.rms_norm(xt, w[:256], 1e-6), reference.rms_norm(xt, w[:256], 1e-6), **tol[dtype]
    )


def test_matches_torch_rms_norm(isa):
    x = torch.randn(33, 4096)
    w = torch.randn(4096)
    torch.testing.assert_close(
        torch.ops.ipex.rms_norm(x, w, 1e-6), torch.nn.functional.rms_norm(x, (4096,), w, 1e-6), rtol=1e-5, atol=1e-5
    )


def test_empty_and_3d():
    w = torch.ones(64)
    assert torch.ops.ipex.rms_norm(torch.empty(0, 64), w, 1e-6).shape == (0, 64)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(torch.ops.ipex.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))


def test_python_wrappers():
    x, r, w = torch.randn(4, 128), torch.randn(4, 128), torch.randn(128)
    torch.testing.assert_close(ipex_core.ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    out, res = ipex_core.ops.add_rms_norm(x, r, w)
    torch.testing.assert_close(out, reference.rms_norm(x + r, w, 1e-6))


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(4, 64), torch.randn(63), 1e-6), "weight must be 1-D with as many elements"),
        ((torch.randn(4, 64), torch.randn(2, 64), 1e-6), "weight must be 1-D"),
        ((torch.randint(0, 5, (4, 64)), torch.randn(64), 1e-6), "dtype must be float32, bfloat16 or float16"),
        ((torch.randn(4, 64, dtype=torch.float64), torch.randn(64), 1e-6), "dtype must be float32"),
        ((torch.randn(4, 64), torch.randn(64, dtype=torch.bfloat16), 1e-6), "weight dtype must match input"),
        ((torch.tensor(1.0), torch.randn(1), 1e-6), "at least 1 dimension"),
    ],
)
def test_rms_norm_bad_input(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ipex.rms_norm(*args)


def test_add_rms_norm_bad_input():
    x, w = torch.randn(4, 64), torch.randn(64)
    with pytest.raises(RuntimeError, match="residual shape"):
        torch.ops.ipex.add_rms_norm(x, torch.randn(4, 32), w, 1e-6)
    with pytest.raises(RuntimeError, match="residual dtype"):
        torch.ops.ipex.add_rms_norm(x, torch.randn(4, 64, dtype=torch.bfloat16), w, 1e-6)


def test_meta_tensors_give_shapes():
    out = torch.ops.ipex.rms_norm(torch.empty(2, 8, device="meta"), torch.empty(8, device="meta"), 1e-6)
    assert out.shape == (2, 8) and out.device.type == "meta"


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    x = torch.randn(8, 256, dtype=dtype)
    w = torch.randn(256, dtype=dtype)
    torch.library.opcheck(torch.ops.ipex.rms_norm.default, (x, w, 1e-6))
    torch.library.opcheck(torch.ops.ipex.add_rms_norm.default, (x, torch.randn_like(x), w, 1e-6))


def test_torch_compile_fullgraph():
    def block(x, r, w):
        h, r2 = torch.ops.ipex.add_rms_norm(x, r, w, 1e-6)
        return torch.ops.ipex.rms_norm(h * 2, w, 1e-6) + r2

    x, r, w = torch.randn(3, 5, 128), torch.randn(3, 5, 128), torch.randn(128)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x, r, w), block(x, r, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided_rows", "needs_copy"])
def test_add_rms_norm_inplace(isa, tol, dtype, layout):
    torch.manual_seed(2)
    if layout == "contiguous":
        x, r = torch.randn(9, 1000, dtype=dtype), torch.randn(9, 1000, dtype=dtype)
    elif layout == "strided_rows":
        x, r = torch.randn(18, 1000, dtype=dtype)[::2], torch.randn(9, 1200, dtype=dtype)[:, :1000]
    else:
        x, r = torch.randn(1000, 9, dtype=dtype).t(), torch.randn(9, 2000, dtype=dtype)[:, ::2]
    w = torch.randn(1000, dtype=dtype)
    ref_out, ref_res = reference.add_rms_norm(x.clone(), r.clone(), w, 1e-6)
    x_ptr, r_ptr = x.data_ptr(), r.data_ptr()
    assert torch.ops.ipex.add_rms_norm_(x, r, w, 1e-6) is None
    assert x.data_ptr() == x_ptr and r.data_ptr() == r_ptr
    assert torch.equal(r, ref_res)
    torch.testing.assert_close(x, ref_out, **tol[dtype])


def test_add_rms_norm_inplace_opcheck_and_compile():
    x, r, w = torch.randn(4, 256), torch.randn(4, 256), torch.randn(256)
    torch.library.opcheck(torch.ops.ipex.add_rms_norm_.default, (x.clone(), r.clone(), w, 1e-6))

    def f(x, r, w):
        x = x * 1.0
        r = r * 1.0
        torch.ops.ipex.add_rms_norm_(x, r, w, 1e-6)
        return x, r

    got = torch.compile(f, fullgraph=True)(x, r, w)
    want = reference.add_rms_norm(x, r, w, 1e-6)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_add_rms_norm_inplace_refuses_shared_elements():
    """An expanded residual: each row wrote its sum into the one shared row, so later rows read the previous
    row's sum (rows 2 and 3 wrong, silently)."""
    x = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="residual is written to, but several of its elements share"):
        ipex_core.ops.add_rms_norm_(x, torch.randn(1, 8).expand(3, 8), torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="input is written to"):
        ipex_core.ops.add_rms_norm_(torch.randn(1, 8).expand(3, 8), torch.randn(3, 8), torch.ones(8), 1e-6)


def test_empty_hidden_dimension_gives_an_empty_result():
    # reshape({-1, 0}) cannot infer the row count: "cannot reshape tensor of 0 elements" where torch returns [3, 0].
    assert ipex_core.ops.rms_norm(torch.randn(3, 0), torch.ones(0), 1e-6).shape == (3, 0)
    out, res = ipex_core.ops.add_rms_norm(torch.randn(2, 3, 0), torch.randn(2, 3, 0), torch.ones(0), 1e-6)
    assert out.shape == res.shape == (2, 3, 0)
