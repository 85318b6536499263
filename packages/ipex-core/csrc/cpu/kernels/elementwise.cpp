// Gated activations, rotary embedding and LayerNorm row kernels (compiled once per ISA).
#include "cpu/kernels/elementwise_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

template <GatedAct kAct>
inline fVec activate(fVec v) {
  if constexpr (kAct == GatedAct::kSilu) {
    return silu(v);
  } else if constexpr (kAct == GatedAct::kGelu) {
    return gelu_erf(v);
  } else {
    return gelu_tanh(v);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// One bf16 row with vcvtneps2bf16 for both roundings (vec_io.h's bf16_round_native): with
// the integer rounding of round_to / store_f32, ten of the loop's ~40 vector instructions
// per 16 elements, the kernel was compute-bound (silu_mul 128 x 11008 in L2, 2 threads:
// 0.45 ms where the plain product x * y took 0.17).
template <GatedAct kAct>
IPEX_BF16_INSN_FN void gated_row_bf16(const c10::BFloat16* x, const c10::BFloat16* y, c10::BFloat16* out,
                                      int64_t n) {
  for (int64_t i = 0; i < n; i += kF) {
    const int64_t c = std::min<int64_t>(kF, n - i);
    const auto m = static_cast<__mmask16>((1u << c) - 1);
    prefetch_row(x, i);
    prefetch_row(y, i);
    const __m512 act = bf16_round_native(__m512(activate<kAct>(load_f32(x + i, c))));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(act, load_f32(y + i, c))));
  }
}
#endif

// The activation is a template parameter and the arguments are read into locals
// once: with `a.act` switched per vector the compiler reloaded it (and the
// pointers) after every store, since `out` might alias the argument struct.
template <typename T, GatedAct kAct>
void gated_impl(const GatedArgs& a, int64_t begin, int64_t end) {
  const T* x_base = static_cast<const T*>(a.x);
  const T* y_base = static_cast<const T*>(a.y);
  T* out_base = static_cast<T*>(a.out);
  const int64_t n = a.n, xs = a.x_row_stride, ys = a.y_row_stride;
  for (int64_t r = begin; r < end; ++r) {
    const T* x = x_base + r * xs;
    const T* y = y_base + r * ys;
    T* out = out_base + r * n;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (a.bf16_insn) {
        gated_row_bf16<kAct>(x, y, out, n);
        continue;
      }
    }
#endif
    int64_t i = 0;
    // The activation is rounded to T before the multiply, as unfused PyTorch does.
    for (; i + kF <= n; i += kF) {
      prefetch_row(x, i);
      prefetch_row(y, i);
      store_f32(out + i, round_to<T>(activate<kAct>(load_f32(x + i))) * load_f32(y + i));
    }
    if (i < n) {
      const int64_t c = n - i;
      store_f32(out + i, round_to<T>(activate<kAct>(load_f32(x + i, c))) * load_f32(y + i, c), c);
    }
  }
}

template <typename T>
void gated_dispatch(const GatedArgs& a, int64_t begin, int64_t end) {
  switch (a.act) {
    case GatedAct::kSilu: return gated_impl<T, GatedAct::kSilu>(a, begin, end);
    case GatedAct::kGelu: return gated_impl<T, GatedAct::kGelu>(a, begin, end);
    case GatedAct::kGeluTanh: return gated_impl<T, GatedAct::kGeluTanh>(a, begin, end);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// The half-layout rotation of one bf16 row with vcvtneps2bf16 for the roundings
// (vec_io.h's bf16_round_native): the rounding, not memory, bounded this kernel.
IPEX_BF16_INSN_FN void rope_half_row_bf16(const c10::BFloat16* x, c10::BFloat16* out, const float* cb,
                                         const float* sb, int64_t half) {
  for (int64_t i = 0; i < half; i += kF) {
    const int64_t n = std::min<int64_t>(kF, half - i);
    const auto m = static_cast<__mmask16>((1u << n) - 1);
    const __m512 x1 = load_f32(x + i, n), x2 = load_f32(x + half + i, n);
    const __m512 c = _mm512_maskz_loadu_ps(m, cb + i), s = _mm512_maskz_loadu_ps(m, sb + i);
    const __m512 o1 = _mm512_sub_ps(bf16_round_native(_mm512_mul_ps(x1, c)), bf16_round_native(_mm512_mul_ps(x2, s)));
    const __m512 o2 = _mm512_add_ps(bf16_round_native(_mm512_mul_ps(x2, c)), bf16_round_native(_mm512_mul_ps(x1, s)));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(o1));
    _mm256_mask_storeu_epi16(out + half + i, m, (__m256i)_mm512_cvtneps_pbh(o2));
  }
}
#endif

// Rows are (token, head) pairs. A token's cos/sin are widened to float once into
// `cb`/`sb` and shared by all its heads (they were converted again for every
// head). Half layout: cb/sb hold the rotary_dim/2 angles. Interleaved layout
// (GPT-J / ChatGLM, AVX-512): cb = (c0, c0, c1, c1, ...) and sb = (-s0, s0, -s1,
// s1, ...), so a pair-swapped x times sb gives both signs at once.
// Each product is rounded to T before the add, as transformers'
// `q * cos + rotate_half(q) * sin` does in T (round_to(-v) == -round_to(v)).
template <typename T, typename C>
void rope_impl(const RopeArgs& a, int64_t begin, int64_t end) {
  const int64_t half = a.rotary_dim / 2, rd = a.rotary_dim;
  std::vector<float> buf(2 * rd);
  float* cb = buf.data();
  float* sb = cb + rd;
  int64_t t = begin / a.heads, h = begin % a.heads, widened = -1;
  for (int64_t th = begin; th < end; ++th) {
    const T* x = static_cast<const T*>(a.x) + t * a.x_token_stride + h * a.x_head_stride;
    T* out = static_cast<T*>(a.out) + th * a.head_dim;
    prefetch_span(x, a.head_dim);
    if (widened != t) {
      const int64_t row = a.rows ? a.rows[t] : t;
      const C* cs = static_cast<const C*>(a.cos) + row * a.cs_row_stride;
      const C* sn = static_cast<const C*>(a.sin) + row * a.cs_row_stride;
      for (int64_t i = 0; i < half; ++i) {
        const float c = static_cast<float>(cs[i]), s = static_cast<float>(sn[i]);
        if (a.half) {
          cb[i] = c;
          sb[i] = s;
        } else {
          cb[2 * i] = cb[2 * i + 1] = c;
          sb[2 * i] = -s;
          sb[2 * i + 1] = s;
        }
      }
      widened = t;
    }
    bool native = false;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      native = a.half && a.bf16_insn;
      if (native) rope_half_row_bf16(x, out, cb, sb, half);
    }
#endif
    if (native) {
      // rotated by rope_half_row_bf16 above
    } else if (a.half) {
      int64_t i = 0;
      for (; i + kF <= half; i += kF) {
        const fVec x1 = load_f32(x + i), x2 = load_f32(x + half + i);
        const fVec c = fVec::loadu(cb + i), s = fVec::loadu(sb + i);
        store_f32(out + i, round_to<T>(x1 * c) - round_to<T>(x2 * s));
        store_f32(out + half + i, round_to<T>(x2 * c) + round_to<T>(x1 * s));
      }
      if (i < half) {
        const int64_t n = half - i;
        const fVec x1 = load_f32(x + i, n), x2 = load_f32(x + half + i, n);
        const fVec c = fVec::loadu(cb + i, n), s = fVec::loadu(sb + i, n);
        store_f32(out + i, round_to<T>(x1 * c) - round_to<T>(x2 * s), n);
        store_f32(out + half + i, round_to<T>(x2 * c) + round_to<T>(x1 * s), n);
      }
    } else {
      int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
      for (; i < rd; i += kF) {
        const int64_t n = std::min<int64_t>(kF, rd - i);
        const fVec v = n == kF ? load_f32(x + i) : load_f32(x + i, n);
        const fVec swapped = _mm512_permute_ps(__m512(v), 0xB1);  // (x1, x0, x3, x2, ...)
        const fVec c = fVec::loadu(cb + i, n), s = fVec::loadu(sb + i, n);
        const fVec o = round_to<T>(v * c) + round_to<T>(swapped * s);
        if (n == kF) store_f32(out + i, o); else store_f32(out + i, o, n);
      }
#endif
      for (; i < rd; i += 2) {
        const float x0 = static_cast<float>(x[i]), x1 = static_cast<float>(x[i + 1]);
        const float c = cb[i], s = sb[i + 1];
        out[i] = static_cast<T>(static_cast<float>(static_cast<T>(x0 * c)) - static_cast<float>(static_cast<T>(x1 * s)));
        out[i + 1] = static_cast<T>(static_cast<float>(static_cast<T>(x1 * c)) + static_cast<float>(static_cast<T>(x0 * s)));
      }
    }
    if (rd < a.head_dim) std::copy(x + rd, x + a.head_dim, out + rd);  // pass-through dims
    if (++h == a.heads) {
      h = 0;
      ++t;
    }
  }
}

template <typename T, typename P>
void layer_norm_impl(const LayerNormArgs& a, int64_t begin, int64_t end) {
  const P* w = static_cast<const P*>(a.weight);
  const P* b = static_cast<const P*>(a.bias);
  const int64_t n = a.n;
  for (int64_t r = begin; r < end; ++r) {
    const T* src = static_cast<const T*>(a.x) + r * a.x_row_stride;
    T* out = static_cast<T*>(a.out) + r * n;
    if (a.residual != nullptr) {
      // s = x + residual rounded to T (as unfused code would), written out first.
      const T* res = static_cast<const T*>(a.residual) + r * a.residual_row_stride;
      T* ro = static_cast<T*>(a.residual_out) + r * n;
      int64_t i = 0;
      for (; i + kF <= n; i += kF) {
        prefetch_row(src, i);
        prefetch_row(res, i);
        store_f32(ro + i, load_f32(src + i) + load_f32(res + i));
      }
      if (i < n) store_f32(ro + i, load_f32(src + i, n - i) + load_f32(res + i, n - i), n - i);
      src = ro;
    }
    // Two passes over the row (it stays in L1) with four accumulators each: one accumulator chained
    // every add on the previous one, and at 2048 tokens the kernel ran at 68% of copy bandwidth.
    fVec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    int64_t i = 0;
    for (; i + 4 * kF <= n; i += 4 * kF) {
      for (int64_t j = 0; j < 4 * kF; j += kF) prefetch_row(src, i + j);
      a0 = a0 + load_f32(src + i);
      a1 = a1 + load_f32(src + i + kF);
      a2 = a2 + load_f32(src + i + 2 * kF);
      a3 = a3 + load_f32(src + i + 3 * kF);
    }
    for (; i + kF <= n; i += kF) a0 = a0 + load_f32(src + i);
    if (i < n) a1 = a1 + load_f32(src + i, n - i);
    const float mean = reduce_sum((a0 + a1) + (a2 + a3)) / static_cast<float>(n);
    const fVec m(mean);
    fVec v0(0.f), v1(0.f), v2(0.f), v3(0.f);
    for (i = 0; i + 4 * kF <= n; i += 4 * kF) {
      const fVec d0 = load_f32(src + i) - m, d1 = load_f32(src + i + kF) - m;
      const fVec d2 = load_f32(src + i + 2 * kF) - m, d3 = load_f32(src + i + 3 * kF) - m;
      v0 = at::vec::fmadd(d0, d0, v0);
      v1 = at::vec::fmadd(d1, d1, v1);
      v2 = at::vec::fmadd(d2, d2, v2);
      v3 = at::vec::fmadd(d3, d3, v3);
    }
    for (; i + kF <= n; i += kF) {
      const fVec d = load_f32(src + i) - m;
      v0 = at::vec::fmadd(d, d, v0);
    }
    fVec var = (v0 + v1) + (v2 + v3);
    if (i < n) {
      // Masked load leaves zeros, which would add mean^2 per lane: mask them out.
      fVec d = load_f32(src + i, n - i) - m;
      alignas(64) float tmp[kF];
      d.store(tmp);
      for (int64_t j = n - i; j < kF; ++j) tmp[j] = 0.f;
      d = fVec::loadu(tmp);
      var = at::vec::fmadd(d, d, var);
    }
    const float rstd = 1.f / std::sqrt(reduce_sum(var) / static_cast<float>(n) + a.eps);
    fVec s(rstd);
    for (i = 0; i < n; i += kF) {
      int64_t c = std::min<int64_t>(kF, n - i);
      fVec v = ((c == kF ? load_f32(src + i) : load_f32(src + i, c)) - m) * s;
      if (w) v = v * (c == kF ? load_f32(w + i) : load_f32(w + i, c));
      if (b) v = v + (c == kF ? load_f32(b + i) : load_f32(b + i, c));
      if (c == kF) store_f32(out + i, v); else store_f32(out + i, v, c);
    }
  }
}

}  // namespace

void gated_rows(const GatedArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return gated_dispatch<float>(a, begin, end);
    case c10::ScalarType::BFloat16: return gated_dispatch<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return gated_dispatch<c10::Half>(a, begin, end);
    default: return;
  }
}

template <typename T>
void rope_dispatch(const RopeArgs& a, int64_t begin, int64_t end) {
  if (a.cs_dtype == c10::ScalarType::Float) return rope_impl<T, float>(a, begin, end);
  return rope_impl<T, T>(a, begin, end);
}

void rope_rows(const RopeArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return rope_dispatch<float>(a, begin, end);
    case c10::ScalarType::BFloat16: return rope_dispatch<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return rope_dispatch<c10::Half>(a, begin, end);
    default: return;
  }
}

template <typename T>
void layer_norm_dispatch(const LayerNormArgs& a, int64_t begin, int64_t end) {
  if (a.param_dtype == c10::ScalarType::Float) return layer_norm_impl<T, float>(a, begin, end);
  return layer_norm_impl<T, T>(a, begin, end);
}

void layer_norm_rows(const LayerNormArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return layer_norm_dispatch<float>(a, begin, end);
    case c10::ScalarType::BFloat16: return layer_norm_dispatch<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return layer_norm_dispatch<c10::Half>(a, begin, end);
    default: return;
  }
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
