// Attention kernels (defined in attention.cpp, once per ISA level).
//
// Two families share the online-softmax arithmetic (everything accumulates in
// fp32; q/k/v/out are float, bfloat16 or float16):
//  - decode: a few query rows against a long cache whose token rows are found
//    through an offset table (paged blocks, or the IAKV beam history), memory
//    bound, so each task streams every KV byte once for all query heads that
//    share it;
//  - prefill (flash style): blocks of query rows against blocks of packed K/V;
//    the GEMMs are either the generic fp32 micro-kernel here or oneDNN's AMX
//    brgemm, called by the ISA-neutral driver in ops/attention_ops.cpp.
#pragma once

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

// ---------------------------------------------------------------- decode ---

// What is shared by every decode task of one call.
struct DecodeArgs {
  c10::ScalarType dtype;          // of q, the caches and out
  int64_t head_dim;               // D
  int64_t num_heads;              // H, query heads
  int64_t num_kv_heads;           // query heads are grouped by the kv head they read
  const int32_t* group_offsets;   // [num_kv_heads + 1], CSR offsets into group_heads
  const int32_t* group_heads;     // [num_heads], query heads ordered by kv head
  const void* k_base;
  int64_t k_head_stride;          // elements between kv heads of one token row
  const void* v_base;
  int64_t v_head_stride;
  float scale;
  // bf16 only, AVX512-BF16 level: dot products with vdpbf16ps (P rounded to
  // bf16 for P V, as the AMX prefill does); otherwise fp32 FMAs.
  bool bf16_dot;
  // bf16 only, AMX level, head_dim a multiple of 32: Q K^T and P V on AMX
  // tiles (P rounded to bf16 as above). The caller releases oneDNN's tile
  // state (at::native::cpublas::brgemm_release) on each thread afterwards.
  bool amx;
};

// One query row (all H heads) against tokens [t0, t0 + n) of its context.
struct DecodeTask {
  const void* q;                  // query row, head h at q + h * q_head_stride
  int64_t q_head_stride;
  const int64_t* k_off;           // [n] element offset of token t0 + i (kv head 0) from k_base
  const int64_t* v_off;           // [n] same for v_base
  int64_t n;
  // Optional additive score terms, in this order:
  //   alibi_slopes[h] * (t0 + i + alibi_offset), then bias[h * bias_head_stride + i * bias_tok_stride].
  const float* alibi_slopes;      // [H] or null
  float alibi_offset;
  const float* bias;              // already advanced to token t0; or null
  int64_t bias_head_stride;
  int64_t bias_tok_stride;
  // Partial softmax state written for every query head: running max, sum of
  // exp(score - max) and the unnormalised fp32 output.
  float* m;                       // [H]
  float* l;                       // [H]
  float* acc;                     // [H * D]
};

// Merge `parts` partial states (each laid out m[H], l[H], acc[H*D], part_stride
// floats apart) of one query row into out (head h at out + h * out_head_stride).
// A head whose every score was -inf gets zeros.
struct DecodeCombine {
  c10::ScalarType dtype;
  int64_t num_heads;
  int64_t head_dim;
  const float* parts;
  int64_t num_parts;
  int64_t part_stride;
  void* out;
  int64_t out_head_stride;
};

// --------------------------------------------------------------- prefill ---

// C[M, N] (+)= A[M, K] * B[K, N]; A is float or `a_dtype` (rows lda apart),
// B and C are fp32 (rows ldb / ldc apart).
struct GemmF32 {
  c10::ScalarType a_dtype;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  bool accumulate;
};

// Pack `n` token rows of one kv head (row i at src + i * tok_stride, head_dim
// contiguous elements) into the layout the GEMMs read:
//  - f32_kt:   fp32 K^T, [D, ld] (column i = token i);
//  - f32_v:    fp32 V, [n, D rounded up to 16];
//  - vnni_kt:  bf16 K^T as brgemm's B for Q K^T: [D/2, ld, 2] (token i's pair
//              (d, d+1) at ((d/2) * ld + i) * 2);
//  - vnni_v:   bf16 V as brgemm's B for P V: [ld/2, D, 2] (rows 2j, 2j+1
//              interleaved), ld = n rounded up to even.
// Columns / rows from n up to ld are zero filled.
enum class PackKind : int { kF32Kt = 0, kF32V = 1, kVnniKt = 2, kVnniV = 3 };
struct PackArgs {
  PackKind kind;
  c10::ScalarType dtype;
  const void* src;
  int64_t tok_stride;
  int64_t n;
  int64_t head_dim;
  void* dst;
  int64_t ld;                     // padded token count (f32_kt, vnni_kt, vnni_v)
};

// One block of scores S[M, N] (fp32, rows lds apart) of the online softmax:
// s = s * scale (+ bias row), columns j > row_limit0 + r of row r are masked
// (causal), then per row the running max m and sum l are updated, acc[r, :D]
// is rescaled by exp(m_old - m_new), and P = exp(s - m_new) is written as fp32
// or bf16 (rows ldp apart; columns N..n_pad zero filled).
struct SoftmaxBlock {
  int64_t m_rows, n_cols, n_pad;
  float* s;
  int64_t lds;
  float scale;
  bool causal;
  int64_t row_limit0;             // row r may see columns <= row_limit0 + r
  const float* bias;              // row r at bias + r * bias_row_stride, or null
  int64_t bias_row_stride;
  int64_t bias_col_stride;
  float* row_max;
  float* row_sum;
  float* acc;
  int64_t ld_acc;
  int64_t head_dim;
  bool first_block;               // acc holds nothing yet: no rescale
  void* p;
  bool p_bf16;
  int64_t ldp;
};

// out[r, :D] = acc[r, :D] / row_sum[r] (zeros where row_sum is 0).
struct FlashFinalize {
  c10::ScalarType dtype;
  int64_t m_rows;
  int64_t head_dim;
  const float* acc;
  int64_t ld_acc;
  const float* row_sum;
  void* out;
  int64_t out_row_stride;
};

}  // namespace ipex::core::kernels

// Partial decode of `count` query rows (tasks[0..count)), each over its own tokens; the AVX512-BF16
// loop reads the rows chunk by chunk in step, the others one row after another.
IPEX_DECLARE_ISA_KERNEL(void, attn_decode_partial, const DecodeArgs&, const DecodeTask*, int64_t)
IPEX_DECLARE_ISA_KERNEL(void, attn_decode_combine, const DecodeCombine&)
IPEX_DECLARE_ISA_KERNEL(void, attn_gemm_f32, const GemmF32&)
IPEX_DECLARE_ISA_KERNEL(void, attn_pack, const PackArgs&)
IPEX_DECLARE_ISA_KERNEL(void, attn_softmax_block, const SoftmaxBlock&)
IPEX_DECLARE_ISA_KERNEL(void, attn_finalize, const FlashFinalize&)
