// The Python module ipex_core._C. Loading it registers every ipex:: op with the
// dispatcher (static TORCH_LIBRARY initialisers in the ops files); the Python
// functions here are the small non-tensor helpers.
#include "cpu/isa.h"
#include "cpu/kernels/kernel_table.h"
#include "ops/op_utils.h"

#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace ipex::core::runtime {
void init_bindings(py::module_& m);  // csrc/runtime/thread_binding.cpp (ipex.cpu.runtime)
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "ipex-core native kernels (ops live under torch.ops.ipex)";
  m.def("cpu_features", &ipex::core::cpu_features,
        "CPU feature flags from cpuid/XCR0, AMX only if the kernel granted tile data");
  m.def("max_isa", [] { return ipex::core::isa_name(ipex::core::max_supported_isa()); },
        "Highest ISA level this CPU supports");
  m.def("active_isa", [] { return ipex::core::isa_name(ipex::core::active_isa()); },
        "ISA level kernels currently run at");
  m.def("set_isa",
        [](const std::string& level) {
          try {
            ipex::core::set_active_isa(level);
          } catch (const c10::Error& e) {
            throw py::value_error(e.what_without_backtrace());
          }
        },
        py::arg("level"),
        "Force kernels to an ISA level at or below max_isa()");
  m.def("kernel_isa", [] { return std::string(ipex::core::kernels::active_kernel_variant()); },
        "ISA of the compiled kernel table in use for element-wise kernels");
  m.def("linear_vnni_factor",
        [](const std::string& dtype) -> int64_t {
          if (dtype == "bfloat16") return ipex::core::linear_vnni_factor(at::kBFloat16);
          if (dtype == "float16") return ipex::core::linear_vnni_factor(at::kHalf);
          return ipex::core::linear_vnni_factor(at::kFloat);
        },
        py::arg("dtype"), "k-grouping factor V of ipex's packed linear weight layout for a dtype");
  ipex::core::runtime::init_bindings(m);
  m.attr("built_with_torch") = IPEX_TORCH_VERSION;
}
