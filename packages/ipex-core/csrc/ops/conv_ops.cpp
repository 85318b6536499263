// ipex::conv3x3_winograd: a 3x3, stride-1, dilation-1, ungrouped convolution
// over channels-last input by Winograd F(4x4, 3x3), in float32 arithmetic for
// float32, bfloat16 and float16 activations. Per chunk of output tiles: the
// input transform (cpu/kernels/conv_winograd.cpp), 36 GEMMs of [tiles, C] x
// [C, K] (oneDNN's fp32 brgemm, per column block of K, one per thread), the output transform with
// bias and ReLU fused. 4x fewer multiplications than the direct convolution;
// it pays where the direct one is compute-bound and the 36 GEMMs stay large
// enough (see ipex.optimize's rule, _winograd_pays). Error in float32: about
// 1e-5 of the output's scale, against 1e-6 for the direct convolution; for
// bf16 activations the one rounding of the output dominates.
#include "cpu/kernels/conv_kernels.h"
#include "ops/op_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>

namespace ipex::core {
namespace {

constexpr int64_t kTileElems = 36;  // 6x6 transformed tile
// Tiles per chunk: v and m of one chunk ([36, chunk, C] and [36, chunk, K] fp32) stay
// within about 8 MiB, in the caches between the transforms and the GEMMs.
constexpr int64_t kChunkBytes = 8 << 20;

at::Tensor conv3x3_winograd_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef padding,
                                c10::string_view attr) {
  constexpr const char* op = "ipex::conv3x3_winograd";
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op, ": runs on CPU tensors only");
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W]; got shape ", input.sizes());
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": input dtype must be float32, bfloat16 or float16; got ", dt);
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": the transformed weight must be float32 (the math is "
              "float32 for every input dtype); got ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == kTileElems && weight.size(2) == input.size(1) &&
                  weight.size(3) > 0, op,
              ": weight must be the transformed weight [36, out_channels / b, in_channels, b] of "
              "ipex_core.ops.conv.winograd_weight, with in_channels = input.size(1) = ", input.size(1),
              "; got shape ", weight.sizes());
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": padding must be two non-negative ints [pad_h, pad_w]; got ", padding);
  TORCH_CHECK(attr == "none" || attr == "relu", op, ": attr must be 'none' or 'relu'; got '", attr, "'");
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t blocks = weight.size(1), nb = weight.size(3);  // out channels in blocks of nb columns
  const int64_t k = blocks * nb;
  const int64_t out_h = h + 2 * padding[0] - 2, out_w = w + 2 * padding[1] - 2;
  TORCH_CHECK(out_h > 0 && out_w > 0, op, ": input ", h, "x", w, " with padding ", padding,
              " is smaller than the 3x3 kernel");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == k && (bias->scalar_type() == at::kFloat ||
                                                           bias->scalar_type() == dt),
                op, ": bias must be [out_channels = ", k, "] in float32 or the input's dtype; got ",
                bias->scalar_type(), " ", bias->sizes());
  }
  auto x = input.is_contiguous(at::MemoryFormat::ChannelsLast) && input.stride(1) == 1
               ? input
               : input.contiguous(at::MemoryFormat::ChannelsLast);
  auto u = weight.contiguous();
  auto b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  auto y = at::empty({n, k, out_h, out_w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  if (c == 0) {  // no input channels: the bias alone
    if (b.defined()) {
      y.copy_(b.view({1, k, 1, 1}).expand_as(y));
    } else {
      y.zero_();
    }
    return attr == "relu" ? y.relu_() : y;
  }

  kernels::WinogradArgs a{};
  a.dtype = dt;
  a.x = x.const_data_ptr();
  a.h = h, a.w = w, a.c = c;
  a.x_sn = x.stride(0), a.x_sh = x.stride(2), a.x_sw = x.stride(3);
  a.pad_h = padding[0], a.pad_w = padding[1];
  a.tiles_h = (out_h + 3) / 4, a.tiles_w = (out_w + 3) / 4;
  a.k = k;
  a.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  a.relu = attr == "relu";
  a.y = y.mutable_data_ptr();
  a.out_h = out_h, a.out_w = out_w;
  a.y_sn = y.stride(0), a.y_sh = y.stride(2), a.y_sw = y.stride(3);

  const int64_t tiles = n * a.tiles_h * a.tiles_w;
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / (kTileElems * (c + k) * 4), 1, tiles);
  // The chunk's transformed tiles, in a buffer this thread keeps (see ScratchBuffer).
  thread_local ScratchBuffer scratch_buffer;
  float* scratch = scratch_buffer.get<float>(kTileElems * chunk * (c + k));
  const auto input_tiles = IPEX_PICK_ISA_KERNEL(winograd_f43_input_tiles);
  const auto output_tiles = IPEX_PICK_ISA_KERNEL(winograd_f43_output_tiles);
  // A tile is 36 * C (or K) values: about 16K of them give each task some microseconds.
  const int64_t grain_in = std::max<int64_t>(1, 16384 / (kTileElems * c));
  const int64_t grain_out = std::max<int64_t>(1, 16384 / (kTileElems * k));
  for (int64_t base = 0; base < tiles; base += chunk) {
    const int64_t rows = std::min(chunk, tiles - base);
    a.tile_base = base;
    a.chunk = rows;  // the planes of v and m are rows * C (K) apart in this chunk
    // v [36, rows, C] then m [36, rows, K] in the scratch, planes packed at this chunk's size.
    float* vp = scratch;
    float* mp = scratch + kTileElems * rows * c;
    a.v = vp;
    at::parallel_for(0, rows, grain_in, [&](int64_t s, int64_t e) { input_tiles(a, s, e); });
    // The 36 GEMMs m[e] = v[e] @ u[e], [rows, C] x [C, K], as one GEMM per column block of u (one thread
    // each; MKL's batched sgemm threaded each small GEMM instead: at 2 threads 1.1x one thread on the
    // 56x56x64 layer at batch 32). A block [C, nb] is contiguous, so each GEMM streams its weight in order:
    // at batch 1 the weight is read from memory once per call (9.4 MB at 14x14x256), and on [C, K] rows
    // (nb floats of every 4*K bytes) that read ran 1.14x slower at 14x14x256 and 1.29x at 7x7x512.
    const float* up = u.const_data_ptr<float>();
    at::parallel_for(0, kTileElems * blocks, 1, [&](int64_t s, int64_t e) {
      for (int64_t t = s; t < e; ++t) {
        const int64_t p = t / blocks, j = t % blocks;
        at::native::cpublas::brgemm(rows, nb, c, c, nb, k, false, vp + p * rows * c, up + t * c * nb,
                                    mp + p * rows * k + j * nb, false);
      }
    });
    a.m = mp;
    at::parallel_for(0, rows, grain_out, [&](int64_t s, int64_t e) { output_tiles(a, s, e); });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // attr(conv2d(input, W, bias, stride 1, padding, dilation 1, groups 1)) for a
  // 3x3 kernel by Winograd F(4x4, 3x3); weight = the transformed float32
  // [36, out_channels / b, in_channels, b] weight (ipex_core.ops.conv.winograd_weight);
  // input float32, bfloat16 or float16, computed in float32, output in the
  // input's dtype, channels-last; attr 'none' or 'relu'.
  m.def("conv3x3_winograd(Tensor input, Tensor weight, Tensor? bias, int[] padding, str attr) -> Tensor");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd_cpu);
}

}  // namespace ipex::core
