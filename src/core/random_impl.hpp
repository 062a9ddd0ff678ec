// SPDX-License-Identifier: MIT
/** @file random_impl.hpp
 *  Internal: the Box–Muller kernels behind diffuse/core/random.hpp, exposed so that tests and
 *  benchmarks can run every path the CPU has, whatever the dispatcher picked.
 *
 *  Each kernel transforms `blocks` consecutive blocks of 16 uniforms in place exactly as torch's
 *  `NormalFill16<float>` AVX2 specialisation does with mean 0 and std 1: for j < 8,
 *  `u1 = 1 − d[j]`, `u2 = d[j+8]`, `d[j] = r cos θ`, `d[j+8] = r sin θ` with `log256_ps` and
 *  `sincos256_ps` of torch's avx_mathfun.h and GCC's FMA contractions of them. Both give the same
 *  bits. Declarations only (house style, point 11); DIFFUSE_API so that a shared build's tests
 *  link; not public API.
 */
#pragma once

#include <cstddef>

#include "diffuse/config.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define DIFFUSE_RANDOM_X86 1
#else
#define DIFFUSE_RANDOM_X86 0
#endif

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// Portable emulation, one lane at a time (src/core/random.cpp, compiled with -ffp-contract=off).
namespace scalar {
DIFFUSE_API void torch_box_muller_16(float* data, std::size_t blocks);
}  // namespace scalar

#if DIFFUSE_RANDOM_X86
/// AVX2 + FMA, 8 lanes (src/core/random_avx2.cpp). Needs avx2 and fma.
namespace avx2 {
DIFFUSE_API void torch_box_muller_16(float* data, std::size_t blocks);
}  // namespace avx2
#endif

}  // namespace kernels
DIFFUSE_END_NAMESPACE
