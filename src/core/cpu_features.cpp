// SPDX-License-Identifier: MIT
// CPUID detection. Compiled without ISA flags, so it runs on any x86-64 CPU.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "diffuse/core/cpu.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

DIFFUSE_BEGIN_NAMESPACE

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return f;
  const bool osxsave = (c & bit_OSXSAVE) != 0;
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool os_avx = osxsave && (xcr0 & 0x6) == 0x6;       // XMM and YMM state saved
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM0-15 hi, ZMM16-31
  f.avx = os_avx && (c & bit_AVX) != 0;
  f.fma = f.avx && (c & bit_FMA) != 0;
  f.f16c = f.avx && (c & bit_F16C) != 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) != 0) {
    f.avx2 = f.avx && (b & bit_AVX2) != 0;
    f.avx512f = os_avx512 && (b & bit_AVX512F) != 0;
    f.avx512bw = f.avx512f && (b & bit_AVX512BW) != 0;
    f.avx512vl = f.avx512f && (b & bit_AVX512VL) != 0;
    f.avx512dq = f.avx512f && (b & bit_AVX512DQ) != 0;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) != 0) f.avx512bf16 = f.avx512f && (a1 & (1u << 5)) != 0;
  }
#endif
  return f;
}

IsaLevel detect_level(const CpuFeatures& f) {
  IsaLevel level = IsaLevel::scalar;
  if (f.avx2 && f.fma && f.f16c) level = IsaLevel::avx2;
  if (level == IsaLevel::avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) level = IsaLevel::avx512;
  if (const char* cap = std::getenv("DIFFUSE_ISA")) {
    const std::string_view s(cap);
    IsaLevel limit = level;
    if (s == "scalar") limit = IsaLevel::scalar;
    else if (s == "avx2") limit = IsaLevel::avx2;
    else if (s == "avx512") limit = IsaLevel::avx512;
    if (static_cast<int>(limit) < static_cast<int>(level)) level = limit;
  }
  return level;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

IsaLevel isa_level() {
  static const IsaLevel level = detect_level(cpu_features());
  return level;
}

DIFFUSE_END_NAMESPACE
