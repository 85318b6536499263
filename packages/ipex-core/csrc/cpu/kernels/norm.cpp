// RMSNorm and fused residual-add + RMSNorm row kernels (compiled once per ISA).
#include "cpu/kernels/norm_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

using RowsFn = void (*)(const RmsNormArgs&, int64_t, int64_t);

// Sum of squares of one row, two accumulators to hide FMA latency.
template <typename T>
inline float sum_squares(const T* x, int64_t n) {
  fVec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * kF <= n; i += 2 * kF) {
    prefetch_row(x, i);
    prefetch_row(x, i + kF);
    fVec a = load_f32(x + i), b = load_f32(x + i + kF);
    acc0 = at::vec::fmadd(a, a, acc0);
    acc1 = at::vec::fmadd(b, b, acc1);
  }
  for (; i + kF <= n; i += kF) {
    fVec a = load_f32(x + i);
    acc0 = at::vec::fmadd(a, a, acc0);
  }
  if (i < n) {
    fVec a = load_f32(x + i, n - i);
    acc1 = at::vec::fmadd(a, a, acc1);
  }
  return reduce_sum(acc0 + acc1);
}

// out = round(x * inv_rms) * w. The normalised value is rounded to T before
// the scale, exactly where transformers' RMSNorm modules round
// (`weight * hidden.to(input_dtype)`), so reduced-precision results match stock.
template <typename T, typename W>
inline void scale_row(const T* x, const W* w, T* out, int64_t n, float inv_rms) {
  fVec s(inv_rms);
  int64_t i = 0;
  for (; i + kF <= n; i += kF) {
    store_f32(out + i, round_to<T>(load_f32(x + i) * s) * load_f32(w + i));
  }
  if (i < n) {
    store_f32(out + i, round_to<T>(load_f32(x + i, n - i) * s) * load_f32(w + i, n - i), n - i);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// scale_row and add_rms_norm's pass 1 for bf16 rows with vcvtneps2bf16 for the
// roundings (vec_io.h): at one thread and 16-128 tokens the integer rounding
// bounded these kernels, not memory. Same rounding points as the generic code.
template <typename W>
IPEX_BF16_INSN_FN void scale_row_bf16(const c10::BFloat16* x, const W* w, c10::BFloat16* out, int64_t n,
                                      float inv_rms) {
  const __m512 s = _mm512_set1_ps(inv_rms);
  for (int64_t i = 0; i < n; i += kF) {
    const int64_t c = std::min<int64_t>(kF, n - i);
    const auto m = static_cast<__mmask16>((1u << c) - 1);
    const __m512 v = _mm512_mul_ps(bf16_round_native(_mm512_mul_ps(load_f32(x + i, c), s)), load_f32(w + i, c));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// ro = round(x + r) stored as bf16; returns the sum of squares of the rounded values.
IPEX_BF16_INSN_FN inline float add_row_bf16(const c10::BFloat16* x, const c10::BFloat16* r, c10::BFloat16* ro,
                                            int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kF) {
    const int64_t c = std::min<int64_t>(kF, n - i);
    const auto m = static_cast<__mmask16>((1u << c) - 1);
    prefetch_row(x, i);
    prefetch_row(r, i);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_add_ps(load_f32(x + i, c), load_f32(r + i, c)));
    _mm256_mask_storeu_epi16(ro + i, m, (__m256i)b);
    const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)b), 16));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

// One row's normalised output, on the native bf16 roundings where they apply.
template <typename T, typename W>
inline void scale_row_any(const RmsNormArgs& a, const T* x, const W* w, T* out, float inv_rms) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (a.bf16_insn) return scale_row_bf16<W>(x, w, out, a.n, inv_rms);
  }
#endif
  scale_row(x, w, out, a.n, inv_rms);
}

template <typename T, typename W>
void rms_norm_rows_impl(const RmsNormArgs& a, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(a.x);
  const W* w = static_cast<const W*>(a.weight);
  T* out = static_cast<T*>(a.out);
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * a.x_row_stride;
    float inv_rms = 1.f / std::sqrt(sum_squares(xr, a.n) / static_cast<float>(a.n) + a.eps);
    scale_row_any(a, xr, w, out + r * a.out_row_stride, inv_rms);
  }
}

template <typename T, typename W>
void add_rms_norm_rows_impl(const RmsNormArgs& a, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const W* w = static_cast<const W*>(a.weight);
  T* out = static_cast<T*>(a.out);
  T* res_out = static_cast<T*>(a.residual_out);
  const int64_t n = a.n;
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * a.x_row_stride;
    const T* rr = res + r * a.residual_row_stride;
    T* ro = res_out + r * a.residual_out_row_stride;
    // Pass 1: residual sum, rounded to T exactly as an unfused `x + residual`
    // would be, and the sum of squares of that rounded value.
    float squares = 0.f;
    bool native = false;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      native = a.bf16_insn;
      if (native) squares = add_row_bf16(xr, rr, ro, n);
    }
#endif
    if (!native) {
      fVec acc(0.f);
      int64_t i = 0;
      for (; i + kF <= n; i += kF) {
        prefetch_row(xr, i);
        prefetch_row(rr, i);
        fVec s = round_to<T>(load_f32(xr + i) + load_f32(rr + i));
        store_f32(ro + i, s);
        acc = at::vec::fmadd(s, s, acc);
      }
      if (i < n) {
        fVec s = round_to<T>(load_f32(xr + i, n - i) + load_f32(rr + i, n - i));
        store_f32(ro + i, s, n - i);
        acc = at::vec::fmadd(s, s, acc);
      }
      squares = reduce_sum(acc);
    }
    float inv_rms = 1.f / std::sqrt(squares / static_cast<float>(n) + a.eps);
    // Pass 2 re-reads the row from L1 (a hidden row is at most tens of KB).
    // In place (out == x, residual_out == residual) is safe: pass 1 consumed
    // each element of x and residual before anything of the row was written.
    scale_row_any<T, W>(a, ro, w, out + r * a.out_row_stride, inv_rms);
  }
}

template <typename T>
RowsFn for_weight(c10::ScalarType wdt, bool fused) {
  if (wdt == c10::ScalarType::Float) {
    return fused ? &add_rms_norm_rows_impl<T, float> : &rms_norm_rows_impl<T, float>;
  }
  return fused ? &add_rms_norm_rows_impl<T, T> : &rms_norm_rows_impl<T, T>;
}

RowsFn select(const RmsNormArgs& a, bool fused) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return for_weight<float>(a.weight_dtype, fused);
    case c10::ScalarType::BFloat16: return for_weight<c10::BFloat16>(a.weight_dtype, fused);
    case c10::ScalarType::Half: return for_weight<c10::Half>(a.weight_dtype, fused);
    default: return nullptr;  // dtype is validated before we get here
  }
}

}  // namespace

void rms_norm_rows(const RmsNormArgs& a, int64_t begin, int64_t end) {
  select(a, false)(a, begin, end);
}

void add_rms_norm_rows(const RmsNormArgs& a, int64_t begin, int64_t end) {
  select(a, true)(a, begin, end);
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
