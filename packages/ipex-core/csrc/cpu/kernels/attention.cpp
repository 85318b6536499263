// Attention kernels: decode (cache walk with online softmax), the prefill
// pieces (packing, fp32 micro-GEMM, block softmax, finalize). Compiled once per
// ISA level; see attention_kernels.h for the contracts.
#include "cpu/kernels/attention_kernels.h"
#include "cpu/kernels/amx_tiles.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// max that keeps a NaN (std::max(-inf, NaN) is -inf): a NaN score must make the output NaN, as in
// PyTorch's SDPA, not mark its block fully masked and drop it (a silently finite wrong answer).
inline float max_nan(float a, float b) {
  return std::isnan(a) || std::isnan(b) ? std::numeric_limits<float>::quiet_NaN() : std::max(a, b);
}

// Grow-only per-thread scratch: decode and prefill run every layer of every
// step, so allocating (and page-faulting) fresh buffers each call would show.
float* scratch(int64_t floats, int slot) {
  thread_local std::unique_ptr<float[]> bufs[3];
  thread_local int64_t caps[3] = {0, 0, 0};
  if (caps[slot] < floats) {
    bufs[slot].reset(new float[floats]);
    caps[slot] = floats;
  }
  return bufs[slot].get();
}

// Row of T -> fp32, zero padded to dp (a multiple of kF).
template <typename T>
inline void row_to_f32(const T* src, int64_t d, int64_t dp, float* dst, float mul = 1.f) {
  fVec s(mul);
  int64_t i = 0;
  for (; i + kF <= d; i += kF) (load_f32(src + i) * s).store(dst + i);
  if (i < d) {
    (load_f32(src + i, d - i) * s).store(dst + i);  // lanes past d load as zero
    i += kF;
  }
  for (; i < dp; i += kF) fVec(0.f).store(dst + i);
}

inline void scale_f32(float alpha, float* y, int64_t dp) {
  fVec a(alpha);
  for (int64_t i = 0; i < dp; i += kF) (fVec::loadu(y + i) * a).store(y + i);
}

// ---------------------------------------------------------------- decode ---

// Sum of each of kF vectors, in order: out[i] = sum(v[i]) (a transpose-add
// tree; 45 shuffles/adds for 16 dot products instead of 16 full reductions).
inline void reduce_many(const fVec* v, float* out) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i) {
    __m512 a = v[2 * i], b = v[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 4; ++i) {
    __m512d c = _mm512_castps_pd(w[2 * i]), d = _mm512_castps_pd(w[2 * i + 1]);
    x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  for (int i = 0; i < 2; ++i) {
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  }
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xDD)));
#elif defined(CPU_CAPABILITY_AVX2)
  __m256 w[4], x[2];
  for (int i = 0; i < 4; ++i) {
    __m256 a = v[2 * i], b = v[2 * i + 1];
    w[i] = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 2; ++i) {
    __m256d c = _mm256_castps_pd(w[2 * i]), d = _mm256_castps_pd(w[2 * i + 1]);
    x[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(c, d)), _mm256_castpd_ps(_mm256_unpackhi_pd(c, d)));
  }
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(x[0], x[1], 0x20),
                                      _mm256_permute2f128_ps(x[0], x[1], 0x31)));
#else
  for (int64_t i = 0; i < kF; ++i) out[i] = reduce_sum(v[i]);
#endif
}

// Software prefetch into L2 (prefetcht1) of the KV rows the decode loops read next: the
// hardware prefetchers lose the stream at every paged block or beam switch, and on cold
// caches the loop otherwise waits for each row it touches. The scoring of a kv head's K
// slice prefetches the same tokens' V slice, and the P V pass over a kv head's V slice
// prefetches the next chunk's K slice, one line per line loaded, inside the same inner
// loop, so requests go out at the rate the data is consumed. AMD EPYC Zen 4, paged decode
// b8 h32/8 d128 ctx2048 bf16, cold, interleaved A/B: whole rows prefetched at each token
// (the previous form) 15-16 GB/s on 2 threads, 8.8 on 1; spread like this 21-23 and
// 12.7-13.4: bursts of whole rows filled the miss queues and stalled the compute behind
// them, so the loop ran memory then compute rather than both at once. Into L1 (T0) it
// was 1.4x slower: the rows evict the scores and accumulators. Prefetching a chunk
// further ahead, or scoring head-major so that both passes run in the prefetch order,
// was no faster.
template <typename T>
inline void prefetch_line(const T* row, int64_t j) {
  if ((j * static_cast<int64_t>(sizeof(T))) % 64 == 0) __builtin_prefetch(row + j, 0, 2);  // prefetcht1
}

// Rows to prefetch for one kv head: out[i] = base + off[min(first + i, n - 1)] + head_off for
// i < count; false (nothing to prefetch) when token `first` is past the task's n tokens.
template <typename T>
inline bool head_rows(const T* base, const int64_t* off, int64_t n, int64_t first, int64_t count, int64_t head_off,
                      const T** out) {
  if (first >= n) return false;
  for (int64_t i = 0; i < count; ++i) out[i] = base + off[std::min(first + i, n - 1)] + head_off;
  return true;
}

// Scores of NT consecutive K rows for NG query heads (NG * NT == kF): q rows
// are fp32, pre-scaled, dp floats; out[g * NT + i] = q_g . k_i.
template <int NG, int NT, typename T>
inline void qk_block(const float* const* qh, const T* const* k, int64_t D, float* out, const T* const* pf) {
  static_assert(NG * NT == kF, "one accumulator per lane of the result");
  fVec acc[NG * NT];
  for (int i = 0; i < NG * NT; ++i) acc[i] = fVec(0.f);
  for (int64_t j = 0; j < D; j += kF) {
    const int64_t cnt = std::min(kF, D - j);
    fVec kv[NT];
    for (int i = 0; i < NT; ++i) kv[i] = cnt == kF ? load_f32(k[i] + j) : load_f32(k[i] + j, cnt);
    if (pf != nullptr) {
      for (int i = 0; i < NT; ++i) prefetch_line(pf[i], j);
    }
    for (int g = 0; g < NG; ++g) {
      const fVec qv = fVec::loadu(qh[g] + j);  // zero past D
      for (int i = 0; i < NT; ++i) acc[g * NT + i] = at::vec::fmadd(qv, kv[i], acc[g * NT + i]);
    }
  }
  reduce_many(acc, out);
}

// Scores [H, chunk] for rows [i0, i0 + nt) of the chunk (nt <= NT), all heads.
template <int NG, typename T>
inline void qk_rows(const DecodeArgs& a, const float* qf, int64_t dp, const T* const* krows, const T* const* vrows,
                    int64_t i0, int64_t nt, float* scores, int64_t chunk, const float* zero_q) {
  constexpr int NT = static_cast<int>(kF) / NG;
  float res[kF];
  for (int64_t g = 0; g < a.num_kv_heads; ++g) {
    const T* k[NT];
    const T* pf[NT];  // the same tokens' V slice (see prefetch_line)
    for (int i = 0; i < NT; ++i) {
      const int64_t r = i0 + std::min<int64_t>(i, nt - 1);
      k[i] = krows[r] + g * a.k_head_stride;
      pf[i] = vrows[r] + g * a.v_head_stride;
    }
    for (int32_t j = a.group_offsets[g]; j < a.group_offsets[g + 1]; j += NG) {
      const int n = static_cast<int>(std::min<int32_t>(NG, a.group_offsets[g + 1] - j));
      const float* qh[NG];
      for (int x = 0; x < NG; ++x) qh[x] = x < n ? qf + a.group_heads[j + x] * dp : zero_q;
      qk_block<NG, NT>(qh, k, a.head_dim, res, j == a.group_offsets[g] ? pf : nullptr);
      for (int x = 0; x < n; ++x) {
        float* srow = scores + a.group_heads[j + x] * chunk + i0;
        for (int64_t i = 0; i < nt; ++i) srow[i] = res[x * NT + i];
      }
    }
  }
}

template <int NG, typename T>
inline void qk_chunk(const DecodeArgs& a, const float* qf, int64_t dp, const T* const* krows, const T* const* vrows,
                     int64_t cn, float* scores, int64_t chunk, const float* zero_q) {
  if constexpr (NG <= kF) {
    constexpr int64_t NT = kF / NG;
    for (int64_t i = 0; i < cn; i += NT) {
      qk_rows<NG>(a, qf, dp, krows, vrows, i, std::min<int64_t>(NT, cn - i), scores, chunk, zero_q);
    }
  }
}

// acc_h += sum_i p_h[i] * V row i, for NG heads over a chunk of cn rows; the
// accumulators stay in registers across the chunk (one pass per D vector).
// pf: cn rows to prefetch (see prefetch_line), or nullptr.
template <int NG, typename T>
inline void pv_heads(const float* const* ph, const T* const* vrows, int64_t cn, int64_t D, float* const* acc,
                     const T* const* pf) {
  for (int64_t j = 0; j < D; j += kF) {
    const int64_t cnt = std::min(kF, D - j);
    fVec a[NG];
    for (int g = 0; g < NG; ++g) a[g] = fVec::loadu(acc[g] + j);
    for (int64_t i = 0; i < cn; ++i) {
      const fVec vv = cnt == kF ? load_f32(vrows[i] + j) : load_f32(vrows[i] + j, cnt);
      if (pf != nullptr) prefetch_line(pf[i], j);
      for (int g = 0; g < NG; ++g) a[g] = at::vec::fmadd(fVec(ph[g][i]), vv, a[g]);
    }
    for (int g = 0; g < NG; ++g) a[g].store(acc[g] + j);
  }
}

constexpr int kMaxNG = 8;

// Calls fn(std::integral_constant<int, n>) for a head block of n in 1..kMaxNG.
template <typename Fn>
inline void with_ng(int n, const Fn& fn) {
  switch (n) {
    case 8: fn(std::integral_constant<int, 8>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    default: fn(std::integral_constant<int, 1>{}); break;
  }
}


// alibi and bias terms for chunk rows [c0, c0 + cn)
inline void add_score_terms(const DecodeTask& t, float* scores, int64_t chunk, int64_t c0, int64_t cn, int64_t H) {
  if (t.alibi_slopes != nullptr) {
    for (int64_t h = 0; h < H; ++h) {
      const float slope = t.alibi_slopes[h];
      for (int64_t i = 0; i < cn; ++i) scores[h * chunk + i] += slope * (static_cast<float>(c0 + i) + t.alibi_offset);
    }
  }
  if (t.bias != nullptr) {
    for (int64_t h = 0; h < H; ++h) {
      const float* b = t.bias + h * t.bias_head_stride + c0 * t.bias_tok_stride;
      for (int64_t i = 0; i < cn; ++i) scores[h * chunk + i] += b[i * t.bias_tok_stride];
    }
  }
}

// Online softmax update of every head over one chunk: scores [H, chunk]
// become probabilities (0 past cn, rounded to bf16 when the P V product reads
// them as bf16, so the running sum matches what is multiplied), the running
// max / sum are updated and acc rows [H, ld] rescaled.
inline void softmax_chunk(const DecodeTask& t, float* scores, int64_t chunk, int64_t cn, int64_t H, float* acc,
                          int64_t ld, bool round_bf16) {
  for (int64_t h = 0; h < H; ++h) {
    float* s = scores + h * chunk;
    fVec vmax(kNegInf);
    for (int64_t i = 0; i < cn; i += kF) {
      const int64_t cnt = std::min(kF, cn - i);
      vmax = at::vec::maximum(vmax, cnt == kF ? fVec::loadu(s + i) : fVec::set(fVec(kNegInf), fVec::loadu(s + i, cnt), cnt));
    }
    const float mx = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return at::vec::maximum(x, y); }, vmax);
    const float m_old = t.m[h];
    const float m_new = max_nan(m_old, mx);
    if (m_new == kNegInf) {  // everything so far masked out
      std::fill(s, s + chunk, 0.f);
      continue;
    }
    const fVec vm(m_new);
    fVec vsum(0.f);
    for (int64_t i = 0; i < chunk; i += kF) {
      fVec e = (fVec::loadu(s + i) - vm).exp_u20();
      if (round_bf16) e = round_to<c10::BFloat16>(e);
      if (i + kF > cn) e = fVec::set(fVec(0.f), e, std::max<int64_t>(0, cn - i));
      e.store(s + i);
      vsum = vsum + e;
    }
    t.l[h] = (m_new == m_old ? t.l[h] : t.l[h] * std::exp(m_old - m_new)) + reduce_sum(vsum);
    if (m_new != m_old && m_old != kNegInf) scale_f32(std::exp(m_old - m_new), acc + h * ld, ld);
    t.m[h] = m_new;
  }
}

constexpr int64_t kChunk = 32;  // tokens per online-softmax step; a multiple of kF
// The AVX512-BF16 loop's step: Intel Xeon with AMX, bf16, cold caches, interleaved, 32 -> 16 tokens:
// IAKV 4 beams h32/8 d128 ctx1024 1.058 -> 0.955 ms, paged b8 h32/8 d128 ctx2048 4.04 -> 3.87 ms
// (64 tokens: IAKV 1.21 ms).
constexpr int64_t kBf16Chunk = 16;
static_assert(kBf16Chunk % 16 == 0, "softmax_chunk and the P conversion go 16 lanes at a time");

// The AMX decode loop's prefetch: the first line of every `step`-th row of the
// next chunk, where a new block may start. On Intel Xeon, prefetching whole rows
// all at once here only competed with the hardware prefetcher for the line fill
// buffers. The vector loops prefetch line by line instead (prefetch_line), which
// was measured on AMD Zen 4 only (no AMX there).
template <typename T>
inline void prefetch_next_chunk(const DecodeArgs& a, const DecodeTask& t, int64_t next, int64_t len, int64_t step) {
  const T* kb = static_cast<const T*>(a.k_base);
  const T* vb = static_cast<const T*>(a.v_base);
  for (int64_t i = next; i < std::min(t.n, next + len); i += step) {
    __builtin_prefetch(kb + t.k_off[i], 0, 1);
    __builtin_prefetch(vb + t.v_off[i], 0, 1);
  }
}

// K and V rows (kv head 0) of this chunk.
template <typename T>
inline void chunk_rows(const DecodeArgs& a, const DecodeTask& t, int64_t c0, int64_t cn, const T** krows,
                       const T** vrows) {
  const T* kb = static_cast<const T*>(a.k_base);
  const T* vb = static_cast<const T*>(a.v_base);
  for (int64_t i = 0; i < cn; ++i) {
    krows[i] = kb + t.k_off[c0 + i];
    vrows[i] = vb + t.v_off[c0 + i];
  }
}

template <typename T>
void decode_partial_impl(const DecodeArgs& a, const DecodeTask& t) {
  const int64_t D = a.head_dim, H = a.num_heads, Hkv = a.num_kv_heads;
  const int64_t dp = round_up(D, kF);
  const T* q = static_cast<const T*>(t.q);

  float* qf = scratch(H * dp + H * kChunk, 0);
  float* scores = qf + H * dp;  // [H, kChunk]
  float* acc_p = scratch(H * dp, 1);
  for (int64_t h = 0; h < H; ++h) {
    row_to_f32(q + h * t.q_head_stride, D, dp, qf + h * dp, a.scale);
    std::fill(acc_p + h * dp, acc_p + (h + 1) * dp, 0.f);
    t.m[h] = kNegInf;
    t.l[h] = 0.f;
  }
  float* zero_q = scratch(dp, 2);
  std::fill(zero_q, zero_q + dp, 0.f);
  // Heads per register block: the whole group where it fits, so a K row is
  // converted once for all the heads that read it.
  const int64_t group = a.group_offsets[1] - a.group_offsets[0];
  const T* krows[kChunk];
  const T* vrows[kChunk];      // kv head 0
  const T* vhead[kChunk];      // kv head g
  const T* k_next[kChunk];     // the next chunk's K rows of kv head g, to prefetch (see prefetch_line)
  const T* kb = static_cast<const T*>(a.k_base);
  for (int64_t c0 = 0; c0 < t.n; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, t.n - c0);
    chunk_rows(a, t, c0, cn, krows, vrows);
    if (group <= 1) {
      qk_chunk<1>(a, qf, dp, krows, vrows, cn, scores, kChunk, zero_q);
    } else if (group <= 2) {
      qk_chunk<2>(a, qf, dp, krows, vrows, cn, scores, kChunk, zero_q);
    } else if (group <= 4) {
      qk_chunk<4>(a, qf, dp, krows, vrows, cn, scores, kChunk, zero_q);
    } else if (group <= 8 || kF == 8) {
      qk_chunk<8>(a, qf, dp, krows, vrows, cn, scores, kChunk, zero_q);
    } else {
      qk_chunk<static_cast<int>(kF)>(a, qf, dp, krows, vrows, cn, scores, kChunk, zero_q);
    }
    add_score_terms(t, scores, kChunk, c0, cn, H);
    softmax_chunk(t, scores, kChunk, cn, H, acc_p, dp, false);
    // acc += P V with each V row read once for the heads that share it.
    for (int64_t g = 0; g < Hkv; ++g) {
      const bool next = head_rows(kb, t.k_off, t.n, c0 + kChunk, cn, g * a.k_head_stride, k_next);
      for (int64_t i = 0; i < cn; ++i) vhead[i] = vrows[i] + g * a.v_head_stride;
      int32_t j = a.group_offsets[g];
      const int32_t end = a.group_offsets[g + 1];
      const float* ph[kMaxNG];
      float* acc[kMaxNG];
      while (j < end) {
        const int n = static_cast<int>(std::min<int32_t>(kMaxNG, end - j));
        for (int x = 0; x < n; ++x) {
          const int64_t h = a.group_heads[j + x];
          ph[x] = scores + h * kChunk;
          acc[x] = acc_p + h * dp;
        }
        const T* const* pf = next && j == a.group_offsets[g] ? k_next : nullptr;
        with_ng(n, [&](auto ng) { pv_heads<decltype(ng)::value>(ph, vhead, cn, D, acc, pf); });
        j += n;
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) std::memcpy(t.acc + h * D, acc_p + h * dp, D * sizeof(float));
}

#if defined(CPU_CAPABILITY_AVX512)
// bf16 decode with vdpbf16ps (AVX512-BF16): 32 bf16 products per instruction
// and no conversions. Only called when the active ISA level has the
// instructions; the attribute (IPEX_BF16_INSN_FN, vec_io.h) keeps them out of
// everything else here.

IPEX_BF16_INSN_FN inline __mmask32 bf16_mask(int64_t left) {
  return left >= 32 ? 0xFFFFFFFFu : ((1u << left) - 1u);
}

// out[g * NT + i] = scale * q_g . k_i for NG heads and NT rows (NG * NT == 16).
template <int NG>
IPEX_BF16_INSN_FN inline void qk_block_bf16(const uint16_t* const* qh, const uint16_t* const* k, int64_t D, float scale,
                                       float* out, const uint16_t* const* pf) {
  constexpr int NT = 16 / NG;
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < D; j += 32) {
    const __mmask32 m = bf16_mask(D - j);
    __m512i kv[NT];
    for (int i = 0; i < NT; ++i) kv[i] = _mm512_maskz_loadu_epi16(m, k[i] + j);
    if (pf != nullptr) {
      for (int i = 0; i < NT; ++i) prefetch_line(pf[i], j);
    }
    for (int g = 0; g < NG; ++g) {
      const __m512i qv = _mm512_maskz_loadu_epi16(m, qh[g] + j);
      for (int i = 0; i < NT; ++i) acc[g * NT + i] = _mm512_dpbf16_ps(acc[g * NT + i], (__m512bh)qv, (__m512bh)kv[i]);
    }
  }
  fVec v[16];
  for (int i = 0; i < 16; ++i) v[i] = fVec(acc[i]);
  reduce_many(v, out);
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_loadu_ps(out), _mm512_set1_ps(scale)));
}

template <int NG>
IPEX_BF16_INSN_FN void qk_chunk_bf16(const DecodeArgs& a, const DecodeTask& t, const uint16_t* const* krows,
                                const uint16_t* const* vrows, int64_t cn, float* scores, const uint16_t* zero_q) {
  constexpr int NT = 16 / NG;
  const uint16_t* q = static_cast<const uint16_t*>(t.q);
  float res[16];
  for (int64_t i0 = 0; i0 < cn; i0 += NT) {
    const int64_t nt = std::min<int64_t>(NT, cn - i0);
    for (int64_t g = 0; g < a.num_kv_heads; ++g) {
      const uint16_t* k[NT];
      const uint16_t* pf[NT];  // the same tokens' V slice (see prefetch_line)
      for (int i = 0; i < NT; ++i) {
        const int64_t r = i0 + std::min<int64_t>(i, nt - 1);
        k[i] = krows[r] + g * a.k_head_stride;
        pf[i] = vrows[r] + g * a.v_head_stride;
      }
      for (int32_t j = a.group_offsets[g]; j < a.group_offsets[g + 1]; j += NG) {
        const int n = static_cast<int>(std::min<int32_t>(NG, a.group_offsets[g + 1] - j));
        const uint16_t* qh[NG];
        for (int x = 0; x < NG; ++x) qh[x] = x < n ? q + a.group_heads[j + x] * t.q_head_stride : zero_q;
        qk_block_bf16<NG>(qh, k, a.head_dim, a.scale, res, j == a.group_offsets[g] ? pf : nullptr);
        for (int x = 0; x < n; ++x) {
          float* srow = scores + a.group_heads[j + x] * kBf16Chunk + i0;
          if (nt == NT) {
            std::memcpy(srow, res + x * NT, NT * sizeof(float));
          } else {
            for (int64_t i = 0; i < nt; ++i) srow[i] = res[x * NT + i];
          }
        }
      }
    }
  }
}

// acc += P V for NG heads over `pairs` token pairs of one kv head, rows
// vrows[2 tp] and vrows[2 tp + 1] (pp: the heads' probabilities as bf16 pairs),
// interleaved in registers into vdpbf16ps pairs, one 32-column chunk at a time:
// 32 words of unpacklo then 32 of unpackhi, so the accumulators are permuted
// within each chunk: position p < 16 holds column 8 (p / 4) + p % 4, position
// 16 + p holds column 8 (p / 4) + 4 + p % 4 (undone by unpermute_acc).
// Interleaving into a scratch buffer first (the previous form) cost a store and a
// reload per V line: AMD Zen 4, in cache, 29 -> 24 ns per token and kv head.
// pf: 2 * pairs rows to prefetch (see prefetch_line), or nullptr.
template <int NG>
IPEX_BF16_INSN_FN inline void pv_rows_bf16(const uint32_t* const* pp, const uint16_t* const* vrows, int64_t pairs,
                                      int64_t D, float* const* acc, const uint16_t* const* pf) {
  for (int64_t j = 0; j < D; j += 32) {
    const __mmask32 m = bf16_mask(D - j);
    __m512 lo[NG], hi[NG];
    for (int g = 0; g < NG; ++g) {
      lo[g] = _mm512_loadu_ps(acc[g] + j);
      hi[g] = _mm512_loadu_ps(acc[g] + j + 16);
    }
    for (int64_t tp = 0; tp < pairs; ++tp) {
      const __m512i va = _mm512_maskz_loadu_epi16(m, vrows[2 * tp] + j);
      const __m512i vb = _mm512_maskz_loadu_epi16(m, vrows[2 * tp + 1] + j);
      if (pf != nullptr) {
        prefetch_line(pf[2 * tp], j);
        prefetch_line(pf[2 * tp + 1], j);
      }
      const __m512bh l = (__m512bh)_mm512_unpacklo_epi16(va, vb);
      const __m512bh h = (__m512bh)_mm512_unpackhi_epi16(va, vb);
      for (int g = 0; g < NG; ++g) {
        const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[g][tp]));
        lo[g] = _mm512_dpbf16_ps(lo[g], l, p);
        hi[g] = _mm512_dpbf16_ps(hi[g], h, p);
      }
    }
    for (int g = 0; g < NG; ++g) {
      _mm512_storeu_ps(acc[g] + j, lo[g]);
      _mm512_storeu_ps(acc[g] + j + 16, hi[g]);
    }
  }
}

inline void unpermute_acc(const float* perm, int64_t D, float* out) {
  for (int64_t j = 0; j < D; j += 32) {
    for (int64_t p = 0; p < 16; ++p) {
      const int64_t c0 = j + 8 * (p / 4) + p % 4, c1 = c0 + 4;
      if (c0 < D) out[c0] = perm[j + p];
      if (c1 < D) out[c1] = perm[j + 16 + p];
    }
  }
}

// One chunk [c0, c0 + cn) of one query row: scores, online softmax, acc += P V. The P V pass
// prefetches next_k (the K rows, kv head 0, of the chunk processed next; null: none).
IPEX_BF16_INSN_FN void decode_chunk_bf16(const DecodeArgs& a, const DecodeTask& t, int64_t c0, float* acc_p,
                                         float* scores, uint32_t* pp, const uint16_t* zero_q,
                                         const uint16_t* const* next_k) {
  const int64_t D = a.head_dim, H = a.num_heads, Hkv = a.num_kv_heads;
  const int64_t dp = round_up(D, 32);
  const int64_t cn = std::min(kBf16Chunk, t.n - c0);
  const int64_t group = a.group_offsets[1] - a.group_offsets[0];
  const uint16_t* krows[kBf16Chunk];
  const uint16_t* vrows[kBf16Chunk];           // kv head 0
  const uint16_t* vhead[kBf16Chunk + 1];       // kv head g, the odd tail repeated (its P is 0)
  const uint16_t* k_next[kBf16Chunk + 1];      // next_k of kv head g (see prefetch_line)
  chunk_rows(a, t, c0, cn, krows, vrows);
  if (group <= 1) {
    qk_chunk_bf16<1>(a, t, krows, vrows, cn, scores, zero_q);
  } else if (group <= 2) {
    qk_chunk_bf16<2>(a, t, krows, vrows, cn, scores, zero_q);
  } else if (group <= 4) {
    qk_chunk_bf16<4>(a, t, krows, vrows, cn, scores, zero_q);
  } else if (group <= 8) {
    qk_chunk_bf16<8>(a, t, krows, vrows, cn, scores, zero_q);
  } else {
    qk_chunk_bf16<16>(a, t, krows, vrows, cn, scores, zero_q);
  }
  add_score_terms(t, scores, kBf16Chunk, c0, cn, H);
  softmax_chunk(t, scores, kBf16Chunk, cn, H, acc_p, dp, true);
  // Probabilities as bf16 pairs (exact: already rounded; 0 past cn).
  for (int64_t h = 0; h < H; ++h) {
    const float* s = scores + h * kBf16Chunk;
    for (int64_t i = 0; i < kBf16Chunk; i += 16) {
      const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + i));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pp + h * (kBf16Chunk / 2) + i / 2), (__m256i)b);
    }
  }
  const int64_t pairs = (cn + 1) / 2;
  for (int64_t g = 0; g < Hkv; ++g) {
    if (next_k != nullptr) {
      for (int64_t i = 0; i < 2 * pairs; ++i) k_next[i] = next_k[i] + g * a.k_head_stride;
    }
    for (int64_t i = 0; i < cn; ++i) vhead[i] = vrows[i] + g * a.v_head_stride;
    vhead[cn] = vhead[cn - 1];
    for (int32_t j = a.group_offsets[g]; j < a.group_offsets[g + 1]; j += kMaxNG) {
      const int n = static_cast<int>(std::min<int32_t>(kMaxNG, a.group_offsets[g + 1] - j));
      const uint32_t* php[kMaxNG];
      float* acc[kMaxNG];
      for (int x = 0; x < n; ++x) {
        const int64_t h = a.group_heads[j + x];
        php[x] = pp + h * (kBf16Chunk / 2);
        acc[x] = acc_p + h * dp;
      }
      const uint16_t* const* pf = next_k != nullptr && j == a.group_offsets[g] ? k_next : nullptr;
      with_ng(n, [&](auto ng) { pv_rows_bf16<decltype(ng)::value>(php, vhead, pairs, D, acc, pf); });
    }
  }
}

// Several query rows, chunk by chunk in step: chunk c of every row, then chunk c + 1. IAKV's beams
// at one position lie side by side in the cache ([max_seq, beam, kv_heads, head_dim]), so a row
// alone reads 2 KB pieces 8 KB apart (4 beams, 8 kv heads, d128, bf16), too short for the L2
// streamer: the loop waited on its software prefetches (on Intel each probably holds one of the
// core's 16 line fill buffers, which would cap a core near the 8 GB/s seen; not checked with
// counters). In step, the rows' reads of a chunk cover whole pages. Intel Xeon with AMX, IAKV 4 beams h32/8 d128 bf16, cold: one row at a time
// 16.1 GB/s at ctx1024, the same cache stored beam-major (long runs) 18.3 GB/s; 4 rows in step
// against one at a time, interleaved in one process (32-token steps): ctx1024 1.08 -> 1.01 ms,
// ctx2048 2.26 -> 1.99 ms.
IPEX_BF16_INSN_FN void decode_partial_bf16(const DecodeArgs& a, const DecodeTask* tasks, int64_t count) {
  const int64_t D = a.head_dim, H = a.num_heads;
  const int64_t dp = round_up(D, 32);
  float* scores = scratch(H * kBf16Chunk, 0);
  float* acc_all = scratch(count * H * dp, 1);
  uint32_t* pp = reinterpret_cast<uint32_t*>(scratch(H * kBf16Chunk / 2 + dp, 2));  // [H, kBf16Chunk / 2] bf16 pairs
  uint16_t* zero_q = reinterpret_cast<uint16_t*>(pp + H * kBf16Chunk / 2);
  std::fill(zero_q, zero_q + dp, uint16_t(0));
  std::fill(acc_all, acc_all + count * H * dp, 0.f);
  int64_t n_max = 0;
  for (int64_t r = 0; r < count; ++r) {
    std::fill(tasks[r].m, tasks[r].m + H, kNegInf);
    std::fill(tasks[r].l, tasks[r].l + H, 0.f);
    n_max = std::max(n_max, tasks[r].n);
  }
  const uint16_t* kb = static_cast<const uint16_t*>(a.k_base);
  const uint16_t* next_k[kBf16Chunk + 1];
  for (int64_t c0 = 0; c0 < n_max; c0 += kBf16Chunk) {
    for (int64_t r = 0; r < count; ++r) {
      if (c0 >= tasks[r].n) continue;
      // The chunk processed next: the next row's at c0, else the first row's at c0 + kBf16Chunk that has one.
      const DecodeTask* nt = nullptr;
      int64_t nc = c0;
      for (int64_t x = r + 1; x < count && nt == nullptr; ++x) {
        if (c0 < tasks[x].n) nt = &tasks[x];
      }
      for (int64_t x = 0; x < count && nt == nullptr; ++x) {
        if (c0 + kBf16Chunk < tasks[x].n) nt = &tasks[x], nc = c0 + kBf16Chunk;
      }
      const int64_t pairs = (std::min(kBf16Chunk, tasks[r].n - c0) + 1) / 2;
      const bool pf = nt != nullptr && head_rows(kb, nt->k_off, nt->n, nc, 2 * pairs, 0, next_k);
      decode_chunk_bf16(a, tasks[r], c0, acc_all + r * H * dp, scores, pp, zero_q, pf ? next_k : nullptr);
    }
  }
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t h = 0; h < H; ++h) unpermute_acc(acc_all + (r * H + h) * dp, D, tasks[r].acc + h * D);
  }
}
#endif  // CPU_CAPABILITY_AVX512

template <typename T>
void decode_combine_impl(const DecodeCombine& c) {
  const int64_t H = c.num_heads, D = c.head_dim;
  T* out = static_cast<T*>(c.out);
  for (int64_t h = 0; h < H; ++h) {
    float gmax = kNegInf;
    for (int64_t p = 0; p < c.num_parts; ++p) gmax = max_nan(gmax, c.parts[p * c.part_stride + h]);
    T* o = out + h * c.out_head_stride;
    if (gmax == kNegInf) {
      std::fill(o, o + D, T(0.f));
      continue;
    }
    float total = 0.f;
    for (int64_t p = 0; p < c.num_parts; ++p) {
      const float* part = c.parts + p * c.part_stride;
      total += part[H + h] * std::exp(part[h] - gmax);
    }
    const float inv = total > 0.f || std::isnan(total) ? 1.f / total : 0.f;
    int64_t i = 0;
    for (; i < D; i += kF) {
      const int64_t cnt = std::min(kF, D - i);
      fVec sum(0.f);
      for (int64_t p = 0; p < c.num_parts; ++p) {
        const float* part = c.parts + p * c.part_stride;
        const float w = std::exp(part[h] - gmax) * inv;
        if (w == 0.f) continue;
        const float* pa = part + 2 * H + h * D + i;
        sum = at::vec::fmadd(fVec(w), cnt == kF ? fVec::loadu(pa) : fVec::loadu(pa, cnt), sum);
      }
      if (cnt == kF) {
        store_f32(o + i, sum);
      } else {
        store_f32(o + i, sum, cnt);
      }
    }
  }
}

// --------------------------------------------------------------- prefill ---

template <typename TA>
inline float a_at(const TA* a, int64_t idx) {
  return static_cast<float>(a[idx]);
}

// C[MR, NV*kF] tile; B/C rows hold at least NV*kF floats past j0.
template <int MR, int NV, typename TA>
inline void gemm_tile(const GemmF32& g, const TA* A, int64_t i0, int64_t j0) {
  fVec c[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      c[r][v] = g.accumulate ? fVec::loadu(g.c + (i0 + r) * g.ldc + j0 + v * kF) : fVec(0.f);
    }
  }
  const TA* arow[MR];
  for (int r = 0; r < MR; ++r) arow[r] = A + (i0 + r) * g.lda;
  const float* b = g.b + j0;
  for (int64_t k = 0; k < g.k; ++k) {
    fVec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = fVec::loadu(b + k * g.ldb + v * kF);
    for (int r = 0; r < MR; ++r) {
      fVec av(a_at(arow[r], k));
      for (int v = 0; v < NV; ++v) c[r][v] = at::vec::fmadd(av, bv[v], c[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) c[r][v].store(g.c + (i0 + r) * g.ldc + j0 + v * kF);
  }
}

template <int MR, typename TA>
inline void gemm_rows(const GemmF32& g, const TA* A, int64_t i0, int64_t n_pad) {
  int64_t j = 0;
  for (; j + 2 * kF <= n_pad; j += 2 * kF) gemm_tile<MR, 2>(g, A, i0, j);
  for (; j < n_pad; j += kF) gemm_tile<MR, 1>(g, A, i0, j);
}

template <typename TA>
void gemm_impl(const GemmF32& g) {
  const TA* A = static_cast<const TA*>(g.a);
  const int64_t n_pad = round_up(g.n, kF);
  constexpr int kMR = 6;
  int64_t i = 0;
  for (; i + kMR <= g.m; i += kMR) gemm_rows<kMR>(g, A, i, n_pad);
  switch (g.m - i) {
    case 5: gemm_rows<5>(g, A, i, n_pad); break;
    case 4: gemm_rows<4>(g, A, i, n_pad); break;
    case 3: gemm_rows<3>(g, A, i, n_pad); break;
    case 2: gemm_rows<2>(g, A, i, n_pad); break;
    case 1: gemm_rows<1>(g, A, i, n_pad); break;
    default: break;
  }
}

template <typename T>
void pack_impl(const PackArgs& p) {
  const T* src = static_cast<const T*>(p.src);
  const int64_t D = p.head_dim, n = p.n, ts = p.tok_stride;
  switch (p.kind) {
    case PackKind::kF32Kt: {
      float* dst = static_cast<float*>(p.dst);
      for (int64_t d = 0; d < D; ++d) {
        float* row = dst + d * p.ld;
        for (int64_t i = 0; i < n; ++i) row[i] = static_cast<float>(src[i * ts + d]);
        std::fill(row + n, row + p.ld, 0.f);
      }
      break;
    }
    case PackKind::kF32V: {
      float* dst = static_cast<float*>(p.dst);
      const int64_t dp = round_up(D, 16);
      for (int64_t i = 0; i < n; ++i) row_to_f32(src + i * ts, D, dp, dst + i * dp);
      break;
    }
    case PackKind::kVnniKt: {
      if constexpr (sizeof(T) != 2) break;  // VNNI pairs are 16-bit types only
      // Token i's (d, d+1) pair is one 32-bit word: a 32-bit transpose.
      const int64_t pairs = D / 2;
      uint32_t* dst = static_cast<uint32_t*>(p.dst);
      int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
      if (pairs % 16 == 0) {
        for (; i + 16 <= n; i += 16) {
          for (int64_t k = 0; k < pairs; k += 16) {
            __m512i r[16];
            for (int x = 0; x < 16; ++x) r[x] = _mm512_loadu_si512(src + (i + x) * ts + 2 * k);
            transpose16x16_epi32(r);
            for (int x = 0; x < 16; ++x) _mm512_storeu_si512(dst + (k + x) * p.ld + i, r[x]);
          }
        }
      }
#endif
      for (; i < n; ++i) {
        const T* row = src + i * ts;
        for (int64_t k = 0; k < pairs; ++k) {
          uint32_t w;
          std::memcpy(&w, row + 2 * k, 4);
          dst[k * p.ld + i] = w;
        }
      }
      for (int64_t k = 0; k < pairs; ++k) std::fill(dst + k * p.ld + n, dst + (k + 1) * p.ld, 0u);
      break;
    }
    case PackKind::kVnniV: {
      if constexpr (sizeof(T) != 2) break;
      uint16_t* dst = static_cast<uint16_t*>(p.dst);
      for (int64_t j = 0; j < p.ld; j += 2) {
        uint16_t* o = dst + j * D;  // pair row j/2: D pairs
        const uint16_t* r0 = j < n ? reinterpret_cast<const uint16_t*>(src + j * ts) : nullptr;
        const uint16_t* r1 = j + 1 < n ? reinterpret_cast<const uint16_t*>(src + (j + 1) * ts) : nullptr;
        int64_t d = 0;
#if defined(CPU_CAPABILITY_AVX512)
        if (r0 && r1) {
          const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                  39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
          const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
          for (; d + 32 <= D; d += 32) {
            const __m512i a = _mm512_loadu_si512(r0 + d), b = _mm512_loadu_si512(r1 + d);
            _mm512_storeu_si512(o + 2 * d, _mm512_permutex2var_epi16(a, lo_idx, b));
            _mm512_storeu_si512(o + 2 * d + 32, _mm512_permutex2var_epi16(a, hi_idx, b));
          }
        }
#endif
        for (; d < D; ++d) {
          o[2 * d] = r0 ? r0[d] : 0;
          o[2 * d + 1] = r1 ? r1[d] : 0;
        }
      }
      break;
    }
  }
}

// Without a bias the scale folds into the exponent: max over the raw scores,
// then exp(s * scale - max * scale), one pass less over S.
inline bool folds_scale(const SoftmaxBlock& b) { return b.bias == nullptr && b.scale > 0.f; }

inline int64_t visible_cols(const SoftmaxBlock& b, int64_t r) {
  return b.causal ? std::max<int64_t>(0, std::min<int64_t>(b.n_cols, b.row_limit0 + r + 1)) : b.n_cols;
}

// Max of row r's visible scores, in scaled units; without folding, the row is
// first rewritten as s * scale + bias.
inline float scaled_row_max(const SoftmaxBlock& b, int64_t r, int64_t limit) {
  float* s = b.s + r * b.lds;
  const float* brow = b.bias ? b.bias + r * b.bias_row_stride : nullptr;
  fVec vmax(kNegInf);
  int64_t j = 0;
  if (folds_scale(b)) {
    for (; j + kF <= limit; j += kF) vmax = at::vec::maximum(vmax, fVec::loadu(s + j));
  } else if (brow && b.bias_col_stride != 1) {
    for (int64_t c = 0; c < limit; ++c) s[c] = s[c] * b.scale + brow[c * b.bias_col_stride];
    for (; j + kF <= limit; j += kF) vmax = at::vec::maximum(vmax, fVec::loadu(s + j));
  } else {
    const fVec vscale(b.scale);
    for (; j + kF <= limit; j += kF) {
      fVec x = fVec::loadu(s + j) * vscale;
      if (brow) x = x + fVec::loadu(brow + j);
      x.store(s + j);
      vmax = at::vec::maximum(vmax, x);
    }
    for (int64_t c = j; c < limit; ++c) s[c] = s[c] * b.scale + (brow ? brow[c] : 0.f);
  }
  float mx = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return at::vec::maximum(x, y); }, vmax);
  for (int64_t c = j; c < limit; ++c) mx = max_nan(mx, s[c]);
  return folds_scale(b) && mx != kNegInf ? mx * b.scale : mx;
}

// exp(s * scale - m) with s * scale exact in the FMA and m = fl(max * scale) rounded is exp of the true
// difference times exp(max * scale - m), a factor common to the whole row that the normalisation
// cancels. Beyond |m| = 2^24 that factor (up to exp(ulp(m) / 2)) overflows or underflows: at scaled
// logits near 1e10, NaN or all-zero rows where SDPA gives the right answer. Such rows (never seen at
// real logit scales) are rewritten first as fl(s * scale) - m, exactly 0 at the max, and exponentiated
// without a scale: exact_shift_row returns true when it did so.
constexpr float kExactShiftLimit = 16777216.f;  // 2^24

inline bool exact_shift_row(const SoftmaxBlock& b, int64_t r, int64_t limit, float m_new) {
  if (!(std::abs(m_new) > kExactShiftLimit) || m_new == kNegInf) return false;
  float* s = b.s + r * b.lds;
  const float mul = folds_scale(b) ? b.scale : 1.f;  // unfolded rows already hold s * scale + bias
  for (int64_t c = 0; c < limit; ++c) {
    // Rounded before the subtraction, as m_new was: a contracted FMA (-mfma) kept the product's residual.
    const volatile float scaled = s[c] * mul;
    s[c] = scaled - m_new;
  }
  return true;
}

// Running max / sum update of row r after its probabilities summed to `sum`.
inline void finish_row(const SoftmaxBlock& b, int64_t r, float m_new, float sum) {
  const float m_old = b.row_max[r];
  const float alpha = std::exp(m_old - m_new);  // 0 when m_old is -inf
  b.row_sum[r] = b.row_sum[r] * alpha + sum;
  b.row_max[r] = m_new;
  if (!b.first_block && alpha != 1.f) scale_f32(alpha, b.acc + r * b.ld_acc, round_up(b.head_dim, kF));
}

void softmax_block_impl(const SoftmaxBlock& b) {
  for (int64_t r = 0; r < b.m_rows; ++r) {
    const int64_t limit = visible_cols(b, r);
    const float m_new = max_nan(b.row_max[r], scaled_row_max(b, r, limit));
    const float* s = b.s + r * b.lds;
    const bool shifted = exact_shift_row(b, r, limit, m_new);
    const float mul = shifted || !folds_scale(b) ? 1.f : b.scale;
    const float m_sub = shifted ? 0.f : m_new;  // what the exponent subtracts
    float sum = 0.f;
    int64_t done = 0;
    if (m_new != kNegInf) {
      const fVec vm(-m_sub), vmul(mul);
      fVec vsum(0.f);
      if (b.p_bf16) {
        c10::BFloat16* p = static_cast<c10::BFloat16*>(b.p) + r * b.ldp;
        for (; done + kF <= limit; done += kF) {
          fVec e = at::vec::fmadd(fVec::loadu(s + done), vmul, vm).exp_u20();
          vsum = vsum + e;
          store_f32(p + done, e);
        }
        sum = reduce_sum(vsum);
        for (; done < limit; ++done) {
          float e = std::exp(s[done] * mul - m_sub);
          sum += e;
          p[done] = c10::BFloat16(e);
        }
      } else {
        float* p = static_cast<float*>(b.p) + r * b.ldp;
        for (; done + kF <= limit; done += kF) {
          fVec e = at::vec::fmadd(fVec::loadu(s + done), vmul, vm).exp_u20();
          vsum = vsum + e;
          e.store(p + done);
        }
        sum = reduce_sum(vsum);
        for (; done < limit; ++done) {
          p[done] = std::exp(s[done] * mul - m_sub);
          sum += p[done];
        }
      }
    }
    // masked / padding columns contribute nothing to P V
    if (b.p_bf16) {
      c10::BFloat16* p = static_cast<c10::BFloat16*>(b.p) + r * b.ldp;
      std::fill(p + done, p + b.n_pad, c10::BFloat16(0.f));
    } else {
      float* p = static_cast<float*>(b.p) + r * b.ldp;
      std::fill(p + done, p + b.n_pad, 0.f);
    }
    if (m_new != kNegInf) finish_row(b, r, m_new, sum);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// The AMX path's softmax (P in bf16): P only keeps 8 mantissa bits, so exp is
// 2^y with a degree-4 polynomial on the fraction and vscalefps (relative error
// ~4e-5, under bf16's rounding), scale * log2(e) folded into one FMA, and the
// conversion is vcvtneps2bf16.
IPEX_BF16_INSN_FN inline __m512 exp2_bf16(__m512 y) {
  y = _mm512_max_ps(_mm512_set1_ps(-150.f), y);  // -inf (masked by a bias) -> 0; NaN stays NaN (2nd operand)
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);
  __m512 p = _mm512_set1_ps(0.0096181291f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.0555041087f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2402265070f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471806f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

IPEX_BF16_INSN_FN void softmax_block_bf16(const SoftmaxBlock& b) {
  constexpr float kLog2e = 1.4426950408889634f;
  for (int64_t r = 0; r < b.m_rows; ++r) {
    const int64_t limit = visible_cols(b, r);
    const float m_new = max_nan(b.row_max[r], scaled_row_max(b, r, limit));
    const float* s = b.s + r * b.lds;
    uint16_t* p = static_cast<uint16_t*>(b.p) + r * b.ldp;
    if (m_new == kNegInf) {
      std::fill(p, p + b.n_pad, uint16_t(0));
      continue;
    }
    const bool shifted = exact_shift_row(b, r, limit, m_new);
    const float mul = (shifted || !folds_scale(b) ? 1.f : b.scale) * kLog2e;
    const __m512 vmul = _mm512_set1_ps(mul), vsub = _mm512_set1_ps(shifted ? 0.f : -m_new * kLog2e);
    __m512 vsum = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= limit; j += 16) {
      const __m512 e = exp2_bf16(_mm512_fmadd_ps(_mm512_loadu_ps(s + j), vmul, vsub));
      vsum = _mm512_add_ps(vsum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (j < limit) {
      const __mmask16 m = static_cast<__mmask16>((1u << (limit - j)) - 1u);
      const __m512 e = _mm512_maskz_mov_ps(m, exp2_bf16(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s + j), vmul, vsub)));
      vsum = _mm512_add_ps(vsum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));  // zeros past limit
      j += 16;
    }
    std::fill(p + std::min(j, b.n_pad), p + b.n_pad, uint16_t(0));
    finish_row(b, r, m_new, _mm512_reduce_add_ps(vsum));
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// ------------------------------------------------------------ AMX decode ---
//
// bf16 decode on AMX tiles, one pass over each kv head's K and V rows for all
// the query heads of its group (up to 16 at a time; larger groups are split
// into sub-groups that share the chunk's packed V):
//   S^T[32 tokens, G] = K[32, D] x Q^T[D, G]   K rows straight from the cache
//                                              when 16 rows are equally spaced
//                                              (a paged block), else copied;
//   O[G, D] += P[G, 32] x V[32, D]             V rows interleaved in token
//                                              pairs (the VNNI layout).
// On this machine an AVX-512 core does about one vdpbf16ps per ns, so the
// vector form (16 vdpbf16ps + a transpose-add per token and kv head for Q K^T
// alone) cannot keep up with the memory; one tdpbf16ps does 256 of them.
//
// The running max is lazy: a head's reference max moves only when a chunk's
// max exceeds it by more than kLazyMax, so P stays <= e^kLazyMax (exact in
// fp32 and within bf16's range) and O is rescaled a handful of times per
// context instead of on most chunks. (m, l, acc) stay a consistent partial
// state for the combine, which rescales by exp(m_part - m_global).
#define IPEX_AMX_FN \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

constexpr float kLazyMax = 8.f;
constexpr int64_t kAmxChunk = 32;  // tokens per step: one A tile of P (32 bf16 per row)

// Tile registers: S halves (tokens 0-15, 16-31), a K tile, a Q^T tile, P, a V
// tile and two O tiles (alternating d blocks so consecutive tdpbf16ps are
// independent). Macros: the tile intrinsics paste the number into the asm.
#define kTS0 0
#define kTS1 1
#define kTK 2
#define kTQ 3
#define kTP 4
#define kTV 5
#define kTO0 6
#define kTO1 7

IPEX_AMX_FN inline void amx_configure(int64_t gs) {
  AmxTileConfig c;
  const auto g4 = static_cast<uint16_t>(gs * 4);
  const auto gr = static_cast<uint8_t>(gs);
  c.rows[kTS0] = 16; c.colsb[kTS0] = g4;
  c.rows[kTS1] = 16; c.colsb[kTS1] = g4;
  c.rows[kTK] = 16;  c.colsb[kTK] = 64;
  c.rows[kTQ] = 16;  c.colsb[kTQ] = g4;
  c.rows[kTP] = gr;  c.colsb[kTP] = 64;
  c.rows[kTV] = 16;  c.colsb[kTV] = 64;
  c.rows[kTO0] = gr; c.colsb[kTO0] = 64;
  c.rows[kTO1] = gr; c.colsb[kTO1] = 64;
  _tile_loadconfig(&c);
}

// Query heads [j0, j0 + n) of one group, at most 16.
struct SubGroup {
  int64_t kv_head;
  int32_t j0;
  int n;
};

// Rows [r0, r0 + 16) of the chunk as one K tile source: straight from the
// cache when all 16 exist and are equally spaced, else nullptr (copy them).
inline const uint16_t* uniform_rows(const uint16_t* kb, const int64_t* off, int64_t rows, int64_t* stride) {
  if (rows < 16) return nullptr;
  const int64_t d = off[1] - off[0];
  if (d <= 0) return nullptr;
  for (int i = 2; i < 16; ++i) {
    if (off[i] - off[i - 1] != d) return nullptr;
  }
  *stride = d;
  return kb + off[0];
}

IPEX_AMX_FN void decode_partial_amx(const DecodeArgs& a, const DecodeTask& t) {
  const int64_t D = a.head_dim, Hkv = a.num_kv_heads, dchunks = D / 32, dblocks = D / 16;
  const uint16_t* kb = static_cast<const uint16_t*>(a.k_base);
  const uint16_t* vb = static_cast<const uint16_t*>(a.v_base);
  const uint16_t* q = static_cast<const uint16_t*>(t.q);

  SubGroup subs[64];
  std::unique_ptr<SubGroup[]> subs_heap;
  int64_t n_subs = 0, gs = 1;
  for (int64_t g = 0; g < Hkv; ++g) n_subs += (a.group_offsets[g + 1] - a.group_offsets[g] + 15) / 16;
  SubGroup* sub = subs;
  if (n_subs > 64) {
    subs_heap.reset(new SubGroup[n_subs]);
    sub = subs_heap.get();
  }
  n_subs = 0;
  for (int64_t g = 0; g < Hkv; ++g) {
    for (int32_t j = a.group_offsets[g]; j < a.group_offsets[g + 1]; j += 16) {
      const int n = static_cast<int>(std::min<int32_t>(16, a.group_offsets[g + 1] - j));
      sub[n_subs++] = {g, j, n};
      gs = std::max<int64_t>(gs, n);
    }
  }

  // Scratch: Q^T tiles [sub][dchunk][16 pairs][gs], O [sub][gs][D], S [32][gs],
  // P [16][32] bf16, copied K [2][16][D] bf16, V pairs [dblock][16][32] bf16.
  const int64_t qt_words = n_subs * dchunks * 16 * gs;
  const int64_t o_floats = n_subs * gs * D;
  const int64_t mls = n_subs * 16;
  float* base = scratch(qt_words + o_floats + 2 * mls + 32 * gs + 16 * 16 + 2 * 16 * D / 2 + dblocks * 16 * 16 + 64, 0);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t(63));
  uint32_t* qt = reinterpret_cast<uint32_t*>(aligned);
  float* obuf = aligned + qt_words;
  float* mrun = obuf + o_floats;
  float* lrun = mrun + mls;
  float* sbuf = lrun + mls;
  uint16_t* pbuf = reinterpret_cast<uint16_t*>(sbuf + 32 * gs);
  uint16_t* kcopy = pbuf + 16 * 32;
  uint16_t* vpairs = kcopy + 2 * 16 * D;

  std::memset(qt, 0, qt_words * sizeof(uint32_t));
  std::fill(obuf, obuf + o_floats, 0.f);
  std::fill(mrun, mrun + mls, kNegInf);
  std::fill(lrun, lrun + mls, 0.f);
  std::memset(pbuf, 0, 16 * 32 * sizeof(uint16_t));
  for (int64_t s = 0; s < n_subs; ++s) {
    for (int x = 0; x < sub[s].n; ++x) {
      const uint32_t* qh = reinterpret_cast<const uint32_t*>(q + a.group_heads[sub[s].j0 + x] * t.q_head_stride);
      for (int64_t p = 0; p < D / 2; ++p) {
        uint32_t w;
        std::memcpy(&w, qh + p, 4);  // (q[2p], q[2p+1]), one VNNI pair
        qt[((s * dchunks + p / 16) * 16 + p % 16) * gs + x] = w;
      }
    }
  }
  amx_configure(gs);

  const __m512i gather_idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                _mm512_set1_epi32(static_cast<int>(gs)));
  const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // vpermt2w indices: words (a[i], b[i]) of d block i in 0..15 / 16..31
  const __m512i pair_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                           39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i pair_hi = _mm512_add_epi16(pair_lo, _mm512_set1_epi16(16));
  constexpr float kLog2e = 1.4426950408889634f;
  const int64_t krow_bytes = D * 2;

  for (int64_t c0 = 0; c0 < t.n; c0 += kAmxChunk) {
    const int64_t cn = std::min(kAmxChunk, t.n - c0);
    const int64_t halves = cn > 16 ? 2 : 1;
    int64_t kstride[2] = {0, 0};
    const uint16_t* kdirect[2] = {nullptr, nullptr};
    for (int64_t hh = 0; hh < halves; ++hh) {
      kdirect[hh] = uniform_rows(kb, t.k_off + c0 + 16 * hh, cn - 16 * hh, &kstride[hh]);
    }
    prefetch_next_chunk<uint16_t>(a, t, c0 + kAmxChunk, kAmxChunk, 16);
    int64_t s_begin = 0;
    for (int64_t g = 0; g < Hkv; ++g) {
      int64_t s_end = s_begin;
      while (s_end < n_subs && sub[s_end].kv_head == g) ++s_end;
      if (s_end == s_begin) continue;
      // K tile sources of this kv head
      const uint16_t* ksrc[2];
      int64_t kst[2];
      for (int64_t hh = 0; hh < halves; ++hh) {
        if (kdirect[hh] != nullptr) {
          ksrc[hh] = kdirect[hh] + g * a.k_head_stride;
          kst[hh] = kstride[hh] * 2;
        } else {
          uint16_t* dst = kcopy + hh * 16 * D;
          const int64_t rows = std::min<int64_t>(16, cn - 16 * hh);
          for (int64_t r = 0; r < 16; ++r) {
            const uint16_t* src = kb + t.k_off[c0 + 16 * hh + std::min(r, rows - 1)] + g * a.k_head_stride;
            for (int64_t d = 0; d < D; d += 32) {
              // padding rows repeat the last row: finite, and their scores are masked
              _mm512_storeu_si512(dst + r * D + d, _mm512_loadu_si512(src + d));
            }
          }
          ksrc[hh] = dst;
          kst[hh] = krow_bytes;
        }
      }
      // V rows of this kv head as token pairs (zeros past cn: P is 0 there,
      // and 0 * garbage could be NaN).
      for (int64_t tp = 0; tp < 16; ++tp) {
        const int64_t r0 = 2 * tp, r1 = 2 * tp + 1;
        const uint16_t* v0 = r0 < cn ? vb + t.v_off[c0 + r0] + g * a.v_head_stride : nullptr;
        const uint16_t* v1 = r1 < cn ? vb + t.v_off[c0 + r1] + g * a.v_head_stride : nullptr;
        for (int64_t d = 0; d < D; d += 32) {
          const __m512i x0 = v0 ? _mm512_loadu_si512(v0 + d) : _mm512_setzero_si512();
          const __m512i x1 = v1 ? _mm512_loadu_si512(v1 + d) : _mm512_setzero_si512();
          _mm512_storeu_si512(vpairs + ((d / 16) * 16 + tp) * 32, _mm512_permutex2var_epi16(x0, pair_lo, x1));
          _mm512_storeu_si512(vpairs + ((d / 16 + 1) * 16 + tp) * 32, _mm512_permutex2var_epi16(x0, pair_hi, x1));
        }
      }
      for (int64_t s = s_begin; s < s_end; ++s) {
        const SubGroup& sg = sub[s];
        // S^T = K Q^T
        _tile_zero(kTS0);
        _tile_zero(kTS1);
        for (int64_t dc = 0; dc < dchunks; ++dc) {
          _tile_loadd(kTQ, qt + (s * dchunks + dc) * 16 * gs, gs * 4);
          _tile_loadd(kTK, ksrc[0] + dc * 32, kst[0]);
          _tile_dpbf16ps(kTS0, kTK, kTQ);
          if (halves > 1) {
            _tile_loadd(kTK, ksrc[1] + dc * 32, kst[1]);
            _tile_dpbf16ps(kTS1, kTK, kTQ);
          }
        }
        _tile_stored(kTS0, sbuf, gs * 4);
        if (halves > 1) _tile_stored(kTS1, sbuf + 16 * gs, gs * 4);
        // online softmax per head
        float* mh = mrun + s * 16;
        float* lh = lrun + s * 16;
        float* oh = obuf + s * gs * D;
        const __mmask16 valid0 = static_cast<__mmask16>(cn >= 16 ? 0xFFFF : (1u << cn) - 1u);
        const __mmask16 valid1 = static_cast<__mmask16>(cn >= 32 ? 0xFFFF : cn > 16 ? (1u << (cn - 16)) - 1u : 0u);
        for (int x = 0; x < sg.n; ++x) {
          const int64_t h = a.group_heads[sg.j0 + x];
          const __m512 vs = _mm512_set1_ps(a.scale);
          __m512 s0 = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid0, gather_idx, sbuf + x, 4), vs);
          __m512 s1 = _mm512_mul_ps(
              _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid1, gather_idx, sbuf + 16 * gs + x, 4), vs);
          if (t.alibi_slopes != nullptr) {
            const __m512 slope = _mm512_set1_ps(t.alibi_slopes[h]);
            const __m512 pos = _mm512_add_ps(iota, _mm512_set1_ps(static_cast<float>(c0) + t.alibi_offset));
            s0 = _mm512_fmadd_ps(slope, pos, s0);
            s1 = _mm512_fmadd_ps(slope, _mm512_add_ps(pos, _mm512_set1_ps(16.f)), s1);
          }
          if (t.bias != nullptr) {
            alignas(64) float tmp[32];
            _mm512_store_ps(tmp, s0);
            _mm512_store_ps(tmp + 16, s1);
            const float* b = t.bias + h * t.bias_head_stride + c0 * t.bias_tok_stride;
            for (int64_t i = 0; i < cn; ++i) tmp[i] += b[i * t.bias_tok_stride];
            s0 = _mm512_load_ps(tmp);
            s1 = _mm512_load_ps(tmp + 16);
          }
          s0 = _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), valid0, s0);
          s1 = _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), valid1, s1);
          const float cmax = _mm512_reduce_max_ps(_mm512_max_ps(s0, s1));
          if (cmax == kNegInf) {  // every token of the chunk masked: P row 0
            _mm512_storeu_si512(pbuf + x * 32, _mm512_setzero_si512());
            continue;
          }
          if (cmax > mh[x] + kLazyMax) {
            if (mh[x] != kNegInf) {
              const float alpha = std::exp(mh[x] - cmax);
              lh[x] *= alpha;
              scale_f32(alpha, oh + x * D, D);
            }
            mh[x] = cmax;
          }
          const __m512 vmul = _mm512_set1_ps(kLog2e), vsub = _mm512_set1_ps(-mh[x] * kLog2e);
          const __m512 e0 = _mm512_maskz_mov_ps(valid0, exp2_bf16(_mm512_fmadd_ps(s0, vmul, vsub)));
          const __m512 e1 = _mm512_maskz_mov_ps(valid1, exp2_bf16(_mm512_fmadd_ps(s1, vmul, vsub)));
          const __m512bh pb = _mm512_cvtne2ps_pbh(e1, e0);
          _mm512_storeu_si512(pbuf + x * 32, (__m512i)pb);
          // l sums what P V multiplies: the bf16-rounded probabilities
          const __m512i pw = (__m512i)pb;
          const __m512 r0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(pw)), 16));
          const __m512 r1 =
              _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(pw, 1)), 16));
          lh[x] += _mm512_reduce_add_ps(_mm512_add_ps(r0, r1));
        }
        // O += P V
        _tile_loadd(kTP, pbuf, 64);
        for (int64_t db = 0; db < dblocks; db += 2) {
          _tile_loadd(kTO0, oh + db * 16, D * 4);
          _tile_loadd(kTV, vpairs + db * 16 * 32, 64);
          _tile_dpbf16ps(kTO0, kTP, kTV);
          _tile_stored(kTO0, oh + db * 16, D * 4);
          _tile_loadd(kTO1, oh + (db + 1) * 16, D * 4);
          _tile_loadd(kTV, vpairs + (db + 1) * 16 * 32, 64);
          _tile_dpbf16ps(kTO1, kTP, kTV);
          _tile_stored(kTO1, oh + (db + 1) * 16, D * 4);
        }
      }
      s_begin = s_end;
    }
  }
  _tile_release();
#undef kTS0
#undef kTS1
#undef kTK
#undef kTQ
#undef kTP
#undef kTV
#undef kTO0
#undef kTO1
  for (int64_t s = 0; s < n_subs; ++s) {
    for (int x = 0; x < sub[s].n; ++x) {
      const int64_t h = a.group_heads[sub[s].j0 + x];
      t.m[h] = mrun[s * 16 + x];
      t.l[h] = lrun[s * 16 + x];
      std::memcpy(t.acc + h * D, obuf + (s * gs + x) * D, D * sizeof(float));
    }
  }
}
#endif  // CPU_CAPABILITY_AVX512

template <typename T>
void finalize_impl(const FlashFinalize& f) {
  T* out = static_cast<T*>(f.out);
  const int64_t D = f.head_dim;
  for (int64_t r = 0; r < f.m_rows; ++r) {
    const float l = f.row_sum[r];
    T* o = out + r * f.out_row_stride;
    if (!(l > 0.f) && !std::isnan(l)) {  // no visible key: zeros (acc may hold nothing); a NaN stays NaN
      std::fill(o, o + D, T(0.f));
      continue;
    }
    const fVec inv(1.f / l);
    const float* a = f.acc + r * f.ld_acc;
    int64_t i = 0;
    for (; i + kF <= D; i += kF) store_f32(o + i, fVec::loadu(a + i) * inv);
    if (i < D) store_f32(o + i, fVec::loadu(a + i, D - i) * inv, D - i);
  }
}

template <template <typename> class Fn, typename Args>
void by_dtype(c10::ScalarType dt, const Args& a) {
  switch (dt) {
    case c10::ScalarType::Float: Fn<float>::run(a); break;
    case c10::ScalarType::BFloat16: Fn<c10::BFloat16>::run(a); break;
    case c10::ScalarType::Half: Fn<c10::Half>::run(a); break;
    default: break;  // validated by the op before we get here
  }
}

template <typename T> struct DecodePartialFn { static void run(const std::pair<const DecodeArgs*, const DecodeTask*>& p) { decode_partial_impl<T>(*p.first, *p.second); } };
template <typename T> struct DecodeCombineFn { static void run(const DecodeCombine& c) { decode_combine_impl<T>(c); } };
template <typename T> struct GemmFn { static void run(const GemmF32& g) { gemm_impl<T>(g); } };
template <typename T> struct PackFn { static void run(const PackArgs& p) { pack_impl<T>(p); } };
template <typename T> struct FinalizeFn { static void run(const FlashFinalize& f) { finalize_impl<T>(f); } };

}  // namespace

void attn_decode_partial(const DecodeArgs& a, const DecodeTask* tasks, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  if (a.amx && a.dtype == c10::ScalarType::BFloat16 && a.head_dim % 32 == 0) {
    for (int64_t r = 0; r < count; ++r) decode_partial_amx(a, tasks[r]);
    return;
  }
  if (a.bf16_dot && a.dtype == c10::ScalarType::BFloat16) {
    decode_partial_bf16(a, tasks, count);
    return;
  }
#endif
  for (int64_t r = 0; r < count; ++r) by_dtype<DecodePartialFn>(a.dtype, std::make_pair(&a, &tasks[r]));
}

void attn_decode_combine(const DecodeCombine& c) { by_dtype<DecodeCombineFn>(c.dtype, c); }

void attn_gemm_f32(const GemmF32& g) { by_dtype<GemmFn>(g.a_dtype, g); }

void attn_pack(const PackArgs& p) { by_dtype<PackFn>(p.dtype, p); }

void attn_softmax_block(const SoftmaxBlock& b) {
#if defined(CPU_CAPABILITY_AVX512)
  if (b.p_bf16) {  // only the AMX path asks for bf16 P, so AVX512-BF16 is there
    softmax_block_bf16(b);
    return;
  }
#endif
  softmax_block_impl(b);
}

void attn_finalize(const FlashFinalize& f) { by_dtype<FinalizeFn>(f.dtype, f); }

}  // namespace ipex::core::kernels::IPEX_ISA_NS
