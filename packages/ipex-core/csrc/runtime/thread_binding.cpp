// Thread binding for ipex.cpu.runtime. Compiled with -fopenmp (CMakeLists.txt):
// the parallel regions below must run on torch's OpenMP pool, see the header.
#include "runtime/thread_binding.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

// MKL keeps its own thread count next to OpenMP's; torch.set_num_threads sets
// it per thread through mkl_set_num_threads_local, which mkl_service.h maps to
// this C entry point (the plain lowercase export is the Fortran one, taking a
// pointer). Weak: a torch without MKL simply lacks it.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace ipex::core::runtime {
namespace {

namespace py = pybind11;

constexpr int kMaxCpuId = 1 << 20;

int64_t current_tid() { return static_cast<int64_t>(syscall(SYS_gettid)); }

// Dynamically sized mask: glibc's fixed cpu_set_t stops at 1024 CPUs.
class CpuMask {
 public:
  explicit CpuMask(size_t ncpus) : ncpus_(ncpus), bytes_(CPU_ALLOC_SIZE(ncpus)), set_(CPU_ALLOC(ncpus)) {
    if (set_ == nullptr) throw std::bad_alloc();
    CPU_ZERO_S(bytes_, set_);
  }
  ~CpuMask() { CPU_FREE(set_); }
  CpuMask(const CpuMask&) = delete;
  CpuMask& operator=(const CpuMask&) = delete;

  size_t ncpus() const { return ncpus_; }
  size_t bytes() const { return bytes_; }
  cpu_set_t* get() { return set_; }

 private:
  size_t ncpus_;
  size_t bytes_;
  cpu_set_t* set_;
};

size_t mask_capacity(int min_cpus = 0) {
  long conf = sysconf(_SC_NPROCESSORS_CONF);
  size_t n = std::max<size_t>(1024, conf > 0 ? static_cast<size_t>(conf) : 0);
  return std::max(n, static_cast<size_t>(min_cpus));
}

// Calling thread's CPU list; returns 0 or an errno value (no throwing: this
// also runs inside parallel regions).
int get_thread_affinity(CpuList& out) {
  for (size_t n = mask_capacity(); n <= static_cast<size_t>(kMaxCpuId); n *= 2) {
    CpuMask mask(n);
    if (sched_getaffinity(0, mask.bytes(), mask.get()) == 0) {
      out.clear();
      for (size_t c = 0; c < mask.ncpus(); ++c) {
        if (CPU_ISSET_S(c, mask.bytes(), mask.get())) out.push_back(static_cast<int>(c));
      }
      return 0;
    }
    if (errno != EINVAL) return errno;  // EINVAL: the kernel's mask is wider, retry
  }
  return EINVAL;
}

int set_thread_affinity(const CpuList& cpus) {
  CpuMask mask(mask_capacity(*std::max_element(cpus.begin(), cpus.end()) + 1));
  for (int c : cpus) CPU_SET_S(static_cast<size_t>(c), mask.bytes(), mask.get());
  return sched_setaffinity(0, mask.bytes(), mask.get()) == 0 ? 0 : errno;
}

std::string format_cpus(const CpuList& cpus) {
  std::string s = "[";
  for (size_t i = 0; i < cpus.size(); ++i) s += (i ? ", " : "") + std::to_string(cpus[i]);
  return s + "]";
}

void validate_cpu_list(const CpuList& cpus, size_t index) {
  if (cpus.empty()) {
    throw std::invalid_argument("CPU list " + std::to_string(index) +
                                " is empty: every thread needs at least one CPU to run on");
  }
  for (int c : cpus) {
    if (c < 0 || c >= kMaxCpuId) {
      throw std::invalid_argument("CPU id " + std::to_string(c) + " in CPU list " + std::to_string(index) +
                                  " is out of range: CPU ids are the non-negative numbers of "
                                  "/sys/devices/system/cpu/cpuN");
    }
  }
}

// Parallel regions started from inside another one are nested teams with
// their own threads, not the pool torch computes on.
void check_not_nested(const char* what) {
  if (omp_in_parallel()) {
    throw std::runtime_error(std::string(what) +
                             " was called from inside an OpenMP parallel region; call it from the thread that "
                             "launches torch work, outside any parallel region");
  }
}

void check_team_size(int got, int want) {
  if (got != want) {
    throw std::runtime_error("OpenMP started " + std::to_string(got) + " threads instead of " +
                             std::to_string(want) +
                             ", so part of the thread pool could not be reached. OMP_DYNAMIC=true or "
                             "OMP_THREAD_LIMIT below " + std::to_string(want) +
                             " cause this: unset OMP_DYNAMIC and OMP_THREAD_LIMIT");
  }
}

// Runs per_thread(i) on OpenMP thread i of a team of n started from the
// caller, and returns the thread ids. per_thread runs inside the parallel
// region, so it reports errors by value instead of throwing.
template <class F>
std::vector<int64_t> on_team(int n, const F& per_thread) {
  std::vector<int64_t> tids(n, -1);
  int team = 0;
#pragma omp parallel num_threads(n)
  {
    const int i = omp_get_thread_num();
    if (i == 0) team = omp_get_num_threads();
    tids[i] = current_tid();
    per_thread(i);
  }
  check_team_size(team, n);
  return tids;
}

void check_affinity_result(int err, const char* action, int thread, int64_t tid, const CpuList* cpus) {
  if (err == 0) return;
  std::string msg = std::string(action) + " OpenMP thread " + std::to_string(thread) + " (tid " +
                    std::to_string(tid) + ")";
  if (cpus != nullptr) msg += " to CPUs " + format_cpus(*cpus);
  msg += " failed: " + std::string(std::strerror(err));
  if (err == EINVAL && cpus != nullptr) {
    msg += ". None of these CPUs is allowed for this process (see os.sched_getaffinity(0); taskset, numactl "
           "and cgroup cpusets restrict it): use CPUs from that set";
  }
  throw std::runtime_error(msg);
}

// torch initialises a thread's OpenMP count lazily, at its first parallel
// call, from the process-wide torch.set_num_threads value. Trigger that now
// (in torch's copy of the lazy-init flag and in ours) so it cannot later
// overwrite a thread-local count set here.
void init_torch_thread_state() {
  at::internal::lazy_init_num_threads();
  (void)at::get_num_threads();
}

}  // namespace

std::vector<CpuList> omp_team_affinity(int num_threads) {
  if (num_threads < 1) {
    throw std::invalid_argument("num_threads must be at least 1, got " + std::to_string(num_threads));
  }
  check_not_nested("omp_team_affinity");
  std::vector<CpuList> cpus(num_threads);
  std::vector<int> errs(num_threads, 0);
  auto tids = on_team(num_threads, [&](int i) { errs[i] = get_thread_affinity(cpus[i]); });
  for (int i = 0; i < num_threads; ++i) check_affinity_result(errs[i], "reading the CPU mask of", i, tids[i], nullptr);
  return cpus;
}

std::vector<int64_t> bind_omp_team(const std::vector<CpuList>& cpu_lists) {
  if (cpu_lists.empty()) throw std::invalid_argument("bind_omp_team needs one CPU list per thread, got none");
  for (size_t i = 0; i < cpu_lists.size(); ++i) validate_cpu_list(cpu_lists[i], i);
  check_not_nested("bind_omp_team");
  const int n = static_cast<int>(cpu_lists.size());
  // The caller first: GNU OpenMP creates missing pool threads from the caller
  // (and re-creates them after a smaller team shrank the pool), and a new
  // thread starts with its creator's mask.
  check_affinity_result(set_thread_affinity(cpu_lists[0]), "binding", 0, current_tid(), &cpu_lists[0]);
  std::vector<int> errs(n, 0);
  auto tids = on_team(n, [&](int i) { errs[i] = set_thread_affinity(cpu_lists[i]); });
  for (int i = 0; i < n; ++i) check_affinity_result(errs[i], "binding", i, tids[i], &cpu_lists[i]);
  return tids;
}

std::pair<int, int> set_intraop_threads(int omp_threads, int mkl_threads) {
  if (omp_threads < 1) {
    throw std::invalid_argument("omp_threads must be at least 1, got " + std::to_string(omp_threads));
  }
  if (mkl_threads < 0) {
    throw std::invalid_argument("mkl_threads must be 0 (MKL's global setting) or more, got " +
                                std::to_string(mkl_threads));
  }
  init_torch_thread_state();
  const int previous_omp = omp_get_max_threads();
  omp_set_num_threads(omp_threads);
  int previous_mkl = 0;
  if (MKL_Set_Num_Threads_Local != nullptr) previous_mkl = MKL_Set_Num_Threads_Local(mkl_threads);
  return {previous_omp, previous_mkl};
}

std::vector<int64_t> intraop_thread_ids() {
  init_torch_thread_state();
  const int n = at::get_num_threads();
  std::vector<int64_t> tids(n, -1);
  // n items with grain 1: at::parallel_for gives thread i exactly item i.
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) tids[i] = current_tid();
  });
  return tids;
}

std::string openmp_library() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&omp_get_num_threads), &info) != 0 && info.dli_fname != nullptr) {
    return info.dli_fname;
  }
  return "";
}

std::pair<bool, std::string> runtime_ext_status() {
#if !AT_PARALLEL_OPENMP
  return {false,
          "torch was built with a non-OpenMP intra-op backend, so its worker threads cannot be reached from an "
          "OpenMP region: use a torch build whose torch.__config__.parallel_info() says 'OpenMP'"};
#else
  if (omp_in_parallel()) return {false, "asked from inside an OpenMP parallel region"};
  // Same runtime <=> a count set through our OpenMP calls is the count torch
  // reads through its own. Thread-local and undone right away.
  init_torch_thread_state();
  const int before = omp_get_max_threads();
  omp_set_num_threads(before + 1);
  const int seen_by_torch = at::get_num_threads();
  omp_set_num_threads(before);
  if (seen_by_torch != before + 1) {
    return {false, "ipex-core's OpenMP runtime (" + openmp_library() +
                       ") is not the one torch runs on, so binding would reach other threads than torch's. "
                       "Rebuild ipex-core against this torch: pip install --no-build-isolation --force-reinstall "
                       "./packages/ipex-core"};
  }
  CpuList cpus;
  int err = get_thread_affinity(cpus);
  if (err == 0) err = set_thread_affinity(cpus);  // a no-op change: is setting allowed at all?
  if (err != 0) {
    return {false, "sched_setaffinity is not permitted for this process (" + std::string(std::strerror(err)) +
                       "); a seccomp profile or container policy forbids it: allow sched_setaffinity"};
  }
  return {true, "threads are bound through " + openmp_library() + ", the OpenMP runtime torch uses"};
#endif
}

void init_bindings(py::module_& m) {
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("omp_team_affinity", &omp_team_affinity, py::arg("num_threads"), release(),
        "CPU list of each thread (0 = caller) of an OpenMP team of num_threads started from this thread");
  m.def("bind_omp_team", &bind_omp_team, py::arg("cpu_lists"), release(),
        "Bind this thread to cpu_lists[0], then OpenMP thread i of a team of len(cpu_lists) to cpu_lists[i]; "
        "returns the thread ids");
  m.def("set_intraop_threads", &set_intraop_threads, py::arg("omp_threads"), py::arg("mkl_threads"),
        "Set this thread's intra-op thread count (OpenMP, MKL; 0 = MKL global); returns the previous pair");
  m.def("intraop_thread_ids", &intraop_thread_ids, release(),
        "Thread ids at::parallel_for runs on from this thread, one per intra-op thread");
  m.def("openmp_library", &openmp_library, "Path of the OpenMP runtime ipex-core binds threads through");
  m.def("runtime_ext_status", &runtime_ext_status,
        "(enabled, reason): whether ipex.cpu.runtime can bind torch's threads in this process");
}

}  // namespace ipex::core::runtime
