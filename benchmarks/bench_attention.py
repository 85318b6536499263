"""Attention: ipex paged / IAKV decode and varlen prefill vs stock scaled_dot_product_attention, interleaved.

Decode is memory bound: the figure of merit is the KV bytes read per second as a
fraction of the read bandwidth probed in the same rounds. A real model reads a
different layer's cache on every call, so the "cold" rows rotate through enough
layers (harness.COLD_BYTES: more than twice the L3) that nothing is left in the
L3; the "hot" rows reuse
one layer (what a single-layer micro-benchmark measures).

Stock baselines get the most favourable form of the same data: decode runs
SDPA on the cache already gathered into contiguous [batch, kv_heads, context,
head_dim] tensors (so stock pays no gather, no beam reorder), with the query
heads of a group as query rows of one call (each kv head read once; SDPA's
enable_gqa=True reads it once per query head, 4x slower here); prefill runs SDPA per sequence and on the right-padded batch
(is_causal, where padding keys never reach a real query).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import harness
from harness import BandwidthProbes, Row, check_ours, cycler, machine_meta, progress, report, rotating, time_interleaved
from ipex_core.ops import attention_ops as A


def _rotating(make, nbytes_each: int, cold: bool) -> list:
    return rotating(make, nbytes_each, None if cold else 0)


def paged_case(dtype, batch, heads, kv_heads, head_dim, context, block, cold, rounds, probes):
    blocks_per_seq = context // block
    num_blocks = batch * blocks_per_seq
    kv_bytes = 2 * num_blocks * block * kv_heads * head_dim * torch.finfo(dtype).bits // 8

    def layer():
        kc = torch.randn(num_blocks, block, kv_heads, head_dim, dtype=dtype)
        vc = torch.randn_like(kc)
        tables = torch.randperm(num_blocks).view(batch, blocks_per_seq).int()
        # stock: the same cache gathered into contiguous [batch, kv_heads, context, head_dim]
        ks = kc[tables.long()].reshape(batch, context, kv_heads, head_dim).transpose(1, 2).contiguous()
        vs = vc[tables.long()].reshape(batch, context, kv_heads, head_dim).transpose(1, 2).contiguous()
        return kc, vc, tables, ks, vs

    layers = _rotating(layer, 2 * kv_bytes, cold)
    q = torch.randn(batch, heads, head_dim, dtype=dtype)
    out = torch.empty_like(q)
    head_mapping = torch.arange(heads, dtype=torch.int32) // (heads // kv_heads)
    lens = torch.full((batch,), context, dtype=torch.int32)
    ours_layer, stock_layer = cycler(layers), cycler(layers)

    def ours():
        kc, vc, tables, _, _ = ours_layer()
        A.paged_attention_decode(out, q, kc, vc, head_mapping, head_dim**-0.5, tables, lens, block, context)

    def stock():
        _, _, _, ks, vs = stock_layer()
        return _grouped_sdpa(q, ks, vs)

    kc, vc, tables, ks, vs = layers[0]
    A.paged_attention_decode(out, q, kc, vc, head_mapping, head_dim**-0.5, tables, lens, block, context)
    _check(out, _grouped_sdpa(q, ks, vs), "paged decode")
    t = time_interleaved({"stock": stock, "ours": ours, **probes.fns}, rounds=rounds)
    return t, kv_bytes


def _grouped_sdpa(q, ks, vs):
    """Stock decode in its fastest form: the query heads sharing a kv head are query rows of one SDPA call
    ([b, kv_heads, group, d] against [b, kv_heads, ctx, d]), so each kv head is read once. SDPA with
    enable_gqa=True read every kv head once per query head, 4x slower here, which flattered ipex 4x."""
    b, h, d = q.shape[0], q.shape[-2], q.shape[-1]
    kvh = ks.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(b, kvh, h // kvh, d), ks, vs)
    return out.reshape(b, h, d)


def _check(ours, stock, what):
    """A fast wrong kernel must not pass for a speedup: ours against stock before timing."""
    check_ours(what, ours, stock)


def iakv_case(dtype, beams, heads, kv_heads, head_dim, context, cold, rounds, probes):
    kv_bytes = 2 * context * beams * kv_heads * head_dim * torch.finfo(dtype).bits // 8

    def layer():
        kc = torch.randn(context + 1, beams, kv_heads, head_dim, dtype=dtype)
        vc = torch.randn_like(kc)
        # Each beam its own parent at every step: every (position, beam) row is read once, as counted in
        # kv_bytes, and it is what the contiguous stock cache holds. (Random parents merged the beams onto
        # a few ancestors: 25% of the rows counted were distinct, a 4x overstated bandwidth.)
        hist = torch.arange(beams).expand(context + 1, beams).contiguous()
        ks = kc[:context].permute(1, 2, 0, 3).contiguous()
        vs = vc[:context].permute(1, 2, 0, 3).contiguous()
        return kc, vc, hist, ks, vs

    layers = _rotating(layer, 2 * kv_bytes, cold)
    q = torch.randn(beams, 1, heads, head_dim, dtype=dtype)
    ours_layer, stock_layer, reorder_layer = cycler(layers), cycler(layers), cycler(layers)
    beam_idx = torch.randint(0, beams, (beams,))

    def ours():
        kc, vc, hist, _, _ = ours_layer()
        return A.iakv_attention(q, kc, vc, hist, context - 1, head_dim**-0.5, None, True)

    def stock():
        _, _, _, ks, vs = stock_layer()
        return _grouped_sdpa(q[:, 0], ks, vs)

    def stock_with_reorder():  # what a copying cache pays per step in beam search
        _, _, _, ks, vs = reorder_layer()
        ks, vs = ks.index_select(0, beam_idx), vs.index_select(0, beam_idx)
        return _grouped_sdpa(q[:, 0], ks, vs)

    kc, vc, hist, ks, vs = layers[0]
    _check(A.iakv_attention(q, kc, vc, hist, context - 1, head_dim**-0.5, None, True)[:, 0],
           _grouped_sdpa(q[:, 0], ks, vs), "IAKV decode")
    t = time_interleaved({"stock": stock, "ours": ours, "stock_reorder": stock_with_reorder, **probes.fns},
                         rounds=rounds)
    return t, kv_bytes


def reshape_and_cache_case(dtype, tokens, kv_heads, head_dim, block, rounds, probes):
    """PagedAttention.reshape_and_cache: new key/value rows scattered into the block cache at their slots.
    Stock: index_copy_ of the same rows into the cache viewed as [slots, kv_heads, head_dim]. Bytes: the
    rows read and written, keys and values. The rows rotate through harness.COLD_BYTES of copies and the four caches
    (keys and values, stock's and ours) hold COLD_BYTES together, at least 16x the tokens: both are read from
    and written to memory, not the cache."""
    slot_bytes = kv_heads * head_dim * torch.finfo(dtype).bits // 8
    num_slots = max(4096, 16 * tokens, int(harness.COLD_BYTES) // (4 * slot_bytes))
    num_slots += -num_slots % block
    caches = {side: [torch.zeros(num_slots // block, block, kv_heads, head_dim, dtype=dtype) for _ in range(2)]
              for side in ("stock", "ours")}
    row_bytes = 2 * tokens * kv_heads * head_dim * torch.finfo(dtype).bits // 8
    rows = rotating(lambda: tuple(torch.randn(tokens, kv_heads, head_dim, dtype=dtype) for _ in range(2)),
                    row_bytes)
    stock_rows, ours_rows = cycler(rows), cycler(rows)
    # The slots of sequences spread over the cache, other ones at each call (16 draws cover it): rewriting
    # the same rows kept them in the L3 (149% of the copy bandwidth at 2048 tokens).
    slot_sets = [torch.randperm(num_slots)[:tokens] for _ in range(16)]
    stock_slots, ours_slots = cycler(slot_sets), cycler(slot_sets)

    def ours():
        kc, vc = caches["ours"]
        A.reshape_and_cache(*ours_rows(), kc, vc, ours_slots())

    def stock():
        kc, vc = caches["stock"]
        key, value = stock_rows()
        slots = stock_slots()
        kc.view(-1, kv_heads, head_dim).index_copy_(0, slots, key)
        vc.view(-1, kv_heads, head_dim).index_copy_(0, slots, value)

    ours()
    stock()
    for a, b in zip(caches["ours"], caches["stock"]):
        if not torch.equal(a, b):
            raise AssertionError("reshape_and_cache: ipex's cache differs from stock index_copy_")
    t = time_interleaved({"stock": stock, "ours": ours, **probes.fns}, rounds=rounds)
    return t, 2 * row_bytes


def varlen_case(dtype, lens, heads, head_dim, rounds):
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    total = int(cu[-1])
    q, k, v = (torch.randn(total, heads, head_dim, dtype=dtype) for _ in range(3))
    out = torch.empty_like(q)
    per_seq = [tuple(t[a:b].transpose(0, 1)[None].contiguous() for t in (q, k, v))
               for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    longest = max(lens)
    padded = [torch.zeros(len(lens), heads, longest, head_dim, dtype=dtype) for _ in range(3)]
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        for dst, src in zip(padded, (q, k, v)):
            dst[i, :, : b - a] = src[a:b].transpose(0, 1)

    def ours():
        A.varlen_attention(q, k, v, out, cu, cu, longest, longest, head_dim**-0.5, True)

    def stock_per_seq():
        for qs, ks, vs in per_seq:
            F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

    def stock_padded():
        return F.scaled_dot_product_attention(*padded, is_causal=True)

    t = time_interleaved({"per_seq": stock_per_seq, "ours": ours, "padded": stock_padded}, rounds=rounds, inner=1)
    flops = sum(4 * n * (n + 1) / 2 * head_dim * heads for n in lens)  # causal QK^T and PV
    return t, flops


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--cases", nargs="+", default=["paged", "iakv", "varlen", "cache"], choices=["paged", "iakv", "varlen", "cache"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    probes = BandwidthProbes()
    rows = []
    steps = [s for s in ("paged cold", "paged hot", "iakv cold", "iakv hot", "varlen", "cache 8", "cache 2048")
             if s.split()[0] in args.cases]
    for i, step in enumerate(steps):
        progress(i, len(steps), step)
        if step.startswith("paged"):
            cold = step.endswith("cold")
            t, nbytes = paged_case(dtype, 8, 32, 8, 128, 2048, 16, cold, args.rounds, probes)
            bw = probes.gbs(t)
            gbs = nbytes / t["ours"] / 1e9
            rows.append(Row(f"PagedAttention decode b8 h32/8 d128 ctx2048 blk16 ({'cold' if cold else 'one layer reused'})",
                            t["stock"] * 1e3, t["ours"] * 1e3,
                            {"ipex KV GB/s": gbs, "% of read BW": 100 * gbs / bw["read_gbs"],
                             "stock % read BW": 100 * nbytes / t["stock"] / 1e9 / bw["read_gbs"]}))
        elif step.startswith("iakv"):
            cold = step.endswith("cold")
            t, nbytes = iakv_case(dtype, 4, 32, 8, 128, 1024, cold, args.rounds, probes)
            bw = probes.gbs(t)
            gbs = nbytes / t["ours"] / 1e9
            extra = {"ipex KV GB/s": gbs, "% of read BW": 100 * gbs / bw["read_gbs"],
                     "stock % read BW": 100 * nbytes / t["stock"] / 1e9 / bw["read_gbs"]}
            label = f"IAKV decode 4 beams h32/8 d128 ctx1024 ({'cold' if cold else 'hot L3'})"
            rows.append(Row(label, t["stock"] * 1e3, t["ours"] * 1e3, extra))
            rows.append(Row(label + " vs stock reorder+SDPA", t["stock_reorder"] * 1e3, t["ours"] * 1e3, {}))
        elif step.startswith("cache"):
            tokens = int(step.split()[1])
            t, nbytes = reshape_and_cache_case(dtype, tokens, 8, 128, 16, args.rounds, probes)
            bw = probes.gbs(t)
            gbs = nbytes / t["ours"] / 1e9
            rows.append(Row(f"reshape_and_cache {tokens} tokens h8 d128 blk16", t["stock"] * 1e3, t["ours"] * 1e3,
                            {"ipex KV GB/s": gbs, "% of copy BW": 100 * gbs / bw["copy_gbs"]}))
        else:
            lens = [512, 1024, 2048]
            t, flops = varlen_case(dtype, lens, 32, 128, max(3, args.rounds // 3))
            extra = {"ipex TFLOP/s": flops / t["ours"] / 1e12}
            rows.append(Row("Varlen prefill 512+1024+2048 h32 d128 causal vs SDPA per sequence",
                            t["per_seq"] * 1e3, t["ours"] * 1e3, extra))
            rows.append(Row("Varlen prefill 512+1024+2048 h32 d128 causal vs SDPA padded batch",
                            t["padded"] * 1e3, t["ours"] * 1e3, dict(extra)))
    meta = machine_meta() | probes.summary() | {"dtype": args.dtype}
    name = f"attention_{args.dtype}" + (f"_{args.threads}t" if args.threads else "")
    table = report(name, rows, meta,
                   columns=["ipex KV GB/s", "% of read BW", "stock % read BW", "% of copy BW", "ipex TFLOP/s"])
    print(f"bandwidth probes (interleaved, median over cases): {probes.summary()}")
    print(table)
    return table


if __name__ == "__main__":
    main()
