// CPU ops: silu_mul, gelu_mul, rotary_embedding, layer_norm, add_layer_norm.
// Checks, allocation and threading; arithmetic in cpu/kernels/elementwise.cpp.
#include "cpu/kernels/elementwise_kernels.h"
#include "ops/op_utils.h"

#include <torch/library.h>

namespace ipex::core {
namespace {

using kernels::GatedAct;

at::Tensor gated(const char* op, const at::Tensor& x, const at::Tensor& y, GatedAct act) {
  check_float_input(op, "input", x);
  check_same_as(op, "other", x, y);
  TORCH_CHECK(x.dim() >= 1, op, ": inputs must have at least 1 dimension");
  const auto xr = rows_of(x), yr = rows_of(y);
  auto out = empty_output_like(x);
  if (out.numel() > 0) {
    kernels::GatedArgs a{x.scalar_type(), xr.data, xr.stride, yr.data, yr.stride, out.data_ptr(), x.size(-1), act,
                         active_isa() >= IsaLevel::kAvx512Bf16};
    parallel_rows(IPEX_PICK_ISA_KERNEL(gated_rows), a, xr.count, x.size(-1));
  }
  return out;
}

at::Tensor silu_mul_cpu(const at::Tensor& x, const at::Tensor& y) {
  return gated("ipex::silu_mul", x, y, GatedAct::kSilu);
}

at::Tensor gelu_mul_cpu(const at::Tensor& x, const at::Tensor& y, c10::string_view approximate) {
  std::string_view approx(approximate.data(), approximate.size());
  TORCH_CHECK(approx == "none" || approx == "tanh", "ipex::gelu_mul: approximate must be 'none' or "
              "'tanh' (as in torch.nn.functional.gelu); got '", approx, "'");
  return gated("ipex::gelu_mul", x, y, approx == "tanh" ? GatedAct::kGeluTanh : GatedAct::kGelu);
}

at::Tensor rotary_embedding_cpu(const at::Tensor& input, const at::Tensor& sin, const at::Tensor& cos,
                                int64_t rotary_dim, bool rotary_half,
                                const std::optional<at::Tensor>& positions) {
  const char* op = "ipex::rotary_embedding";
  check_float_input(op, "input", input);
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, op, ": input must be [tokens, heads, head_dim] or "
              "[batch, seq, heads, head_dim]; got shape ", input.sizes());
  const int64_t heads = input.size(-2), head_dim = input.size(-1);
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, op,
              ": rotary_dim must be even and in (0, head_dim=", head_dim, "]; got ", rotary_dim);
  TORCH_CHECK(sin.sizes() == cos.sizes() && sin.scalar_type() == cos.scalar_type(), op,
              ": sin and cos must have one shape and dtype; got ", sin.sizes(), " ", sin.scalar_type(),
              " and ", cos.sizes(), " ", cos.scalar_type());
  TORCH_CHECK(cos.scalar_type() == input.scalar_type() || cos.scalar_type() == at::kFloat, op,
              ": sin/cos dtype must be float32 or the input's (", input.scalar_type(), "); got ",
              cos.scalar_type());
  const int64_t cs_cols = cos.size(-1);
  TORCH_CHECK(cs_cols == rotary_dim || cs_cols == rotary_dim / 2, op,
              ": sin/cos last dimension must be rotary_dim (", rotary_dim, ", the cat(f, f) layout) or "
              "rotary_dim/2; got ", cs_cols);
  // Tokens with one stride between them are read in place, without a reshape: at decode's one token
  // every dispatcher call (a reshape, a view, a no-op .to()) costs a fair share of the whole op.
  const int64_t tokens = leading_count(input, 2);
  const bool uniform_tokens = input.dim() == 3 || input.size(0) == 1 || input.size(1) == 1 ||
                              input.stride(0) == input.size(1) * input.stride(1);
  auto x = input.stride(-1) == 1 && uniform_tokens ? input : input.reshape({tokens, heads, head_dim}).contiguous();
  const int64_t x_token_stride = x.dim() == 3 ? x.stride(0) : (x.size(1) == 1 ? x.stride(0) : x.stride(1));
  const int64_t x_head_stride = x.stride(-2);
  auto cs = cos.dim() == 2 ? cos : cos.reshape({-1, cs_cols});
  auto sn = sin.dim() == 2 ? sin : sin.reshape({-1, cs_cols});
  if (cs.stride(1) != 1 || sn.stride(1) != 1 || cs.stride(0) != sn.stride(0)) {
    cs = cs.contiguous();
    sn = sn.contiguous();
  }
  at::Tensor rows;
  if (positions.has_value() && positions->defined()) {
    TORCH_CHECK(positions->numel() == tokens, op, ": position_ids must hold one position per token (",
                tokens, "); got ", positions->numel());
    // [batch, seq] ids for a [batch, seq, heads, head_dim] input: the same count in another shape
    // ([seq, batch]) gave tokens the wrong positions, silently.
    TORCH_CHECK(positions->dim() != 2 || input.dim() != 4 ||
                    (positions->size(0) == input.size(0) && positions->size(1) == input.size(1)),
                op, ": position_ids of shape ", positions->sizes(), " do not match the input's [batch, seq] = [",
                input.size(0), ", ", input.size(1), "]; pass [batch, seq] ids (or one flat id per token)");
    TORCH_CHECK(positions->scalar_type() == at::kLong || positions->scalar_type() == at::kInt, op,
                ": position_ids must be int64 or int32 (row indices into sin/cos); got ", positions->scalar_type());
    rows = positions->scalar_type() == at::kLong && positions->is_contiguous()
               ? *positions
               : positions->reshape({-1}).to(at::kLong).contiguous();
    // One pass over the ids (two tensor reductions cost more than the whole
    // kernel at decode's one token).
    const int64_t* ids = rows.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < tokens; ++i) {
      TORCH_CHECK(ids[i] >= 0 && ids[i] < cs.size(0), op, ": position_ids must be in [0, ", cs.size(0),
                  ") (rows of sin/cos); got ", ids[i], " at index ", i,
                  ". A longer table: more rows of sin/cos (RotaryEmbedding: a larger max_position_embeddings; "
                  "it grows its table by itself only outside torch.compile)");
    }
  } else {
    TORCH_CHECK(cs.size(0) == tokens, op, ": without position_ids, sin/cos need one row per token (",
                tokens, "); got ", cs.size(0), " rows. Pass position_ids to index a sin/cos table");
  }
  auto out = empty_output(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() > 0) {
    kernels::RopeArgs a{input.scalar_type(), cos.scalar_type(), x.data_ptr(), x_token_stride, x_head_stride,
                        out.data_ptr(), cs.data_ptr(), sn.data_ptr(), cs.stride(0),
                        rows.defined() ? rows.const_data_ptr<int64_t>() : nullptr, heads, head_dim,
                        rotary_dim, rotary_half,
                        active_isa() >= IsaLevel::kAvx512Bf16};
    parallel_rows(IPEX_PICK_ISA_KERNEL(rope_rows), a, tokens * heads, head_dim);
  }
  return out;
}

kernels::LayerNormArgs layer_norm_args(const char* op, const at::Tensor& input, at::IntArrayRef normalized_shape,
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps) {
  check_float_input(op, "input", input);
  TORCH_CHECK(normalized_shape.size() == 1 && input.dim() >= 1 && normalized_shape[0] == input.size(-1), op,
              ": normalized_shape must be the input's last dimension [", input.dim() ? input.size(-1) : 0,
              "]; got ", normalized_shape, " (normalising over several dimensions is not supported: reshape "
              "so they are one)");
  kernels::LayerNormArgs a{};
  a.dtype = input.scalar_type();
  a.param_dtype = input.scalar_type();
  a.n = input.size(-1);
  a.eps = static_cast<float>(eps);
  for (const auto* p : {&weight, &bias}) {
    if (p->has_value() && (*p)->defined()) {
      TORCH_CHECK((*p)->dim() == 1 && (*p)->size(0) == a.n, op, ": weight/bias must be 1-D of ", a.n,
                  " elements; got ", (*p)->sizes());
      TORCH_CHECK((*p)->scalar_type() == a.dtype || (*p)->scalar_type() == at::kFloat, op,
                  ": weight/bias dtype must be float32 or the input's (", a.dtype, "); got ",
                  (*p)->scalar_type());
      a.param_dtype = (*p)->scalar_type();
    }
  }
  return a;
}

std::tuple<at::Tensor, at::Tensor> layer_norm_impl(const char* op, const at::Tensor& input,
                                                   const std::optional<at::Tensor>& residual,
                                                   at::IntArrayRef normalized_shape,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps) {
  auto a = layer_norm_args(op, input, normalized_shape, weight, bias, eps);
  // (.to() only where the dtype differs: even a no-op .to() is a dispatcher call, and at one token
  // the whole op is a few microseconds)
  auto param = [&](const std::optional<at::Tensor>& p) {
    if (!p.has_value() || !p->defined()) return at::Tensor();
    return (p->scalar_type() == a.param_dtype ? *p : p->to(a.param_dtype)).contiguous();
  };
  const at::Tensor w = param(weight), b = param(bias);
  const auto x = rows_of(input);
  auto out = empty_output_like(input);
  at::Tensor res_out;
  if (residual.has_value()) {
    check_same_as(op, "residual", input, *residual);
    res_out = empty_output_like(input);
  }
  if (out.numel() > 0) {
    a.x = x.data;
    a.x_row_stride = x.stride;
    a.weight = w.defined() ? w.data_ptr() : nullptr;
    a.bias = b.defined() ? b.data_ptr() : nullptr;
    a.out = out.data_ptr();
    const auto r = residual.has_value() ? rows_of(*residual) : Rows{};
    if (residual.has_value()) {
      a.residual = r.data;
      a.residual_row_stride = r.stride;
      a.residual_out = res_out.data_ptr();
    }
    parallel_rows(IPEX_PICK_ISA_KERNEL(layer_norm_rows), a, x.count, a.n);
  }
  return {out, res_out};
}

at::Tensor layer_norm_cpu(const at::Tensor& input, at::IntArrayRef normalized_shape,
                          const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                          double eps) {
  return std::get<0>(layer_norm_impl("ipex::layer_norm", input, std::nullopt, normalized_shape, weight, bias, eps));
}

std::tuple<at::Tensor, at::Tensor> add_layer_norm_cpu(const at::Tensor& input, const at::Tensor& residual,
                                                      at::IntArrayRef normalized_shape,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias, double eps) {
  return layer_norm_impl("ipex::add_layer_norm", input, residual, normalized_shape, weight, bias, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  m.def("silu_mul(Tensor input, Tensor other) -> Tensor");                        // silu(input) * other
  m.def("gelu_mul(Tensor input, Tensor other, str approximate='none') -> Tensor");  // gelu(input) * other
  // Rotary embedding of one tensor ([tokens, heads, head_dim] or [batch, seq, heads, head_dim]).
  // sin/cos rows hold angles as cat(f, f) (transformers) or f alone; row i of
  // them serves token i, or position_ids[i] when given.
  m.def("rotary_embedding(Tensor input, Tensor sin, Tensor cos, int rotary_dim, bool rotary_half, "
        "Tensor? position_ids=None) -> Tensor");
  m.def("layer_norm(Tensor input, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  // s = input + residual; returns (layer_norm(s), s).
  m.def("add_layer_norm(Tensor input, Tensor residual, int[] normalized_shape, Tensor? weight, Tensor? bias, "
        "float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("silu_mul", &silu_mul_cpu);
  m.impl("gelu_mul", &gelu_mul_cpu);
  m.impl("rotary_embedding", &rotary_embedding_cpu);
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("add_layer_norm", &add_layer_norm_cpu);
}

}  // namespace ipex::core
