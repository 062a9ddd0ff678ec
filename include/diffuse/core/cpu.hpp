// SPDX-License-Identifier: MIT
/** @file cpu.hpp
 *  What the CPU can do, read once from CPUID. Kernels with several instruction-set paths pick one
 *  from this at run time. Setting the environment variable `DIFFUSE_ISA` to `scalar`, `avx2` or
 *  `avx512` caps the level used (it never raises it above what the CPU has), so that every path
 *  can be exercised and timed on one machine. */
#pragma once

#include <string_view>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Instruction-set levels, in increasing order. Each level implies the ones below it.
enum class IsaLevel : int {
  scalar = 0,  ///< portable C++ only
  avx2 = 1,    ///< AVX2 + FMA + F16C
  avx512 = 2,  ///< AVX-512 F, BW, VL, DQ (with AVX2 + FMA + F16C)
};

/// Individual features of the host CPU (false on non-x86 machines).
struct CpuFeatures {
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512bf16 = false;
};

/// The features of the CPU this process runs on, read once.
DIFFUSE_API const CpuFeatures& cpu_features();

/// The highest level the CPU supports, capped by `DIFFUSE_ISA` when set.
DIFFUSE_API IsaLevel isa_level();

/// "scalar", "avx2" or "avx512".
constexpr std::string_view isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::avx512: return "avx512";
    case IsaLevel::avx2: return "avx2";
    default: return "scalar";
  }
}

DIFFUSE_END_NAMESPACE
