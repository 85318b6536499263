"""ipex attention ops (paged decode, reshape_and_cache, IAKV, varlen) against the plain-PyTorch references."""

import pytest
import torch

from ipex_core.isa import forced_isa, isa_levels
from ipex_core.reference import attention as R

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# fp32 accumulation everywhere; bf16 additionally rounds the probabilities that
# multiply V (AMX / AVX512-BF16 paths) and the output.
TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


# Unlike the element-wise kernels, attention has paths of its own at every
# level: bf16 decode uses vdpbf16ps from avx512_bf16 on, bf16 prefill uses AMX
# brgemm at amx. float32/float16 take the avx512 path there, so they run on the
# compiled kernel variants only.
def level_dtypes(dtypes=DTYPES):
    return [
        pytest.param((level, dt), id=f"{level}-{str(dt)[6:]}")
        for level in isa_levels()
        for dt in dtypes
        if dt == torch.bfloat16 or level not in ("avx512_bf16", "amx")
    ]


@pytest.fixture
def dtype(request):
    """(ISA level, dtype) from the parametrization; runs the test at that level, yields the dtype."""
    level, dt = request.param
    with forced_isa(level):
        yield dt


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


# ---------------------------------------------------------------- varlen ---

# (query lengths, key lengths, heads, kv heads, head_dim)
VARLEN_CASES = [
    ([1, 7, 33], None, 4, 4, 64),
    ([5, 70, 130], None, 4, 2, 128),
    ([3, 17], [9, 40], 2, 1, 64),  # different q / k lengths
    ([40, 1], [40, 90], 8, 2, 256),
    ([700], None, 2, 2, 128),  # several kv blocks and query blocks
    ([0, 20], [0, 20], 2, 2, 80),  # empty sequence; head_dim off the fast paths
]


@pytest.mark.parametrize("dtype", level_dtypes(), indirect=True)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", VARLEN_CASES, ids=lambda c: f"q{c[0]}k{c[1]}h{c[2]}/{c[3]}d{c[4]}")
def test_varlen_matches_reference(dtype, causal, case):
    lq, lk, H, Hkv, D = case
    lk = lk or lq
    torch.manual_seed(0)
    cq, ck = _cu(lq), _cu(lk)
    q = torch.randn(int(cq[-1]), H, D, dtype=dtype)
    k = torch.randn(int(ck[-1]), Hkv, D, dtype=dtype)
    v = torch.randn(int(ck[-1]), Hkv, D, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    torch.ops.ipex.varlen_attention(q, k, v, out, cq, ck, max(lq), max(lk), D**-0.5, causal)
    ref = torch.empty_like(q)
    R.varlen_attention(q, k, v, ref, cq, ck, max(lq), max(lk), D**-0.5, causal)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_varlen_long_sequence_bf16():
    torch.manual_seed(1)
    H, D = 2, 128
    cq = _cu([2048, 300])
    q, k, v = (torch.randn(2348, H, D, dtype=torch.bfloat16) for _ in range(3))
    out = torch.empty_like(q)
    torch.ops.ipex.varlen_attention(q, k, v, out, cq, cq.long(), 2048, 2048, D**-0.5, True)
    ref = torch.empty_like(q)
    R.varlen_attention(q, k, v, ref, cq, cq, 2048, 2048, D**-0.5, True)
    torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
def test_varlen_strided_inputs_and_out(dtype):
    torch.manual_seed(2)
    H, D = 4, 64
    cq = _cu([9, 31])
    qkv = torch.randn(40, 3, H, D, dtype=dtype)  # fused QKV projection output: strided views
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    out = torch.empty(40, D, H, dtype=dtype).transpose(1, 2)  # not unit stride on head_dim
    torch.ops.ipex.varlen_attention(q, k, v, out, cq, cq, 31, 31, 0.3, True)
    ref = torch.empty(40, H, D, dtype=dtype)
    R.varlen_attention(q, k, v, ref, cq, cq, 31, 31, 0.3, True)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_varlen_matches_sdpa_per_sequence():
    torch.manual_seed(3)
    lens = [12, 50]
    cq = _cu(lens)
    q, k, v = (torch.randn(62, 4, 64) for _ in range(3))
    out = torch.empty_like(q)
    torch.ops.ipex.varlen_attention(q, k, v, out, cq, cq, 50, 50, 0.125, True)
    for a, b in zip(cq[:-1].tolist(), cq[1:].tolist()):
        want = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=0.125
        ).transpose(0, 1)
        torch.testing.assert_close(out[a:b], want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- paged ---


def _paged_inputs(dtype, batch, H, Hkv, D, block_size, ctx, table_dtype=torch.int32, seed=0):
    torch.manual_seed(seed)
    max_blocks = max(1, max((c + block_size - 1) // block_size for c in ctx))
    num_blocks = batch * max_blocks + 3
    kc = torch.randn(num_blocks, block_size, Hkv, D, dtype=dtype)
    vc = torch.randn(num_blocks, block_size, Hkv, D, dtype=dtype)
    tables = torch.randperm(num_blocks)[: batch * max_blocks].view(batch, max_blocks).to(table_dtype)
    q = torch.randn(batch, H, D, dtype=dtype)
    head_mapping = (torch.arange(H) // (H // Hkv)).to(table_dtype)
    return q, kc, vc, head_mapping, tables, torch.tensor(ctx, dtype=table_dtype)


# (batch, heads, kv heads, head_dim, block size, context lengths)
PAGED_CASES = [
    (1, 4, 4, 64, 16, [1]),
    (3, 8, 2, 128, 16, [17, 0, 64]),
    (2, 8, 8, 256, 32, [100, 33]),
    (8, 4, 1, 64, 64, [5, 64, 65, 128, 1, 200, 7, 31]),
    (2, 6, 3, 128, 128, [300, 129]),
    (1, 2, 2, 80, 16, [40]),
]


@pytest.mark.parametrize("dtype", level_dtypes(), indirect=True)
@pytest.mark.parametrize("case", PAGED_CASES, ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}d{c[3]}bs{c[4]}")
def test_paged_decode_matches_reference(dtype, case):
    B, H, Hkv, D, bs, ctx = case
    q, kc, vc, hm, bt, cl = _paged_inputs(dtype, B, H, Hkv, D, bs, ctx, table_dtype=torch.int64 if B % 2 else torch.int32)
    out = torch.full_like(q, float("nan"))
    torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, D**-0.5, bt, cl, bs, max(ctx), None)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, D**-0.5, bt, cl, bs, max(ctx), None)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
def test_paged_decode_alibi_window_and_head_mapping(dtype):
    q, kc, vc, _, bt, cl = _paged_inputs(dtype, 3, 6, 3, 64, 16, [50, 3, 97], seed=4)
    hm = torch.tensor([2, 0, 1, 2, 0, 1], dtype=torch.int32)  # non-contiguous groups
    slopes = torch.rand(6)
    for window in (-1, 20):
        out = torch.empty_like(q)
        torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, 0.2, bt, cl, 16, 97, slopes, window)
        ref = torch.empty_like(q)
        R.paged_attention_decode(ref, q, kc, vc, hm, 0.2, bt, cl, 16, 97, slopes, window)
        torch.testing.assert_close(out, ref, **TOL[dtype])


def test_paged_decode_long_context():
    q, kc, vc, hm, bt, cl = _paged_inputs(torch.bfloat16, 2, 8, 2, 128, 16, [2048, 1500], seed=5)
    out = torch.empty_like(q)
    torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, 128**-0.5, bt, cl, 16, 2048, None)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, 128**-0.5, bt, cl, 16, 2048, None)
    torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
def test_paged_decode_strided(dtype):
    q, kc, vc, hm, bt, cl = _paged_inputs(dtype, 2, 4, 2, 64, 16, [30, 19], seed=6)
    q_strided = torch.randn(2, 64, 4, dtype=dtype).transpose(1, 2)
    q_strided.copy_(q)
    kc_wide = torch.randn(*kc.shape[:2], 3, 64, dtype=dtype)  # heads not adjacent: strided cache view
    kc_wide[:, :, ::2] = kc
    out = torch.empty(2, 64, 4, dtype=dtype).transpose(1, 2)
    torch.ops.ipex.paged_attention_decode(out, q_strided, kc_wide[:, :, ::2], vc, hm, 0.125, bt, cl, 16, 30, None)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, 0.125, bt, cl, 16, 30, None)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache_matches_reference(dtype, slot_dtype):
    torch.manual_seed(7)
    kc = torch.zeros(6, 16, 2, 64, dtype=dtype)
    vc = torch.zeros_like(kc)
    key = torch.randn(2, 10, 64, dtype=dtype).transpose(0, 1)  # [10, 2, 64], strided
    value = torch.randn(10, 2, 64, dtype=dtype)
    slots = torch.tensor([0, 5, 17, 95, -1, 40, 41, 16, 63, 2], dtype=slot_dtype)
    rk, rv = kc.clone(), vc.clone()
    torch.ops.ipex.reshape_and_cache(key, value, kc, vc, slots)
    R.reshape_and_cache(key, value, rk, rv, slots)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)


def test_reshape_then_decode_equals_dense_attention():
    torch.manual_seed(8)
    H, Hkv, D, bs = 4, 2, 64, 16
    lens = [37, 5]
    kc = torch.zeros(8, bs, Hkv, D)
    vc = torch.zeros_like(kc)
    tables = torch.tensor([[3, 6, 1], [0, 7, 2]], dtype=torch.int32)
    keys = [torch.randn(n, Hkv, D) for n in lens]
    values = [torch.randn(n, Hkv, D) for n in lens]
    for s, n in enumerate(lens):
        slots = torch.tensor([int(tables[s, t // bs]) * bs + t % bs for t in range(n)])
        torch.ops.ipex.reshape_and_cache(keys[s], values[s], kc, vc, slots)
    q = torch.randn(2, H, D)
    out = torch.empty_like(q)
    torch.ops.ipex.paged_attention_decode(out, q, kc, vc, torch.arange(H) // 2, 0.125, tables,
                                          torch.tensor(lens, dtype=torch.int32), bs, 37, None)
    for s in range(2):
        want = R.dense_attention(q[s : s + 1], keys[s], values[s], 0.125)[0]
        torch.testing.assert_close(out[s], want, rtol=1e-4, atol=1e-4)


# (heads, kv heads, head_dim): GQA groups of 1, 4, 8 and 20 (more query heads
# than one AMX tile holds, so the group is split into sub-groups sharing the
# packed V), head_dim 96 (three 32-wide K steps) and 256. On a CPU with AMX,
# bf16 groups of 8 and more run the AMX decode, smaller ones the AVX512-BF16
# loop: head_dims 96 and 256 come in a group of 4 and one of 8, for both.
DECODE_GROUP_CASES = [(8, 8, 128), (32, 8, 128), (16, 2, 64), (40, 2, 128), (8, 2, 96), (16, 2, 96), (4, 1, 256),
                      (8, 1, 256)]


@pytest.fixture
def threads(request):
    """torch thread count for the test (the decode splits contexts by it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("case", DECODE_GROUP_CASES, ids=lambda c: f"h{c[0]}/{c[1]}d{c[2]}")
def test_paged_decode_groups_and_split_contexts(dtype, threads, block_size, case):
    # Contexts around the 32-token step and the context partitions (256 tokens
    # or more, a multiple of 16), most of them not a multiple of either; block
    # size 8 puts two blocks in every 16-row K tile (the copied-rows path).
    H, Hkv, D = case
    ctx = [1, 31, 33, 255, 257, 1000, 2047]
    q, kc, vc, hm, bt, cl = _paged_inputs(dtype, len(ctx), H, Hkv, D, block_size, ctx, seed=H + D)
    out = torch.full_like(q, float("nan"))
    torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, D**-0.5, bt, cl, block_size, max(ctx), None)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, D**-0.5, bt, cl, block_size, max(ctx), None)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("threads", [1], indirect=True)
def test_decode_tiles_then_brgemm_prefill_same_thread(threads):
    # The AMX decode (a group of 8 query heads: see DECODE_GROUP_CASES) loads its own tile configuration;
    # oneDNN's brgemm (the prefill) must not run on it afterwards, nor the decode on oneDNN's.
    q, kc, vc, hm, bt, cl = _paged_inputs(torch.bfloat16, 2, 16, 2, 128, 16, [300, 77], seed=12)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, 0.1, bt, cl, 16, 300, None)
    cu = _cu([200, 130])
    vq, vk, vv = (torch.randn(330, 4, 128, dtype=torch.bfloat16) for _ in range(3))
    vref = torch.empty_like(vq)
    R.varlen_attention(vq, vk, vv, vref, cu, cu, 200, 200, 0.1, True)
    for _ in range(2):
        out = torch.empty_like(q)
        torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, 0.1, bt, cl, 16, 300, None)
        torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])
        vout = torch.empty_like(vq)
        torch.ops.ipex.varlen_attention(vq, vk, vv, vout, cu, cu, 200, 200, 0.1, True)
        torch.testing.assert_close(vout, vref, **TOL[torch.bfloat16])


def test_paged_decode_large_scores_bf16():
    # Scores spread over hundreds of units: the running max moves many times
    # within a context, and exp(score - max) must never overflow.
    q, kc, vc, hm, bt, cl = _paged_inputs(torch.bfloat16, 2, 8, 2, 128, 16, [700, 333], seed=11)
    kc *= torch.linspace(0.1, 40, kc.shape[0], dtype=torch.bfloat16).view(-1, 1, 1, 1)
    out = torch.empty_like(q)
    torch.ops.ipex.paged_attention_decode(out, q, kc, vc, hm, 1.0, bt, cl, 16, 700, None)
    ref = torch.empty_like(q)
    R.paged_attention_decode(ref, q, kc, vc, hm, 1.0, bt, cl, 16, 700, None)
    assert out.isfinite().all()
    torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])


# ------------------------------------------------------------------ IAKV ---


def _iakv_inputs(dtype, B, S, H, Hkv, D, offset, seed=0):
    torch.manual_seed(seed)
    max_seq = offset + S + 3
    kc = torch.randn(max_seq, B, Hkv, D, dtype=dtype)
    vc = torch.randn(max_seq, B, Hkv, D, dtype=dtype)
    hist = torch.randint(0, B, (max_seq, B))
    q = torch.randn(B, S, H, D, dtype=dtype)
    return q, kc, vc, hist


# (beams, new tokens, heads, kv heads, head_dim, cached positions)
IAKV_CASES = [
    (4, 1, 4, 4, 64, 9),  # beam decode
    (2, 1, 8, 2, 128, 300),  # GQA, several partitions
    (8, 1, 4, 1, 256, 33),
    (3, 6, 4, 2, 64, 0),  # prompt
    (2, 5, 4, 4, 64, 7),  # several new tokens after a prefix
    (1, 1, 2, 2, 80, 0),  # first token alone
]

# Rows of several beams and new tokens read in step (run_decode's rows_per_task, AVX512-BF16 loop): 12 rows
# whose last partitions differ in length (causal), sharing tasks (6 rows a task at 1 thread, 6 at 2).
IAKV_STEP_CASE = (4, 3, 8, 2, 128, 700)


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("causal", [True, False])
def test_iakv_rows_in_step(dtype, threads, causal):
    B, S, H, Hkv, D, off = IAKV_STEP_CASE
    q, kc, vc, hist = _iakv_inputs(dtype, B, S, H, Hkv, D, off, seed=5)
    out = torch.ops.ipex.iakv_attention(q, kc, vc, hist, off, D**-0.5, None, causal)
    ref = R.iakv_attention(q, kc, vc, hist, off, D**-0.5, None, causal)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", level_dtypes(), indirect=True)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", IAKV_CASES, ids=lambda c: f"b{c[0]}s{c[1]}h{c[2]}/{c[3]}d{c[4]}off{c[5]}")
def test_iakv_matches_reference(dtype, causal, case):
    B, S, H, Hkv, D, off = case
    q, kc, vc, hist = _iakv_inputs(dtype, B, S, H, Hkv, D, off)
    out = torch.ops.ipex.iakv_attention(q, kc, vc, hist, off, D**-0.5, None, causal)
    ref = R.iakv_attention(q, kc, vc, hist, off, D**-0.5, None, causal)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("off, S", [(0, 5), (6, 1), (6, 3), (600, 2)])
def test_iakv_bias(dtype, threads, off, S):
    B, H, Hkv, D = 3, 4, 2, 64
    q, kc, vc, hist = _iakv_inputs(dtype, B, S, H, Hkv, D, off, seed=9)
    L = off + S
    mask = torch.zeros(B, 1, 1, L + 2)
    mask[0, ..., :2] = float("-inf")  # left padding of beam 0
    alibi = torch.rand(1, H, 1, 1) * torch.arange(L + 2).view(1, 1, 1, -1)
    bias = mask + alibi
    out = torch.ops.ipex.iakv_attention(q, kc, vc, hist, off, 0.125, bias, True)
    ref = R.iakv_attention(q, kc, vc, hist, off, 0.125, bias, True)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    # A row that sees nothing gives zeros, not NaN.
    full = torch.full((B, 1, S, L), float("-inf"))
    assert torch.equal(torch.ops.ipex.iakv_attention(q, kc, vc, hist, off, 0.125, full, True), torch.zeros_like(q))


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("case", DECODE_GROUP_CASES, ids=lambda c: f"h{c[0]}/{c[1]}d{c[2]}")
def test_iakv_groups_and_split_contexts(dtype, threads, case):
    H, Hkv, D = case
    q, kc, vc, hist = _iakv_inputs(dtype, 3, 1, H, Hkv, D, 777, seed=H + D)
    out = torch.ops.ipex.iakv_attention(q, kc, vc, hist, 777, D**-0.5, None, True)
    ref = R.iakv_attention(q, kc, vc, hist, 777, D**-0.5, None, True)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_iakv_offset_tensor_overload_matches_int_offset_and_compiles_once():
    # The overload a compiled decode step calls: the offset as a tensor, so the graph
    # does not bake it in as a constant.
    B, S, H, Hkv, D, off = 4, 1, 4, 2, 64, 9
    q, kc, vc, hist = _iakv_inputs(torch.float32, B, S, H, Hkv, D, off, seed=3)
    ref = R.iakv_attention(q, kc, vc, hist, off, 0.125, None, True)
    out = torch.ops.ipex.iakv_attention.offset_tensor(q, kc, vc, hist, torch.tensor(off), 0.125, None, True)
    torch.testing.assert_close(out, ref)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    step = torch.compile(lambda q, offset: torch.ops.ipex.iakv_attention.offset_tensor(q, kc, vc, hist, offset,
                                                                                        0.125, None, True),
                         fullgraph=True, dynamic=False)
    for o in (off, off + 1, off + 2):
        torch.testing.assert_close(step(q, torch.tensor(o)), R.iakv_attention(q, kc, vc, hist, o, 0.125, None, True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1  # no recompile per offset
    with pytest.raises(RuntimeError, match="offset must be a one-element integer tensor"):
        torch.ops.ipex.iakv_attention.offset_tensor(q, kc, vc, hist, torch.tensor(9.0), 0.125, None, True)


def test_iakv_strided_query():
    B, S, H, D = 2, 1, 4, 64
    q, kc, vc, hist = _iakv_inputs(torch.float32, B, S, H, H, D, 10, seed=10)
    qs = torch.randn(B, S, D, H).transpose(2, 3)
    qs.copy_(q)
    torch.testing.assert_close(torch.ops.ipex.iakv_attention(qs, kc, vc, hist, 10, 0.125, None, True),
                               R.iakv_attention(q, kc, vc, hist, 10, 0.125, None, True))


# ------------------------------------------------------------- bad input ---


def _paged_args(**over):
    q, kc, vc, hm, bt, cl = _paged_inputs(torch.float32, 2, 4, 2, 64, 16, [20, 31])
    args = dict(out=torch.empty_like(q), query=q, key_cache=kc, value_cache=vc, head_mapping=hm, scale=0.1,
                block_tables=bt, context_lens=cl, block_size=16, max_context_len=31, alibi_slopes=None)
    args.update(over)
    return list(args.values())


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(block_tables=torch.tensor([[0, 1], [2, 99]], dtype=torch.int32)), r"block_tables\[1, 1\] = 99 is not a block"),
        (dict(context_lens=torch.tensor([20, 40], dtype=torch.int32), max_context_len=40), "exceeds what block_tables can address"),
        (dict(context_lens=torch.tensor([20, 31], dtype=torch.int32), max_context_len=25), "exceeds max_context_len"),
        (dict(block_size=32), "block_size=32 but key_cache.size"),
        (dict(block_size=0), "block_size must be positive; got 0"),
        (dict(head_mapping=torch.tensor([0, 1, 2, 0])), r"head_mapping\[2\] = 2 is not a kv head"),
        (dict(query=torch.randn(2, 4, 32), out=torch.empty(2, 4, 32)), "must equal query head_size"),
        (dict(query=torch.randn(2, 4, 64, dtype=torch.float64)), "dtype must be float32, bfloat16 or float16"),
        (dict(out=torch.empty(2, 4, 64, dtype=torch.bfloat16)), "out dtype"),
        (dict(block_tables=torch.zeros(2, 2)), "block_tables must be int32 or int64"),
        (dict(key_cache=torch.randn(10, 16, 64)), "key_cache must be 4-D"),
        (dict(query=torch.randn(2, 4, 64, device="meta")), "query is on meta but out is on cpu"),
    ],
)
def test_paged_decode_bad_input(over, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ipex.paged_attention_decode(*_paged_args(**over))


def test_reshape_and_cache_bad_input():
    kc, vc = torch.zeros(2, 16, 2, 8), torch.zeros(2, 16, 2, 8)
    k = torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match=r"slot_mapping\[1\] = 32 is past the cache's 32 slots"):
        torch.ops.ipex.reshape_and_cache(k, k, kc, vc, torch.tensor([0, 32, 1]))
    with pytest.raises(RuntimeError, match=r"slot_mapping\[2\] = -2 is negative; .* or -1 for a padding token"):
        torch.ops.ipex.reshape_and_cache(k, k, kc, vc, torch.tensor([0, -1, -2]))
    torch.ops.ipex.reshape_and_cache(k, k, kc, vc, torch.tensor([0, -1, 5]))  # -1: padding, skipped
    assert torch.equal(kc[0, 5], k[2]) and not kc[0, 1:5].any()
    with pytest.raises(RuntimeError, match="one slot per token"):
        torch.ops.ipex.reshape_and_cache(k, k, kc, vc, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="do not match the cache"):
        torch.ops.ipex.reshape_and_cache(torch.randn(3, 2, 4), torch.randn(3, 2, 4), kc, vc, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="key_cache dtype"):
        torch.ops.ipex.reshape_and_cache(k, k, kc.bfloat16(), vc, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="slot_mapping must be int32 or int64"):
        torch.ops.ipex.reshape_and_cache(k, k, kc, vc, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(RuntimeError, match="unit stride along head_size"):
        wide = torch.zeros(2, 16, 2, 16)
        torch.ops.ipex.reshape_and_cache(k, k, wide[..., ::2], vc, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match=r"key_cache.size\(1\) \(block_size\) is 0"):
        empty = torch.zeros(2, 0, 2, 8)
        torch.ops.ipex.reshape_and_cache(k, k, empty, empty.clone(), torch.tensor([-1, -1, -1]))


def test_iakv_bad_input():
    q, kc, vc, hist = _iakv_inputs(torch.float32, 2, 1, 4, 2, 64, 5)
    with pytest.raises(RuntimeError, match=r"beam_idx\[\d, \d\] = 7 is not a beam index"):
        torch.ops.ipex.iakv_attention(q, kc, vc, torch.full_like(hist, 7), 5, 0.1, None, True)
    with pytest.raises(RuntimeError, match="exceeds the cache's"):
        torch.ops.ipex.iakv_attention(q, kc, vc, hist, kc.shape[0], 0.1, None, True)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        torch.ops.ipex.iakv_attention(q, kc, vc, hist, 5, 0.1, torch.zeros(3, 1, 1, 6), True)
    with pytest.raises(RuntimeError, match="covers 4 key positions"):
        torch.ops.ipex.iakv_attention(q, kc, vc, hist, 5, 0.1, torch.zeros(2, 1, 1, 4), True)
    with pytest.raises(RuntimeError, match="attn_bias must be float32"):
        torch.ops.ipex.iakv_attention(q, kc, vc, hist, 5, 0.1, torch.zeros(2, 1, 1, 6, dtype=torch.bfloat16), True)
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        torch.ops.ipex.iakv_attention(torch.randn(2, 1, 3, 64), kc, vc, hist, 5, 0.1, None, True)


def test_varlen_bad_input():
    q = torch.randn(10, 4, 64)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    out = torch.empty_like(q)
    with pytest.raises(RuntimeError, match="more than max_seqlen_q=5"):
        torch.ops.ipex.varlen_attention(q, q, q, out, cu, cu, 5, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.ipex.varlen_attention(q, q, q, out, torch.tensor([0, 6, 4]), cu, 10, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="query / key hold 10 / 10 tokens"):
        torch.ops.ipex.varlen_attention(q, q, q, out, torch.tensor([0, 4, 12]), cu, 10, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="seqlen_q and seqlen_k must both be"):
        torch.ops.ipex.varlen_attention(q, q, q, out, cu, torch.tensor([0, 10]), 10, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="value dtype"):
        torch.ops.ipex.varlen_attention(q, q, q.half(), out, cu, cu, 10, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="out shape"):
        torch.ops.ipex.varlen_attention(q, q, q, out[:5], cu, cu, 10, 10, 0.1, True)
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        torch.ops.ipex.varlen_attention(q, q[:, :3], q[:, :3], out, cu, cu, 10, 10, 0.1, True)


# ---------------------------------------------------------- opcheck/meta ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    q, kc, vc, hm, bt, cl = _paged_inputs(dtype, 2, 4, 2, 64, 16, [20, 31])
    torch.library.opcheck(torch.ops.ipex.paged_attention_decode.default,
                          (torch.empty_like(q), q, kc, vc, hm, 0.1, bt, cl, 16, 31, torch.rand(4), -1))
    torch.library.opcheck(torch.ops.ipex.reshape_and_cache.default,
                          (torch.randn(3, 2, 64, dtype=dtype), torch.randn(3, 2, 64, dtype=dtype), kc.clone(),
                           vc.clone(), torch.tensor([0, 7, 40])))
    q4, kc4, vc4, hist = _iakv_inputs(dtype, 2, 1, 4, 2, 64, 5)
    torch.library.opcheck(torch.ops.ipex.iakv_attention.default, (q4, kc4, vc4, hist, 5, 0.1, None, True))
    torch.library.opcheck(torch.ops.ipex.iakv_attention.default,
                          (torch.randn(2, 3, 4, 64, dtype=dtype), kc4, vc4, hist, 0, 0.1, torch.zeros(2, 1, 3, 3), True))
    cu = _cu([3, 9])
    qv = torch.randn(12, 4, 64, dtype=dtype)
    torch.library.opcheck(torch.ops.ipex.varlen_attention.default,
                          (qv, qv.clone(), qv.clone(), torch.empty_like(qv), cu, cu, 9, 9, 0.1, True))


def test_compile_fullgraph_decode_step():
    q, kc, vc, hm, bt, cl = _paged_inputs(torch.float32, 2, 4, 2, 64, 16, [20, 31])

    def step(q, k_new, v_new, kc, vc, slots):
        torch.ops.ipex.reshape_and_cache(k_new, v_new, kc, vc, slots)
        out = torch.empty_like(q)
        torch.ops.ipex.paged_attention_decode(out, q * 1.0, kc, vc, hm, 0.125, bt, cl, 16, 31, None)
        return out

    k_new, v_new = torch.randn(2, 2, 64), torch.randn(2, 2, 64)
    slots = torch.tensor([int(bt[0, 1]) * 16 + 3, int(bt[1, 1]) * 16 + 14])
    want = step(q, k_new, v_new, kc.clone(), vc.clone(), slots)
    got = torch.compile(step, fullgraph=True)(q, k_new, v_new, kc.clone(), vc.clone(), slots)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------ NaN ---


@pytest.mark.parametrize("dtype", level_dtypes([torch.float32, torch.bfloat16]), indirect=True)
@pytest.mark.parametrize("nan_at", [5, 280])
def test_nan_in_a_key_propagates(dtype, nan_at):
    """A NaN score made its block look fully masked (max(-inf, NaN) is -inf), so the block was dropped and the
    output came out finite and wrong (zeros, or attention over the other blocks only). SDPA gives NaN."""
    torch.manual_seed(0)
    L, H, D = 300, 2, 64
    q, k, v = (torch.randn(L, H, D, dtype=dtype) for _ in range(3))
    k[nan_at, 1, 0] = float("nan")
    cu = _cu([L])
    out = torch.empty_like(q)
    torch.ops.ipex.varlen_attention(q, k, v, out, cu, cu, L, L, D**-0.5, False)
    assert out[:, 1].isnan().all() and not out[:, 0].isnan().any()
    # Decode over a paged cache holding the same keys.
    block = 16
    blocks = (L + block - 1) // block
    kc = torch.zeros(blocks, block, H, D, dtype=dtype)
    vc = torch.zeros_like(kc)
    kc.view(-1, H, D)[:L], vc.view(-1, H, D)[:L] = k, v
    tables = torch.arange(blocks, dtype=torch.int32).view(1, blocks)
    dec = torch.empty(1, H, D, dtype=dtype)
    torch.ops.ipex.paged_attention_decode(dec, q[:1], kc, vc, torch.arange(H, dtype=torch.int32), D**-0.5, tables,
                                          torch.tensor([L], dtype=torch.int32), block, L, None)
    assert dec[0, 1].isnan().all() and not dec[0, 0].isnan().any()


# ------------------------------------------------------ review findings ---


@pytest.mark.parametrize("dtype", level_dtypes(), indirect=True)
@pytest.mark.parametrize("scale", [1e9, 1e10, -1e10])
def test_softmax_at_huge_logit_scales_matches_sdpa(dtype, scale):
    """Scaled logits near 1e10: the folded exp(s * scale - fl(max * scale)) kept a residual as large as
    ulp(1e10) / 2 in the exponent (NaN rows at 1e9, all-zero rows at 1e10; SDPA gives the right answer)."""
    q = torch.tensor([[[3.0]], [[3.0]], [[-1.0]]]).to(dtype)
    k = torch.tensor([[[7.0]], [[5.0]], [[6.0]]]).to(dtype)
    v = torch.tensor([[[1.0]], [[2.0]], [[4.0]]]).to(dtype)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    out = torch.empty_like(q)
    torch.ops.ipex.varlen_attention(q, k, v, out, cu, cu, 3, 3, scale, False)
    want = torch.nn.functional.scaled_dot_product_attention(q.float().transpose(0, 1), k.float().transpose(0, 1),
                                                             v.float().transpose(0, 1), scale=scale).transpose(0, 1)
    torch.testing.assert_close(out.float(), want, rtol=0, atol=1e-6)


def test_written_tensors_with_shared_elements_are_refused():
    """Ops that write into a caller's tensor refuse an expanded (stride-0) one: every row written there
    overwrote the others (varlen into an expanded out: every row equal to the last one written)."""
    q = torch.randn(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="out is written to, but several of its elements share one memory"):
        torch.ops.ipex.varlen_attention(q, q, q, torch.empty(1, 2, 8).expand(4, 2, 8), cu, cu, 4, 4, 0.3, False)
    args = list(_paged_args())
    args[0] = torch.empty(1, *args[0].shape[1:]).expand_as(args[0])
    with pytest.raises(RuntimeError, match="out is written to"):
        torch.ops.ipex.paged_attention_decode(*args)
    k = torch.randn(3, 2, 8)
    cache = torch.zeros(1, 16, 2, 8).expand(2, 16, 2, 8)
    with pytest.raises(RuntimeError, match="key_cache is written to"):
        torch.ops.ipex.reshape_and_cache(k, k, cache, torch.zeros(2, 16, 2, 8), torch.tensor([0, 1, 2]))


def test_iakv_negative_offset_says_so():
    q, kc, vc, hist = _iakv_inputs(torch.float32, 2, 1, 4, 2, 64, 5)
    with pytest.raises(RuntimeError, match="offset .* must be >= 0; got -1"):
        torch.ops.ipex.iakv_attention(q, kc, vc, hist, -1, 0.1, None, True)
