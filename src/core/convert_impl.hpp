// SPDX-License-Identifier: MIT
/** @file convert_impl.hpp
 *  Internal: the per-instruction-set f16/bf16 <-> f32 kernels behind diffuse/core/convert.hpp,
 *  exposed so that tests and benchmarks can run every path the CPU has, whatever the dispatcher
 *  picked.
 *
 *  This header is included by the per-ISA files (convert_avx2.cpp, convert_avx512.cpp), so it
 *  declares functions only: an inline function defined here would be compiled once per ISA and
 *  the linker could keep the AVX-512 copy (see the house style, point 11). The functions are
 *  DIFFUSE_API so that the tests also link against a shared build; they are not public API.
 */
#pragma once

#include <cstddef>

#include "diffuse/config.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define DIFFUSE_CONVERT_X86 1
#else
#define DIFFUSE_CONVERT_X86 0
#endif

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// One implementation of the four bulk conversions. `src`/`dst` of the 16-bit side may have any
/// alignment; the float side must be aligned to `alignof(float)` only.
struct ConvertKernels {
  const char* name;  ///< "scalar", "f16c" or "avx512"
  void (*f16_to_f32)(const void* src, float* dst, std::size_t n);
  void (*f32_to_f16)(const float* src, void* dst, std::size_t n);
  void (*bf16_to_f32)(const void* src, float* dst, std::size_t n);
  void (*f32_to_bf16)(const float* src, void* dst, std::size_t n);
};

/// The portable loops over the inline `*_scalar` references (compiled without ISA flags).
namespace scalar {
DIFFUSE_API void f16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_f16(const float* src, void* dst, std::size_t n);
DIFFUSE_API void bf16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_bf16(const float* src, void* dst, std::size_t n);
}  // namespace scalar

#if DIFFUSE_CONVERT_X86
/// F16C + AVX2, 8 lanes; tails go to `scalar`. Needs avx2 and f16c.
namespace avx2 {
DIFFUSE_API void f16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_f16(const float* src, void* dst, std::size_t n);
DIFFUSE_API void bf16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_bf16(const float* src, void* dst, std::size_t n);
}  // namespace avx2

/// AVX-512 F/BW/VL, 16 lanes; tails with masked loads and stores. Needs avx512f, bw and vl.
namespace avx512 {
DIFFUSE_API void f16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_f16(const float* src, void* dst, std::size_t n);
DIFFUSE_API void bf16_to_f32(const void* src, float* dst, std::size_t n);
DIFFUSE_API void f32_to_bf16(const float* src, void* dst, std::size_t n);
}  // namespace avx512
#endif

/// Which of the three paths exist in this build and can run on this CPU (ignores `DIFFUSE_ISA`).
enum class ConvertPath { scalar, f16c, avx512 };

/// True when `path` is compiled in and the CPU has the instructions it needs.
DIFFUSE_API bool convert_path_supported(ConvertPath path);

/// The kernels of `path`; `path` must be supported.
DIFFUSE_API const ConvertKernels& convert_kernels(ConvertPath path);

/// The kernels the public functions use: the fastest supported path within `isa_level()`.
DIFFUSE_API const ConvertKernels& active_convert_kernels();

}  // namespace kernels
DIFFUSE_END_NAMESPACE
