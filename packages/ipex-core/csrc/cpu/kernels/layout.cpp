// Batched matrix transpose (channels-first <-> channels-last), compiled once per ISA.
// AVX-512: 16x16 blocks transposed in registers (vec_io.h), 16-bit elements widened
// to 32 bits for it; every output row segment is one 64-byte (fp32) or 32-byte store.
#include "cpu/kernels/layout_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>
#include <cstdint>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

template <typename W>
void transpose_panel(const TransposeArgs& a, int64_t item) {
  const int64_t b = item / a.panels, r0 = (item % a.panels) * kTransposePanel;
  const int64_t nr = std::min(kTransposePanel, a.rows - r0);
  const W* in = static_cast<const W*>(a.in) + b * a.rows * a.cols;
  W* out = static_cast<W*>(a.out) + b * a.rows * a.cols;
#if defined(CPU_CAPABILITY_AVX512)
  const auto row_mask = static_cast<__mmask16>((1u << nr) - 1u);
  for (int64_t c0 = 0; c0 < a.cols; c0 += 16) {
    const int64_t nc = std::min<int64_t>(16, a.cols - c0);
    const auto col_mask = static_cast<__mmask16>((1u << nc) - 1u);
    __m512i r[16];
    for (int64_t i = 0; i < 16; ++i) {
      const W* src = in + (r0 + i) * a.cols + c0;
      if (i >= nr) {
        r[i] = _mm512_setzero_si512();
      } else if constexpr (sizeof(W) == 4) {
        r[i] = _mm512_maskz_loadu_epi32(col_mask, src);
      } else {
        r[i] = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(col_mask, src));
      }
    }
    transpose16x16_epi32(r);
    for (int64_t j = 0; j < nc; ++j) {
      W* dst = out + (c0 + j) * a.rows + r0;
      if constexpr (sizeof(W) == 4) {
        _mm512_mask_storeu_epi32(dst, row_mask, r[j]);
      } else {
        _mm256_mask_storeu_epi16(dst, row_mask, _mm512_cvtepi32_epi16(r[j]));
      }
    }
  }
#else
  // Blocks of 16 columns: the panel's 16 source rows stay in L1 while the
  // output rows are written in segments of nr elements.
  for (int64_t c0 = 0; c0 < a.cols; c0 += 16) {
    const int64_t c1 = std::min<int64_t>(a.cols, c0 + 16);
    for (int64_t c = c0; c < c1; ++c) {
      W* dst = out + c * a.rows + r0;
      for (int64_t i = 0; i < nr; ++i) dst[i] = in[(r0 + i) * a.cols + c];
    }
  }
#endif
}

}  // namespace

void transpose_panels(const TransposeArgs& a, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    if (a.elem_bytes == 4) {
      transpose_panel<uint32_t>(a, item);
    } else {
      transpose_panel<uint16_t>(a, item);
    }
  }
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
