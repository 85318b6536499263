// Loads/stores between any of float/bf16/fp16 memory and Vectorized<float>.
// Included only by per-ISA kernel files.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace ipex::core::kernels::IPEX_ISA_NS {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kF = fVec::size();

#if defined(CPU_CAPABILITY_AVX512)
// One fp32 vector to its 16 bf16 / fp16 bit patterns. ATen's convert_from_float
// converts two vectors at a time (we only ever have one), which doubles the
// work of every store and rounding in the row kernels: at one thread that made
// RoPE and the norms instruction-bound, not memory-bound.
// The float bit pattern rounded to nearest even at bf16 precision (as c10::BFloat16
// does): the bf16 value is its top 16 bits. NaN lanes are the caller's to handle.
inline __m512i bf16_rounded_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)), bits);
}

inline __m256i f32_to_bf16_bits(__m512 v) {
  const __m512i r = _mm512_srli_epi32(bf16_rounded_bits(v), 16);
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(0xffff), r));  // NaN -> 0xffff
}

// AVX512-BF16's vcvtneps2bf16 for the bf16 roundings: one instruction where the
// integer rounding above takes five and a NaN blend. Only called where the active
// ISA level has the instruction (the row kernels' bf16_insn flag); the attribute
// keeps it out of everything else. Same results as round_to / store_f32 except
// that the instruction flushes fp32 denormals to zero.
#define IPEX_BF16_INSN_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
IPEX_BF16_INSN_FN inline __m512 bf16_round_native(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

template <typename T>
inline __m256i f32_to_half_bits(__m512 v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return f32_to_bf16_bits(v);
  } else {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
}
#endif

// Software prefetch for the row kernels (norms, gated activations, RoPE) that stream their inputs
// once: the line kRowPrefetchBytes past element i of a stream, issued once per 64-byte line (call it
// at every vector step). Intel Xeon, 2 threads, bf16 silu_mul 128 x 11008 from memory: the hardware
// prefetchers alone streamed 9.2 GB/s (0.92 ms; 0.40 ms with the rows in cache); prefetching 256 B
// ahead 0.43 ms, 1-4 KB ahead 0.39-0.40 ms (21.7 GB/s), the in-cache time.
constexpr int64_t kRowPrefetchBytes = 4096;

template <typename T>
inline void prefetch_row(const T* p, int64_t i) {
  if ((i * static_cast<int64_t>(sizeof(T))) % 64 == 0) {
    __builtin_prefetch(reinterpret_cast<const char*>(p + i) + kRowPrefetchBytes, 0, 3);
  }
}

// Every line of the n elements at p, kRowPrefetchBytes ahead (rows shorter than a vector loop).
template <typename T>
inline void prefetch_span(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p) + kRowPrefetchBytes;
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(c + off, 0, 3);
}

template <typename T>
inline fVec load_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    fVec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

template <typename T>
inline fVec load_f32(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p, count);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    const auto mask = static_cast<__mmask16>((1u << count) - 1);  // count <= kF = 16; the rest reads as 0
    const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
#else
    auto v = at::vec::Vectorized<T>::loadu(p, count);
    return std::get<0>(at::vec::convert_to_float<T>(v));
#endif
  }
}

template <typename T>
inline void store_f32(T* p, fVec v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f32_to_half_bits<T>(v));
#else
    at::vec::convert_from_float<T>(v, v).store(p, kF);
#endif
  }
}

template <typename T>
inline void store_f32(T* p, fVec v, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, count);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    const auto mask = static_cast<__mmask16>((1u << count) - 1);  // count <= kF = 16
    _mm256_mask_storeu_epi16(p, mask, f32_to_half_bits<T>(v));
#else
    at::vec::convert_from_float<T>(v, v).store(p, count);
#endif
  }
}

// Round a float vector to T's precision and back (identity for float), so a
// value we store as T and one we keep computing with agree bit for bit.
template <typename T>
inline fVec round_to(fVec v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      // bf16 is the top half of a float: round in place, no narrowing and widening (NaN kept).
      const __m512i r = _mm512_and_si512(bf16_rounded_bits(v), _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
      return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), __m512(v), _mm512_castsi512_ps(r));
    } else {
      return _mm512_cvtph_ps(f32_to_half_bits<T>(v));
    }
#else
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
#endif
  }
}

// 1 / d for d >= 1 or d = +inf: a reciprocal estimate and one Newton step, within
// about 1 fp32 ulp of the division (vdivps is several times slower). Where d is
// +inf the result is set to 0 (the Newton step alone gives 0 * inf = NaN), as the
// division gives.
inline fVec reciprocal_ge1(fVec d) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r0 = _mm512_rcp14_ps(d);
  const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.f)));
  const __mmask16 overflow = _mm512_cmp_ps_mask(d, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
  return fVec(_mm512_mask_blend_ps(overflow, r, _mm512_setzero_ps()));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 r0 = _mm256_rcp_ps(d);
  const __m256 r = _mm256_mul_ps(r0, _mm256_fnmadd_ps(d, r0, _mm256_set1_ps(2.f)));
  const __m256 overflow = _mm256_cmp_ps(d, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ);
  return fVec(_mm256_blendv_ps(r, _mm256_setzero_ps(), overflow));
#else
  return fVec(1.f) / d;
#endif
}

// x * sigmoid(z) = x / (1 + exp(-z)) with the fast exp and reciprocal. Edge cases
// equal the division's: silu(-200) = -0, silu(-inf) = NaN, as torch's silu gives.
inline fVec mul_sigmoid(fVec x, fVec z) { return x * reciprocal_ge1(fVec(1.f) + z.neg().exp_u20()); }

inline fVec silu(fVec v) { return mul_sigmoid(v, v); }

// tanh GELU (F.gelu(approximate="tanh"), transformers' NewGELU): 0.5 x (1 + tanh(u))
// is x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3). One fast exp in place of
// Sleef's tanh, which made gelu_mul 4.5x slower than silu_mul (compute bound at
// 5 GB/s); also free of the cancellation in 1 + tanh(u) for negative x.
inline fVec gelu_tanh(fVec v) {
  const fVec two_u = fVec(2.f * 0.7978845608028654f) * at::vec::fmadd(fVec(0.044715f) * v, v * v, v);
  return mul_sigmoid(v, two_u);
}

// erf GELU (F.gelu): 0.5 x (1 + erf(x / sqrt 2)) with erf by Abramowitz & Stegun 7.1.26
// (|error| < 1.5e-7; ATen's vectorized erf uses the same formula), the fast exp and
// reciprocal in place of Sleef's exp and a division. With q = 1 - erf(|z|) from the
// formula, 1 + erf(z) is q for z < 0 (no cancellation) and 2 - q otherwise.
inline fVec gelu_erf(fVec v) {
  const fVec a = (v * fVec(static_cast<float>(M_SQRT1_2))).abs();
  const fVec t = reciprocal_ge1(at::vec::fmadd(fVec(0.3275911f), a, fVec(1.f)));
  fVec poly = at::vec::fmadd(fVec(1.061405429f), t, fVec(-1.453152027f));
  poly = at::vec::fmadd(poly, t, fVec(1.421413741f));
  poly = at::vec::fmadd(poly, t, fVec(-0.284496736f));
  poly = at::vec::fmadd(poly, t, fVec(0.254829592f));
  const fVec q = poly * t * (a * a).neg().exp_u20();
  const fVec one_plus_erf = fVec::blendv(fVec(2.f) - q, q, v < fVec(0.f));
  return fVec(0.5f) * v * one_plus_erf;
}

#if defined(CPU_CAPABILITY_AVX512)
// In-register transpose of a 16x16 block of 32-bit words.
inline void transpose16x16_epi32(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4q + c] now holds, in 128-bit lane L, column 4L + c of rows 4q..4q+3;
  // gather each column's four lanes from the four row blocks.
  for (int i = 0; i < 8; ++i) {
    const int a = i < 4 ? i : i + 4;  // pair row blocks (0,1) and (2,3)
    t[a] = _mm512_shuffle_i32x4(r[a], r[a + 4], 0x88);
    t[a + 4] = _mm512_shuffle_i32x4(r[a], r[a + 4], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
  }
}
#endif

inline float reduce_sum(fVec v) {
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
