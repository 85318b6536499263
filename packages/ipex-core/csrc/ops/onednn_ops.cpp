// ipex::onednn_linear, ipex::onednn_linear_binary, ipex::onednn_conv_binary and
// ipex::onednn_conv_transpose: the kernels of ipex.optimize's prepacked
// modules, on oneDNN through the kernels torch ships (mkldnn::_linear_pointwise,
// its .binary overload, mkldnn::_convolution_pointwise.binary and
// mkldnn::_convolution_transpose_pointwise).
//
// Why wrappers at all, for torch.compile(ipex.optimize(model)):
// - inductor's freezing passes assume every mkldnn::_linear_pointwise node in a
//   graph is one they created from an aten.mm (they look for the aten.permute
//   feeding the weight) and fail on a call written by the user;
// - torch registers no fake (meta) kernel for the .binary convolution (dynamo
//   breaks the graph there), and the transposed convolution's meta kernel
//   reports contiguous strides where the kernel writes channels-last.
// Behind an ipex:: name, with fake kernels in ipex_core/ops/onednn.py, each
// call is an opaque extern kernel to inductor: no graph break, with or without
// freezing. The unary convolution (mkldnn::_convolution_pointwise.default) has
// both a meta kernel and an inductor lowering, so modules call it directly.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string_view>

namespace ipex::core {
namespace {

using Scalars = c10::List<std::optional<at::Scalar>>;

// torch's own answer to "does oneDNN run this dtype here" (the mkldnn::_is_mkldnn_*_supported
// ops): without it a float16 call on a CPU lacking AVX512-FP16 / AVX-NE-CONVERT fails deep in
// oneDNN with "could not create a primitive descriptor".
void check_dtype_supported(const char* op, at::ScalarType dt) {
  if (dt != at::kBFloat16 && dt != at::kHalf) return;
  static const bool bf16 = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "").typed<bool()>().call();
  static const bool fp16 = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_is_mkldnn_fp16_supported", "").typed<bool()>().call();
  TORCH_CHECK(dt == at::kBFloat16 ? bf16 : fp16, op, ": oneDNN has no ", dt, " kernels on this CPU (",
              dt == at::kBFloat16 ? "needs AVX-512 or AMX" : "needs AVX512-FP16, AVX-NE-CONVERT or AMX-FP16",
              "); run this layer in float32 or ", dt == at::kHalf ? "bfloat16" : "float32");
}

void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op,
              ": runs on CPU tensors only; got input on ", input.device(), " and weight on ",
              weight.device());
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension; got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features] (dense or "
              "packed by torch.ops.mkldnn._reorder_linear_weight); got shape ", weight.sizes());
  TORCH_CHECK(input.size(-1) == weight.size(1), op, ": input has ", input.size(-1),
              " features in its last dimension but the weight expects ", weight.size(1));
  auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": input dtype must be float32, bfloat16 or float16; got ", dt);
  TORCH_CHECK(weight.scalar_type() == dt, op, ": input dtype ", dt, " differs from weight dtype ",
              weight.scalar_type(), "; cast the input first, e.g. x.to(", weight.scalar_type(), ")");
  check_dtype_supported(op, dt);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must be 1-D with out_features (", weight.size(0), ") elements; got shape ",
                bias->sizes());
  }
}

// oneDNN reads the activation as rows; a strided view would be copied inside
// anyway, so make the copy explicit and keep the fast path allocation-free.
at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.is_contiguous() ? t : t.contiguous();
}

at::Tensor onednn_linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, c10::string_view attr,
                             Scalars scalars, std::optional<c10::string_view> algorithm) {
  check_linear_args("ipex::onednn_linear", input, weight, bias);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         Scalars, std::optional<c10::string_view>)>();
  return op.call(rows_contiguous(input), weight, bias, attr, std::move(scalars), algorithm);
}

at::Tensor onednn_linear_binary_cpu(const at::Tensor& input, const at::Tensor& other,
                                    const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                    c10::string_view attr) {
  check_linear_args("ipex::onednn_linear_binary", input, weight, bias);
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = weight.size(0);
  TORCH_CHECK(other.sizes() == at::IntArrayRef(out_shape), "ipex::onednn_linear_binary: other must "
              "have the output's shape ", at::IntArrayRef(out_shape), " (no broadcasting); got ",
              other.sizes());
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), "ipex::onednn_linear_binary: other dtype ",
              other.scalar_type(), " differs from input dtype ", input.scalar_type());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(rows_contiguous(input), rows_contiguous(other), weight, bias, attr);
}

using IntList = c10::ArrayRef<int64_t>;

void check_conv_args(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op,
              ": runs on CPU tensors only; got input on ", input.device(), " and weight on ",
              weight.device());
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5, op, ": input must be 4-D (N, C, H, W) or 5-D "
              "(N, C, D, H, W); got ", input.dim(), "-D. A Conv1d runs as a 2-D convolution with H=1.");
  TORCH_CHECK(weight.dim() == input.dim(), op, ": weight must have as many dimensions as the input (",
              input.dim(), "); got shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": input dtype ", input.scalar_type(),
              " differs from weight dtype ", weight.scalar_type(), "; cast the input first");
  check_dtype_supported(op, input.scalar_type());
}

at::Tensor onednn_conv_binary_cpu(const at::Tensor& input, const at::Tensor& other,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  IntList padding, IntList stride, IntList dilation, int64_t groups,
                                  c10::string_view binary_attr, c10::string_view unary_attr) {
  check_conv_args("ipex::onednn_conv_binary", input, weight);
  TORCH_CHECK(other.dim() == input.dim() && other.scalar_type() == input.scalar_type(),
              "ipex::onednn_conv_binary: other must have the output's rank and the input's dtype; got ",
              other.sizes(), " ", other.scalar_type());
  // torch fuses only ungrouped convolutions; its unfused fallback has no bf16 add+relu.
  TORCH_CHECK(groups == 1, "ipex::onednn_conv_binary: oneDNN fuses the binary post-op into ungrouped "
              "convolutions only; got groups=", groups, ". Run the convolution and the ", binary_attr,
              " separately");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, IntList, IntList, IntList,
                                         int64_t, c10::string_view, std::optional<at::Scalar>,
                                         std::optional<c10::string_view>, Scalars,
                                         std::optional<c10::string_view>)>();
  std::optional<c10::string_view> unary;
  if (unary_attr != "none") unary = unary_attr;
  return op.call(input, other, weight, bias, padding, stride, dilation, groups, binary_attr,
                 std::nullopt, unary, Scalars(), std::nullopt);
}

// other = unary_attr(conv(input, W) + bias + other), written in place: oneDNN's
// sum post-op accumulates into the residual buffer (no output allocation).
void onednn_conv_add__cpu(at::Tensor& other, const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, IntList padding,
                                 IntList stride, IntList dilation, int64_t groups,
                                 c10::string_view unary_attr) {
  check_conv_args("ipex::onednn_conv_add_", input, weight);
  auto cl = input.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  // torch's unfused fallback for a non-channels-last residual has no bf16 add+relu: refuse it.
  TORCH_CHECK(other.dim() == input.dim() && other.is_contiguous(cl) &&
                  other.scalar_type() == input.scalar_type(),
              "ipex::onednn_conv_add_: other (the residual written in place) must be a channels-last ",
              input.scalar_type(), " tensor of the output's shape; got ", other.sizes(), " ",
              other.scalar_type(), " with strides ", other.strides(),
              ". Use ipex::onednn_conv_binary for other layouts");
  // Either makes torch take its fused (channels-last) path.
  TORCH_CHECK(weight.is_mkldnn() || input.is_contiguous(cl), "ipex::onednn_conv_add_: pack the weight "
              "(torch.ops.mkldnn._reorder_convolution_weight) or pass a channels-last input");
  TORCH_CHECK(unary_attr == "none" || unary_attr == "relu", "ipex::onednn_conv_add_: unary_attr must "
              "be 'none' or 'relu'; got '", unary_attr, "'");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary")
                       .typed<at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&, IntList, IntList, IntList,
                                          int64_t, c10::string_view, std::optional<at::Scalar>,
                                          std::optional<c10::string_view>, Scalars,
                                          std::optional<c10::string_view>)>();
  std::optional<c10::string_view> unary;
  if (unary_attr != "none") unary = unary_attr;
  op.call(other, input, weight, bias, padding, stride, dilation, groups, "add", std::nullopt, unary,
          Scalars(), std::nullopt);
}

at::Tensor onednn_conv_transpose_cpu(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, IntList padding,
                                     IntList output_padding, IntList stride, IntList dilation,
                                     int64_t groups, c10::string_view attr, Scalars scalars,
                                     std::optional<c10::string_view> algorithm) {
  check_conv_args("ipex::onednn_conv_transpose", input, weight);
  TORCH_CHECK(weight.is_mkldnn(), "ipex::onednn_conv_transpose: the weight must be packed by "
              "torch.ops.mkldnn._reorder_convolution_transpose_weight (its logical shape is "
              "[out_channels, in_channels / groups, k...]); got a dense tensor");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_convolution_transpose_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, IntList, IntList, IntList,
                                         IntList, int64_t, c10::string_view, Scalars,
                                         std::optional<c10::string_view>)>();
  return op.call(input, weight, bias, padding, output_padding, stride, dilation, groups, attr,
                 std::move(scalars), algorithm);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // unary_attr(conv(input, W) + bias <binary_attr> other): binary_attr add, sub,
  // mul or div; unary_attr none or relu; other has the output's shape. W dense
  // or packed by mkldnn::_reorder_convolution_weight. Output channels-last.
  // flexible_layout (here and on the other convolutions whose output is channels-last whatever the input's
  // layout): under torch.compile inductor passes the input in the layout it has. With the default (the
  // strides eager tracing saw) a channels-last activation was copied to NCHW, and the kernel copied it back.
  m.def("onednn_conv_binary(Tensor input, Tensor other, Tensor weight, Tensor? bias, int[] padding, "
        "int[] stride, int[] dilation, int groups, str binary_attr, str unary_attr) -> Tensor",
        {at::Tag::flexible_layout});
  // In place: other = unary_attr(conv(input, W) + bias + other), other
  // channels-last, W packed; unary_attr none or relu. Returns nothing (a
  // custom op may not return an alias; functionalization tracks the mutation).
  m.def("onednn_conv_add_(Tensor(a!) other, Tensor input, Tensor weight, Tensor? bias, int[] padding, "
        "int[] stride, int[] dilation, int groups, str unary_attr) -> ()");
  // attr(conv_transpose(input, W) + bias), W packed by
  // mkldnn::_reorder_convolution_transpose_weight. Output channels-last.
  m.def("onednn_conv_transpose(Tensor input, Tensor weight, Tensor? bias, int[] padding, "
        "int[] output_padding, int[] stride, int[] dilation, int groups, str attr, Scalar?[] scalars, "
        "str? algorithm) -> Tensor",
        {at::Tag::flexible_layout});
  // attr(input @ W^T + bias). W: [out, in], dense or packed by
  // mkldnn::_reorder_linear_weight. attr: none, relu, gelu (algorithm 'none'
  // or 'tanh'), swish (= SiLU), sigmoid, tanh, hardswish, hardsigmoid,
  // leaky_relu (scalars [slope]), hardtanh (scalars [min, max]).
  m.def("onednn_linear(Tensor input, Tensor weight, Tensor? bias, str attr, "
        "Scalar?[] scalars, str? algorithm) -> Tensor");
  // (input @ W^T + bias) <attr> other, attr one of add, sub, mul, div; other
  // has the output's shape.
  m.def("onednn_linear_binary(Tensor input, Tensor other, Tensor weight, Tensor? bias, "
        "str attr='add') -> Tensor");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) {
  m.impl("onednn_linear", &onednn_linear_cpu);
  m.impl("onednn_linear_binary", &onednn_linear_binary_cpu);
  m.impl("onednn_conv_binary", &onednn_conv_binary_cpu);
  m.impl("onednn_conv_add_", &onednn_conv_add__cpu);
  m.impl("onednn_conv_transpose", &onednn_conv_transpose_cpu);
}

// A packed weight is an opaque mkldnn tensor, which dispatches to MkldnnCPU.
TORCH_LIBRARY_IMPL(ipex, MkldnnCPU, m) {
  m.impl("onednn_linear", &onednn_linear_cpu);
  m.impl("onednn_linear_binary", &onednn_linear_binary_cpu);
  m.impl("onednn_conv_binary", &onednn_conv_binary_cpu);
  m.impl("onednn_conv_add_", &onednn_conv_add__cpu);
  m.impl("onednn_conv_transpose", &onednn_conv_transpose_cpu);
}

}  // namespace ipex::core
