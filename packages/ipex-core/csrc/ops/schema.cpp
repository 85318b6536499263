// The one and only definition of the `ipex` op namespace. Backends (ours and
// third parties') add implementations with TORCH_LIBRARY_IMPL(ipex, <Key>, m)
// or torch.library.register_kernel; nobody else calls TORCH_LIBRARY(ipex, ...).
#include <torch/library.h>

TORCH_LIBRARY(ipex, m) {
  // y = x / sqrt(mean(x^2, -1) + eps) * weight, computed in fp32.
  m.def("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor");
  // s = input + residual (rounded to input's dtype); returns (rms_norm(s), s).
  m.def("add_rms_norm(Tensor input, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  // In place, as a decoder layer uses it: residual += input; input = rms_norm(residual).
  // No allocation, so no page faults on fresh output buffers at large token counts.
  m.def("add_rms_norm_(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()");
}
