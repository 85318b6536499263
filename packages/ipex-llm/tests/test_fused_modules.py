"""ipex.llm.modules linear fusions, RotaryEmbedding, FastLayerNorm and the functional API."""

import copy
import io

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
    with pytest.raises(ValueError, match="last dimension only"):
        M.FastLayerNorm((4, 64), 1e-5, None)


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
