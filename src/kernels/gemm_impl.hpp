// SPDX-License-Identifier: MIT
/** @file gemm_impl.hpp
 *  Internal: declarations of every GEMM variant listed in kernels.inc, so that dispatch.cpp, the
 *  tests and the benchmarks can reach each one. Included by the per-ISA files, so it declares
 *  functions and constants only (an inline function here would be compiled once per ISA and the
 *  linker could keep the AVX-512 copy: house style, point 11). DIFFUSE_API so that tests link
 *  against a shared build too; not public API. */
#pragma once

#include <cstddef>

#include "diffuse/config.hpp"
#include "diffuse/kernels/kernels.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define DIFFUSE_KERNELS_X86 1
#else
#define DIFFUSE_KERNELS_X86 0
#endif

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

#define DIFFUSE_GEMM_KERNEL(symbol, isa, mr, nr, kc, nc)                                               \
  namespace isa {                                                                                      \
  DIFFUSE_API void symbol(const GemmArgs& args, std::size_t m_begin, std::size_t m_end, std::size_t n_begin, \
                          std::size_t n_end, float* workspace);                                        \
  DIFFUSE_API void symbol##_pack(const GemmArgs& args, float* dst);                                    \
  }
#define DIFFUSE_GEMM_SMALL_M_KERNEL(symbol, isa, max_m)                                                \
  namespace isa {                                                                                      \
  DIFFUSE_API void symbol(const GemmArgs& args, std::size_t m_begin, std::size_t m_end, std::size_t n_begin, \
                          std::size_t n_end, float* workspace);                                        \
  }
#include "kernels.inc"
#undef DIFFUSE_GEMM_KERNEL
#undef DIFFUSE_GEMM_SMALL_M_KERNEL

/// Floats of per-thread workspace of a blocked kernel: the packed B block and A panel, each
/// rounded up to a whole number of 64-byte lines so that both start aligned. consteval: never
/// emitted as a function, so per-ISA files can use it without the inline-function hazard.
consteval std::size_t gemm_blocked_workspace(std::size_t mr, std::size_t nr, std::size_t kc, std::size_t nc) {
  const std::size_t b = (kc * ((nc + nr - 1) / nr) * nr + 15) / 16 * 16;
  const std::size_t a = (mr * kc + 15) / 16 * 16;
  return b + a;
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
