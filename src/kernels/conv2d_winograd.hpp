// SPDX-License-Identifier: MIT
/** @file conv2d_winograd.hpp
 *  Internal: the Winograd F(2x2, 3x3) path of conv2d (conv2d_winograd.cpp), reached by tests and
 *  benchmarks besides the public entry point. DIFFUSE_API so that tests link against a shared
 *  build too; not public API. The public pieces (eligibility, weight transform) are in ops.hpp. */
#pragma once

#include <cstddef>

#include "conv2d_impl.hpp"
#include "diffuse/config.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// conv2d takes the Winograd path when a.winograd_weight is set, the conv is eligible, the batch
/// holds at least kWinogradMinTiles 2x2 output tiles and both channel counts are at least
/// kWinogradMinChannels (measured crossovers, docs/kernels.md: 16 tiles and 32-64 channels lose).
inline constexpr std::size_t kWinogradMinTiles = 32;

/// Whether the public conv2d runs `a` (eligible, with winograd_weight) through Winograd.
DIFFUSE_API bool conv2d_winograd_pays(const Conv2dArgs& a, std::size_t h_out, std::size_t w_out);

/// Tiles per block: the transformed input (16 x C_in x tiles) and product (16 x C_out x tiles)
/// blocks together stay near `block_floats` floats; even blocks, whole 32-column GEMM tiles.
DIFFUSE_API std::size_t conv2d_winograd_block_tiles(std::size_t in_channels, std::size_t out_channels,
                                                    std::size_t tiles, std::size_t block_floats);

/** conv2d forced through Winograd with an explicit GEMM variant and block budget (tests and
 *  benchmarks): checks `a` like conv2d, then value_error unless the conv is eligible and
 *  a.winograd_weight is set. Any image size (even below kWinogradMinTiles). */
DIFFUSE_API void conv2d_winograd(const GemmKernel& kernel, const Conv2dArgs& a, Context& ctx,
                                 std::size_t block_floats = kConv2dBlockFloats);

namespace detail {
/// The Winograd body for checked, eligible arguments with batch > 0 and winograd_weight set.
void conv2d_winograd_run(const GemmKernel& kernel, const Conv2dArgs& a, std::size_t h_out, std::size_t w_out,
                         Context& ctx, std::size_t block_floats);
}  // namespace detail

}  // namespace kernels
DIFFUSE_END_NAMESPACE
