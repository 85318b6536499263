// The AMX tile configuration (palette 1) that _tile_loadconfig reads; shared by the
// kernels that run on AMX tiles directly (attention decode, small-M linear).
#pragma once

#include <cstdint>

namespace ipex::core::kernels {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of each tile
  uint8_t rows[16] = {};
};

}  // namespace ipex::core::kernels
