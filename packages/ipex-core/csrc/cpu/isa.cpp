// cpuid/XCR0 probe. Compiled without any ISA flags: it must run on every x86-64 CPU.
#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ipex::core {
namespace {

struct Features {
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false, amx_permitted = false;
  bool genuine_intel = false;  // vendor: MKL's fast sgemm paths are Intel-only (callers pick kernels by it)
};

#if defined(__x86_64__)
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux keeps AMX tile data disabled per process until it is requested
// (arch_prctl ARCH_REQ_XCOMP_PERM, kernel >= 5.16). Without it the first
// tile instruction faults, so we ask once before reporting AMX as usable.
bool request_amx_permission() {
  constexpr int kArchGetXcompPerm = 0x1022;
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    return false;
  }
  uint64_t bitmask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) {
    return false;
  }
  return (bitmask & (1ULL << kXfeatureXtiledata)) != 0;
}
#endif

Features probe() {
  Features f;
#if defined(__x86_64__)
  unsigned eax, ebx, ecx, edx;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return f;
  __cpuid(0, eax, ebx, ecx, edx);  // vendor string in ebx, edx, ecx: "Genu" "ineI" "ntel"
  f.genuine_intel = ebx == 0x756e6547u && edx == 0x49656e69u && ecx == 0x6c65746eu;
  __cpuid_count(1, 0, eax, ebx, ecx, edx);
  f.sse42 = ecx & (1u << 20);
  f.fma = ecx & (1u << 12);
  f.f16c = ecx & (1u << 29);
  bool osxsave = ecx & (1u << 27);
  f.avx = ecx & (1u << 28);
  uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  // XMM|YMM state, then opmask|ZMM_Hi256|Hi16_ZMM, then XTILECFG|XTILEDATA.
  f.os_avx = (xcr0 & 0x6) == 0x6;
  f.os_avx512 = f.os_avx && (xcr0 & 0xE0) == 0xE0;
  f.os_amx = (xcr0 & 0x60000) == 0x60000;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f.avx2 = ebx & (1u << 5);
    f.avx512f = ebx & (1u << 16);
    f.avx512dq = ebx & (1u << 17);
    f.avx512bw = ebx & (1u << 30);
    f.avx512vl = ebx & (1u << 31);
    f.avx512_vnni = ecx & (1u << 11);
    f.avx512_fp16 = edx & (1u << 23);
    f.amx_bf16 = edx & (1u << 22);
    f.amx_tile = edx & (1u << 24);
    f.amx_int8 = edx & (1u << 25);
    unsigned max_sub = eax;
    if (max_sub >= 1) {
      __cpuid_count(7, 1, eax, ebx, ecx, edx);
      f.avx512_bf16 = eax & (1u << 5);
    }
  }
  f.avx = f.avx && f.os_avx;
  f.avx2 = f.avx2 && f.os_avx;
  f.fma = f.fma && f.os_avx;
  f.f16c = f.f16c && f.os_avx;
  for (bool* b : {&f.avx512f, &f.avx512bw, &f.avx512vl, &f.avx512dq, &f.avx512_vnni,
                  &f.avx512_bf16, &f.avx512_fp16}) {
    *b = *b && f.os_avx512;
  }
  bool amx_hw = f.amx_tile && f.os_amx;
  f.amx_permitted = amx_hw && request_amx_permission();
  f.amx_tile = f.amx_tile && f.amx_permitted;
  f.amx_bf16 = f.amx_bf16 && f.amx_permitted;
  f.amx_int8 = f.amx_int8 && f.amx_permitted;
#endif
  return f;
}

const Features& features() {
  static const Features f = probe();
  return f;
}

std::atomic<int> g_active{-1};
std::once_flag g_env_once;

}  // namespace

std::map<std::string, bool> cpu_features() {
  const Features& f = features();
  return {
      {"sse4_2", f.sse42},       {"avx", f.avx},
      {"avx2", f.avx2},          {"fma", f.fma},
      {"f16c", f.f16c},          {"avx512f", f.avx512f},
      {"avx512bw", f.avx512bw},  {"avx512vl", f.avx512vl},
      {"avx512dq", f.avx512dq},  {"avx512_vnni", f.avx512_vnni},
      {"avx512_bf16", f.avx512_bf16}, {"avx512_fp16", f.avx512_fp16},
      {"amx_tile", f.amx_tile},  {"amx_bf16", f.amx_bf16},
      {"amx_int8", f.amx_int8},  {"os_amx_permitted", f.amx_permitted},
      {"genuine_intel", f.genuine_intel},
  };
}

IsaLevel max_supported_isa() {
  const Features& f = features();
  bool avx2 = f.avx2 && f.fma && f.f16c;
  bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  bool avx512_bf16 = avx512 && f.avx512_bf16;
  bool amx = avx512_bf16 && f.amx_bf16 && f.amx_int8;
  if (amx) return IsaLevel::kAmx;
  if (avx512_bf16) return IsaLevel::kAvx512Bf16;
  if (avx512) return IsaLevel::kAvx512;
  if (avx2) return IsaLevel::kAvx2;
  return IsaLevel::kDefault;
}

std::string isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kDefault: return "default";
    case IsaLevel::kAvx2: return "avx2";
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kAvx512Bf16: return "avx512_bf16";
    case IsaLevel::kAmx: return "amx";
  }
  return "default";
}

IsaLevel isa_from_name(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(IsaLevel::kAmx); ++i) {
    if (isa_name(static_cast<IsaLevel>(i)) == name) return static_cast<IsaLevel>(i);
  }
  TORCH_CHECK(false, "IPEX_ISA='", name, "' is not a known ISA level; use one of "
              "default, avx2, avx512, avx512_bf16, amx (or unset IPEX_ISA to use the best "
              "level this CPU supports)");
}

void set_active_isa(const std::string& name) {
  IsaLevel wanted = isa_from_name(name);
  IsaLevel best = max_supported_isa();
  TORCH_CHECK(static_cast<int>(wanted) <= static_cast<int>(best), "IPEX_ISA='", name,
              "' asks for a level this CPU does not support (best here: '", isa_name(best),
              "'); choose a level at or below it, or unset IPEX_ISA");
  g_active.store(static_cast<int>(wanted));
}

IsaLevel active_isa() {
  int level = g_active.load();
  if (level >= 0) return static_cast<IsaLevel>(level);
  // Not set explicitly: the Python package sets it from IPEX_ISA at import;
  // a C++ caller without Python falls back to the environment here.
  std::call_once(g_env_once, [] {
    const char* env = std::getenv("IPEX_ISA");
    if (env != nullptr && env[0] != '\0') {
      set_active_isa(env);
    } else {
      g_active.store(static_cast<int>(max_supported_isa()));
    }
  });
  return static_cast<IsaLevel>(g_active.load());
}

}  // namespace ipex::core
