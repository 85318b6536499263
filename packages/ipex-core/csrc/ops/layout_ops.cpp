// ipex::to_memory_format: a 4-D / 5-D tensor copied between channels-first (contiguous) and
// channels-last memory by a blocked transpose (cpu/kernels/layout.cpp). PyTorch's own copy between
// the two (Tensor.contiguous(memory_format=...)) went element by element into channels-first (8-27%
// of copy bandwidth), and every oneDNN convolution in a model fed channels-first tensors pays one
// such copy back per call (ipex.optimize hands its outputs back in the caller's layout).
// benchmarks/bench_layout.py, Intel Xeon, 2 threads, cold: into channels-first 1.5-10x stock (fp32
// 1x256x56x56 2.97 -> 0.30 ms), into channels-last 1.6-2.3x for fp32 4-D and 1.2-2.1x for bf16,
// 0.91x for fp32 1x64x16x48x48 (5-D, four panels of channels).
#include "cpu/kernels/layout_kernels.h"
#include "ops/op_utils.h"

#include <ATen/Parallel.h>

#include <torch/library.h>

namespace ipex::core {

at::Tensor convert_memory_format(const at::Tensor& t, bool channels_last, bool always_copy) {
  const auto cl = t.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  const auto target = channels_last ? cl : at::MemoryFormat::Contiguous;
  const auto source = channels_last ? at::MemoryFormat::Contiguous : cl;
  // (an empty tensor is contiguous but need not be channels-last contiguous: nothing to transpose)
  if (t.is_contiguous(target) || t.numel() == 0) return always_copy ? t.clone(target) : t.contiguous(target);
  const auto es = t.element_size();
  if ((t.dim() != 4 && t.dim() != 5) || !t.is_cpu() || (es != 2 && es != 4) || !t.is_contiguous(source)) {
    return t.contiguous(target);  // layouts the transpose does not cover
  }
  const int64_t n = t.size(0), c = t.size(1), s = t.numel() / (n * c);  // numel > 0 here
  const int64_t rows = channels_last ? c : s;  // each image: [C, S] -> [S, C], or [S, C] -> [C, S]
  const int64_t panels = (rows + kernels::kTransposePanel - 1) / kernels::kTransposePanel;
  // Work items are panels of 16 rows: fewer than the threads (an RGB image into channels-last: one
  // panel) would run on one thread, mostly on empty rows.
  if (n * panels < at::get_num_threads()) return t.contiguous(target);
  auto out = empty_output(t.sizes(), t.options().memory_format(target));
  kernels::TransposeArgs a{};
  a.elem_bytes = static_cast<int64_t>(es);
  a.in = t.data_ptr();
  a.out = out.data_ptr();
  a.rows = rows;
  a.cols = channels_last ? s : c;
  a.panels = panels;
  parallel_rows(IPEX_PICK_ISA_KERNEL(transpose_panels), a, n * a.panels, kernels::kTransposePanel * a.cols);
  return out;
}

namespace {

at::Tensor to_memory_format_cpu(const at::Tensor& input, bool channels_last) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5, "ipex::to_memory_format: input must be 4-D [N, C, H, W] or "
              "5-D [N, C, D, H, W] (the shapes with a channels-last memory format); got shape ", input.sizes());
  return convert_memory_format(input, channels_last, /*always_copy=*/true);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipex, m) {
  // A copy of input in channels-last (channels_last=True: torch.channels_last / channels_last_3d) or
  // contiguous memory; the same values, a new tensor even where input is in that format already.
  m.def("to_memory_format(Tensor input, bool channels_last) -> Tensor");
}

TORCH_LIBRARY_IMPL(ipex, CPU, m) { m.impl("to_memory_format", &to_memory_format_cpu); }

}  // namespace ipex::core
