// Small tensor helpers shared by the ISA-neutral op files.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// The product of t's sizes before its last `trailing` dims: the row count of a reshape to
// [rows, *last dims], which reshape({-1, ...}) cannot infer when the last dims hold 0 elements.
inline int64_t leading_count(const at::Tensor& t, int64_t trailing) {
  int64_t n = 1;
  for (int64_t i = 0; i < t.dim() - trailing; ++i) n *= t.size(i);
  return n;
}

// A [rows, n] view with unit stride along n (copying only when it must).
inline at::Tensor as_rows(const at::Tensor& t) {
  auto rows = t.reshape({leading_count(t, 1), t.size(-1)});
  if (t.size(-1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

// The rows of a [..., n] tensor as a pointer, a count and a stride. A contiguous tensor (the common
// case) is read where it is, without a 2-D view: a view is a dispatcher call and a new TensorImpl,
// about a tenth of a 1-token norm's time. `keep` holds the tensor the pointer is into.
struct Rows {
  at::Tensor keep;
  void* data;
  int64_t count;
  int64_t stride;  // elements between rows
};

inline Rows rows_of_2d(const at::Tensor& rows) {  // a [rows, n] tensor with unit stride along n
  return {rows, rows.data_ptr(), rows.size(0), rows.stride(0)};
}

inline Rows rows_of(const at::Tensor& t) {
  if (t.is_contiguous()) return {t, t.data_ptr(), leading_count(t, 1), t.size(-1)};
  return rows_of_2d(as_rows(t));
}

// k-grouping factor V of ipex's packed linear weight layout for a dtype: 2 where oneDNN's brgemm
// reads k-pairs (VNNI: bf16, and fp16 where brgemm packs it), 1 for plain rows.
inline int64_t linear_vnni_factor(c10::ScalarType dt) {
  if (dt == at::kBFloat16) return 2;
  if (dt == at::kHalf) return at::native::cpublas::could_pack(at::kHalf) ? 2 : 1;
  return 1;
}

// A tensor an op writes into (out=, in-place, caches) whose elements share memory (an expanded,
// stride-0 view): every row written there overwrote the others, silently (add_rms_norm_ on an
// expanded residual, varlen_attention into an expanded out). Refused, as torch's in-place ops do.
inline void check_writable(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name,
              " is written to, but several of its elements share one memory location (an expanded or "
              "stride-0 view); pass a tensor with its own storage per element, e.g. ", name, ".clone()");
}

inline bool is_view_of(const at::Tensor& rows, const at::Tensor& t) {
  return rows.data_ptr() == t.data_ptr() && (t.size(-1) <= 1 || rows.stride(1) == 1);
}

// Outputs of 32 MiB and more come from a fresh mmap on every call (glibc's
// dynamic mmap threshold stops growing at 32 MiB), so the kernel's first writes
// fault them in 4 KiB at a time: 8,192 faults for a 2048x4096 fp32 output, which
// made such an op 3x slower than its memory traffic (a fresh 32 MiB fill: 11.6
// ms, 4.9 ms with huge pages). Where transparent huge pages are in `madvise`
// mode, asking for them on that new mapping faults 2 MiB at a time (interleaved:
// fp32 rms_norm 2048x4096 14.5 -> 6.7 ms, bf16 silu_mul 2048x11008 31 -> 18 ms).
// Advice on our own new allocation only, nothing process-wide; failure is
// harmless. IPEX_HUGE_PAGE_OUTPUTS=0 turns it off.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  constexpr size_t kMinBytes = size_t{32} << 20;
  const size_t n = t.nbytes();
  static const bool enabled = [] {
    // Read as ipex_core.env.get_bool reads booleans: 0/false/no/off (any case) turn it off.
    const char* e = std::getenv("IPEX_HUGE_PAGE_OUTPUTS");
    if (e == nullptr) return true;
    std::string v(e);
    for (auto& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return !(v == "0" || v == "false" || v == "no" || v == "off");
  }();
  if (!enabled || n < kMinBytes || !t.is_cpu()) return;
  const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + n) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// A new output tensor (see advise_huge_pages).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

// A new contiguous output shaped like t (see empty_output); its rows are t.size(-1) apart.
inline at::Tensor empty_output_like(const at::Tensor& t) {
  return empty_output(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

inline at::Tensor empty_rows_like(const at::Tensor& t) {
  return empty_output({leading_count(t, 1), t.size(-1)},
                      t.options().memory_format(at::MemoryFormat::Contiguous));
}

// A grow-only scratch buffer, kept by one thread (thread_local) across calls. 64-byte aligned (new[]
// and std::vector give 16: every vector load and store of a row then spans two cache lines), and
// from 2 MiB up aligned to 2 MiB and advised into transparent huge pages: the Winograd transforms
// stride over 36 planes per tile, and on 4 KiB pages ResNet-50's 56x56x64 layer took 0.70 ms until
// the kernel happened to collapse the buffer, 0.37 ms after. A fresh buffer per call instead was
// faulted in page by page at every call (that layer: 2.4 ms against 1.4 ms with a reused one).
class ScratchBuffer {
 public:
  template <typename T>
  T* get(int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    if (bytes > capacity_) {
      constexpr size_t kHuge = size_t{2} << 20;
      const size_t align = bytes >= kHuge ? kHuge : 64;
      const size_t size = (bytes + align - 1) / align * align;
      data_.reset();  // free the old one first
      void* p = std::aligned_alloc(align, size);
      TORCH_CHECK(p != nullptr, "ipex: cannot allocate ", size, " bytes of scratch memory");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (align == kHuge) madvise(p, size, MADV_HUGEPAGE);  // advice only
#endif
      data_.reset(p);
      capacity_ = size;
    }
    return static_cast<T*>(data_.get());
  }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> data_;
  size_t capacity_ = 0;
};

// t in channels-last (channels_last=true: ChannelsLast / ChannelsLast3d by t.dim()) or contiguous
// memory: t itself where it is in that format already (a clone if always_copy), else a copy, by
// ipex's blocked transpose from the other of the two formats (ops/layout_ops.cpp).
at::Tensor convert_memory_format(const at::Tensor& t, bool channels_last, bool always_copy = false);

// Run fn(args, begin, end) over rows with about 16K elements per task, enough
// work to amortise the fork.
template <typename Args>
void parallel_rows(void (*fn)(const Args&, int64_t, int64_t), const Args& args, int64_t rows,
                   int64_t row_elems) {
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_elems, 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { fn(args, b, e); });
}

}  // namespace ipex::core
