"""ipex.llm.modules under torch.compile(fullgraph=True): same results as eager, in float32 and bfloat16.

Each case compiles with inductor through a CompileCounterWithBackend, so a graph break fails
(fullgraph=True) and an unexpected recompile shows in the frame count. Shapes are tiny: these
test tracing (fake kernels, mutation of caches / ``out`` inside the graph), not the kernels.
"""

import math

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from ipex.llm.modules import (
    FastLayerNorm,
    IndirectAccessKVCacheAttention,
    LinearAddAdd,
    LinearGelu,
    LinearSiluMul,
    PagedAttention,
    VarlenAttention,
)
from ipex_core.ops import attention_ops as A

DTYPES = [torch.float32, torch.bfloat16]
ID = lambda dt: str(dt)[6:]  # noqa: E731


def close(got, want):
    """fp32: 1e-5; bf16: 2e-2 of the output's scale (compiled code may round the surrounding ops differently)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        scale = want.float().abs().max().clamp_min(1e-6)
        err = (got.float() - want.float()).abs().max() / scale
        assert err <= 2e-2, f"max error {err:.3g} relative to the output scale"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn):
    counter = CompileCounterWithBackend("inductor")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


# ------------------------------------------------------------------- IAKV ---


def _reorder(past, beam_idx):
    past[3][past[0].size(-2) - 1] = beam_idx  # the API's _reorder_cache snippet, one layer


@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_iakv_prompt_and_decode_steps_match_eager(dtype):
    torch.manual_seed(0)
    B, H, Hkv, D, prompt = 2, 4, 2, 32, 3
    module = IndirectAccessKVCacheAttention(text_max_length=16)

    def step(q, k, v, past):
        out, weights, past = module(q, k, v, math.sqrt(D), past)
        return out * 1.0, weights, past  # a pointwise op after the kernel: inductor generates code around it

    cstep, _ = compiled(step)
    past_e = past_c = None
    for i in range(3):  # prompt, then two decode steps with a beam reorder before each
        S = prompt if i == 0 else 1
        q = torch.randn(B, S, H, D, dtype=dtype)
        k, v = torch.randn(B, S, Hkv, D, dtype=dtype), torch.randn(B, S, Hkv, D, dtype=dtype)
        if i:
            beam_idx = torch.tensor([1, 1])
            _reorder(past_e, beam_idx)
            _reorder(past_c, beam_idx)
        out_e, w_e, past_e = step(q, k, v, past_e)
        out_c, w_c, past_c = cstep(q, k, v, past_c)
        assert w_e is None and w_c is None
        close(out_c, out_e)
        L = prompt + i
        assert past_c[0].shape == past_e[0].shape == (1, 1, L, 1)
        for got, want in zip(past_c[1:], past_e[1:]):
            assert torch.equal(got[:L], want[:L])  # caches written in place inside the graph


def test_iakv_module_decode_steps_do_not_recompile():
    """Compiled, the cached length reaches the kernel as a tensor (the offset_tensor overload): as an int
    dynamo specialised on it, recompiling every decode step until fullgraph=True hit the recompile limit."""
    torch.manual_seed(0)
    B, H, D = 2, 4, 32
    module = IndirectAccessKVCacheAttention(text_max_length=32)
    counter = CompileCounter()
    cstep = torch.compile(lambda q, k, v, past: module(q, k, v, 8.0, past), backend=counter, fullgraph=True)
    past = None
    frames = []
    for i in range(7):  # prompt + 6 decode steps (below the recompile limit of 8)
        S = 3 if i == 0 else 1
        q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
        _, _, past = cstep(q, k, v, past)
        frames.append(counter.frame_count)
    # Prompt, first decode step and (automatic dynamic shapes) one dynamic decode graph at most;
    # the later steps must reuse it.
    assert frames[3:] == [frames[2]] * 4, f"compiled frames after each step: {frames}"


def test_iakv_offset_tensor_decode_steps_compile_once():
    """The op-level wrapper with a tensor offset (the offset_tensor overload): one graph for every step."""
    torch.manual_seed(0)
    B, H, Hkv, D, max_seq = 2, 4, 2, 32, 12
    kc, vc = torch.zeros(max_seq, B, Hkv, D), torch.zeros(max_seq, B, Hkv, D)
    hist = torch.arange(B).expand(max_seq, B).contiguous()

    def step(q, k, v, kc, vc, hist, offset):
        kc.index_copy_(0, offset.view(1), k.transpose(0, 1))
        vc.index_copy_(0, offset.view(1), v.transpose(0, 1))
        return A.iakv_attention(q, kc, vc, hist, offset, D**-0.5)

    counter = CompileCounter()
    cstep = torch.compile(step, backend=counter, fullgraph=True)
    kc_c, vc_c = kc.clone(), vc.clone()
    for t in range(6):
        q, k, v = torch.randn(B, 1, H, D), torch.randn(B, 1, Hkv, D), torch.randn(B, 1, Hkv, D)
        offset = torch.tensor(t)
        want = step(q, k, v, kc, vc, hist, offset)
        got = cstep(q, k, v, kc_c, vc_c, hist, offset)
        close(got, want)
        assert torch.equal(kc_c, kc) and torch.equal(vc_c, vc)
    assert counter.frame_count == 1 and counter.op_count > 0


# ------------------------------------------------------------------ paged ---


@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("alibi_window", [False, True])
def test_paged_reshape_and_cache_then_decode(dtype, alibi_window):
    torch.manual_seed(0)
    batch, H, Hkv, D, bs, ctx = 2, 4, 2, 32, 8, [9, 14]
    blocks = 2
    kc = torch.randn(batch * blocks + 1, bs, Hkv, D, dtype=dtype)
    vc = torch.randn_like(kc)
    tables = torch.randperm(kc.shape[0])[: batch * blocks].view(batch, blocks).int()
    head_mapping = (torch.arange(H) // (H // Hkv)).int()
    context_lens = torch.tensor(ctx, dtype=torch.int32)
    # The new token of each sequence goes to its last position.
    slots = torch.stack([tables[s, (c - 1) // bs] * bs + (c - 1) % bs for s, c in enumerate(ctx)]).long()
    slopes = torch.rand(H) if alibi_window else None
    window = 6 if alibi_window else None

    def step(q, k_new, v_new, kc, vc):
        PagedAttention.reshape_and_cache(k_new, v_new, kc, vc, slots)
        out = torch.empty_like(q)
        PagedAttention.single_query_cached_kv_attention(out, q, kc, vc, head_mapping, D**-0.5, tables, context_lens,
                                                        bs, max(ctx), slopes, window)
        return out + 0.0

    q = torch.randn(batch, H, D, dtype=dtype)
    k_new, v_new = torch.randn(batch, Hkv, D, dtype=dtype), torch.randn(batch, Hkv, D, dtype=dtype)
    kc_e, vc_e = kc.clone(), vc.clone()
    want = step(q, k_new, v_new, kc_e, vc_e)
    cstep, counter = compiled(step)
    kc_c, vc_c = kc.clone(), vc.clone()
    got = cstep(q, k_new, v_new, kc_c, vc_c)
    close(got, want)
    assert torch.equal(kc_c, kc_e) and torch.equal(vc_c, vc_e) and not torch.equal(kc_c, kc)
    assert counter.frame_count == 1


# ----------------------------------------------------------------- varlen ---


@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("zero_tensors", [False, True])
def test_varlen_attention_module(dtype, zero_tensors):
    torch.manual_seed(0)
    module = VarlenAttention()
    cu_q = torch.tensor([0, 3, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 11], dtype=torch.int32)
    q = torch.randn(9, 4, 32, dtype=dtype)
    k, v = torch.randn(11, 2, 32, dtype=dtype), torch.randn(11, 2, 32, dtype=dtype)

    def attend(q, k, v, out):
        return module(q, k, v, out, cu_q, cu_k, 6, 6, 0.0, None, zero_tensors, True)

    want = attend(q, k, v, torch.full_like(q, float("nan")))
    cattend, counter = compiled(attend)
    out_c = torch.full_like(q, float("nan"))
    got = cattend(q, k, v, out_c)
    close(got, want)
    close(out_c, want)  # written into the caller's buffer
    assert counter.frame_count == 1


# ------------------------------------------------------- norm and linear ---


@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("affine", [True, False])
def test_fast_layer_norm(dtype, affine):
    torch.manual_seed(0)
    w, b = (torch.randn(64, dtype=dtype), torch.randn(64, dtype=dtype)) if affine else (None, None)
    module = FastLayerNorm(64, 1e-5, w, b)
    x = torch.randn(2, 3, 64, dtype=dtype) * 3 + 1
    fn = lambda x: module(x * 2.0)  # noqa: E731
    cfn, counter = compiled(fn)
    with torch.no_grad():
        close(cfn(x), fn(x))
    assert counter.frame_count == 1


LINEAR_CASES = [(LinearSiluMul, 1), (LinearGelu, 0), (LinearAddAdd, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("cls,n_other", LINEAR_CASES, ids=[c[0].__name__ for c in LINEAR_CASES])
def test_linear_fusions(dtype, cls, n_other):
    torch.manual_seed(0)
    module = cls(nn.Linear(48, 40).to(dtype))
    x = torch.randn(2, 3, 48, dtype=dtype)
    others = [torch.randn(2, 3, 40, dtype=dtype) for _ in range(n_other)]
    fn = lambda x, *o: module(x + 1.0, *o)  # noqa: E731
    cfn, counter = compiled(fn)
    with torch.no_grad():
        close(cfn(x, *others), fn(x, *others))
        x1 = torch.randn(5, 48, dtype=dtype)  # a second input shape: 2-D rows
        o1 = [torch.randn(5, 40, dtype=dtype) for _ in range(n_other)]
        close(cfn(x1, *o1), fn(x1, *o1))
    assert counter.frame_count <= 2
