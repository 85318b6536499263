// The ipex ops are inference kernels: none has a backward. Without an Autograd
// kernel, an input that requires grad gave an output detached from it, so
// backward() left the gradients silently None (PyTorch only warned). PyTorch's
// not-implemented fallback keeps the graph and raises "derivative for ipex::<op>
// is not implemented" if a backward reaches the op; for inputs that do not
// require grad it only redispatches (measured: rms_norm 1x2048 bf16 under
// no_grad, 3.4 us per call before and after).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(ipex, Autograd, m) {
  for (const char* op : {"add_layer_norm", "add_rms_norm", "add_rms_norm_", "conv1x1", "conv1x1_add_",
                         "conv3x3_winograd", "gelu_mul", "iakv_attention", "iakv_attention.offset_tensor",
                         "layer_norm", "linear", "linear_pair_silu_mul",
                         "onednn_conv_add_", "onednn_conv_binary", "onednn_conv_transpose", "onednn_linear",
                         "onednn_linear_binary", "paged_attention_decode", "reshape_and_cache", "rms_norm",
                         "rotary_embedding", "silu_mul", "to_memory_format", "varlen_attention"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
