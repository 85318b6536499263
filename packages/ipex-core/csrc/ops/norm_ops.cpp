// CPU implementations of ipex::rms_norm, ipex::add_rms_norm and the in-place
// ipex::add_rms_norm_: input checks, allocation and threading; the arithmetic
// is in cpu/kernels/norm.cpp.
#include "cpu/kernels/norm_kernels.h"
#include "ops/op_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace ipex::core {
namespace {

void check_norm_inputs(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension (the hidden "
              "dimension last); got a 0-d tensor");
  auto dt = input.scalar_type();
  check_float_input(op, "input", input);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == input.size(-1), op,
              ": weight must be 1-D with as many elements as input's last dimension (",
              input.size(-1), "); got weight of shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == dt || weight.scalar_type() == at::kFloat, op,
              ": weight dtype must match input (", dt, ") or be float32; got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but input is on ", input.device(), "; move them to the same device");
}

kernels::RmsNormArgs make_args(const Rows& x, const at::Tensor& w, const Rows& out, double eps) {
  kernels::RmsNormArgs a{};
  a.dtype = x.keep.scalar_type();
  a.weight_dtype = w.scalar_type();
  a.x = x.data;
  a.x_row_stride = x.stride;
  a.weight = w.data_ptr();
  a.out = out.data;
  a.out_row_stride = out.stride;
  a.n = w.size(0);
  a.eps = static_cast<float>(eps);
  a.bf16_insn = active_isa() >= IsaLevel::kAvx512Bf16;
  return a;
}

at::Tensor rms_norm_cpu(const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_norm_inputs("ipex::rms_norm", input, weight);
  const auto x = rows_of(input);
  auto w = weight.contiguous();
  auto out = empty_output_like(input);
  if (out.numel() > 0) {
    parallel_rows(IPEX_PICK_ISA_KERNEL(rms_norm_rows), make_args(x, w, rows_of(out), eps), x.count, w.size(0));
  }
  return out;
}

// Shared by the functional and in-place forms: residual_out = x + residual,
// out = rms_norm(residual_out); out/residual_out may alias x/residual.
void add_rms_norm_into(const Rows& x, const Rows& r, const at::Tensor& w, const Rows& out, const Rows& res_out,
                       double eps) {
  if (x.count == 0 || w.size(0) == 0) return;
  auto args = make_args(x, w, out, eps);
  args.residual = r.data;
  args.residual_row_stride = r.stride;
  args.residual_out = res_out.data;
  args.residual_out_row_stride = res_out.stride;
  parallel_rows(IPEX_PICK_ISA_KERNEL(add_rms_norm_rows), args, x.count, w.size(0));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& input,
                                                    const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps) {
  check_norm_inputs("ipex::add_rms_norm", input, weight);
  check_same_as("ipex::add_rms_norm", "residual", input, residual);
  auto out = empty_output_like(input);
  auto res_out = empty_output_like(input);
  add_rms_norm_into(rows_of(input), rows_of(residual), weight.contiguous(), rows_of(out), rows_of(res_out), eps);
  return {out, res_out};
}

void add_rms_norm_inplace_cpu(const at::Tensor& input, const at::Tensor& residual,
                              const at::Tensor& weight, double eps) {
  check_norm_inputs("ipex::add_rms_norm_", input, weight);
  check_same_as("ipex::add_rms_norm_", "residual", input, residual);
  check_writable("ipex::add_rms_norm_", "input", input);
  check_writable("ipex::add_rms_norm_", "residual", residual);
  auto x = as_rows(input);
  auto r = as_rows(residual);
  auto w = weight.contiguous();
  if (is_view_of(x, input) && is_view_of(r, residual)) {
    add_rms_norm_into(rows_of_2d(x), rows_of_2d(r), w, rows_of_2d(x), rows_of_2d(r), eps);
    return;
  }
  // Layouts a row view cannot express: compute into fresh rows, then copy back.
  auto out = empty_rows_like(input);
  auto res_out = empty_rows_like(input);
  add_rms_norm_into(rows_of_2d(x), rows_of_2d(r), w, rows_of_2d(out), rows_of_2d(res_out), eps);
  const_cast<at::Tensor&>(residual).copy_(res_out.view(input.sizes()));
  const_cast<at::Tensor&>(input).copy_(out.view(input.sizes()));
}

}  // namespace

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
  m.impl("add_rms_norm_", &add_rms_norm_inplace_cpu);
}

}  // namespace ipex::core
