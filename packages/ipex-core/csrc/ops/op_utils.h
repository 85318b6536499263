// Small tensor helpers shared by the ISA-neutral op files.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace ipex::core {

inline bool is_float_type(c10::ScalarType dt) {
  return dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf;
}

inline void check_float_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(is_float_type(t.scalar_type()), op, ": ", name,
              " dtype must be float32, bfloat16 or float16; got ", t.scalar_type(),
              ". Cast it first, e.g. x.to(torch.bfloat16)");
}

// `other` must match `input` in shape, dtype and device (residuals, gates).
inline void check_same_as(const char* op, const char* name, const at::Tensor& input,
                          const at::Tensor& other) {
  TORCH_CHECK(other.sizes() == input.sizes(), op, ": ", name, " shape ", other.sizes(),
              " must equal input shape ", input.sizes());
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), op, ": ", name, " dtype ",
              other.scalar_type(), " must equal input dtype ", input.scalar_type());
  TORCH_CHECK(other.device() == input.device(), op, ": ", name, " is on ", other.device(),
              " but input is on ", input.device(), "; move them to the same device");
}

// A [rows, n] view with unit stride along n (copying only when it must).
inline at::Tensor as_rows(const at::Tensor& t) {
  auto rows = t.reshape({-1, t.size(-1)});
  if (t.size(-1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

inline bool is_view_of(const at::Tensor& rows, const at::Tensor& t) {
  return rows.data_ptr() == t.data_ptr() && (t.size(-1) <= 1 || rows.stride(1) == 1);
}

inline at::Tensor empty_rows_like(const at::Tensor& t) {
  return at::empty({t.numel() / std::max<int64_t>(t.size(-1), 1), t.size(-1)},
                   t.options().memory_format(at::MemoryFormat::Contiguous));
}

// Run fn(args, begin, end) over rows with about 16K elements per task, enough
// work to amortise the fork.
template <typename Args>
void parallel_rows(void (*fn)(const Args&, int64_t, int64_t), const Args& args, int64_t rows,
                   int64_t row_elems) {
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_elems, 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { fn(args, b, e); });
}

}  // namespace ipex::core
