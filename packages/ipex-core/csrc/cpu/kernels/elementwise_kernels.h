// Element-wise LLM kernels: gated activations, rotary embedding, LayerNorm
// (defined in elementwise.cpp, once per ISA level).
#pragma once

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

enum class GatedAct : int { kSilu = 0, kGelu, kGeluTanh };

struct GatedArgs {
  c10::ScalarType dtype;
  const void* x;  // activation input rows
  int64_t x_row_stride;
  const void* y;  // multiplier rows
  int64_t y_row_stride;
  void* out;      // contiguous [rows, n]
  int64_t n;
  GatedAct act;
  bool bf16_insn;  // the active level has AVX512-BF16 (vcvtneps2bf16 for the bf16 roundings)
};

struct RopeArgs {
  c10::ScalarType dtype;      // of x / out
  c10::ScalarType cs_dtype;   // of cos / sin: dtype or Float
  const void* x;              // [tokens, heads, head_dim] with strides below (unit inner stride)
  int64_t x_token_stride, x_head_stride;
  void* out;                  // contiguous [tokens, heads, head_dim]
  const void* cos;            // rows of at least rotary_dim/2 angles, row stride cs_row_stride
  const void* sin;
  int64_t cs_row_stride;
  const int64_t* rows;        // per token: which cos/sin row (nullptr: the token index)
  int64_t heads, head_dim, rotary_dim;
  bool half;                  // Llama (rotate halves) vs GPT-J (rotate neighbouring pairs)
  bool bf16_insn;             // the active level has AVX512-BF16 (vcvtneps2bf16 for the roundings)
};

struct LayerNormArgs {
  c10::ScalarType dtype;
  c10::ScalarType param_dtype;  // of weight / bias: dtype or Float
  const void* x;
  int64_t x_row_stride;
  const void* residual;         // add_layer_norm only
  int64_t residual_row_stride;
  const void* weight;           // may be nullptr
  const void* bias;             // may be nullptr
  void* out;                    // contiguous [rows, n]
  void* residual_out;           // add_layer_norm only, contiguous [rows, n]
  int64_t n;
  float eps;
};

}  // namespace ipex::core::kernels

IPEX_DECLARE_ISA_KERNEL(void, gated_rows, const GatedArgs&, int64_t, int64_t)
// Rows are (token, head) pairs: [begin, end) of tokens * heads.
IPEX_DECLARE_ISA_KERNEL(void, rope_rows, const RopeArgs&, int64_t, int64_t)
IPEX_DECLARE_ISA_KERNEL(void, layer_norm_rows, const LayerNormArgs&, int64_t, int64_t)
