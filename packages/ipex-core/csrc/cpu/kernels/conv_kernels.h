// Winograd F(4x4, 3x3) transforms of ipex::conv3x3_winograd and the epilogue of ipex::conv1x1 (defined in
// conv_winograd.cpp, once per ISA level). The GEMMs are oneDNN's fp32 brgemm (conv_ops.cpp).
#pragma once

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

}  // namespace ipex::core::kernels

// Tiles [begin, end) of the chunk: v = B^T d B per tile and channel.
IPEX_DECLARE_ISA_KERNEL(void, winograd_f43_input_tiles, const WinogradArgs&, int64_t, int64_t)
// Tiles [begin, end) of the chunk: y = relu?(A^T m A + bias), the tile's part inside the output.
IPEX_DECLARE_ISA_KERNEL(void, winograd_f43_output_tiles, const WinogradArgs&, int64_t, int64_t)
// y[r, :cols] = relu?(y[r, :cols] + bias + other[r, :cols]) for r < rows, rows ld (other: ld_other) apart;
// bias and other may be null. The epilogue of ipex::conv1x1's GEMMs.
IPEX_DECLARE_ISA_KERNEL(void, bias_relu_rows, float*, int64_t, int64_t, int64_t, const float*, const float*, int64_t,
                        bool)
