// ipex::conv1x1's bf16x3 form: a float32 GEMM as three bf16 GEMMs on AMX tiles.
//
// Each float32 value v is split into two bf16 parts, hi = bf16(v) and lo = bf16(v - hi), and
// x . w is computed as x_hi w_hi + x_hi w_lo + x_lo w_hi with fp32 accumulation (AMX's
// tdpbf16ps): every product keeps 16 of fp32's 24 mantissa bits (the dropped x_lo w_lo term and
// the parts' own rounding are within 2^-16 of it), so the output is within a few 1e-6 of its
// scale, as the Winograd kernel's, where one bf16 GEMM is about 4e-3 off. The accumulators stay
// in tiles over the whole reduction and all three products: one pass per 32 x 32 output block.
// oneDNN's brgemm micro-kernel called three times per block (at::native::cpublas::brgemm) ran
// at a quarter of AMX's rate here (64 x 1024 x 64 in 14 us) and was no faster than float32.
#include "cpu/kernels/amx_tiles.h"
#include "cpu/kernels/conv_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace ipex::core::kernels::IPEX_ISA_NS {

#if defined(CPU_CAPABILITY_AVX512)
#define IPEX_BF16X3_AMX_FN \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

namespace {

// 16 values of x split into their parts with AVX512-BF16's vcvtneps2bf16 (round to nearest even, as
// the generic path): one instruction per part where the integer rounding takes five (the split was
// a quarter of the op's time on 56x56 layers with it).
IPEX_BF16X3_AMX_FN inline void split16(const float* x, uint16_t* hi, uint16_t* lo, __mmask16 mask) {
  const __m512 v = _mm512_maskz_loadu_ps(mask, x);
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  __m512 d = _mm512_sub_ps(v, hf);
  d = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q), d, _mm512_setzero_ps());  // NaN -> 0
  _mm256_mask_storeu_epi16(hi, mask, h);
  _mm256_mask_storeu_epi16(lo, mask, (__m256i)_mm512_cvtneps_pbh(d));
}

IPEX_BF16X3_AMX_FN void split_rows_bf16_insn(const float* x, int64_t c, int64_t c_pad, uint16_t* hi, uint16_t* lo,
                                             int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * c;
    uint16_t* hr = hi + r * c_pad;
    uint16_t* lr = lo + r * c_pad;
    int64_t i = 0;
    for (; i + 16 <= c; i += 16) split16(xr + i, hr + i, lr + i, 0xffff);
    if (i < c) split16(xr + i, hr + i, lr + i, static_cast<__mmask16>((1u << (c - i)) - 1));
    for (int64_t j = c; j < c_pad; ++j) hr[j] = lr[j] = 0;
  }
}

}  // namespace
#endif

void split_bf16x3_rows(const float* x, int64_t c, int64_t c_pad, c10::BFloat16* hi, c10::BFloat16* lo,
                       int64_t begin, int64_t end) {
#if defined(CPU_CAPABILITY_AVX512)
  split_rows_bf16_insn(x, c, c_pad, reinterpret_cast<uint16_t*>(hi), reinterpret_cast<uint16_t*>(lo), begin, end);
#else
  (void)x; (void)c; (void)c_pad; (void)hi; (void)lo; (void)begin; (void)end;  // called where the CPU has AMX only
#endif
}

#if defined(CPU_CAPABILITY_AVX512)
namespace {

// Tiles: amx_configure_32x32 (amx_tiles.h); 4/5 and 6/7 take each part of x and of the weight in turn.
// 6/7: a k step (32 k, as 16 pairs) of a weight part's 32 columns; 4/5: 32 k of up to 32 rows of an
// input part; the accumulators 0-3 += their product.
IPEX_BF16X3_AMX_FN inline void load_weight(const uint16_t* w) {
  _tile_loadd(6, w, 128);
  _tile_loadd(7, w + 32, 128);
}

template <bool kTwo>
IPEX_BF16X3_AMX_FN inline void load_input(const uint16_t* x, int64_t ldx) {
  _tile_loadd(4, x, ldx * 2);
  if constexpr (kTwo) _tile_loadd(5, x + 16 * ldx, ldx * 2);
}

template <bool kTwo>
IPEX_BF16X3_AMX_FN inline void multiply() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  if constexpr (kTwo) {
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

// y[rows, 32] (+)= x[rows, :] . W[:, block] over the three products, for one tile of up to 32 rows
// (two row tiles when kTwo). x_hi / x_lo: the tile's first row of each part, rows ldx elements apart;
// w_hi / w_lo: the block's parts, [c_pad / 2, 32, 2] each; y: the tile's first output, rows ldy apart.
template <bool kTwo>
IPEX_BF16X3_AMX_FN void tile_32x32(const uint16_t* x_hi, const uint16_t* x_lo, int64_t ldx, const uint16_t* w_hi,
                                   const uint16_t* w_lo, int64_t c_pad, float* y, int64_t ldy, bool accumulate) {
  const int64_t ldy_b = ldy * 4;
  if (accumulate) {
    _tile_loadd(0, y, ldy_b); _tile_loadd(1, y + 16, ldy_b);
    if constexpr (kTwo) { _tile_loadd(2, y + 16 * ldy, ldy_b); _tile_loadd(3, y + 16 * ldy + 16, ldy_b); }
  } else {
    _tile_zero(0); _tile_zero(1);
    if constexpr (kTwo) { _tile_zero(2); _tile_zero(3); }
  }
  for (int64_t k = 0; k < c_pad; k += 32) {
    const uint16_t* wh = w_hi + k * 32;  // k-pair row k / 2 of 64 elements
    load_weight(wh);
    load_input<kTwo>(x_hi + k, ldx);
    multiply<kTwo>();  // x_hi . w_hi
    load_weight(w_lo + k * 32);
    multiply<kTwo>();  // x_hi . w_lo (x_hi's tiles stay)
    load_weight(wh);
    load_input<kTwo>(x_lo + k, ldx);
    multiply<kTwo>();  // x_lo . w_hi
  }
  _tile_stored(0, y, ldy_b); _tile_stored(1, y + 16, ldy_b);
  if constexpr (kTwo) { _tile_stored(2, y + 16 * ldy, ldy_b); _tile_stored(3, y + 16 * ldy + 16, ldy_b); }
}

IPEX_BF16X3_AMX_FN void tasks_amx(const Bf16x3GemmArgs& a, int64_t begin, int64_t end) {
  const auto* x_hi = reinterpret_cast<const uint16_t*>(a.x_hi);
  const auto* x_lo = reinterpret_cast<const uint16_t*>(a.x_lo);
  const auto* w = reinterpret_cast<const uint16_t*>(a.w);
  const int64_t block_elems = a.c_pad * kBf16x3Cols;  // one part of one column block
  int64_t configured0 = -1, configured1 = -1;
  for (int64_t t = begin; t < end; ++t) {
    const auto task = conv1x1_task(t, a.m, a.blocks, kBf16x3Rows);
    const uint16_t* w_hi = w + 2 * task.block * block_elems;
    float* yb = a.y + task.m0 * a.ldy + task.block * kBf16x3Cols;
    for (int64_t r = 0; r < task.rows; r += 32) {
      const int64_t rows = std::min<int64_t>(32, task.rows - r);
      const int64_t rows0 = std::min<int64_t>(16, rows), rows1 = rows - rows0;
      if (rows0 != configured0 || rows1 != configured1) {
        amx_configure_32x32(rows0, rows1);
        configured0 = rows0;
        configured1 = rows1;
      }
      const int64_t row = task.m0 + r;
      const auto tile = rows1 ? &tile_32x32<true> : &tile_32x32<false>;
      tile(x_hi + row * a.c_pad, x_lo + row * a.c_pad, a.c_pad, w_hi, w_hi + block_elems, a.c_pad, yb + r * a.ldy,
           a.ldy, a.accumulate);
    }
    if (a.bias != nullptr || a.other != nullptr || a.relu) {
      const int64_t col = task.block * kBf16x3Cols;
      bias_relu_rows(yb, task.rows, kBf16x3Cols, a.ldy, a.bias == nullptr ? nullptr : a.bias + col,
                     a.other == nullptr ? nullptr : a.other + task.m0 * a.ldy + col, a.ldy, a.relu);
    }
  }
  _tile_release();
}

}  // namespace
#endif

void conv1x1_bf16x3_tasks(const Bf16x3GemmArgs& a, int64_t begin, int64_t end) {
#if defined(CPU_CAPABILITY_AVX512)
  tasks_amx(a, begin, end);
#else
  (void)a; (void)begin; (void)end;  // the op only calls it where the active ISA level has AMX
#endif
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
