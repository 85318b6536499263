// Linear (GEMM/GEMV) kernels on ipex's packed weight layout, with fused epilogues.
//
// Packed layout (see ipex_core/ops/linear.py, which builds it): the weight
// W [N, K] becomes blocks of kBlockN output columns, each stored "VNNI" style
// as [K_pad / V][kBlockN][V] with V = 2 for bf16/fp16 (pairs of k, the layout
// oneDNN's brgemm reads) and V = 1 for fp32. So one block is a contiguous
// stream of K_pad * kBlockN elements: decode (small M) reads every weight byte
// exactly once, in order, and prefill (large M) hands the same block to brgemm.
// A gate/up pair (Linear2SiluMul) stores the gate block and the up block of
// the same columns next to each other.
#pragma once

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

constexpr int64_t kBlockN = 32;

// What happens to the fp32 accumulator of each output element.
enum class Epilogue : int {
  kNone = 0,
  kRelu,
  kSilu,
  kGelu,      // erf form (torch.nn.functional.gelu)
  kGeluTanh,  // tanh approximation (transformers' NewGELUActivation)
  kMul,       // * other
  kAdd,       // + other
  kAddAdd,    // + other + other2
  kSiluMul,   // silu(acc) * other
  kPairSiluMul,  // silu(gate acc) * up acc: weight is a gate/up pair
};

struct LinearArgs {
  c10::ScalarType dtype;  // of input, weight, bias, other(s), output
  int64_t M, N, K_pad, V;
  int64_t num_blocks;
  const void* x;          // the input as fp32 [M, K_pad] (small-M path)
  // bf16 rows on native bf16 instructions: the input as bf16 [M, K_pad]; nullptr
  // otherwise (then x, in fp32). Set by the op only where the active ISA level has
  // them: AMX tiles when `amx` (1 <= M <= 16, K_pad a multiple of 32; the caller
  // resets oneDNN's brgemm tile state on each thread afterwards with
  // at::native::cpublas::brgemm_release, as this kernel loads its own tile
  // config), else vdpbf16ps for one row (M == 1). The large-M AMX kernel
  // (linear_large_m_amx) reads it too.
  const void* x_bf16 = nullptr;
  bool amx = false;
  const void* weight;     // packed
  const void* bias;       // [N] or [2N] for a pair (gate then up), or nullptr
  const void* other;      // [M, N] rows with stride other_row_stride, or nullptr
  int64_t other_row_stride;
  const void* other2;
  int64_t other2_row_stride;
  void* out;              // [M, N] with stride out_row_stride
  int64_t out_row_stride;
  Epilogue epilogue;
};

}  // namespace ipex::core::kernels

// Small-M path: output blocks [block_begin, block_end) for all M rows.
IPEX_DECLARE_ISA_KERNEL(void, linear_small_m_blocks, const LinearArgs&, int64_t, int64_t)
// Large-M bf16 path on AMX tiles (a.x_bf16 [M, K_pad], K_pad a multiple of 32):
// tasks [begin, end) of linear_large_m_tasks(M, num_blocks), each up to
// kLargeTaskRows rows of one packed block, epilogue included. The caller resets
// oneDNN's brgemm tile state afterwards (see LinearArgs::x_bf16).
namespace ipex::core::kernels {
constexpr int64_t kLargeTaskRows = 256;
inline int64_t linear_large_m_tasks(int64_t M, int64_t num_blocks) {
  return (M + kLargeTaskRows - 1) / kLargeTaskRows * num_blocks;
}
}  // namespace ipex::core::kernels
IPEX_DECLARE_ISA_KERNEL(void, linear_large_m_amx, const LinearArgs&, int64_t, int64_t)
// Epilogue for rows [m_begin, m_end) of one block from fp32 accumulators
// acc [rows, kBlockN] (acc2: the up half of a pair, else nullptr); used by the
// brgemm (large-M) path.
IPEX_DECLARE_ISA_KERNEL(void, linear_epilogue_block, const LinearArgs&, int64_t block,
                        int64_t m_begin, int64_t m_end, const float* acc, const float* acc2)
