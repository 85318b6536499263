// Thread binding for ipex.cpu.runtime on the OpenMP runtime torch ships.
//
// This file is compiled with -fopenmp and linked against torch's own
// libgomp.so.1 (see CMakeLists.txt). Loaded after `import torch`, its
// `#pragma omp parallel` regions therefore run on the very thread pool that
// torch's intra-op work (at::parallel_for, oneDNN, MKL) runs on from the same
// calling thread: GNU OpenMP keeps one pool per calling ("master") thread, so
// binding the team of a region started here binds the threads torch computes on.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pybind11 {
class module_;
}

namespace ipex::core::runtime {

using CpuList = std::vector<int>;

// CPU list of each thread (index = OpenMP thread number, 0 = the caller) of a
// team of `num_threads` started from the calling thread.
std::vector<CpuList> omp_team_affinity(int num_threads);

// Binds the calling thread to cpu_lists[0] first (threads GNU OpenMP creates
// later inherit the creator's mask), then runs a team of cpu_lists.size()
// threads and binds thread i to cpu_lists[i]. Returns the kernel thread ids.
std::vector<int64_t> bind_omp_team(const std::vector<CpuList>& cpu_lists);

// Thread-local intra-op thread count of the calling thread: OpenMP's
// nthreads-var and MKL's thread-local count (0 = follow MKL's global setting).
// Returns the previous pair, so that passing it back restores the state.
// Unlike torch.set_num_threads this leaves other threads' defaults alone.
std::pair<int, int> set_intraop_threads(int omp_threads, int mkl_threads);

// Kernel thread ids of the threads at::parallel_for runs its chunks on when
// called from this thread (one chunk per thread, index = chunk).
std::vector<int64_t> intraop_thread_ids();

// Path of the OpenMP library these helpers call.
std::string openmp_library();

// Whether binding works in this process, and why (not).
std::pair<bool, std::string> runtime_ext_status();

// Registers the helpers above on ipex_core._C.
void init_bindings(pybind11::module_& m);

}  // namespace ipex::core::runtime
