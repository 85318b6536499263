"""ipex.llm.modules linear fusions, RotaryEmbedding, FastLayerNorm and the functional API."""

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ipex.llm.functional as IF
from ipex.llm import modules as M

TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def close(out, ref, dtype):
    scale = ref.float().abs().max().clamp_min(1e-6)
    assert ((out.float() - ref.float()).abs().max() / scale) <= TOL[dtype]


def new_gelu(x):  # transformers' NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (x + 0.044715 * torch.pow(x, 3.0))))


SINGLE = [
    (M.LinearSilu, lambda y, o: F.silu(y), 0),
    (M.LinearSiluMul, lambda y, o: F.silu(y) * o[0], 1),
    (M.LinearRelu, lambda y, o: F.relu(y), 0),
    (M.LinearNewGelu, lambda y, o: new_gelu(y), 0),
    (M.LinearGelu, lambda y, o: F.gelu(y), 0),
    (M.LinearMul, lambda y, o: y * o[0], 1),
    (M.LinearAdd, lambda y, o: y + o[0], 1),
    (M.LinearAddAdd, lambda y, o: y + o[0] + o[1], 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls,ref,n_other", SINGLE, ids=[c[0].__name__ for c in SINGLE])
@pytest.mark.parametrize("bias", [True, False])
def test_single_linear_fusions(dtype, cls, ref, n_other, bias):
    torch.manual_seed(0)
    lin = nn.Linear(96, 72, bias=bias).to(dtype)
    mod = cls(lin)
    for shape in [(1, 96), (2, 5, 96), (40, 96)]:
        x = torch.randn(shape, dtype=dtype)
        others = [torch.randn(*shape[:-1], 72, dtype=dtype) for _ in range(n_other)]
        expected = ref(lin.float()(x.float()), [o.float() for o in others])
        close(mod(x, *others), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear2_silu_mul(dtype):
    s, m = nn.Linear(64, 48).to(dtype), nn.Linear(64, 48, bias=False).to(dtype)
    mod = M.Linear2SiluMul(s, m)
    for rows in (1, 3, 50):
        x = torch.randn(rows, 64, dtype=dtype)
        close(mod(x), F.silu(s.float()(x.float())) * m.float()(x.float()), dtype)


def test_state_dict_round_trip_and_to():
    lin = nn.Linear(40, 24)
    mod = M.LinearSilu(lin)
    sd = mod.state_dict()
    assert set(sd) == {"weight", "bias"}
    assert torch.equal(sd["weight"], lin.weight.detach()) and torch.equal(sd["bias"], lin.bias.detach())
    other = nn.Linear(40, 24)
    mod.load_state_dict(other.state_dict())  # an nn.Linear checkpoint loads and repacks
    x = torch.randn(3, 40)
    torch.testing.assert_close(mod(x), F.silu(other(x)))
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf)["weight"], other.weight.detach())
    pair = M.Linear2SiluMul(nn.Linear(8, 4), nn.Linear(8, 4))
    assert set(pair.state_dict()) == {"weight_s", "weight_m", "bias_s", "bias_m"}
    # .to(dtype) repacks for the new dtype's layout
    bf = copy.deepcopy(mod).to(torch.bfloat16)
    assert bf.packed_weight.dtype == torch.bfloat16 and bf.packed_weight.shape[-1] == 2
    close(bf(x.bfloat16()), F.silu(other(x)), torch.bfloat16)
    with pytest.raises(RuntimeError, match="Missing key"):
        mod.load_state_dict({"bias": torch.zeros(24)})


def test_bad_construction_and_calls():
    with pytest.raises(TypeError, match="takes a torch.nn.Linear"):
        M.LinearSilu(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="one shape"):
        M.Linear2SiluMul(nn.Linear(8, 4), nn.Linear(8, 5))
    mod = M.LinearAdd(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'other'"):
        mod(torch.randn(2, 8))
    with pytest.raises(RuntimeError, match="packed weight dtype"):
        M.LinearSilu(nn.Linear(8, 4))(torch.randn(2, 8, dtype=torch.bfloat16))
    # bf16 packs k in pairs, so in_features 7 is padded to 8: an 8-feature input must still be
    # refused, as nn.Linear refuses it, not multiplied by the zero padding.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        odd = nn.Linear(7, 8).to(dtype)
        x7 = torch.randn(2, 7, dtype=dtype)
        y7 = copy.deepcopy(odd).float()(x7.float())  # .float() casts in place: keep odd in dtype
        for wrapped, want in ((M.LinearSilu(odd), F.silu(y7)), (M.Linear2SiluMul(odd, odd), F.silu(y7) * y7)):
            with pytest.raises(ValueError, match="input has 8 features .* in_features=7"):
                wrapped(torch.randn(2, 8, dtype=dtype))
            close(wrapped(x7), want, dtype)


def test_linear_fusions_take_the_documented_keywords():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    x, o1, o2 = torch.randn(3, 16), torch.randn(3, 8), torch.randn(3, 8)
    y = lin(x)
    close(M.LinearSiluMul(lin)(x, other=o1), F.silu(y) * o1, torch.float32)
    close(M.LinearMul(lin)(input=x, other=o1), y * o1, torch.float32)
    close(M.LinearAdd(lin)(x, other=o1), y + o1, torch.float32)
    close(M.LinearAddAdd(lin)(x, other_1=o1, other_2=o2), y + o1 + o2, torch.float32)


BROADCAST = [
    (M.LinearMul, lambda y, o: y * o[0], 1),
    (M.LinearAdd, lambda y, o: y + o[0], 1),
    (M.LinearSiluMul, lambda y, o: F.silu(y) * o[0], 1),
    (M.LinearAddAdd, lambda y, o: y + o[0] + o[1], 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls,ref,n_other", BROADCAST, ids=[c[0].__name__ for c in BROADCAST])
def test_linear_fusions_broadcast_other(dtype, cls, ref, n_other):
    """The API's ``linear(input) * other`` broadcasts ``other`` as PyTorch does; an [out_features] other was
    refused ("other must have the output's shape")."""
    torch.manual_seed(2)
    lin = nn.Linear(16, 8).to(dtype)
    mod = cls(lin)
    x = torch.randn(2, 3, 16, dtype=dtype)
    y = lin.float()(x.float())
    # to the output's shape [2, 3, 8] (fused), and larger than it (runs unfused, the PyTorch result's shape)
    for shape in [(8,), (3, 1), (2, 1, 8), (1, 3, 8), (), (4, 1, 1, 8), (5, 2, 3, 1)]:
        others = [torch.randn(shape, dtype=dtype) for _ in range(n_other)]
        want = ref(y, [o.float() for o in others])
        got = mod(x, *others)
        assert got.dtype == dtype and got.shape == want.shape, (shape, got.shape)
        close(got, want, dtype)
    # one operand of the output's shape, the other broadcast; an fp32 other with a bf16 input (cast, as before)
    full, row = torch.randn(2, 3, 8, dtype=dtype), torch.randn(8)
    others = [row, full][:n_other] if n_other == 2 else [row]
    close(mod(x, *others), ref(y, [o.float() for o in others]), dtype)
    assert mod(x, *others).dtype == dtype
    with pytest.raises(ValueError, match=r"other(_1)? \(5,\) does not broadcast with the linear's output \(2, 3, 8\)"):
        mod(x, *[torch.randn(5, dtype=dtype)] * n_other)
    if n_other == 2:
        with pytest.raises(ValueError, match=r"other_2 \(5,\) does not broadcast"):
            mod(x, row, torch.randn(5))
        with pytest.raises(ValueError, match=r"other_1 \(4, 1, 1, 8\) and other_2 \(5, 1, 1, 8\) do not broadcast"):
            mod(x, torch.randn(4, 1, 1, 8), torch.randn(5, 1, 1, 8))
    with pytest.raises(TypeError, match="must be a torch.Tensor; got float"):
        mod(x, *[2.0] * n_other)


def test_linear_fusions_0d_input():
    """A 0-d input raised IndexError (tuple index out of range) from the in_features check."""
    for mod in (M.LinearSilu(nn.Linear(4, 4)), M.Linear2SiluMul(nn.Linear(4, 4), nn.Linear(4, 4))):
        with pytest.raises(ValueError, match="input is 0-d .* at least one dimension"):
            mod(torch.tensor(1.0))
    with pytest.raises(ValueError, match="input is 0-d"):
        M.LinearMul(nn.Linear(1, 3))(torch.tensor(1.0), torch.ones(3))


def hf_rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("base", [10000, 500000])  # Llama 2 and Llama 3
def test_rotary_embedding_llama_matches_transformers_formula(dtype, base):
    dim, heads = 64, 4
    rope = M.RotaryEmbedding(128, dim, base=base)
    q = torch.randn(2, 7, heads, dim, dtype=dtype)
    pos = torch.arange(7).unsqueeze(0).expand(2, 7) + torch.tensor([[0], [5]])
    out = rope(q, pos, heads, dim, dim // 2, dim)
    assert out.dtype == dtype and out.shape == q.shape
    inv = 1.0 / base ** (torch.arange(0, dim, 2).float() / dim)
    emb = torch.cat([pos[..., None].float() * inv] * 2, -1)[:, :, None, :]
    qf = q.float()
    close(out, qf * emb.cos() + hf_rotate_half(qf) * emb.sin(), dtype)


def test_rotary_embedding_gptj_partial_and_past_length():
    rope = M.RotaryEmbedding(16, 64, backbone="GPTJForCausalLM")
    q = torch.randn(1, 3, 2, 256)
    out = rope(q, torch.tensor([20]), 2, 256, 1, 64)  # one element = past length; grows the table
    assert rope.sin_cached.shape[0] >= 23
    pos = torch.arange(20, 23).float()
    inv = 1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64)
    ang = pos[:, None] * inv  # [3, 32]
    x0, x1 = q[..., 0:64:2], q[..., 1:64:2]
    c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    torch.testing.assert_close(out[..., 0:64:2], x0 * c - x1 * s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[..., 1:64:2], x1 * c + x0 * s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[..., 64:], q[..., 64:])  # pass-through dims
    with pytest.raises(ValueError, match="offset must be 1"):
        rope(q, torch.tensor([0]), 2, 256, 7, 64)
    # [1, seq] positions serve every row of a batch; float positions are refused, not truncated.
    q2 = torch.cat([q, 2 * q])
    shared = rope(q2, torch.arange(20, 23)[None], 2, 256, 1, 64)
    torch.testing.assert_close(shared, torch.cat([out, 2 * out]), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="position_ids must be int64 or int32; got torch.float32"):
        rope(q, torch.tensor([20.7]), 2, 256, 1, 64)
    with pytest.raises(RuntimeError, match="position_ids must be int64 or int32"):
        M.RotaryEmbedding.apply_function(q, q, rope.sin_cached, rope.cos_cached, 64, False,
                                         torch.arange(20, 23)[None].float())


def test_rotary_embedding_position_ids_shapes():
    """position_ids of another shape with batch * seq elements ([seq, batch]) were accepted and rotated each
    token by another token's position."""
    torch.manual_seed(4)
    dim, heads = 32, 2
    rope = M.RotaryEmbedding(64, dim)
    q = torch.randn(2, 3, heads, dim)
    pos = torch.tensor([[4, 5, 6], [10, 11, 12]])
    want = rope(q, pos, heads, dim, dim // 2, dim)
    for bad in (pos.T.contiguous(), pos.reshape(-1), pos.reshape(1, 6), pos[:, None, :], pos[:, :1]):
        with pytest.raises(ValueError, match=r"position_ids must be \[batch, seq\] = \[2, 3\], \[1, seq\], "
                                             rf"\[seq\] or one element .*got shape {re.escape(str(tuple(bad.shape)))}"):
            rope(q, bad, heads, dim, dim // 2, dim)
    # the documented shapes: [batch, seq], [1, seq] or [seq] shared by the batch, one element (past length)
    row = rope(q, torch.stack([pos[0], pos[0]]), heads, dim, dim // 2, dim)
    for shared in (pos[:1], pos[0], torch.tensor(4), torch.tensor([4]), torch.tensor([[4]])):
        torch.testing.assert_close(rope(q, shared, heads, dim, dim // 2, dim), row)
    torch.testing.assert_close(want[1], rope(q[1:], pos[1:], heads, dim, dim // 2, dim)[0])


def test_rotary_embedding_refuses_huge_position_ids():
    """A position id of 2**31 - 1 grew the sin/cos table to 2**31 rows (an 8.6 GB allocation)."""
    dim, heads = 32, 2
    rope = M.RotaryEmbedding(64, dim)
    q = torch.randn(1, 2, heads, dim)
    for bad in (torch.tensor([[0, 2**31 - 1]]), torch.tensor([2**31 - 2])):
        with pytest.raises(ValueError, match=r"position id 2147483647 is far past max_position_embeddings=64; "
                                             r"the sin/cos table grows to at most 1048576 positions"):
            rope(q, bad, heads, dim, dim // 2, dim)
    assert rope.sin_cached.shape[0] == 64  # nothing was allocated
    # Growing stays allowed up to the limit (lowered here to keep the test small), and the table never
    # doubles past it.
    rope.max_grown_positions = 1000
    out = rope(q, torch.tensor([[3, 999]]), heads, dim, dim // 2, dim)
    assert rope.sin_cached.shape[0] == 1000
    torch.testing.assert_close(out, M.RotaryEmbedding(1000, dim)(q, torch.tensor([[3, 999]]), heads, dim, dim // 2,
                                                                   dim))
    with pytest.raises(ValueError, match="position id 1000 is far past max_position_embeddings=64; .* at most 1000"):
        rope(q, torch.tensor([[3, 1000]]), heads, dim, dim // 2, dim)
    # a model built for more positions than the limit may go to twice its max_position_embeddings
    big = M.RotaryEmbedding(800, dim)
    big.max_grown_positions = 1000
    big(q, torch.tensor([[0, 1599]]), heads, dim, dim // 2, dim)
    assert big.sin_cached.shape[0] == 1600
    with pytest.raises(ValueError, match="position id 1600 .* at most 1600 positions"):
        big(q, torch.tensor([[0, 1600]]), heads, dim, dim // 2, dim)
    capped = M.RotaryEmbedding(300, dim)
    capped.max_grown_positions = 1000
    capped(q, torch.tensor([[0, 699]]), heads, dim, dim // 2, dim)
    capped(q, torch.tensor([[0, 700]]), heads, dim, dim // 2, dim)  # would double to 1400
    assert capped.sin_cached.shape[0] == 1000


def test_rotary_embedding_tables_stay_float32_after_a_cast():
    """model.to(bfloat16) must not turn the angle tables (or inv_freq) into bf16: a table grown
    from a bf16 inv_freq was 2.6 off at position 3000, and fp32 inputs were refused."""
    dim, heads = 64, 2
    ref = M.RotaryEmbedding(128, dim)
    cast = M.RotaryEmbedding(128, dim).to(torch.bfloat16)
    assert cast.inv_freq.dtype == cast.sin_cached.dtype == cast.cos_cached.dtype == torch.float32
    q = torch.randn(1, 2, heads, dim)
    pos = torch.tensor([[3000, 3001]])  # past the table: it grows
    want = ref(q, pos, heads, dim, dim // 2, dim)
    torch.testing.assert_close(cast(q, pos, heads, dim, dim // 2, dim), want)  # fp32 input on the cast module
    close(cast(q.bfloat16(), pos, heads, dim, dim // 2, dim), want, torch.bfloat16)


def test_apply_function_gqa_and_3d():
    ang = torch.randn(5, 16)
    sin, cos = torch.cat([ang, ang], -1).sin(), torch.cat([ang, ang], -1).cos()  # the cat(f, f) convention
    q, k = torch.randn(5, 8, 32), torch.randn(5, 2, 32)  # GQA: different head counts
    q2, k2 = M.RotaryEmbedding.apply_function(q, k, sin, cos, 32, True)
    fq, fk = IF.rotary_embedding(q, k, sin, cos, 32, True)
    torch.testing.assert_close(q2, fq)
    assert k2.shape == k.shape
    c, s = cos[:, None, :], sin[:, None, :]
    torch.testing.assert_close(k2, k * c + hf_rotate_half(k) * s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fast_layer_norm(dtype):
    ln = nn.LayerNorm(256).to(dtype)
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    mod = M.FastLayerNorm(256, eps=1e-5, weight=ln.weight, bias=ln.bias)
    x = torch.randn(3, 7, 256, dtype=dtype)
    close(mod(x), ln.float()(x.float()), dtype)
    close(M.FastLayerNorm.apply_function(x, (256,), ln.weight, ln.bias, 1e-5), ln.float()(x.float()), dtype)
    # The retired extension's signature: add_layer_norm(residual, x, weight, bias, eps, add_back).
    r = torch.randn_like(x)
    r0 = r.clone()
    close(IF.add_layer_norm(r, x, ln.weight, ln.bias, 1e-5), ln.float()((x + r).float()), dtype)
    assert torch.equal(r, r0)
    close(IF.add_layer_norm(None, x, ln.weight, ln.bias, 1e-5), ln.float()(x.float()), dtype)
    close(IF.add_layer_norm(r, x, ln.weight, ln.bias, 1e-5, add_back=True), ln.float()((x + r0).float()), dtype)
    close(r, x + r0, dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)])
def test_fast_layer_norm_several_dimensions(dtype, tol):
    """normalized_shape [2, 4] normalises over the last two dimensions, as torch's LayerNorm (it was refused)."""
    torch.manual_seed(3)
    shape = (2, 4)
    w, b = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    x = torch.randn(3, 5, *shape, dtype=dtype)
    want = F.layer_norm(x.float(), shape, w.float(), b.float(), 1e-5)
    for got in (M.FastLayerNorm(shape, 1e-5, w, b)(x), IF.fast_layer_norm(x, list(shape), w, b, 1e-5),
                M.FastLayerNorm.apply_function(x, shape, w, b, 1e-5)):
        assert got.shape == x.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(M.FastLayerNorm(shape, 1e-5, None)(x).float(), F.layer_norm(x.float(), shape),
                               rtol=tol, atol=tol)
    # every trailing dimension (a 3-D normalized_shape over the whole input), a non-contiguous input
    x3 = torch.randn(4, 3, 6, dtype=dtype).transpose(0, 2)
    torch.testing.assert_close(IF.fast_layer_norm(x3, x3.shape, None, None, 1e-5).float(),
                               F.layer_norm(x3.float(), x3.shape), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match=r"normalized_shape must be the input's last dimension\(s\); got \[4, 2\]"):
        IF.fast_layer_norm(x, [4, 2], None, None, 1e-5)
    with pytest.raises(ValueError, match="got \\[5\\] for an input of shape"):
        IF.fast_layer_norm(x, 5, None, None, 1e-5)
    with pytest.raises(ValueError, match=r"weight must have normalized_shape \[2, 4\]; got \(8,\)"):
        IF.fast_layer_norm(x, shape, w.reshape(-1), None, 1e-5)
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 4\)"):
        M.FastLayerNorm(shape, 1e-5, w.reshape(-1))
    with pytest.raises(ValueError, match="at least one dimension"):
        M.FastLayerNorm([], 1e-5, None)
    # an empty batch: F.layer_norm returns it empty (reshape(..., -1) could not infer the size)
    empty = torch.randn(0, 3, 4, 6, dtype=dtype)
    assert IF.fast_layer_norm(empty, [4, 6], None, None, 1e-5).shape == (0, 3, 4, 6)


def test_functional_gated():
    x, y = torch.randn(4, 64), torch.randn(4, 64)
    torch.testing.assert_close(IF.silu_mul(x, y), F.silu(x) * y)
    torch.testing.assert_close(IF.gelu_mul(x, y, approximate="tanh"), F.gelu(x, approximate="tanh") * y)
    # The retired extension's out= buffer (third positional argument).
    out = torch.empty(4, 64)
    assert IF.silu_mul(x, y, out) is out
    torch.testing.assert_close(out, F.silu(x) * y)
    assert IF.gelu_mul(x, y, out) is out
    torch.testing.assert_close(out, F.gelu(x) * y)
    with pytest.raises(ValueError, match="out must have the result's shape"):
        IF.silu_mul(x, y, torch.empty(4, 32))


class DecoderBlock(nn.Module):
    """A Llama-style block written with ipex.llm.modules."""

    def __init__(self, hidden=64, heads=4, inter=128):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm1 = M.RMSNorm(hidden)
        self.norm2 = M.RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o = M.LinearAdd(nn.Linear(hidden, hidden, bias=False))
        self.gate_up = M.Linear2SiluMul(nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=False))
        self.down = M.LinearAdd(nn.Linear(inter, hidden, bias=False))
        self.rope = M.RotaryEmbedding(64, self.head_dim)

    def forward(self, x, pos):
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, self.head_dim).unbind(2)
        q = self.rope(q, pos, self.heads, self.head_dim, self.head_dim // 2, self.head_dim)
        k = self.rope(k, pos, self.heads, self.head_dim, self.head_dim // 2, self.head_dim)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = self.o(a.transpose(1, 2).reshape(b, s, h), x)
        return self.down(self.gate_up(self.norm2(x)), x)


def test_decoder_block_compiles_fullgraph():
    torch.manual_seed(0)
    block = DecoderBlock().eval()
    x = torch.randn(2, 6, 64)
    pos = torch.arange(6).unsqueeze(0).expand(2, 6)
    with torch.no_grad():
        eager = block(x, pos)
        compiled = torch.compile(block, fullgraph=True)(x, pos)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_load_state_dict_bias_into_module_without_bias():
    """A checkpoint's bias loaded into a fusion built without one was dropped silently ("All keys matched",
    0.15 off); nn.Linear reports it as unexpected."""
    torch.manual_seed(0)
    lin = nn.Linear(40, 48)
    module = M.LinearRelu(nn.Linear(40, 48, bias=False))
    with pytest.raises(RuntimeError, match='Unexpected key.*"bias"'):
        module.load_state_dict(lin.state_dict())
    result = module.load_state_dict(lin.state_dict(), strict=False)
    assert result.unexpected_keys == ["bias"]
