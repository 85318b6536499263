// ipex::conv1x1 / conv1x1_add_ (after the Winograd op): a 1x1 stride-1 fp32 convolution as a GEMM
// on oneDNN's brgemm micro-kernel with the epilogue fused, for batch-1 layers, where oneDNN's own
// convolution call spent 25-30 us of fixed cost per call (ideep's descriptors and allocations).
// Given its weight in the bf16x3 form (bfloat16 hi and lo parts, ipex_core.ops.conv.conv1x1_weight)
// it computes the GEMM as three bf16 GEMMs on AMX tiles instead (cpu/kernels/conv1x1_bf16x3.cpp:
// within a few 1e-6 of the output's scale); on a CPU without AMX such a weight runs the float32
// GEMM on hi + lo.
//
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
#include <utility>

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
  auto x = convert_memory_format(input, /*channels_last=*/true);  // input itself where already channels-last
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

// The 1x1 convolution as a GEMM: [M = N*H*W, C] (channels-last rows) x [C, K] + bias (+ the
// residual), then ReLU, with the weight in column blocks [K / nb, C, nb] (as the Winograd weight).
// A task is kMRows rows by one weight column block (kernels::conv1x1_task: the order of the tasks):
// its GEMM runs the reduction in slices of kKSlice input channels (the first overwriting the output,
// or adding to the residual already there when `accumulate`, the rest accumulating), then bias, the
// residual `other` (when given, rows of K) and ReLU over the block while it is in L1.
constexpr int64_t kMRows = 64, kKSlice = 512;

struct Conv1x1Args {
  const float* x;      // [m, c] rows
  int64_t m, c;
  const float* u;      // [blocks, c, nb]
  int64_t blocks, nb;
  const float* bias;   // [k] or nullptr
  const float* other;  // [m, k] residual added in the epilogue, or nullptr
  bool accumulate;     // y holds the residual already: the GEMM adds to it
  bool relu;
  float* y;            // [m, k] rows
};

void conv1x1_rows(const Conv1x1Args& a) {
  const int64_t k = a.blocks * a.nb, mtiles = (a.m + kMRows - 1) / kMRows;
  const auto epilogue = IPEX_PICK_ISA_KERNEL(bias_relu_rows);
  at::parallel_for(0, a.blocks * mtiles, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const auto task = kernels::conv1x1_task(t, a.m, a.blocks, kMRows);
      const int64_t m0 = task.m0, rows = task.rows, j = task.block, col = j * a.nb;
      float* yb = a.y + m0 * k + col;
      for (int64_t c0 = 0; c0 < a.c; c0 += kKSlice) {
        const int64_t kc = std::min(kKSlice, a.c - c0);
        at::native::cpublas::brgemm(rows, a.nb, kc, a.c, a.nb, k, a.accumulate || c0 > 0, a.x + m0 * a.c + c0,
                                    a.u + (j * a.c + c0) * a.nb, yb, false);
      }
      if (a.bias != nullptr || a.other != nullptr || a.relu) {
        epilogue(yb, rows, a.nb, k, a.bias == nullptr ? nullptr : a.bias + col,
                 a.other == nullptr ? nullptr : a.other + m0 * k + col, k, a.relu);
      }
    }
  });
}

// The bf16x3 weight's input channels: in_channels rounded up to whole AMX k steps.
int64_t bf16x3_channels(int64_t c) { return (c + 31) / 32 * 32; }

// Checks shared by conv1x1 and conv1x1_add_; returns the weight's column blocks and width (the
// bf16x3 form: its blocks of kernels::kBf16x3Cols).
std::pair<int64_t, int64_t> check_conv1x1(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, c10::string_view attr) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op, ": runs on CPU tensors only");
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W]; got shape ", input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat, op,
              ": input must be float32 (bf16/fp16 layers run oneDNN's kernels); got ", input.scalar_type());
  const int64_t c = input.size(1);
  if (weight.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(weight.dim() == 5 && weight.size(1) == 2 && 2 * weight.size(2) == bf16x3_channels(c) &&
                    weight.size(3) == kernels::kBf16x3Cols && weight.size(4) == 2,
                op, ": a bfloat16 weight must be the bf16x3 weight [out_channels / 32, 2, in_channels_32 / 2, 32, "
                "2] of ipex_core.ops.conv.conv1x1_weight(w, bf16x3=True), with in_channels_32 = input.size(1) = ", c,
                " rounded up to a multiple of 32; got shape ", weight.sizes());
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": weight must be float32 (or the bf16x3 weight); got ",
                weight.scalar_type());
    TORCH_CHECK(weight.dim() == 3 && weight.size(1) == c && weight.size(2) > 0, op,
                ": weight must be the blocked weight [out_channels / b, in_channels, b] of "
                "ipex_core.ops.conv.conv1x1_weight, with in_channels = input.size(1) = ", c,
                "; got shape ", weight.sizes());
  }
  const int64_t blocks = weight.size(0), nb = weight.dim() == 5 ? weight.size(3) : weight.size(2);
  const int64_t k = blocks * nb;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == k && bias->scalar_type() == at::kFloat, op,
                ": bias must be float32 [out_channels = ", k, "]; got ", bias->scalar_type(), " ", bias->sizes());
  }
  TORCH_CHECK(attr == "none" || attr == "relu", op, ": attr must be 'none' or 'relu'; got '", attr, "'");
  return {blocks, nb};
}

void check_residual(const char* op, const at::Tensor& other, const at::Tensor& input, int64_t k) {
  TORCH_CHECK(other.device().is_cpu() && other.scalar_type() == at::kFloat, op,
              ": other (the residual) must be a float32 CPU tensor; got ", other.scalar_type(), " on ",
              other.device());
  TORCH_CHECK(other.dim() == 4 && other.size(0) == input.size(0) && other.size(1) == k &&
                  other.size(2) == input.size(2) && other.size(3) == input.size(3),
              op, ": other must have the output's shape [", input.size(0), ", ", k, ", ", input.size(2), ", ",
              input.size(3), "]; got ", other.sizes());
}

// run_conv1x1 for a bf16x3 weight on a CPU with AMX: the input split into its bf16 parts, then the
// tasks of kernels::conv1x1_bf16x3_tasks.
void run_conv1x1_bf16x3(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, c10::string_view attr,
                        const at::Tensor& other, bool accumulate, at::Tensor& y) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), m = n * h * w;
  const int64_t c_pad = 2 * weight.size(2);
  auto parts = at::empty({2, m, c_pad}, x.options().dtype(at::kBFloat16));
  auto* hi = parts.mutable_data_ptr<at::BFloat16>();
  const float* xp = x.const_data_ptr<float>();
  const auto split = IPEX_PICK_ISA_KERNEL(split_bf16x3_rows);
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / c_pad), [&](int64_t s, int64_t e) {
    split(xp, c, c_pad, hi, hi + m * c_pad, s, e);
  });
  kernels::Bf16x3GemmArgs a{};
  a.x_hi = hi;
  a.x_lo = hi + m * c_pad;
  a.m = m, a.c_pad = c_pad;
  a.w = weight.const_data_ptr<at::BFloat16>();
  a.blocks = weight.size(0);
  a.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  a.other = other.defined() ? other.const_data_ptr<float>() : nullptr;
  a.accumulate = accumulate;
  a.relu = attr == "relu";
  a.y = y.mutable_data_ptr<float>();
  a.ldy = a.blocks * kernels::kBf16x3Cols;
  const int64_t mtiles = (m + kernels::kBf16x3Rows - 1) / kernels::kBf16x3Rows;
  const auto tasks = IPEX_PICK_ISA_KERNEL(conv1x1_bf16x3_tasks);
  at::parallel_for(0, a.blocks * mtiles, 1, [&](int64_t s, int64_t e) {
    tasks(a, s, e);
    at::native::cpublas::brgemm_release();  // our tile config is not brgemm's (as ipex::linear's AMX kernels)
  });
}

// The GEMM over the input's channels-last rows into y ([M, K] rows), bias, the residual and ReLU fused:
// `other` (channels-last, dense) is added in the epilogue; `accumulate` adds to what y holds.
// `x` is the input already channels-last and dense.
void run_conv1x1(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 c10::string_view attr, const at::Tensor& other, bool accumulate, at::Tensor& y) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t blocks = weight.size(0), nb = weight.size(weight.dim() == 5 ? 3 : 2), k = blocks * nb;
  auto b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  if (y.numel() == 0) return;
  if (c == 0) {  // no input channels: the bias (and the residual) alone
    if (!accumulate) y.zero_();
    if (b.defined()) y.add_(b.view({1, k, 1, 1}));
    if (other.defined()) y.add_(other);
    if (attr == "relu") y.relu_();
    return;
  }
  if (weight.scalar_type() == at::kBFloat16) {
    if (static_cast<int>(active_isa()) >= static_cast<int>(IsaLevel::kAmx)) {
      run_conv1x1_bf16x3(x, weight.contiguous(), b, attr, other, accumulate, y);
      return;
    }
    // No AMX here (a model packed elsewhere): the float32 GEMM on hi + lo, the values the parts hold.
    auto parts = weight.to(at::kFloat);  // [blocks, 2, c_pad / 2, nb, 2]
    auto u32 = (parts.select(1, 0) + parts.select(1, 1)).permute({0, 1, 3, 2});  // [blocks, c_pad / 2, 2, nb]
    u32 = u32.reshape({blocks, 2 * weight.size(2), nb}).narrow(1, 0, c).contiguous();
    run_conv1x1(x, u32, bias, attr, other, accumulate, y);
    return;
  }
  const auto u = weight.contiguous();
  Conv1x1Args a{};
  a.x = x.const_data_ptr<float>();
  a.m = n * h * w, a.c = c;
  a.u = u.const_data_ptr<float>();
  a.blocks = blocks, a.nb = nb;
  a.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  a.other = other.defined() ? other.const_data_ptr<float>() : nullptr;
  a.accumulate = accumulate;
  a.relu = attr == "relu";
  a.y = y.mutable_data_ptr<float>();
  conv1x1_rows(a);
}

at::Tensor conv1x1_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::string_view attr, const std::optional<at::Tensor>& other) {
  constexpr const char* op = "ipex::conv1x1";
  const auto [blocks, nb] = check_conv1x1(op, input, weight, bias, attr);
  at::Tensor residual;
  if (other.has_value() && other->defined()) {
    check_residual(op, *other, input, blocks * nb);
    residual = convert_memory_format(*other, /*channels_last=*/true);
  }
  auto y = empty_output({input.size(0), blocks * nb, input.size(2), input.size(3)},
                        input.options().memory_format(at::MemoryFormat::ChannelsLast));
  run_conv1x1(convert_memory_format(input, /*channels_last=*/true), weight, bias, attr, residual, false, y);
  return y;
}

void conv1x1_add_cpu(at::Tensor& other, const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, c10::string_view attr) {
  constexpr const char* op = "ipex::conv1x1_add_";
  const auto [blocks, nb] = check_conv1x1(op, input, weight, bias, attr);
  check_residual(op, other, input, blocks * nb);
  TORCH_CHECK(other.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": other is written in place and must be channels-last and dense; pass "
              "other.contiguous(memory_format=torch.channels_last), or use ipex::conv1x1 with other");
  // The rows the GEMM reads must not be the ones it writes: an input sharing memory with other (other
  // itself, or a view of it) is read from a copy. A dense channels-last x tells overlap exactly.
  auto x = convert_memory_format(input, /*channels_last=*/true);
  if (at::get_overlap_status(other, x) != at::MemOverlapStatus::No) x = x.clone(at::MemoryFormat::ChannelsLast);
  run_conv1x1(x, weight, bias, attr, at::Tensor(), true, other);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // attr(conv2d(input, W, bias, stride 1, padding, dilation 1, groups 1)) for a
  // 3x3 kernel by Winograd F(4x4, 3x3); weight = the transformed float32
  // [36, out_channels / b, in_channels, b] weight (ipex_core.ops.conv.winograd_weight);
  // input float32, bfloat16 or float16, computed in float32, output in the
  // input's dtype, channels-last; attr 'none' or 'relu'.
  // flexible_layout (as onednn_conv_binary): any input layout gives a channels-last output, so under
  // torch.compile the input comes in the layout it has.
  m.def("conv3x3_winograd(Tensor input, Tensor weight, Tensor? bias, int[] padding, str attr) -> Tensor",
        {at::Tag::flexible_layout});
  // attr(conv2d(input, W, bias) [+ other]) for a 1x1, stride-1 convolution, as a GEMM over the
  // channels-last rows; weight = the blocked float32 [out_channels / b, in_channels, b] weight
  // (ipex_core.ops.conv.conv1x1_weight), or its bf16x3 form [out_channels / 32, 2, in_channels_32 / 2, 32, 2]
  // (bfloat16 hi and lo parts: three bf16 GEMMs on AMX); input float32; output channels-last; attr 'none'
  // or 'relu'.
  // conv1x1_add_ writes attr(conv + bias + other) into other (channels-last, dense).
  m.def("conv1x1(Tensor input, Tensor weight, Tensor? bias, str attr, Tensor? other) -> Tensor",
        {at::Tag::flexible_layout});
  m.def("conv1x1_add_(Tensor(a!) other, Tensor input, Tensor weight, Tensor? bias, str attr) -> ()");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd_cpu);
  m.impl("conv1x1", &conv1x1_cpu);
  m.impl("conv1x1_add_", &conv1x1_add_cpu);
}

}  // namespace ipex::core
