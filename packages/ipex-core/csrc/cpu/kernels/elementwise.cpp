// Gated activations, rotary embedding and LayerNorm row kernels (compiled once per ISA).
#include "cpu/kernels/elementwise_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cmath>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {


inline fVec activate(GatedAct act, fVec v) {
  switch (act) {
    case GatedAct::kSilu: return v / (fVec(1.f) + v.neg().exp_u20());
    case GatedAct::kGelu: return v * fVec(0.5f) * (fVec(1.f) + (v * fVec(M_SQRT1_2)).erf());
    case GatedAct::kGeluTanh: {
      const fVec k0(0.7978845608028654f), k1(0.044715f);
      return fVec(0.5f) * v * (fVec(1.f) + (k0 * (v + k1 * v * v * v)).tanh());
    }
  }
  return v;
}

template <typename T>
void gated_impl(const GatedArgs& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * a.x_row_stride;
    const T* y = static_cast<const T*>(a.y) + r * a.y_row_stride;
    T* out = static_cast<T*>(a.out) + r * a.n;
    int64_t i = 0;
    // The activation is rounded to T before the multiply, as unfused PyTorch does.
    for (; i + kF <= a.n; i += kF) {
      store_f32(out + i, round_to<T>(activate(a.act, load_f32(x + i))) * load_f32(y + i));
    }
    if (i < a.n) {
      int64_t c = a.n - i;
      store_f32(out + i, round_to<T>(activate(a.act, load_f32(x + i, c))) * load_f32(y + i, c), c);
    }
  }
}

template <typename T, typename C>
void rope_impl(const RopeArgs& a, int64_t begin, int64_t end) {
  const int64_t half = a.rotary_dim / 2;
  for (int64_t th = begin; th < end; ++th) {
    const int64_t t = th / a.heads, h = th % a.heads;
    const T* x = static_cast<const T*>(a.x) + t * a.x_token_stride + h * a.x_head_stride;
    T* out = static_cast<T*>(a.out) + th * a.head_dim;
    const int64_t row = a.rows ? a.rows[t] : t;
    const C* cs = static_cast<const C*>(a.cos) + row * a.cs_row_stride;
    const C* sn = static_cast<const C*>(a.sin) + row * a.cs_row_stride;
    if (a.half) {
      // out1 = x1*cos - x2*sin ; out2 = x2*cos + x1*sin, halves of rotary_dim.
      // Each product is rounded to T, as transformers' `q * cos + rotate_half(q) * sin`.
      int64_t i = 0;
      for (; i < half; i += kF) {
        int64_t n = std::min<int64_t>(kF, half - i);
        fVec x1 = n == kF ? load_f32(x + i) : load_f32(x + i, n);
        fVec x2 = n == kF ? load_f32(x + half + i) : load_f32(x + half + i, n);
        fVec c = n == kF ? load_f32(cs + i) : load_f32(cs + i, n);
        fVec s = n == kF ? load_f32(sn + i) : load_f32(sn + i, n);
        fVec o1 = round_to<T>(x1 * c) - round_to<T>(x2 * s);
        fVec o2 = round_to<T>(x2 * c) + round_to<T>(x1 * s);
        store_f32(out + i, o1, n);
        store_f32(out + half + i, o2, n);
      }
    } else {
      // GPT-J / ChatGLM: rotate neighbouring pairs (x[2i], x[2i+1]) by angle i.
      for (int64_t i = 0; i < half; ++i) {
        float x0 = static_cast<float>(x[2 * i]), x1 = static_cast<float>(x[2 * i + 1]);
        float c = static_cast<float>(cs[i]), s = static_cast<float>(sn[i]);
        out[2 * i] = static_cast<T>(static_cast<float>(static_cast<T>(x0 * c)) - static_cast<float>(static_cast<T>(x1 * s)));
        out[2 * i + 1] = static_cast<T>(static_cast<float>(static_cast<T>(x1 * c)) + static_cast<float>(static_cast<T>(x0 * s)));
      }
    }
    for (int64_t d = a.rotary_dim; d < a.head_dim; ++d) out[d] = x[d];  // pass-through dims
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
      for (; i + kF <= n; i += kF) store_f32(ro + i, load_f32(src + i) + load_f32(res + i));
      if (i < n) store_f32(ro + i, load_f32(src + i, n - i) + load_f32(res + i, n - i), n - i);
      src = ro;
    }
    fVec acc(0.f);
    int64_t i = 0;
    for (; i + kF <= n; i += kF) acc = acc + load_f32(src + i);
    if (i < n) acc = acc + load_f32(src + i, n - i);
    const float mean = reduce_sum(acc) / static_cast<float>(n);
    fVec m(mean), var(0.f);
    for (i = 0; i + kF <= n; i += kF) {
      fVec d = load_f32(src + i) - m;
      var = at::vec::fmadd(d, d, var);
    }
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
    case c10::ScalarType::Float: return gated_impl<float>(a, begin, end);
    case c10::ScalarType::BFloat16: return gated_impl<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return gated_impl<c10::Half>(a, begin, end);
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
