// RMSNorm row kernels (defined in norm.cpp, once per ISA level).
#pragma once

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

struct RmsNormArgs {
  c10::ScalarType dtype;          // of x / out / residual
  c10::ScalarType weight_dtype;   // dtype or Float
  const void* x;
  int64_t x_row_stride;           // elements between rows of x
  const void* residual;           // add_rms_norm only
  int64_t residual_row_stride;
  const void* weight;
  void* out;
  int64_t out_row_stride;
  void* residual_out;             // add_rms_norm only; may alias residual (in place)
  int64_t residual_out_row_stride;
  int64_t n;                      // hidden size
  float eps;
  bool bf16_insn;                 // the active level has AVX512-BF16 (vcvtneps2bf16 for the roundings)
};

}  // namespace ipex::core::kernels

// Process rows [begin, end).
IPEX_DECLARE_ISA_KERNEL(void, rms_norm_rows, const RmsNormArgs&, int64_t, int64_t)
IPEX_DECLARE_ISA_KERNEL(void, add_rms_norm_rows, const RmsNormArgs&, int64_t, int64_t)
