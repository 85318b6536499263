// The AMX tile configuration (palette 1) that _tile_loadconfig reads; shared by the
// kernels that run on AMX tiles directly (attention decode, small-M linear).
#pragma once

#include <cstdint>
#include <initializer_list>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace ipex::core::kernels {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of each tile
  uint8_t rows[16] = {};
};

#if defined(CPU_CAPABILITY_AVX512)
// The tiles of a 32 x 32 fp32 output block over bf16 operands (large-M linear, conv1x1's bf16x3 GEMM):
// 0/1 the accumulators of rows 0-15 (columns 0-15 / 16-31), 2/3 of rows 16-31; 4/5 rows 0-15 / 16-31
// of the input; 6/7 columns 0-15 / 16-31 of the weight's 32-column block. rows1 = 0: one row tile.
__attribute__((target("amx-tile"))) inline void amx_configure_32x32(int64_t rows0, int64_t rows1) {
  AmxTileConfig c;
  const auto r0 = static_cast<uint8_t>(rows0), r1 = static_cast<uint8_t>(rows1);
  for (int t : {0, 1, 4}) { c.rows[t] = r0; c.colsb[t] = 64; }
  if (r1) for (int t : {2, 3, 5}) { c.rows[t] = r1; c.colsb[t] = 64; }
  for (int t : {6, 7}) { c.rows[t] = 16; c.colsb[t] = 64; }
  _tile_loadconfig(&c);
}
#endif

}  // namespace ipex::core::kernels
