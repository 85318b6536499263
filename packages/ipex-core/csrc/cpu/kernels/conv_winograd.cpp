// Winograd F(4x4, 3x3) input and output transforms (Lavin & Gray, "Fast Algorithms
// for Convolutional Neural Networks", 2015), vectorised over channels: a 3x3
// stride-1 convolution computed as 36 GEMMs on 6x6 input tiles, 4x fewer
// multiplications than the direct convolution. bf16 / fp16 activations are
// converted on load and rounded once on store; the math is fp32. The weight transform U = G g G^T
// is done once, in Python (ipex_core.ops.conv.winograd_weight).
#include "cpu/kernels/conv_kernels.h"
#include "cpu/kernels/vec_io.h"

#include <algorithm>

namespace ipex::core::kernels::IPEX_ISA_NS {
namespace {

// out = B^T in, for 6 vectors read with a stride (a column or a row of the tile):
//   B^T = [4  0 -5  0 1 0]
//         [0 -4 -4  1 1 0]
//         [0  4 -4 -1 1 0]
//         [0 -2 -1  2 1 0]
//         [0  2 -1 -2 1 0]
//         [0  4  0 -5 0 1]
inline void bt6(const fVec* d, int64_t s, fVec* o, int64_t os) {
  const fVec four(4.f), five(5.f), two(2.f);
  const fVec d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
  const fVec p = d4 - four * d2;   // shared by rows 1 and 2
  const fVec q = d3 - four * d1;
  const fVec r = d4 - d2;          // shared by rows 3 and 4
  const fVec u = two * (d3 - d1);
  o[0] = at::vec::fmadd(four, d0, d4) - five * d2;
  o[os] = p + q;
  o[2 * os] = p - q;
  o[3 * os] = r + u;
  o[4 * os] = r - u;
  o[5 * os] = at::vec::fmadd(four, d1, d5) - five * d3;
}

// out = A^T in (4 of 6):
//   A^T = [1 1  1 1  1 0]
//         [0 1 -1 2 -2 0]
//         [0 1  1 4  4 0]
//         [0 1 -1 8 -8 1]
inline void at6(const fVec* m, int64_t s, fVec* o, int64_t os) {
  const fVec two(2.f), four(4.f), eight(8.f);
  const fVec a = m[s] + m[2 * s], b = m[s] - m[2 * s];
  const fVec c = m[3 * s] + m[4 * s], d = m[3 * s] - m[4 * s];
  o[0] = m[0] + a + c;
  o[os] = at::vec::fmadd(two, d, b);
  o[2 * os] = at::vec::fmadd(four, c, a);
  o[3 * os] = at::vec::fmadd(eight, d, b) + m[5 * s];
}

struct TilePos {
  int64_t image, row0, col0;  // output row / column of the tile's top-left element
};

inline TilePos tile_pos(const WinogradArgs& a, int64_t t) {
  const int64_t g = a.tile_base + t;
  const int64_t per_image = a.tiles_h * a.tiles_w;
  const int64_t r = g % per_image;
  return {g / per_image, (r / a.tiles_w) * 4, (r % a.tiles_w) * 4};
}

template <typename T>
void input_tiles(const WinogradArgs& a, int64_t begin, int64_t end) {
  const int64_t plane = a.chunk * a.c;  // elements between two of the 36 planes of v
  fVec d[36], t[36];
  for (int64_t tile = begin; tile < end; ++tile) {
    const TilePos p = tile_pos(a, tile);
    const int64_t y0 = p.row0 - a.pad_h, x0 = p.col0 - a.pad_w;
    const T* img = static_cast<const T*>(a.x) + p.image * a.x_sn;
    float* vt = a.v + tile * a.c;
    for (int64_t c0 = 0; c0 < a.c; c0 += kF) {
      const int64_t n = std::min<int64_t>(kF, a.c - c0);
      for (int64_t i = 0; i < 6; ++i) {
        const int64_t yy = y0 + i;
        const bool row_in = yy >= 0 && yy < a.h;
        for (int64_t j = 0; j < 6; ++j) {
          const int64_t xx = x0 + j;
          if (row_in && xx >= 0 && xx < a.w) {
            const T* src = img + yy * a.x_sh + xx * a.x_sw + c0;
            d[i * 6 + j] = n == kF ? load_f32(src) : load_f32(src, n);
          } else {
            d[i * 6 + j] = fVec(0.f);  // zero padding
          }
        }
      }
      for (int64_t j = 0; j < 6; ++j) bt6(d + j, 6, t + j, 6);       // columns: t = B^T d
      for (int64_t i = 0; i < 6; ++i) bt6(t + i * 6, 1, d + i * 6, 1);  // rows: d = t B
      for (int64_t e = 0; e < 36; ++e) {
        float* dst = vt + e * plane + c0;
        if (n == kF) {
          d[e].store(dst);
        } else {
          d[e].store(dst, n);
        }
      }
    }
  }
}

template <typename T>
void output_tiles(const WinogradArgs& a, int64_t begin, int64_t end) {
  const int64_t plane = a.chunk * a.k;
  fVec m[36], t[24], o[16];
  const fVec zero(0.f);
  for (int64_t tile = begin; tile < end; ++tile) {
    const TilePos p = tile_pos(a, tile);
    const int64_t rows = std::min<int64_t>(4, a.out_h - p.row0), cols = std::min<int64_t>(4, a.out_w - p.col0);
    const float* mt = a.m + tile * a.k;
    T* img = static_cast<T*>(a.y) + p.image * a.y_sn;
    for (int64_t c0 = 0; c0 < a.k; c0 += kF) {
      const int64_t n = std::min<int64_t>(kF, a.k - c0);
      for (int64_t e = 0; e < 36; ++e) {
        const float* src = mt + e * plane + c0;
        m[e] = n == kF ? fVec::loadu(src) : fVec::loadu(src, n);
      }
      for (int64_t j = 0; j < 6; ++j) at6(m + j, 6, t + j, 6);       // columns: t [4x6] = A^T m
      for (int64_t i = 0; i < 4; ++i) at6(t + i * 6, 1, o + i * 4, 1);  // rows: o [4x4] = t A
      const fVec b = a.bias == nullptr ? zero : (n == kF ? fVec::loadu(a.bias + c0) : fVec::loadu(a.bias + c0, n));
      for (int64_t i = 0; i < rows; ++i) {
        T* dst_row = img + (p.row0 + i) * a.y_sh + c0;
        for (int64_t j = 0; j < cols; ++j) {
          fVec v = o[i * 4 + j] + b;
          if (a.relu) v = at::vec::maximum(v, zero);
          T* dst = dst_row + (p.col0 + j) * a.y_sw;
          if (n == kF) {
            store_f32(dst, v);
          } else {
            store_f32(dst, v, n);
          }
        }
      }
    }
  }
}

}  // namespace

void winograd_f43_input_tiles(const WinogradArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case c10::ScalarType::BFloat16: return input_tiles<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return input_tiles<c10::Half>(a, begin, end);
    default: return input_tiles<float>(a, begin, end);
  }
}

void winograd_f43_output_tiles(const WinogradArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case c10::ScalarType::BFloat16: return output_tiles<c10::BFloat16>(a, begin, end);
    case c10::ScalarType::Half: return output_tiles<c10::Half>(a, begin, end);
    default: return output_tiles<float>(a, begin, end);
  }
}

void bias_relu_rows(float* y, int64_t rows, int64_t cols, int64_t ld, const float* bias, const float* other,
                    int64_t ld_other, bool relu) {
  const fVec zero(0.f);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * ld;
    const float* other_row = other == nullptr ? nullptr : other + r * ld_other;
    for (int64_t c0 = 0; c0 < cols; c0 += kF) {
      const int64_t n = std::min<int64_t>(kF, cols - c0);
      fVec v = n == kF ? fVec::loadu(row + c0) : fVec::loadu(row + c0, n);
      if (bias != nullptr) v = v + (n == kF ? fVec::loadu(bias + c0) : fVec::loadu(bias + c0, n));
      if (other_row != nullptr) v = v + (n == kF ? fVec::loadu(other_row + c0) : fVec::loadu(other_row + c0, n));
      if (relu) v = at::vec::maximum(v, zero);
      if (n == kF) {
        v.store(row + c0);
      } else {
        v.store(row + c0, n);
      }
    }
  }
}

}  // namespace ipex::core::kernels::IPEX_ISA_NS
