// SPDX-License-Identifier: MIT
/** @file conv2d_impl.hpp
 *  Internal: the pieces of conv2d that tests and benchmarks reach besides the public entry point
 *  (include/diffuse/kernels/ops.hpp). DIFFUSE_API so that tests link against a shared build too;
 *  not public API. Declarations only: conv2d_avx512.cpp includes it (house style, point 11). */
#pragma once

#include <cstddef>

#include "diffuse/config.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"
#include "gemm_impl.hpp"  // DIFFUSE_KERNELS_X86

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// Default im2col block: output pixels per block are chosen so that the column block
/// (C_in * kh * kw rows x pixels) stays near this many floats (4 MiB), whatever the image size.
inline constexpr std::size_t kConv2dBlockFloats = std::size_t{1} << 20;

/** The scalar direct reference: the seven loops of the formula in ops.hpp, products and sums in
 *  double, bias and residual added in double, one rounding to f32 per output. Checks `a` like
 *  conv2d (same errors). Single-threaded; for tests. */
DIFFUSE_API void conv2d_reference(const Conv2dArgs& a);

/** conv2d with an explicit GEMM variant (tests and benchmarks; value_error when the CPU cannot
 *  run it) and an explicit im2col block budget in floats (tests use tiny budgets to cut blocks
 *  in the middle of output rows). The public conv2d is this with active_gemm_kernel() and
 *  kConv2dBlockFloats; with the scalar GEMM row everything runs on plain C++ loops. */
DIFFUSE_API void conv2d(const GemmKernel& kernel, const Conv2dArgs& a, Context& ctx,
                        std::size_t block_floats = kConv2dBlockFloats);

/// Output pixels per im2col block for `k_rows` = C_in * kh * kw and `pixels` = H_out * W_out.
DIFFUSE_API std::size_t conv2d_block_pixels(std::size_t k_rows, std::size_t pixels, std::size_t block_floats);

/// im2col of channels [c_begin, c_end) for output pixels [n0, n1) of one image `xb`, with
/// per-thread scratch `pad` (see conv2d_im2col.hpp). The scalar one is used with scalar and AVX2 GEMM rows, the AVX-512 one
/// with AVX-512 rows; both write the same values (a copy).
namespace scalar {
DIFFUSE_API void conv2d_im2col(const Conv2dArgs& a, std::size_t w_out, const float* xb, std::size_t c_begin,
                               std::size_t c_end, std::size_t n0, std::size_t n1, float* col, float* pad);
}
#if DIFFUSE_KERNELS_X86
namespace avx512 {
DIFFUSE_API void conv2d_im2col(const Conv2dArgs& a, std::size_t w_out, const float* xb, std::size_t c_begin,
                               std::size_t c_end, std::size_t n0, std::size_t n1, float* col, float* pad);
}
#endif

}  // namespace kernels
DIFFUSE_END_NAMESPACE
