// RMSNorm and fused residual-add + RMSNorm row kernels (compiled once per ISA).
#include "cpu/kernels/norm_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <cmath>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

using RowsFn = void (*)(const RmsNormArgs&, int64_t, int64_t);

// Sum of squares of one row, two accumulators to hide FMA latency.
template <typename T>
inline float sum_squares(const T* x, int64_t n) {
  fVec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * kF <= n; i += 2 * kF) {
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

template <typename T, typename W>
void rms_norm_rows_impl(const RmsNormArgs& a, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(a.x);
  const W* w = static_cast<const W*>(a.weight);
  T* out = static_cast<T*>(a.out);
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * a.x_row_stride;
    float inv_rms = 1.f / std::sqrt(sum_squares(xr, a.n) / static_cast<float>(a.n) + a.eps);
    scale_row(xr, w, out + r * a.out_row_stride, a.n, inv_rms);
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
    fVec acc(0.f);
    int64_t i = 0;
    for (; i + kF <= n; i += kF) {
      fVec s = round_to<T>(load_f32(xr + i) + load_f32(rr + i));
      store_f32(ro + i, s);
      acc = at::vec::fmadd(s, s, acc);
    }
    if (i < n) {
      fVec s = round_to<T>(load_f32(xr + i, n - i) + load_f32(rr + i, n - i));
      store_f32(ro + i, s, n - i);
      acc = at::vec::fmadd(s, s, acc);
    }
    float inv_rms = 1.f / std::sqrt(reduce_sum(acc) / static_cast<float>(n) + a.eps);
    // Pass 2 re-reads the row from L1 (a hidden row is at most tens of KB).
    // In place (out == x, residual_out == residual) is safe: pass 1 consumed
    // each element of x and residual before anything of the row was written.
    scale_row<T, W>(ro, w, out + r * a.out_row_stride, n, inv_rms);
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
