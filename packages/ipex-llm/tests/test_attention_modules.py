"""ipex.llm attention API (IAKV, PagedAttention, VarlenAttention) against plain-PyTorch references."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import ipex
from ipex.llm.functional import indirect_access_kv_cache_attention, varlen_attention
from ipex.llm.modules import IndirectAccessKVCacheAttention, PagedAttention, VarlenAttention

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def sdpa(q, k, v, scale, causal=False, bias=None):
    """q [B, S, H, D], k/v [B, L, Hkv, D] -> [B, S, H, D] in fp32 (GQA by repeating kv heads)."""
    H, Hkv = q.shape[2], k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(H // Hkv, 1), vf.repeat_interleave(H // Hkv, 1)
    s = scale * qf @ kf.transpose(-1, -2)
    if bias is not None:
        s = s + bias
    if causal:
        S, L = s.shape[-2:]
        s = s.masked_fill(torch.arange(L).view(1, L) > (L - S) + torch.arange(S).view(S, 1), float("-inf"))
    return (torch.softmax(s, -1) @ vf).transpose(1, 2)


def test_exported_names():
    assert ipex.llm.modules.IndirectAccessKVCacheAttention is IndirectAccessKVCacheAttention
    assert ipex.llm.modules.PagedAttention is PagedAttention
    assert ipex.llm.modules.VarlenAttention is VarlenAttention
    assert ipex.llm.functional.indirect_access_kv_cache_attention is indirect_access_kv_cache_attention
    assert ipex.llm.functional.varlen_attention is varlen_attention
    for name in ("IndirectAccessKVCacheAttention", "PagedAttention", "VarlenAttention"):
        assert name in ipex.llm.modules.__all__
    # The API's forward signature of VarlenAttention, names and defaults.
    api = ("query key value out seqlen_q seqlen_k max_seqlen_q max_seqlen_k pdropout softmax_scale zero_tensors "
           "is_causal return_softmax gen_").split()
    params = inspect.signature(VarlenAttention.forward).parameters
    assert list(params)[1:] == api
    assert [params[n].default for n in ("zero_tensors", "is_causal", "return_softmax", "gen_")] == [False, True,
                                                                                                  False, None]


# ------------------------------------------------------------------- IAKV ---


def _reorder_cache(past_key_values, beam_idx):
    """The API's snippet, as written."""
    if len(past_key_values[0]) == 4 and past_key_values[0][0].shape[-1] == 1:
        for layer_past in past_key_values:
            layer_past[3][layer_past[0].size(-2) - 1] = beam_idx
        return past_key_values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 64), (8, 2, 128)])
def test_iakv_beam_search_matches_reordered_cache(dtype, heads, kv_heads, head_dim):
    torch.manual_seed(0)
    B, prompt, steps, layers = 6, 5, 6, 2
    scale = math.sqrt(head_dim)
    module = IndirectAccessKVCacheAttention(text_max_length=8)  # grows past 8 during the run
    past = [None] * layers
    ref_k = [None] * layers
    ref_v = [None] * layers
    for step in range(steps + 1):
        S = prompt if step == 0 else 1
        if step > 0:
            beam_idx = torch.randint(0, B, (B,))
            past = list(_reorder_cache(tuple(past), beam_idx))
            ref_k = [k[beam_idx] for k in ref_k]  # what a copying cache does
            ref_v = [v[beam_idx] for v in ref_v]
        for layer in range(layers):
            q = torch.randn(B, S, heads, head_dim, dtype=dtype)
            k = torch.randn(B, S, kv_heads, head_dim, dtype=dtype)
            v = torch.randn(B, S, kv_heads, head_dim, dtype=dtype)
            out, weights, past[layer] = module(q, k, v, scale, past[layer])
            assert weights is None
            ref_k[layer] = k if step == 0 else torch.cat([ref_k[layer], k], 1)
            ref_v[layer] = v if step == 0 else torch.cat([ref_v[layer], v], 1)
            want = sdpa(q, ref_k[layer], ref_v[layer], 1 / scale, causal=True)
            assert out.shape == q.shape and out.dtype == dtype
            torch.testing.assert_close(out.float(), want, **TOL[dtype])
            seq_info, key_cache, value_cache, beam_hist = past[layer]
            assert seq_info.shape == (1, 1, prompt + step, 1)
            assert key_cache.shape[1:] == (B, kv_heads, head_dim) and beam_hist.shape[1] == B
    assert key_cache.shape[0] >= prompt + steps > 8


def test_iakv_reorder_never_copies_the_cache():
    B, H, D = 4, 2, 64
    q, k, v = torch.randn(B, 3, H, D), torch.randn(B, 3, H, D), torch.randn(B, 3, H, D)
    _, _, past = IndirectAccessKVCacheAttention(16)(q, k, v, 8.0, None)
    ptrs = (past[1].data_ptr(), past[2].data_ptr())
    _reorder_cache((past,), torch.tensor([3, 3, 0, 1]))
    q1, k1, v1 = torch.randn(B, 1, H, D), torch.randn(B, 1, H, D), torch.randn(B, 1, H, D)
    _, _, past = IndirectAccessKVCacheAttention.apply_function(q1, k1, v1, 8.0, past)
    assert (past[1].data_ptr(), past[2].data_ptr()) == ptrs
    assert past[3][2].tolist() == [3, 3, 0, 1]


def test_iakv_apply_function_equals_forward_and_functional():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 4, 64), torch.randn(2, 4, 2, 64), torch.randn(2, 4, 2, 64)
    a = IndirectAccessKVCacheAttention(32)(q, k, v, 8.0)[0]
    b = IndirectAccessKVCacheAttention.apply_function(q, k, v, 8.0, None, text_max_length=32)[0]
    c = indirect_access_kv_cache_attention(q, k, v, 8.0)[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_iakv_padding_mask_and_alibi():
    torch.manual_seed(2)
    B, H, D, prompt = 3, 4, 64, 6
    pad = torch.ones(B, prompt + 2, dtype=torch.long)
    pad[0, :2] = 0  # left padding
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    past, keys, values = None, [], []
    for step in range(3):
        S = prompt if step == 0 else 1
        L = prompt + step
        q, k, v = torch.randn(B, S, H, D), torch.randn(B, S, H, D), torch.randn(B, S, H, D)
        out, _, past = indirect_access_kv_cache_attention(q, k, v, 8.0, past, attention_mask=pad[:, :L], alibi=slopes)
        keys.append(k)
        values.append(v)
        bias = torch.zeros(B, 1, 1, L).masked_fill(pad[:, None, None, :L] == 0, float("-inf"))
        bias = bias + slopes.view(1, H, 1, 1) * torch.arange(L).view(1, 1, 1, L)
        want = sdpa(q, torch.cat(keys, 1), torch.cat(values, 1), 1 / 8.0, causal=True, bias=bias)
        want[0, : max(0, 2 - (L - S))] = 0  # query rows that see only padding give zeros
        torch.testing.assert_close(out, want.nan_to_num(0.0), rtol=1e-4, atol=1e-4)


def test_iakv_bloom_alibi_and_4d_mask():
    torch.manual_seed(3)
    B, H, D, S = 2, 4, 64, 5
    q, k, v = torch.randn(B, S, H, D), torch.randn(B, S, H, D), torch.randn(B, S, H, D)
    alibi = torch.randn(B * H, 1, S)  # BLOOM's layout
    mask = torch.zeros(B, 1, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -1e9)
    out, _, _ = indirect_access_kv_cache_attention(q, k, v, 8.0, attention_mask=mask, alibi=alibi, add_casual_mask=False)
    want = sdpa(q, k, v, 1 / 8.0, bias=mask + alibi.view(B, H, 1, S))
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    bool_mask = torch.ones(B, 1, S, S, dtype=torch.bool).tril()
    out2, _, _ = indirect_access_kv_cache_attention(q, k, v, 8.0, attention_mask=bool_mask, add_casual_mask=False)
    torch.testing.assert_close(out2, sdpa(q, k, v, 1 / 8.0, causal=True), rtol=1e-4, atol=1e-4)


def test_iakv_bad_input():
    q = torch.randn(2, 1, 4, 64)
    with pytest.raises(ValueError, match="head_mask is not supported"):
        indirect_access_kv_cache_attention(q, q, q, 8.0, head_mask=torch.ones(4))
    with pytest.raises(ValueError, match="key .* does not match query"):
        indirect_access_kv_cache_attention(q, torch.randn(3, 1, 4, 64), torch.randn(3, 1, 4, 64), 8.0)
    with pytest.raises(ValueError, match="dtypes must match"):
        indirect_access_kv_cache_attention(q, q.bfloat16(), q, 8.0)
    additive = torch.zeros(2, 1).masked_fill(torch.tensor([[True], [False]]), float("-inf"))
    with pytest.raises(ValueError, match="2-D attention_mask is a padding mask with 1 = attend"):
        indirect_access_kv_cache_attention(q, q, q, 8.0, attention_mask=additive)
    with pytest.raises(ValueError, match="covers 1 key positions"):
        indirect_access_kv_cache_attention(torch.randn(2, 3, 4, 64), torch.randn(2, 3, 4, 64), torch.randn(2, 3, 4, 64),
                                           8.0, attention_mask=torch.ones(2, 1))
    _, _, past = indirect_access_kv_cache_attention(q, q, q, 8.0, text_max_length=4)
    with pytest.raises(ValueError, match="does not fit key"):
        indirect_access_kv_cache_attention(torch.randn(3, 1, 4, 64), torch.randn(3, 1, 4, 64), torch.randn(3, 1, 4, 64),
                                           8.0, past)


def test_iakv_alibi_slopes_must_be_one_per_head():
    """3 slopes for 4 heads failed in a reshape ("shape '[1, 4, 1, 1]' is invalid for input of size 3")."""
    q = torch.randn(2, 3, 4, 64)
    for n in (3, 5, 8):
        with pytest.raises(ValueError, match=f"one slope per query head; got {n} slopes for 4 heads"):
            indirect_access_kv_cache_attention(q, q, q, 8.0, alibi=torch.rand(n))
    # GQA: the slopes follow the query heads, not the kv heads
    kv = torch.randn(2, 3, 2, 64)
    out, _, _ = indirect_access_kv_cache_attention(q, kv, kv, 8.0, alibi=torch.rand(4))
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="got 2 slopes for 4 heads"):
        indirect_access_kv_cache_attention(q, kv, kv, 8.0, alibi=torch.rand(2))


# ------------------------------------------------------------------ Paged ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 64), (8, 2, 128), (4, 1, 256)])
def test_paged_attention_matches_dense(dtype, block_size, heads, kv_heads, head_dim):
    torch.manual_seed(4)
    lens = [1, 37, 150][: 1 + (block_size + heads) % 3] + [70]
    batch = len(lens)
    blocks_per_seq = max((n + block_size - 1) // block_size for n in lens)
    num_blocks = batch * blocks_per_seq + 2
    key_cache = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype)
    value_cache = torch.zeros_like(key_cache)
    tables = torch.randperm(num_blocks)[: batch * blocks_per_seq].view(batch, blocks_per_seq).int()
    keys = [torch.randn(n, kv_heads, head_dim, dtype=dtype) for n in lens]
    values = [torch.randn(n, kv_heads, head_dim, dtype=dtype) for n in lens]
    # the prompt tokens of every sequence in one call (vLLM's prefill), int64 slots
    slots = torch.cat([tables[s, torch.arange(n) // block_size].long() * block_size + torch.arange(n) % block_size
                       for s, n in enumerate(lens)])
    PagedAttention.reshape_and_cache(torch.cat(keys), torch.cat(values), key_cache, value_cache, slots)
    q = torch.randn(batch, heads, head_dim, dtype=dtype)
    out = torch.empty_like(q)
    head_mapping = torch.arange(heads, dtype=torch.int32) // (heads // kv_heads)
    PagedAttention.single_query_cached_kv_attention(out, q, key_cache, value_cache, head_mapping, head_dim**-0.5,
                                                    tables, torch.tensor(lens, dtype=torch.int32), block_size,
                                                    max(lens), None)
    for s in range(batch):
        want = sdpa(q[s : s + 1, None], keys[s][None], values[s][None], head_dim**-0.5)[0, 0]
        torch.testing.assert_close(out[s].float(), want, **TOL[dtype])


def test_paged_attention_alibi_and_sliding_window():
    torch.manual_seed(5)
    H, D, bs, n = 4, 64, 16, 45
    key_cache, value_cache = torch.randn(4, bs, H, D), torch.randn(4, bs, H, D)
    tables = torch.tensor([[2, 0, 3]], dtype=torch.int32)
    k = key_cache[tables[0].long()].reshape(-1, H, D)[:n]
    v = value_cache[tables[0].long()].reshape(-1, H, D)[:n]
    q = torch.randn(1, H, D)
    slopes = torch.tensor([0.3, 0.1, 0.05, 0.0])
    out = torch.empty_like(q)
    PagedAttention.single_query_cached_kv_attention(out, q, key_cache, value_cache, torch.arange(H), 0.125, tables,
                                                    torch.tensor([n]), bs, n, slopes, sliding_window=20)
    bias = slopes.view(1, H, 1, 1) * (torch.arange(n) - (n - 1)).view(1, 1, 1, n)
    bias = bias.masked_fill((torch.arange(n) < n - 20).view(1, 1, 1, n), float("-inf"))
    want = sdpa(q[:, None], k[None], v[None], 0.125, bias=bias)[0, 0]
    torch.testing.assert_close(out[0], want, rtol=1e-4, atol=1e-4)


def test_paged_attention_bad_input():
    key_cache = torch.zeros(2, 16, 2, 64)
    with pytest.raises(RuntimeError, match="past the cache's 32 slots"):
        PagedAttention.reshape_and_cache(torch.randn(1, 2, 64), torch.randn(1, 2, 64), key_cache, key_cache.clone(),
                                         torch.tensor([40], dtype=torch.int32))
    q = torch.randn(1, 2, 64)
    with pytest.raises(RuntimeError, match="is not a block of the cache"):
        PagedAttention.single_query_cached_kv_attention(torch.empty_like(q), q, key_cache, key_cache, torch.arange(2),
                                                        0.1, torch.tensor([[5]]), torch.tensor([3]), 16, 3, None)


# ----------------------------------------------------------------- Varlen ---


def _packed(lens_q, lens_k, H, Hkv, D, dtype=torch.float32):
    cq = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    ck = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(cq[-1]), H, D, dtype=dtype)
    k = torch.randn(int(ck[-1]), Hkv, D, dtype=dtype)
    v = torch.randn(int(ck[-1]), Hkv, D, dtype=dtype)
    return q, k, v, cq, ck


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lens_q, lens_k, H, Hkv, D", [([3, 64, 17], None, 4, 4, 64), ([8, 30], [20, 30], 8, 2, 128)])
def test_varlen_matches_sdpa_per_sequence(dtype, causal, lens_q, lens_k, H, Hkv, D):
    torch.manual_seed(6)
    lens_k = lens_k or lens_q
    q, k, v, cq, ck = _packed(lens_q, lens_k, H, Hkv, D, dtype)
    out = torch.empty_like(q)
    res = VarlenAttention()(q, k, v, out, cq, ck, max(lens_q), max(lens_k), 0.0, D**-0.5, is_causal=causal)
    assert res is out
    for i in range(len(lens_q)):
        qs, ks, vs = q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]]
        want = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1),
                                              is_causal=causal, scale=D**-0.5, enable_gqa=True).transpose(0, 1)
        torch.testing.assert_close(out[cq[i] : cq[i + 1]], want, **TOL[dtype])


def test_varlen_apply_function_functional_and_defaults():
    torch.manual_seed(7)
    q, k, v, cq, ck = _packed([5, 9], [5, 9], 2, 2, 64)
    a, b = torch.empty_like(q), torch.empty_like(q)
    VarlenAttention.apply_function(q, k, v, a, cq, ck, 9, 9, 0.0, None)  # softmax_scale None: 1/sqrt(D)
    varlen_attention(q, k, v, b, cq, ck, 9, 9, 0.0, 0.125, False, True, False, None)
    torch.testing.assert_close(a, b)
    # zero_tensors clears the rows past the last sequence (padding tokens)
    qp, kp, vp = (torch.cat([t, torch.randn(2, 2, 64)]) for t in (q, k, v))
    big = torch.full((16, 2, 64), 7.0)
    varlen_attention(qp, kp, vp, big, cq, ck, 9, 9, 0.0, 0.125, zero_tensors=True)
    assert torch.equal(big[14:], torch.zeros(2, 2, 64))
    torch.testing.assert_close(big[:14], a)


def test_varlen_dropout_and_return_softmax():
    torch.manual_seed(8)
    q, k, v, cq, ck = _packed([4, 6], [4, 6], 2, 2, 32)
    outs = []
    for global_seed in range(2):
        torch.manual_seed(global_seed)  # the global RNG differs between the two calls: only gen_ may decide
        out = torch.empty_like(q)
        varlen_attention(q, k, v, out, cq, ck, 6, 6, 0.5, 0.2, gen_=torch.Generator().manual_seed(3))
        outs.append(out)
    assert torch.equal(outs[0], outs[1])  # the generator decides the mask
    other = varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 6, 6, 0.5, 0.2, gen_=torch.Generator().manual_seed(4))
    assert not torch.equal(other, outs[0])  # another seed, another mask
    plain = varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 6, 6, 0.0, 0.2)
    assert not torch.allclose(outs[0], plain)
    out, probs = varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 6, 6, 0.0, 0.2, return_softmax=True)
    torch.testing.assert_close(out, plain)
    assert probs.shape == (2, 2, 6, 6)
    torch.testing.assert_close(probs[0, :, :4, :4].sum(-1), torch.ones(2, 4))
    assert torch.equal(probs[0, :, 0, 1:], torch.zeros(2, 5))  # causal


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_dropout_drops_probabilities_at_the_rate_and_rescales(causal):
    """With one-hot values (row j of V is e_j) the output is the dropped probability matrix itself, so the
    dropout is checked entry by entry: every probability is either zeroed or scaled by 1/(1 - pdropout),
    at the rate pdropout, independently per head, from probabilities equal to softmax(scale * q k^T)."""
    pd, scale, H, Hkv, D = 0.3, 0.2, 2, 1, 64
    lens = [40, 56]
    torch.manual_seed(9)
    q, k, _, cq, ck = _packed(lens, lens, H, Hkv, D)
    v = torch.zeros_like(k)
    for i, n in enumerate(lens):
        v[ck[i] : ck[i + 1], :, :n] = torch.eye(n)[:, None, :]
    out, probs = varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 56, 56, pd, scale, is_causal=causal,
                                  return_softmax=True, gen_=torch.Generator().manual_seed(5))
    again = varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 56, 56, pd, scale, is_causal=causal,
                             gen_=torch.Generator().manual_seed(5))
    assert torch.equal(again, out)  # return_softmax does not change the mask
    dropped = allowed = both = pairs = 0
    for i, n in enumerate(lens):
        rows = out[cq[i] : cq[i + 1]].transpose(0, 1)  # [H, n, D]: row r of head h is p_h[r] after dropout
        assert torch.equal(rows[..., n:], torch.zeros(H, n, D - n))
        p, got = probs[i, :, :n, :n], rows[..., :n]
        # probabilities before dropout (returned): the fp32 reference softmax, causal-masked
        want = sdpa(q[cq[i] : cq[i + 1]][None], k[ck[i] : ck[i + 1]][None], torch.eye(n)[None, :, None, :].expand(
            1, n, Hkv, n), scale, causal=causal)[0].transpose(0, 1)
        torch.testing.assert_close(p, want, **TOL[torch.float32])
        mask = p > 0  # where attention is allowed (all of it without the causal mask)
        assert torch.equal(mask, torch.ones(n, n, dtype=torch.bool).tril().expand(H, n, n) if causal
                           else torch.ones(H, n, n, dtype=torch.bool))
        kept = got != 0
        assert not (kept & ~mask).any()  # nothing appears where the softmax was 0
        # inverted dropout: a kept probability is scaled by 1 / (1 - pdropout), unbiased in expectation
        torch.testing.assert_close(got[kept], p[kept] / (1 - pd), rtol=1e-6, atol=0)
        drop = mask & ~kept
        dropped, allowed = dropped + int(drop.sum()), allowed + int(mask.sum())
        assert not torch.equal(drop[0], drop[1])  # a mask of its own per head, not one broadcast over heads
        both, pairs = both + int((drop[0] & drop[1]).sum()), pairs + int(mask[0].sum())
    # The dropped fraction is pdropout and the two heads' masks are independent (P(both) = pdropout^2),
    # each within 5 standard deviations of its binomial count.
    assert abs(dropped / allowed - pd) <= 5 * math.sqrt(pd * (1 - pd) / allowed), dropped / allowed
    assert abs(both / pairs - pd**2) <= 5 * math.sqrt(pd**2 * (1 - pd**2) / pairs), both / pairs


def test_varlen_bad_input():
    q, k, v, cq, ck = _packed([4, 6], [4, 6], 2, 2, 32)
    with pytest.raises(ValueError, match="pdropout must be in"):
        varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 6, 6, 1.5, 0.2)
    with pytest.raises(RuntimeError, match="more than max_seqlen_q"):
        varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 4, 6, 0.0, 0.2)
    with pytest.raises(RuntimeError, match="more than max_seqlen_q"):  # the plain-PyTorch path checks the same
        varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 4, 6, 0.1, 0.2)


def test_iakv_nan_in_a_key_propagates():
    """A NaN key made the prompt's rows that see it exact zeros (its block looked fully masked); SDPA gives NaN."""
    torch.manual_seed(0)
    B, P, H, D = 1, 40, 1, 64
    q, k, v = (torch.randn(B, P, H, D) for _ in range(3))
    k[0, 3, 0, 0] = float("nan")
    iakv = IndirectAccessKVCacheAttention(64)
    out, _, past = iakv(q, k, v, 8.0)
    assert out[0, 3:].isnan().all() and not out[0, :3].isnan().any()  # causal: rows 0..2 never see key 3
    q1 = torch.randn(B, 1, H, D)
    out1, _, _ = iakv(q1, q1, q1, 8.0, past)
    assert out1.isnan().all()


# ---------------------------------------------------------------- autograd ---


def _paged_inputs(requires_grad=None):
    torch.manual_seed(10)
    H, D, bs = 2, 32, 16
    t = dict(k=torch.randn(5, H, D), v=torch.randn(5, H, D), q=torch.randn(1, H, D),
             key_cache=torch.zeros(2, bs, H, D), value_cache=torch.zeros(2, bs, H, D))
    if requires_grad is not None:
        t[requires_grad].requires_grad_()
    return t


def _paged(t, out=None):
    PagedAttention.reshape_and_cache(t["k"], t["v"], t["key_cache"], t["value_cache"], torch.arange(5))
    out = torch.empty_like(t["q"]) if out is None else out
    PagedAttention.single_query_cached_kv_attention(out, t["q"], t["key_cache"], t["value_cache"], torch.arange(2),
                                                    0.2, torch.tensor([[0]]), torch.tensor([5]), 16, 5, None)
    return out


@pytest.mark.parametrize("grad_input", ["q", "k", "v", "out"])
def test_inference_kernels_refuse_inputs_that_require_grad(grad_input):
    """The kernels writing into caller buffers (varlen's out, the paged caches and out) dropped autograd: the
    result had no grad_fn and backward() gave no gradients, without an error."""
    q, k, v, cq, ck = _packed([4, 6], [4, 6], 2, 2, 32)
    out = torch.empty_like(q)
    want = varlen_attention(q, k, v, out.clone(), cq, ck, 6, 6, 0.0, 0.2)
    args = dict(q=q, k=k, v=v, out=out)
    args[grad_input] = args[grad_input].clone().requires_grad_()
    msg = r"varlen_attention is an inference kernel with no backward; call it under torch.no_grad\(\)"
    with pytest.raises(RuntimeError, match=msg):
        varlen_attention(args["q"], args["k"], args["v"], args["out"], cq, ck, 6, 6, 0.0, 0.2)
    with pytest.raises(RuntimeError, match=msg):
        VarlenAttention()(args["q"], args["k"], args["v"], args["out"], cq, ck, 6, 6, 0.0, 0.2)
    if grad_input != "out":
        # Dropout and return_softmax run in plain PyTorch, which autograd tracks: gradients flow there.
        got, _ = varlen_attention(args["q"], args["k"], args["v"], torch.empty_like(q), cq, ck, 6, 6, 0.0, 0.2,
                                  return_softmax=True)
        torch.testing.assert_close(got.detach(), want)
        got.square().sum().backward()
        assert args[grad_input].grad is not None and bool(args[grad_input].grad.abs().sum() > 0)
    with torch.no_grad():  # the inference path is unchanged
        torch.testing.assert_close(varlen_attention(args["q"], args["k"], args["v"], args["out"], cq, ck, 6, 6, 0.0,
                                                    0.2), want)
    with torch.inference_mode():
        torch.testing.assert_close(varlen_attention(q, k, v, torch.empty_like(q), cq, ck, 6, 6, 0.0, 0.2), want)
    detached = {n: t.detach() for n, t in args.items()}
    torch.testing.assert_close(varlen_attention(detached["q"], detached["k"], detached["v"], detached["out"], cq, ck,
                                                6, 6, 0.0, 0.2), want)

    # PagedAttention: reshape_and_cache (key, value, the caches), single_query_cached_kv_attention (q, out, caches)
    want = _paged(_paged_inputs())
    assert want.abs().sum() > 0
    paged = {"q": "q", "k": "k", "v": "v", "out": "key_cache"}[grad_input]
    t = _paged_inputs(paged)
    op = "reshape_and_cache" if paged in ("k", "v", "key_cache") else "single_query_cached_kv_attention"
    with pytest.raises(RuntimeError, match=f"PagedAttention.{op} is an inference kernel with no backward"):
        _paged(t)
    with torch.no_grad():
        torch.testing.assert_close(_paged(t), want)
    out = torch.empty(1, 2, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match="single_query_cached_kv_attention is an inference kernel"):
        _paged(_paged_inputs(), out)
    slopes = torch.zeros(2, requires_grad=True)
    t = _paged_inputs()
    with pytest.raises(RuntimeError, match="single_query_cached_kv_attention is an inference kernel"):
        PagedAttention.single_query_cached_kv_attention(torch.empty_like(t["q"]), t["q"], t["key_cache"],
                                                        t["value_cache"], torch.arange(2), 0.2, torch.tensor([[0]]),
                                                        torch.tensor([5]), 16, 5, slopes)
