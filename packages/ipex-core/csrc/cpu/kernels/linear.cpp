// Small-M linear (decode GEMV) and the shared epilogue, compiled once per ISA.
#include "cpu/kernels/linear_kernels.h"
#include "cpu/kernels/amx_tiles.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

// [x[k], x[k+1], x[k], x[k+1], ...]: the input pair that multiplies one
// VNNI row of weights (V = 2), or a plain broadcast (V = 1).
template <int V>
inline fVec broadcast_group(const float* p) {
  if constexpr (V == 1) {
    return fVec(*p);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(p)));
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
#else
    alignas(64) float tmp[kF];
    for (int64_t i = 0; i < kF; ++i) tmp[i] = p[i % 2];
    return fVec::loadu(tmp);
#endif
  }
}

inline fVec apply_activation(Epilogue e, fVec v) {
  switch (e) {
    case Epilogue::kRelu: return at::vec::maximum(v, fVec(0.f));
    case Epilogue::kSilu:
    case Epilogue::kSiluMul: return silu(v);
    case Epilogue::kGelu: return gelu_erf(v);
    case Epilogue::kGeluTanh: return gelu_tanh(v);
    default: return v;
  }
}

template <typename T>
inline fVec load_or_zero(const T* p, int64_t offset, int64_t count) {
  if (p == nullptr) return fVec(0.f);
  return count == kF ? load_f32(p + offset) : load_f32(p + offset, count);
}

// out[m, n0:n0+cols] = epilogue(acc[0:cols]) for one row m.
// Values are rounded to T after the GEMM (+bias) and after each element-wise
// step, at the points where the unfused PyTorch code rounds: fusion saves the
// memory passes, not the rounding, so bf16/fp16 results equal stock's.
template <typename T>
void epilogue_row(const LinearArgs& a, int64_t m, int64_t n0, int64_t cols, const float* acc,
                  const float* acc2) {
  const T* bias = static_cast<const T*>(a.bias);
  const T* other = static_cast<const T*>(a.other);
  const T* other2 = static_cast<const T*>(a.other2);
  T* out = static_cast<T*>(a.out) + m * a.out_row_stride + n0;
  for (int64_t j = 0; j < cols; j += kF) {
    int64_t c = std::min<int64_t>(kF, cols - j);
    fVec v = c == kF ? fVec::loadu(acc + j) : fVec::loadu(acc + j, c);
    v = round_to<T>(v + load_or_zero(bias, n0 + j, c));
    if (a.epilogue == Epilogue::kPairSiluMul) {
      fVec up = c == kF ? fVec::loadu(acc2 + j) : fVec::loadu(acc2 + j, c);
      up = round_to<T>(up + load_or_zero(bias, a.N + n0 + j, c));
      v = round_to<T>(silu(v)) * up;
    } else {
      v = round_to<T>(apply_activation(a.epilogue, v));
      if (a.epilogue == Epilogue::kMul || a.epilogue == Epilogue::kSiluMul) {
        v = v * load_or_zero(other + m * a.other_row_stride, n0 + j, c);
      } else if (a.epilogue == Epilogue::kAdd || a.epilogue == Epilogue::kAddAdd) {
        v = v + load_or_zero(other + m * a.other_row_stride, n0 + j, c);
        if (a.epilogue == Epilogue::kAddAdd) {
          v = round_to<T>(v) + load_or_zero(other2 + m * a.other2_row_stride, n0 + j, c);
        }
      }
    }
    if (c == kF) {
      store_f32(out + j, v);
    } else {
      store_f32(out + j, v, c);
    }
  }
}

// Decode streams each weight byte once: ask for the lines kPrefetchAhead bytes ahead of
// the ones being read, so that more misses are in flight than the hardware prefetcher
// alone keeps (it stops at every 4 KB page). 4 KB ahead measured best on this project's
// Xeon (SmolLM2 and 0.5B Llama decode shapes, bf16 and fp32: 1.25-1.5x the weight
// bandwidth of no prefetch, 2 and 8 KB close behind); IPEX_LINEAR_PREFETCH_BYTES
// overrides it (0: off). Past a block's end this is the next block, which the same
// thread usually reads next.
const int64_t kPrefetchAhead = [] {
  const char* v = std::getenv("IPEX_LINEAR_PREFETCH_BYTES");
  return (v != nullptr && v[0] != '\0') ? std::atoll(v) : int64_t{4096};
}();

inline void prefetch_ahead(const void* p, int64_t bytes) {
  if (kPrefetchAhead <= 0) return;
  const char* c = static_cast<const char*>(p) + kPrefetchAhead;
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

// Accumulate rows [0, MR) of x against k-groups [g0, g1) of one packed block,
// adding to the raw accumulators in `accbuf` ([MR][kBlockN * V] floats).
// For V = 2 the lanes alternate between the even-k and odd-k partial sums of
// a column; finish_rows adds them pairwise once at the end, so the inner loop
// is loads + FMAs only.
template <typename T, int V, int MR>
inline void block_gemv_chunk(const float* x, int64_t ldx, int64_t g0, int64_t g1, const T* w,
                             float* accbuf) {
  constexpr int64_t kGroup = kBlockN * V;  // elements of one k-group row of a block
  constexpr int NV = kGroup / kF;
  fVec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int i = 0; i < NV; ++i) acc[r][i] = fVec::loadu(accbuf + r * kGroup + i * kF);
  for (int64_t g = g0; g < g1; ++g) {
    const T* wg = w + g * kGroup;
    prefetch_ahead(wg, kGroup * sizeof(T));
    fVec wv[NV];
    for (int i = 0; i < NV; ++i) wv[i] = load_f32(wg + i * kF);
    for (int r = 0; r < MR; ++r) {
      fVec xv = broadcast_group<V>(x + r * ldx + g * V);
      for (int i = 0; i < NV; ++i) acc[r][i] = at::vec::fmadd(wv[i], xv, acc[r][i]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int i = 0; i < NV; ++i) acc[r][i].store(accbuf + r * kGroup + i * kF);
}

template <typename T, int V>
void block_gemv_rows(const float* x, int64_t ldx, int64_t g0, int64_t g1, const T* w, int64_t rows,
                     float* accbuf) {
  constexpr int64_t kGroup = kBlockN * V;
  int64_t m = 0;
  // 4 rows x (kBlockN*V/kF) accumulators fit the vector registers.
  for (; m + 4 <= rows; m += 4) block_gemv_chunk<T, V, 4>(x + m * ldx, ldx, g0, g1, w, accbuf + m * kGroup);
  float* rest = accbuf + m * kGroup;
  switch (rows - m) {
    case 3: block_gemv_chunk<T, V, 3>(x + m * ldx, ldx, g0, g1, w, rest); break;
    case 2: block_gemv_chunk<T, V, 2>(x + m * ldx, ldx, g0, g1, w, rest); break;
    case 1: block_gemv_chunk<T, V, 1>(x + m * ldx, ldx, g0, g1, w, rest); break;
    default: break;
  }
}

// One block for all M rows. The k range is walked in chunks small enough to
// stay in L1, so each weight byte comes from memory once however many row
// passes there are.
template <typename T, int V>
void block_gemv(const LinearArgs& a, const T* w, float* accbuf, float* out /*[M][kBlockN]*/) {
  constexpr int64_t kGroup = kBlockN * V;
  constexpr int64_t kChunkGroups = 16384 / (kGroup * sizeof(T));  // 16 KB of weights
  const float* x = static_cast<const float*>(a.x);
  std::fill(accbuf, accbuf + a.M * kGroup, 0.f);
  const int64_t groups = a.K_pad / V;
  for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups) {
    block_gemv_rows<T, V>(x, a.K_pad, g0, std::min(groups, g0 + kChunkGroups), w, a.M, accbuf);
  }
  for (int64_t r = 0; r < a.M; ++r) {
    const float* raw = accbuf + r * kGroup;
    for (int64_t n = 0; n < kBlockN; ++n) {
      out[r * kBlockN + n] = V == 1 ? raw[n] : raw[2 * n] + raw[2 * n + 1];
    }
  }
}

// The small-M driver: for output blocks [begin, end), `block_acc(w, acc)` fills
// the fp32 accumulators [M][kBlockN] of one packed block (both halves of a
// gate/up pair), then the epilogue stores them. Each kernel only supplies
// block_acc.
template <typename T, typename BlockAcc>
void for_each_block(const LinearArgs& a, int64_t begin, int64_t end, const BlockAcc& block_acc) {
  const bool pair = a.epilogue == Epilogue::kPairSiluMul;
  const int64_t block_elems = a.K_pad * kBlockN;
  std::vector<float> acc(a.M * kBlockN), acc2(pair ? a.M * kBlockN : 0);
  for (int64_t b = begin; b < end; ++b) {
    const T* w = static_cast<const T*>(a.weight) + b * block_elems * (pair ? 2 : 1);
    block_acc(w, acc.data());
    if (pair) block_acc(w + block_elems, acc2.data());
    const int64_t n0 = b * kBlockN;
    const int64_t cols = std::min<int64_t>(kBlockN, a.N - n0);
    for (int64_t r = 0; r < a.M; ++r) {
      epilogue_row<T>(a, r, n0, cols, acc.data() + r * kBlockN, pair ? acc2.data() + r * kBlockN : nullptr);
    }
  }
}

template <typename T, int V>
void small_m_blocks(const LinearArgs& a, int64_t begin, int64_t end) {
  std::vector<float> accbuf(a.M * kBlockN * V);
  for_each_block<T>(a, begin, end, [&](const T* w, float* acc) { block_gemv<T, V>(a, w, accbuf.data(), acc); });
}

#if defined(CPU_CAPABILITY_AVX512)
// bf16 decode (one row) with vdpbf16ps (AVX512-BF16): one instruction
// multiplies a k pair of 16 columns, straight from the packed VNNI layout,
// with no conversions -- four times fewer instructions per weight byte than
// widening to fp32, so a core streams weights at memory speed. Only called
// where the active ISA level has the instructions (the op decides, see
// LinearArgs::x_bf16). Up to 8 rows, row-blocked (block_dot_bf16_rows); more lose to
// AMX/brgemm (vdpbf16ps is the limit).
#define IPEX_LINEAR_BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// out[0..kBlockN) = x . W_block over the whole K; two k groups per step into
// separate accumulators (latency hiding).
IPEX_LINEAR_BF16_FN void block_dot_bf16(const uint16_t* x, int64_t K_pad, const uint16_t* w, float* out) {
  static_assert(kBlockN == 32, "one k group of a block is two 512-bit registers");
  const int64_t groups = K_pad / 2;
  __m512 acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    const uint16_t* wg = w + g * 2 * kBlockN;
    prefetch_ahead(wg, 4 * kBlockN * 2);
    const __m512i x0 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 2 * g));
    const __m512i x1 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 2 * g + 2));
    acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_loadu_si512(wg), (__m512bh)x0);
    acc[1] = _mm512_dpbf16_ps(acc[1], (__m512bh)_mm512_loadu_si512(wg + 32), (__m512bh)x0);
    acc[2] = _mm512_dpbf16_ps(acc[2], (__m512bh)_mm512_loadu_si512(wg + 64), (__m512bh)x1);
    acc[3] = _mm512_dpbf16_ps(acc[3], (__m512bh)_mm512_loadu_si512(wg + 96), (__m512bh)x1);
  }
  if (g < groups) {
    const uint16_t* wg = w + g * 2 * kBlockN;
    const __m512i x0 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 2 * g));
    acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_loadu_si512(wg), (__m512bh)x0);
    acc[1] = _mm512_dpbf16_ps(acc[1], (__m512bh)_mm512_loadu_si512(wg + 32), (__m512bh)x0);
  }
  _mm512_storeu_ps(out, _mm512_add_ps(acc[0], acc[2]));
  _mm512_storeu_ps(out + 16, _mm512_add_ps(acc[1], acc[3]));
}

// bf16 small M on AMX tiles: per 32 k, one A tile (the M rows of x), two B
// tiles straight from the packed block (its k-pair rows are 32 columns x 2:
// the first 64 bytes are columns 0-15, the next 64 columns 16-31, exactly the
// B tile layout) and two tdpbf16ps. One tile config per call, no per-block
// kernel dispatch, and compute to spare at every M <= 16, so the weights
// stream at memory speed.
#define IPEX_LINEAR_AMX_FN \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

// Tiles: 0/1 the accumulators (columns 0-15 / 16-31), 2 the rows of x, 3/4 the weights.
IPEX_LINEAR_AMX_FN void amx_configure_rows(int64_t M) {
  AmxTileConfig c;
  const auto m = static_cast<uint8_t>(M);
  c.rows[0] = m; c.colsb[0] = 64;
  c.rows[1] = m; c.colsb[1] = 64;
  c.rows[2] = m; c.colsb[2] = 64;
  c.rows[3] = 16; c.colsb[3] = 64;
  c.rows[4] = 16; c.colsb[4] = 64;
  _tile_loadconfig(&c);
}

IPEX_LINEAR_AMX_FN void block_amx(const uint16_t* x, int64_t K_pad, const uint16_t* w, float* out) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t k = 0; k < K_pad; k += 32) {
    const uint16_t* wk = w + k * kBlockN;  // k-pair row k/2, 2 * kBlockN elements per row
    prefetch_ahead(wk, 32 * kBlockN * 2);
    _tile_loadd(2, x + k, K_pad * 2);
    _tile_loadd(3, wk, 4 * kBlockN);
    _tile_loadd(4, wk + 32, 4 * kBlockN);
    _tile_dpbf16ps(0, 2, 3);
    _tile_dpbf16ps(1, 2, 4);
  }
  _tile_stored(0, out, kBlockN * 4);
  _tile_stored(1, out + 16, kBlockN * 4);
}

IPEX_LINEAR_AMX_FN void small_m_blocks_amx(const LinearArgs& a, int64_t begin, int64_t end) {
  const auto* x = static_cast<const uint16_t*>(a.x_bf16);
  amx_configure_rows(a.M);
  for_each_block<c10::BFloat16>(a, begin, end, [&](const c10::BFloat16* w, float* acc) {
    block_amx(x, a.K_pad, reinterpret_cast<const uint16_t*>(w), acc);
  });
  _tile_release();
}

// bf16 large M on AMX tiles, straight from the packed blocks. A task is up to
// kLargeTaskRows rows of one 32-column block; its weights are walked in K chunks
// (they stay in L1 while every 32-row tile of the task passes over them; the rows'
// chunk stays in L2), with the fp32 accumulators [rows][32] kept in memory (L2)
// between chunks. One tile config per tile shape, no per-call dispatch: oneDNN's
// brgemm called per 32x32 tile on full K streamed both operands from L2 at every k
// step (0.56-0.8 of oneDNN's own GEMM's speed). The chunk: 256 k (16 KB of bf16)
// below K = 4096, else 512. Intel Xeon with AMX, interleaved, chunk 128 / 256 / 512:
// 128 x 768 -> 3072 0.41 / 0.33 / 0.35 ms, 128 x 3072 -> 768 0.34 / 0.27 / 0.29,
// 1024 x 3072 -> 768 2.89 / 2.34 / 2.52, 1024 x 4096 -> 4096 28.5 / 27.3 / 25.5.
// Tiles: amx_configure_32x32 (amx_tiles.h).
// acc[rows][32] (+)= x[rows, k0:k0+kc] . W[k0:k0+kc, block] for one tile of up to 32 rows.
// `pf`: lines to prefetch into L2, `pf_per_step` of them at each k step.
template <bool kTwoRowTiles>
IPEX_LINEAR_AMX_FN void amx_tile_32x32(const uint16_t* x, int64_t K_pad, const uint16_t* w, int64_t k0, int64_t kc,
                                       float* acc, const char* pf, int64_t pf_per_step) {
  constexpr int64_t ldc = kBlockN * 4;
  if (k0 == 0) {
    _tile_zero(0); _tile_zero(1);
    if constexpr (kTwoRowTiles) { _tile_zero(2); _tile_zero(3); }
  } else {
    _tile_loadd(0, acc, ldc); _tile_loadd(1, acc + 16, ldc);
    if constexpr (kTwoRowTiles) { _tile_loadd(2, acc + 16 * kBlockN, ldc); _tile_loadd(3, acc + 16 * kBlockN + 16, ldc); }
  }
  const uint16_t* x1 = x + 16 * K_pad;
  for (int64_t k = k0; k < k0 + kc; k += 32) {
    const uint16_t* wk = w + k * kBlockN;  // k-pair row k/2 of 2 * kBlockN elements
    if (pf != nullptr) {
      for (int64_t l = 0; l < pf_per_step; ++l) _mm_prefetch(pf + l * 64, _MM_HINT_T1);
      pf += pf_per_step * 64;
    }
    _tile_loadd(6, wk, 4 * kBlockN);
    _tile_loadd(7, wk + 32, 4 * kBlockN);
    _tile_loadd(4, x + k, K_pad * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (kTwoRowTiles) {
      _tile_loadd(5, x1 + k, K_pad * 2);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, acc, ldc); _tile_stored(1, acc + 16, ldc);
  if constexpr (kTwoRowTiles) { _tile_stored(2, acc + 16 * kBlockN, ldc); _tile_stored(3, acc + 16 * kBlockN + 16, ldc); }
}

IPEX_LINEAR_AMX_FN void large_m_tasks_amx(const LinearArgs& a, int64_t begin, int64_t end) {
  const bool pair = a.epilogue == Epilogue::kPairSiluMul;
  const int64_t block_elems = a.K_pad * kBlockN;
  const auto* x = static_cast<const uint16_t*>(a.x_bf16);
  std::vector<float> acc(kLargeTaskRows * kBlockN), acc2(pair ? kLargeTaskRows * kBlockN : 0);
  int64_t configured0 = -1, configured1 = -1;
  // Consecutive tasks share rows (256 rows of x stay in L2 while the weights stream
  // past); ordered the other way round, x (4 MB at 1024 x 2048) was re-read from
  // memory for every block.
  const int64_t chunk_k = a.K_pad < 4096 ? 256 : 512;  // see above
  for (int64_t t = begin; t < end; ++t) {
    const int64_t blk = t % a.num_blocks, r0 = t / a.num_blocks * kLargeTaskRows;
    const int64_t task_rows = std::min(kLargeTaskRows, a.M - r0);
    const auto* w = static_cast<const uint16_t*>(a.weight) + blk * block_elems * (pair ? 2 : 1);
    // The weights come from memory once per task: while a chunk is in use, the next
    // one (or the next block's first) is prefetched into L2, a slice per row tile, so
    // the first row tile of the next chunk does not wait on memory.
    const auto* next_block = t + 1 < end && blk + 1 < a.num_blocks ? w + block_elems * (pair ? 2 : 1) : nullptr;
    const int64_t m_tiles = (task_rows + 31) / 32;
    for (int64_t k0 = 0; k0 < a.K_pad; k0 += chunk_k) {
      const int64_t kc = std::min(chunk_k, a.K_pad - k0);
      const int64_t next_k = k0 + kc < a.K_pad ? k0 + kc : 0;
      const int64_t next_kc = std::min(chunk_k, a.K_pad - next_k);
      const uint16_t* next = next_k ? w + next_k * kBlockN : next_block;
      const int64_t next_lines = next_kc * kBlockN * 2 / 64;  // per half
      for (int64_t m0 = 0; m0 < task_rows; m0 += 32) {
        const int64_t rows = std::min<int64_t>(32, task_rows - m0);
        const int64_t rows0 = std::min<int64_t>(16, rows), rows1 = rows - rows0;
        if (rows0 != configured0 || rows1 != configured1) {
          amx_configure_32x32(rows0, rows1);
          configured0 = rows0;
          configured1 = rows1;
        }
        const uint16_t* xr = x + (r0 + m0) * a.K_pad;
        for (int half = 0; half < (pair ? 2 : 1); ++half) {
          float* c = (half ? acc2 : acc).data() + m0 * kBlockN;
          const uint16_t* wb = w + half * block_elems;
          // This tile's share of the next chunk: next_lines / m_tiles lines over kc/32 steps.
          const int64_t tile = m0 / 32, steps = kc / 32;
          const int64_t l0 = next_lines * tile / m_tiles, l1 = next_lines * (tile + 1) / m_tiles;
          const char* pf = next ? reinterpret_cast<const char*>(next + half * block_elems) + l0 * 64 : nullptr;
          const int64_t per_step = (l1 - l0 + steps - 1) / steps;
          if (rows1) amx_tile_32x32<true>(xr, a.K_pad, wb, k0, kc, c, pf, per_step);
          else amx_tile_32x32<false>(xr, a.K_pad, wb, k0, kc, c, pf, per_step);
        }
      }
    }
    const int64_t n0 = blk * kBlockN, cols = std::min<int64_t>(kBlockN, a.N - n0);
    for (int64_t r = 0; r < task_rows; ++r) {
      epilogue_row<c10::BFloat16>(a, r0 + r, n0, cols, acc.data() + r * kBlockN,
                                  pair ? acc2.data() + r * kBlockN : nullptr);
    }
  }
  _tile_release();
}

// R rows (2..8) of x against one packed block: each k pair of the block's 32 columns (two 512-bit
// loads) feeds 2R vdpbf16ps, one per row and half, into 2R accumulators (enough independent chains
// to hide the latency); the rows' k pairs are broadcasts from memory, free on Zen 4.
template <int R>
IPEX_LINEAR_BF16_FN void block_dot_bf16_rows(const uint16_t* x, int64_t K_pad, const uint16_t* w, float* out) {
  static_assert(kBlockN == 32, "one k group of a block is two 512-bit registers");
  const int64_t groups = K_pad / 2;
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint16_t* wg = w + g * 2 * kBlockN;
    if ((g & 1) == 0) prefetch_ahead(wg, 4 * kBlockN * 2);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wg), w1 = (__m512bh)_mm512_loadu_si512(wg + 32);
    for (int r = 0; r < R; ++r) {
      const __m512bh xr = (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + r * K_pad + 2 * g));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, xr);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, xr);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(out + r * kBlockN, acc[r][0]);
    _mm512_storeu_ps(out + r * kBlockN + 16, acc[r][1]);
  }
}

template <int R>
IPEX_LINEAR_BF16_FN void small_m_blocks_bf16_rows(const LinearArgs& a, int64_t begin, int64_t end) {
  const auto* x = static_cast<const uint16_t*>(a.x_bf16);
  for_each_block<c10::BFloat16>(a, begin, end, [&](const c10::BFloat16* w, float* acc) {
    block_dot_bf16_rows<R>(x, a.K_pad, reinterpret_cast<const uint16_t*>(w), acc);
  });
}

void small_m_blocks_bf16_dot(const LinearArgs& a, int64_t begin, int64_t end) {
  const auto* x = static_cast<const uint16_t*>(a.x_bf16);
  switch (a.M) {
    case 1:
      for_each_block<c10::BFloat16>(a, begin, end, [&](const c10::BFloat16* w, float* acc) {
        block_dot_bf16(x, a.K_pad, reinterpret_cast<const uint16_t*>(w), acc);
      });
      return;
    case 2: return small_m_blocks_bf16_rows<2>(a, begin, end);
    case 3: return small_m_blocks_bf16_rows<3>(a, begin, end);
    case 4: return small_m_blocks_bf16_rows<4>(a, begin, end);
    case 5: return small_m_blocks_bf16_rows<5>(a, begin, end);
    case 6: return small_m_blocks_bf16_rows<6>(a, begin, end);
    case 7: return small_m_blocks_bf16_rows<7>(a, begin, end);
    default: return small_m_blocks_bf16_rows<8>(a, begin, end);  // the op sends at most kDotMaxRows rows
  }
}
#endif

}  // namespace

void linear_small_m_blocks(const LinearArgs& a, int64_t begin, int64_t end) {
#if defined(CPU_CAPABILITY_AVX512)
  if (a.dtype == c10::ScalarType::BFloat16 && a.x_bf16 != nullptr) {
    return a.amx ? small_m_blocks_amx(a, begin, end) : small_m_blocks_bf16_dot(a, begin, end);
  }
#endif
  switch (a.dtype) {
    case c10::ScalarType::Float: return small_m_blocks<float, 1>(a, begin, end);
    case c10::ScalarType::BFloat16: return small_m_blocks<c10::BFloat16, 2>(a, begin, end);
    case c10::ScalarType::Half:
      return a.V == 2 ? small_m_blocks<c10::Half, 2>(a, begin, end)
                      : small_m_blocks<c10::Half, 1>(a, begin, end);
    default: return;  // validated by the op
  }
}

void linear_large_m_amx(const LinearArgs& a, int64_t begin, int64_t end) {
#if defined(CPU_CAPABILITY_AVX512)
  large_m_tasks_amx(a, begin, end);
#else
  (void)a; (void)begin; (void)end;  // the op only calls it where the active ISA level has AMX
#endif
}

void linear_epilogue_block(const LinearArgs& a, int64_t block, int64_t m_begin, int64_t m_end,
                           const float* acc, const float* acc2) {
  const int64_t n0 = block * kBlockN;
  const int64_t cols = std::min<int64_t>(kBlockN, a.N - n0);
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* row = acc + (m - m_begin) * kBlockN;
    const float* row2 = acc2 ? acc2 + (m - m_begin) * kBlockN : nullptr;
    switch (a.dtype) {
      case c10::ScalarType::Float: epilogue_row<float>(a, m, n0, cols, row, row2); break;
      case c10::ScalarType::BFloat16: epilogue_row<c10::BFloat16>(a, m, n0, cols, row, row2); break;
      case c10::ScalarType::Half: epilogue_row<c10::Half>(a, m, n0, cols, row, row2); break;
      default: break;
    }
  }
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
