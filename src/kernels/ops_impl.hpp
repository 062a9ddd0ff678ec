// SPDX-License-Identifier: MIT
/** @file ops_impl.hpp
 *  Internal: declarations of the op bodies of every variant listed in ops.inc (one namespace per
 *  ISA, each with the same members, typed by ops.hpp's op_body function types), for
 *  ops_dispatch.cpp and the per-ISA files. Declarations and consteval constants only: an inline
 *  function here would be compiled once per ISA and the linker could keep the AVX-512 copy
 *  (house style, point 11). DIFFUSE_API so that tests link against a shared build too. */
#pragma once

#include <cstddef>

#include "diffuse/config.hpp"
#include "diffuse/kernels/ops.hpp"
#include "gemm_impl.hpp"  // DIFFUSE_KERNELS_X86

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

#define DIFFUSE_OP_VARIANT(isa, q_block)                   \
  namespace isa {                                          \
  DIFFUSE_API op_body::Upsample upsample_nearest_body;     \
  DIFFUSE_API op_body::GroupNorm group_norm_body;          \
  DIFFUSE_API op_body::LayerNorm layer_norm_body;          \
  DIFFUSE_API op_body::Act activation_body;                \
  DIFFUSE_API op_body::ChannelBias add_channel_bias_body;  \
  DIFFUSE_API op_body::GatedAdd gated_add_body;            \
  DIFFUSE_API op_body::Softmax softmax_body;               \
  DIFFUSE_API op_body::Attention attention_body;           \
  DIFFUSE_API op_body::AttentionWorkspace attention_workspace_body; \
  inline constexpr std::size_t attention_q_block = q_block;         \
  }
#include "ops.inc"
#undef DIFFUSE_OP_VARIANT

/// Keys per attention key/value block (all variants: the online-softmax recurrence runs over
/// blocks of this many keys).
inline constexpr std::size_t kAttentionKvBlock = 64;

/// Elements per work item of the element-wise ops (activation): the thread split is in whole
/// blocks, so small calls stay on one thread.
inline constexpr std::size_t kElementBlock = 4096;

}  // namespace kernels
DIFFUSE_END_NAMESPACE
