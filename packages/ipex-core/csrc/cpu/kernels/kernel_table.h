// Per-ISA kernels and how the ISA-neutral ops pick one.
//
// Every .cpp under csrc/cpu/kernels/ is compiled once per ISA level (default,
// avx2, avx512; see CMakeLists.txt) with IPEX_ISA_NS naming the level and
// CPU_CAPABILITY set the way PyTorch does it, so at::vec::Vectorized picks the
// matching registers. Kernels take raw pointers and row ranges only: tensor
// checks, allocation and threading live in the ISA-neutral csrc/ops/ files, so
// no tensor-API inline code is compiled with wider instructions than the CPU
// may have.
//
// To add a kernel family: declare its functions for every level with
// IPEX_DECLARE_ISA_KERNEL in a header here, define them inside
// namespace ipex::core::kernels::IPEX_ISA_NS in a .cpp here, and call
// IPEX_PICK_ISA_KERNEL(name) from the op.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace ipex::core::kernels {

// Element-wise kernels exist for three levels; the bf16/AMX levels add brgemm
// paths (oneDNN picks its own micro-kernel) on top of the AVX-512 ones.
template <typename Fn>
Fn pick_isa(Fn default_fn, Fn avx2_fn, Fn avx512_fn) {
  switch (active_isa()) {
    case IsaLevel::kDefault: return default_fn;
    case IsaLevel::kAvx2: return avx2_fn;
    default: return avx512_fn;
  }
}

// Name of the compiled kernel variant the active level uses.
inline const char* active_kernel_variant() {
  return pick_isa<const char*>("default_isa", "avx2", "avx512");
}

}  // namespace ipex::core::kernels

#define IPEX_DECLARE_ISA_KERNEL(ret, name, ...)                     \
  namespace ipex::core::kernels {                                   \
  namespace default_isa { ret name(__VA_ARGS__); }                  \
  namespace avx2 { ret name(__VA_ARGS__); }                         \
  namespace avx512 { ret name(__VA_ARGS__); }                       \
  }

#define IPEX_PICK_ISA_KERNEL(name)                                        \
  ::ipex::core::kernels::pick_isa(&::ipex::core::kernels::default_isa::name, \
                                  &::ipex::core::kernels::avx2::name,        \
                                  &::ipex::core::kernels::avx512::name)
