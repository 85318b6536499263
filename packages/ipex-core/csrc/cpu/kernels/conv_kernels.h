// Winograd F(4x4, 3x3) transforms of ipex::conv3x3_winograd and the epilogue of ipex::conv1x1 (defined in
// conv_winograd.cpp, once per ISA level), and ipex::conv1x1's bf16x3 GEMM on AMX tiles
// (conv1x1_bf16x3.cpp). The other GEMMs are oneDNN's fp32 brgemm (conv_ops.cpp).
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>

#include "cpu/kernels/kernel_table.h"

namespace ipex::core::kernels {

// One chunk of output tiles of a 3x3, stride-1 convolution over channels-last input. The input
// and output are float32, bfloat16 or float16 (dtype); everything in between is float32.
// Tile g (global index tile_base + t) is image g / (tiles_h * tiles_w), tile row
// (g / tiles_w) % tiles_h, tile column g % tiles_w; it covers output rows
// 4*row .. 4*row+3 and reads input rows 4*row - pad_h .. +5 (zero outside).
struct WinogradArgs {
  c10::ScalarType dtype;       // of x and y
  const void* x;               // input [n, h, w, c] with channel stride 1
  int64_t h, w, c;
  int64_t x_sn, x_sh, x_sw;    // input strides (elements) of n, h, w
  int64_t pad_h, pad_w;
  int64_t tiles_h, tiles_w;
  int64_t tile_base;           // first tile of this chunk
  int64_t chunk;               // tiles in this chunk: the rows of v and m
  float* v;                    // [36, chunk, c]: the transformed input tiles
  const float* m;              // [36, chunk, k]: v @ the transformed weight
  int64_t k;                   // output channels
  const float* bias;           // [k] or nullptr
  bool relu;
  void* y;                     // output [n, out_h, out_w, k] with channel stride 1
  int64_t out_h, out_w;
  int64_t y_sn, y_sh, y_sw;
};

// ipex::conv1x1's tasks: tile_rows rows (a row tile) by one weight column block. Tasks run group by
// group of kConv1x1GroupTiles row tiles, column block by column block inside a group: the group's
// input rows stay in L2 across the column blocks, each weight block across the rows of the group,
// and threads given whole groups write disjoint pages of the output.
constexpr int64_t kConv1x1GroupTiles = 8;

struct Conv1x1Task {
  int64_t m0, rows, block;
};

inline Conv1x1Task conv1x1_task(int64_t t, int64_t m, int64_t blocks, int64_t tile_rows) {
  const int64_t mtiles = (m + tile_rows - 1) / tile_rows;
  const int64_t group_tasks = kConv1x1GroupTiles * blocks;
  const int64_t g = t / group_tasks, r = t % group_tasks;
  const int64_t tiles_in_group = std::min(kConv1x1GroupTiles, mtiles - g * kConv1x1GroupTiles);
  const int64_t i = g * kConv1x1GroupTiles + r % tiles_in_group;
  const int64_t m0 = i * tile_rows;
  return {m0, std::min(tile_rows, m - m0), r / tiles_in_group};
}

// The bf16x3 GEMM (conv1x1_bf16x3.cpp): column blocks of kBf16x3Cols output channels (one pair of
// AMX B tiles), tasks of kBf16x3Rows rows.
constexpr int64_t kBf16x3Cols = 32, kBf16x3Rows = 64;

struct Bf16x3GemmArgs {
  const c10::BFloat16* x_hi;  // the input's parts [m, c_pad] (split_bf16x3_rows)
  const c10::BFloat16* x_lo;
  int64_t m, c_pad;           // c_pad: the input channels rounded up to 32 (one AMX k step)
  const c10::BFloat16* w;     // [blocks, 2 (hi, lo), c_pad / 2, kBf16x3Cols, 2]
  int64_t blocks;
  const float* bias;          // [blocks * kBf16x3Cols] or nullptr
  const float* other;         // residual rows (ldy apart) added in the epilogue, or nullptr
  bool accumulate;            // y holds the residual already: the GEMM adds to it
  bool relu;
  float* y;                   // [m, ldy] output rows, ldy = blocks * kBf16x3Cols
  int64_t ldy;
};

}  // namespace ipex::core::kernels

// Rows [begin, end) of x ([m, c] float32, c apart) split into bf16 parts hi = bf16(x) and lo =
// bf16(x - hi), rows c_pad apart (c_pad >= c; the columns past c zeroed). Where x - hi is NaN (x
// infinite or NaN) lo is 0, so hi alone carries it. AVX512-BF16 instructions: called where the CPU has
// AMX only (a no-op below the AVX-512 level).
IPEX_DECLARE_ISA_KERNEL(void, split_bf16x3_rows, const float*, int64_t, int64_t, c10::BFloat16*, c10::BFloat16*,
                        int64_t, int64_t)
// Tasks [begin, end) (conv1x1_task with kBf16x3Rows) of y = relu?(x . w + bias + other) by three bf16
// GEMMs on AMX tiles; a no-op below the AVX-512 level (the op calls it where the CPU has AMX).
IPEX_DECLARE_ISA_KERNEL(void, conv1x1_bf16x3_tasks, const Bf16x3GemmArgs&, int64_t, int64_t)

// Tiles [begin, end) of the chunk: v = B^T d B per tile and channel.
IPEX_DECLARE_ISA_KERNEL(void, winograd_f43_input_tiles, const WinogradArgs&, int64_t, int64_t)
// Tiles [begin, end) of the chunk: y = relu?(A^T m A + bias), the tile's part inside the output.
IPEX_DECLARE_ISA_KERNEL(void, winograd_f43_output_tiles, const WinogradArgs&, int64_t, int64_t)
// y[r, :cols] = relu?(y[r, :cols] + bias + other[r, :cols]) for r < rows, rows ld (other: ld_other) apart;
// bias and other may be null. The epilogue of ipex::conv1x1's GEMMs.
IPEX_DECLARE_ISA_KERNEL(void, bias_relu_rows, float*, int64_t, int64_t, int64_t, const float*, const float*, int64_t,
                        bool)
