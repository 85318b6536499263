// CPU feature probe and ISA-level selection for ipex-core kernels.
#pragma once

#include <map>
#include <string>

namespace ipex::core {

// Instruction-set levels a kernel can be compiled for, lowest first.
// Each kernel translation unit is compiled once per level (see CMakeLists.txt);
// the dispatcher picks the highest level the CPU (and IPEX_ISA) allows.
enum class IsaLevel : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// Raw feature flags read from cpuid/XCR0 (and the Linux AMX permission request).
std::map<std::string, bool> cpu_features();

// The highest level this CPU supports, ignoring IPEX_ISA.
IsaLevel max_supported_isa();

// The level kernels run at: min(max_supported_isa(), IPEX_ISA if set).
IsaLevel active_isa();

// Override the active level (used by IPEX_ISA at import and by tests).
// Throws c10::Error when the level is unknown or above what the CPU supports.
void set_active_isa(const std::string& name);

std::string isa_name(IsaLevel level);
IsaLevel isa_from_name(const std::string& name);

}  // namespace ipex::core
