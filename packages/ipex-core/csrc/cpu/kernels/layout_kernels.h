// Memory-layout conversion kernel: the batched matrix transpose behind
// channels-first <-> channels-last copies (defined in layout.cpp, once per ISA level).
#pragma once

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

// `batches` row-major [rows, cols] matrices of 2- or 4-byte elements, each written
// transposed ([cols, rows], row-major) into `out`. Work items are panels of up to
// kTransposePanel rows of one matrix: item i is panel i % panels of matrix i / panels.
struct TransposeArgs {
  int64_t elem_bytes;  // 2 or 4
  const void* in;
  void* out;
  int64_t rows, cols;
  int64_t panels;      // ceil(rows / kTransposePanel)
};

constexpr int64_t kTransposePanel = 16;

}  // namespace ipex::core::kernels

IPEX_DECLARE_ISA_KERNEL(void, transpose_panels, const TransposeArgs&, int64_t, int64_t)
