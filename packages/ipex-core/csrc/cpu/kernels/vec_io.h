// Loads/stores between any of float/bf16/fp16 memory and Vectorized<float>.
// Included only by per-ISA kernel files.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace ipex::core::kernels::IPEX_ISA_NS {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kF = fVec::size();

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
    auto v = at::vec::Vectorized<T>::loadu(p, count);
    return std::get<0>(at::vec::convert_to_float<T>(v));
  }
}

template <typename T>
inline void store_f32(T* p, fVec v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, kF);
  }
}

template <typename T>
inline void store_f32(T* p, fVec v, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, count);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, count);
  }
}

// Round a float vector to T's precision and back (identity for float), so a
// value we store as T and one we keep computing with agree bit for bit.
template <typename T>
inline fVec round_to(fVec v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
  }
}

inline float reduce_sum(fVec v) {
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
