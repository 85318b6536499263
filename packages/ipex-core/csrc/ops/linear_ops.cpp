// ipex::linear and ipex::linear_pair_silu_mul: GEMM on ipex's packed weight
// layout (cpu/kernels/linear_kernels.h) with the epilogue fused into the
// store. Small M (decode) runs our streaming kernel; larger M runs our AMX-tile
// kernel for bf16 (K in whole 32-k steps), else hands each packed block to
// oneDNN's brgemm micro-kernel, then the same epilogue.
#include "cpu/isa.h"
#include "cpu/kernels/linear_kernels.h"
#include "ops/op_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <cstdlib>
#include <string_view>
#include <vector>

namespace ipex::core {
namespace {

using kernels::Epilogue;
using kernels::kBlockN;

// The kernel for bf16 rows on native bf16 instructions (see LinearArgs::x_bf16):
// AMX tiles for up to 16 rows in whole 32-k steps, else vdpbf16ps for one row
// (AVX512-BF16), else none (the widening fp32 kernel or brgemm).
enum class Bf16Rows { kNone, kDot, kAmx };

// Our AMX-tile kernels (small and large M) step K by 32.
bool amx_tiles_usable(int64_t k_pad) {
  return k_pad % 32 == 0 && static_cast<int>(active_isa()) >= static_cast<int>(IsaLevel::kAmx);
}

constexpr int64_t kDotMaxRows = 8;  // the vdpbf16ps kernel's rows (linear.cpp: small_m_blocks_bf16_dot)

Bf16Rows bf16_rows_kernel(int64_t M, int64_t k_pad) {
  if (M <= 16 && amx_tiles_usable(k_pad)) return Bf16Rows::kAmx;
  if (M <= kDotMaxRows && static_cast<int>(active_isa()) >= static_cast<int>(IsaLevel::kAvx512Bf16)) {
    return Bf16Rows::kDot;
  }
  return Bf16Rows::kNone;
}

// Up to this many rows our streaming kernel runs; above it our large-M AMX-tile
// kernel (bf16 with AMX) or brgemm does. Measured in benchmarks/bench_linear.py; IPEX_LINEAR_SMALL_M
// overrides it (see ipex_core/env.py).
int64_t small_m_threshold(c10::ScalarType dt, int64_t k_pad) {
  static const int64_t from_env = [] {
    const char* v = std::getenv("IPEX_LINEAR_SMALL_M");
    return (v != nullptr && v[0] != '\0') ? std::atoll(v) : -1;
  }();
  if (from_env >= 0) return from_env;
  // bf16: our AMX-tile kernel (one tile config per call, no per-block dispatch)
  // beats brgemm on one 32-column block per call up to 16 rows (0.5B Llama
  // decode step at M=4/8, interleaved with stock: 0.76-0.80x stock's time vs
  // 0.86x; at M=1 0.69-0.72x vs 0.75-0.80x with vdpbf16ps). Without AMX (or K
  // not in whole 32-k steps), vdpbf16ps wins at one row (79-84% of the bandwidth
  // vs brgemm's 60-66% at 4096x11008), and its row-blocked form up to 8 rows (AMD
  // Zen 4, 2 threads, interleaved processes, 4096->11008 and 11008->4096: M=8
  // 2.1-2.8 ms vs brgemm's 3.0-3.3 ms, M=2/4 equal or faster); without
  // AVX512-BF16 the widening kernel loses to brgemm at every M. fp32/fp16 have
  // no AMX: ours wins at small M.
  switch (dt) {
    case at::kBFloat16:
      switch (bf16_rows_kernel(1, k_pad)) {
        case Bf16Rows::kAmx: return 16;
        case Bf16Rows::kDot: return kDotMaxRows;
        default: return 0;
      }
    case at::kHalf: return 2;
    default: return 8;
  }
}

// oneDNN's brgemm needs AVX512-BF16 (or AMX) for bf16 and AVX-512 for fp16; below
// that (or when IPEX_ISA forces a lower level) every M runs our own kernel, which
// reads the same packed layout on any ISA.
bool brgemm_usable(c10::ScalarType dt) {
  const auto isa = static_cast<int>(active_isa());
  switch (dt) {
    case at::kBFloat16: return isa >= static_cast<int>(IsaLevel::kAvx512Bf16);
    case at::kHalf: return isa >= static_cast<int>(IsaLevel::kAvx512);
    default: return isa >= static_cast<int>(IsaLevel::kAvx2);
  }
}

Epilogue parse_epilogue(std::string_view name) {
  static const std::pair<std::string_view, Epilogue> table[] = {
      {"none", Epilogue::kNone}, {"relu", Epilogue::kRelu}, {"silu", Epilogue::kSilu},
      {"gelu", Epilogue::kGelu}, {"gelu_tanh", Epilogue::kGeluTanh}, {"mul", Epilogue::kMul},
      {"add", Epilogue::kAdd}, {"add_add", Epilogue::kAddAdd}, {"silu_mul", Epilogue::kSiluMul},
  };
  for (const auto& [key, value] : table) {
    if (key == name) return value;
  }
  TORCH_CHECK(false, "ipex::linear: unknown epilogue '", name, "'; use one of none, relu, silu, "
              "gelu, gelu_tanh, mul, add, add_add, silu_mul");
}

int needed_others(Epilogue e) {
  switch (e) {
    case Epilogue::kMul: case Epilogue::kAdd: case Epilogue::kSiluMul: return 1;
    case Epilogue::kAddAdd: return 2;
    default: return 0;
  }
}

// Packed weight: [blocks, K_pad/V, kBlockN, V], or [blocks, 2, K_pad/V, kBlockN, V] for a pair.
struct PackedShape {
  int64_t blocks, k_pad, v;
};

PackedShape check_packed(const char* op, const at::Tensor& w, bool pair, c10::ScalarType dt) {
  TORCH_CHECK(w.dim() == (pair ? 5 : 4) && w.size(-2) == kBlockN && w.is_contiguous() &&
                  (!pair || w.size(1) == 2),
              op, ": the weight is not in ipex's packed layout (got shape ", w.sizes(),
              "); pack it with ipex_core.ops.pack_linear_weight", pair ? "_pair" : "",
              "(weight) first");
  TORCH_CHECK(w.scalar_type() == dt, op, ": packed weight dtype ", w.scalar_type(),
              " differs from input dtype ", dt, "; cast the input (or repack the weight) so they match");
  const int64_t v = w.size(-1);
  // A weight packed for another dtype and cast (pack in bf16, .float()) has the other k-grouping: read
  // with this dtype's, its values land on the wrong k (max error 25 on a unit-scale linear).
  TORCH_CHECK(v == linear_vnni_factor(dt), op, ": the packed weight groups k by ", v, " but ", dt,
              " weights are packed in groups of ", linear_vnni_factor(dt),
              " (was it packed in another dtype and cast?); pack the ", dt, " weight with "
              "ipex_core.ops.pack_linear_weight", pair ? "_pair" : "", " instead of casting a packed one");
  return {w.size(0), w.size(-3) * v, v};
}

at::Tensor run_linear(const char* op, const at::Tensor& input, const at::Tensor& packed,
                      const std::optional<at::Tensor>& bias, int64_t out_features, Epilogue epi,
                      const std::optional<at::Tensor>& other, const std::optional<at::Tensor>& other2) {
  const bool pair = epi == Epilogue::kPairSiluMul;
  auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": input dtype must be float32, bfloat16 or float16; got ", dt);
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension");
  auto shape = check_packed(op, packed, pair, dt);
  const int64_t K = input.size(-1);
  TORCH_CHECK(K <= shape.k_pad && K > shape.k_pad - shape.v, op, ": input has ", K,
              " features but the packed weight was made for ", shape.k_pad, " (padded)");
  TORCH_CHECK(out_features > (shape.blocks - 1) * kBlockN && out_features <= shape.blocks * kBlockN,
              op, ": out_features ", out_features, " does not match the packed weight (",
              shape.blocks, " blocks of ", kBlockN, ")");
  const int64_t N = out_features;
  auto x = input.reshape({leading_count(input, 1), K});  // not -1: K may be 0
  const int64_t M = x.size(0);
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = N;

  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == (pair ? 2 * N : N), op, ": bias must be 1-D of ",
                pair ? 2 * N : N, " elements; got ", bias->sizes());
    b = bias->to(dt).contiguous();
  }
  auto other_rows = [&](const std::optional<at::Tensor>& t, const char* name) -> at::Tensor {
    TORCH_CHECK(t.has_value() && t->defined(), op, ": epilogue needs '", name, "' but it was not given");
    TORCH_CHECK(t->sizes().vec() == out_shape, op, ": ", name, " must have the output's shape ",
                at::IntArrayRef(out_shape), "; got ", t->sizes());
    auto rows = t->to(dt).reshape({leading_count(*t, 1), N});
    return rows.stride(1) == 1 ? rows : rows.contiguous();
  };
  at::Tensor o1, o2;
  int others = needed_others(epi);
  if (others >= 1) o1 = other_rows(other, "other");
  if (others >= 2) o2 = other_rows(other2, "other2");

  auto out = empty_output({M, N}, input.options());
  if (M == 0 || N == 0) return out.view(out_shape);

  kernels::LinearArgs a{};
  a.dtype = dt;
  a.M = M;
  a.N = N;
  a.K_pad = shape.k_pad;
  a.V = shape.v;
  a.num_blocks = shape.blocks;
  a.weight = packed.data_ptr();
  a.bias = b ? b->data_ptr() : nullptr;
  a.other = o1.defined() ? o1.data_ptr() : nullptr;
  a.other_row_stride = o1.defined() ? o1.stride(0) : 0;
  a.other2 = o2.defined() ? o2.data_ptr() : nullptr;
  a.other2_row_stride = o2.defined() ? o2.stride(0) : 0;
  a.out = out.data_ptr();
  a.out_row_stride = N;
  a.epilogue = epi;

  if (M <= small_m_threshold(dt, shape.k_pad) || !brgemm_usable(dt)) {
    // The input once, zero-padded to K_pad, shared by all threads: as bf16 for
    // the native-bf16 kernels, else in fp32.
    const Bf16Rows rows_kernel = dt == at::kBFloat16 ? bf16_rows_kernel(M, shape.k_pad) : Bf16Rows::kNone;
    at::Tensor xf;
    if (rows_kernel != Bf16Rows::kNone) {
      xf = (K == shape.k_pad && x.is_contiguous()) ? x : at::zeros({M, shape.k_pad}, input.options());
      if (!xf.is_same(x)) xf.narrow(1, 0, K).copy_(x);
      a.x_bf16 = xf.data_ptr();
      a.amx = rows_kernel == Bf16Rows::kAmx;
    } else {
      xf = at::zeros({M, shape.k_pad}, input.options().dtype(at::kFloat));
      xf.narrow(1, 0, K).copy_(x);
      a.x = xf.data_ptr();
    }
    auto fn = IPEX_PICK_ISA_KERNEL(linear_small_m_blocks);
    at::parallel_for(0, shape.blocks, 1, [&](int64_t begin, int64_t end) {
      fn(a, begin, end);
      if (a.amx) at::native::cpublas::brgemm_release();  // our tile config is not brgemm's
    });
    return out.view(out_shape);
  }

  // Large M: AMX tiles of our own for bf16 (whole 32-k steps), else brgemm per
  // (row tile, packed block); then the fused epilogue.
  at::Tensor xa = x;
  if (K != shape.k_pad || !x.is_contiguous()) {
    xa = at::zeros({M, shape.k_pad}, input.options());
    xa.narrow(1, 0, K).copy_(x);
  }
  if (dt == at::kBFloat16 && amx_tiles_usable(shape.k_pad)) {
    a.x_bf16 = xa.data_ptr();
    auto fn = IPEX_PICK_ISA_KERNEL(linear_large_m_amx);
    at::parallel_for(0, kernels::linear_large_m_tasks(M, shape.blocks), 1, [&](int64_t begin, int64_t end) {
      fn(a, begin, end);
      at::native::cpublas::brgemm_release();  // our tile config is not brgemm's
    });
    return out.view(out_shape);
  }
  constexpr int64_t kTileM = 32;
  constexpr int64_t kChunkK = 2048;  // a multiple of every VNNI factor (1, 2)
  const int64_t m_tiles = (M + kTileM - 1) / kTileM;
  const int64_t block_elems = shape.k_pad * kBlockN;
  const bool vnni = shape.v == 2;
  auto epilogue_fn = IPEX_PICK_ISA_KERNEL(linear_epilogue_block);
  // Consecutive tasks share a weight block, so it stays in L2 across row tiles.
  at::parallel_for(0, m_tiles * shape.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(kTileM * kBlockN), acc2(pair ? kTileM * kBlockN : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t / m_tiles, m0 = (t % m_tiles) * kTileM;
      const int64_t rows = std::min(kTileM, M - m0);
      const int64_t w_off = blk * block_elems * (pair ? 2 : 1);
      // K in chunks (accumulating into c): a whole-K call at K=11008 holds a 32-row slice of the
      // input and a 32-column block of the weight, 704 KB each in bf16, more than a 1 MB L2 (AMD
      // Zen 4: 11008->4096 at M=128 ran 2.6x slower than stock); 2048-deep chunks are 128 KB each.
      // A chunk starts at row k0 of the block's [k_pad / v, kBlockN, v] layout: k0 * kBlockN.
      auto gemm = [&](int64_t w_elem_offset, float* c) {
        for (int64_t k0 = 0; k0 < shape.k_pad; k0 += kChunkK) {
          const int64_t kc = std::min(kChunkK, shape.k_pad - k0);
          const bool add = k0 > 0;
          const int64_t a_off = m0 * shape.k_pad + k0, b_off = w_elem_offset + k0 * kBlockN;
          switch (dt) {
            case at::kBFloat16:
              at::native::cpublas::brgemm(rows, kBlockN, kc, shape.k_pad, kBlockN, kBlockN, add,
                                          xa.const_data_ptr<at::BFloat16>() + a_off,
                                          packed.const_data_ptr<at::BFloat16>() + b_off, c, vnni);
              break;
            case at::kHalf:
              at::native::cpublas::brgemm(rows, kBlockN, kc, shape.k_pad, kBlockN, kBlockN, add,
                                          xa.const_data_ptr<at::Half>() + a_off,
                                          packed.const_data_ptr<at::Half>() + b_off, c, vnni);
              break;
            default:
              at::native::cpublas::brgemm(rows, kBlockN, kc, shape.k_pad, kBlockN, kBlockN, add,
                                          xa.const_data_ptr<float>() + a_off,
                                          packed.const_data_ptr<float>() + b_off, c, false);
          }
        }
      };
      gemm(w_off, acc.data());
      if (pair) gemm(w_off + block_elems, acc2.data());
      epilogue_fn(a, blk, m0, m0 + rows, acc.data(), pair ? acc2.data() : nullptr);
    }
    at::native::cpublas::brgemm_release(vnni);
  });
  return out.view(out_shape);
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& packed_weight,
                      const std::optional<at::Tensor>& bias, int64_t out_features,
                      c10::string_view epilogue, const std::optional<at::Tensor>& other,
                      const std::optional<at::Tensor>& other2) {
  return run_linear("ipex::linear", input, packed_weight, bias, out_features,
                    parse_epilogue(std::string_view(epilogue.data(), epilogue.size())), other, other2);
}

at::Tensor linear_pair_silu_mul_cpu(const at::Tensor& input, const at::Tensor& packed_pair,
                                    const std::optional<at::Tensor>& bias, int64_t out_features) {
  return run_linear("ipex::linear_pair_silu_mul", input, packed_pair, bias, out_features,
                    Epilogue::kPairSiluMul, std::nullopt, std::nullopt);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // y = epilogue(input @ W^T + bias) with W in ipex's packed layout
  // (ipex_core.ops.pack_linear_weight). epilogue: none, relu, silu, gelu,
  // gelu_tanh, mul (* other), add (+ other), add_add (+ other + other2),
  // silu_mul (silu(.) * other).
  m.def("linear(Tensor input, Tensor packed_weight, Tensor? bias, SymInt out_features, str epilogue, "
        "Tensor? other=None, Tensor? other2=None) -> Tensor");
  // silu(input @ Wg^T + bg) * (input @ Wu^T + bu), reading Wg and Wu in one
  // pass (ipex_core.ops.pack_linear_weight_pair); bias is cat(bg, bu).
  m.def("linear_pair_silu_mul(Tensor input, Tensor packed_pair, Tensor? bias, SymInt out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_pair_silu_mul", &linear_pair_silu_mul_cpu);
}

}  // namespace ipex::core
