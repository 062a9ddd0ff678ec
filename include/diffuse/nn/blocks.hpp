// SPDX-License-Identifier: MIT
/** @file blocks.hpp
 *  The convolutional blocks that the U-Nets and the VAE share, one module each, bound by prefix
 *  from a WeightStore and run on the context's arena (diffusers models/resnet.py,
 *  models/attention_processor.py and models/upsampling.py / downsampling.py are the map):
 *
 *  | module | diffusers | keys under the prefix |
 *  |---|---|---|
 *  | ResnetBlock2D | ResnetBlock2D | `norm1`, `conv1`, `time_emb_proj` (when there is a time embedding), `norm2`, `conv2`, `conv_shortcut` (when in != out) |
 *  | SpatialAttention | Attention built by `_from_deprecated_attn_block` (AttnDownBlock2D, the mid blocks) | `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (or the pre-0.14 `query`, `key`, `value`, `proj_attn`) |
 *  | Downsample2D | Downsample2D (use_conv) | `conv` |
 *  | Upsample2D | Upsample2D (use_conv, nearest 2x) | `conv` |
 *  | AutoencoderTinyBlock | AutoencoderTinyBlock (unets/unet_2d_blocks.py) | `conv.0`, `conv.2`, `conv.4`, `skip` (when in != out) |
 *
 *  Every block writes its output through a Dest, a destination with its own batch stride, so that
 *  a U-Net can write a block's output straight into the first channels of the torch.cat([h, skip])
 *  buffer of the next block. Each forward says how many floats of the arena it uses at most
 *  (`arena_floats`), which the networks add up for their memory estimate.
 *
 *  Checkpoints with other names (LDM's `nin_shortcut`, `q`/`k`/`v`/`proj_out` as 1x1 convs) bind
 *  through WeightStore::set_name_map, which maps each diffusers name to the file's. */
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string_view>

#include "diffuse/config.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/layers.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

/// An output [batch, C, H, W] whose items are `batch_stride` floats apart (>= C * H * W).
struct Dest {
  float* p = nullptr;
  std::size_t batch_stride = 0;
};

/// Runs `conv` on contiguous x [batch, in, h, w] into y, also when y's batch stride is not the
/// conv's own output size (then item by item). `residual` is contiguous.
DIFFUSE_API void conv_into(const Conv2d& conv, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                           kernels::Context& ctx, const float* residual = nullptr);

/** diffusers ResnetBlock2D:
 *
 *      h = conv1(act(norm1(x)));  h += time_emb_proj(temb)           (time_embedding_norm "default")
 *      h = act(norm2(h))                                             or act(norm2(h) * (1 + scale) + shift) ("scale_shift")
 *      y = (shortcut(x) + conv2(h)) / output_scale_factor
 *
 *  `temb` is the already activated time embedding [batch, temb_channels] (the U-Nets apply the
 *  nonlinearity once for all blocks, as diffusers' ResnetBlock2D does per block), null when the
 *  block has none (the VAE). */
struct DIFFUSE_API ResnetBlock2D {
  enum class TimeNorm { none, add, scale_shift };

  GroupNorm norm1, norm2;
  Conv2d conv1, conv2, shortcut;
  bool has_shortcut = false;
  Linear time_emb_proj;
  TimeNorm time_norm = TimeNorm::none;
  std::size_t in = 0, out = 0;
  float output_scale_factor = 1.0f;
  kernels::Activation act = kernels::Activation::silu;

  struct Options {
    std::size_t groups = 32;
    float eps = 1e-6f;
    std::size_t temb_channels = 0;  ///< 0: no time embedding
    bool scale_shift = false;       ///< time_embedding_norm "scale_shift"
    float output_scale_factor = 1.0f;
    kernels::Activation act = kernels::Activation::silu;
  };
  /// Binds `prefix`.{norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut}; format_error when
  /// `in` or `out` is not divisible into the groups (naming the norm and `where_groups`, the
  /// config field the groups came from).
  static ResnetBlock2D bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out,
                            const Options& options, std::string_view where_groups = "norm_num_groups");
  /// x contiguous [batch, in, h, w] -> y [batch, out, h, w]; temb [batch, temb_channels] or null.
  void operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y, const float* temb,
                  kernels::Context& ctx) const;
  /// Floats of the arena the forward uses at most.
  double arena_floats(std::size_t batch, std::size_t hw) const;
};

/** The attention of diffusers' UNet2D blocks and of the VAE's mid block, over the pixels of an
 *  image: tokens = GroupNorm(x) as [batch, h * w, C], multi-head attention (scale
 *  1/sqrt(head_dim), no mask), out projection, then x = (proj + x) / rescale_output_factor, in
 *  place. q, k and v are fused at load into one [3 * inner, C] GEMM (owned by the module, shared
 *  by copies). */
struct DIFFUSE_API SpatialAttention {
  bool has_norm = false;
  GroupNorm norm;
  Linear qkv;  ///< to_q | to_k | to_v: [3 * inner, channels], bias [3 * inner]
  Linear to_out;
  std::size_t channels = 0, heads = 1, head_dim = 0, inner = 0;
  float rescale_output_factor = 1.0f;
  std::shared_ptr<const float[]> fused;  ///< the fused weight and bias

  struct Options {
    std::size_t head_dim = 0;           ///< attention_head_dim; heads = channels / head_dim
    std::optional<std::size_t> groups;  ///< null: no group_norm
    float eps = 1e-5f;
    float rescale_output_factor = 1.0f;
  };
  /// q, k, v weights may be stored [inner, C] (Linear) or [inner, C, 1, 1] (1x1 conv, LDM).
  static SpatialAttention bind(WeightStore& w, std::string_view prefix, std::size_t channels, const Options& options);
  /// x [batch, channels, hw] (items `x.batch_stride` apart), updated in place.
  void operator()(Dest x, std::size_t batch, std::size_t hw, kernels::Context& ctx) const;
  double arena_floats(std::size_t batch, std::size_t hw) const;
};

/// diffusers Downsample2D with a conv: a 3x3 stride-2 conv with `padding`; padding 0 pads one
/// row and column at the bottom and right first (F.pad(x, (0, 1, 0, 1))), as the VAE encoder does.
struct DIFFUSE_API Downsample2D {
  Conv2d conv;

  static Downsample2D bind(WeightStore& w, std::string_view prefix, std::size_t channels, std::size_t padding);
  std::size_t out_height(std::size_t h) const { return conv.out_height(h); }
  std::size_t out_width(std::size_t w) const { return conv.out_width(w); }
  void operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                  kernels::Context& ctx) const;
};

/** diffusers Upsample2D with a conv: nearest 2x, then a 3x3 conv (padding 1), computed without the
 *  4x larger intermediate: output pixel (2i + py, 2j + px) only sees input rows i - 1, i (py = 0)
 *  or i, i + 1 (py = 1), so the taps that land on the same input row are summed at load and each
 *  of the four output phases is a 2x2 conv on the low-resolution input (4 instead of 9
 *  multiply-adds per output; the same sums in another order). */
struct DIFFUSE_API Upsample2D {
  Conv2d conv;                   ///< the 3x3 conv as stored (only run through its phases)
  std::array<Conv2d, 4> phases;  ///< phase py * 2 + px
  std::shared_ptr<const float[]> phase_weights;

  static Upsample2D bind(WeightStore& w, std::string_view prefix, std::size_t channels);
  /// The same from a conv bound by the caller (3x3, padding 1, stride 1, in == out, with or without
  /// bias), e.g. the bias-free `nn.Upsample` + `nn.Conv2d` pair of AutoencoderTiny's decoder, whose
  /// conv is `layers.N` itself. `what` names it in the memory accounting.
  static Upsample2D from_conv(WeightStore& w, const Conv2d& conv, std::string_view what);
  /// x contiguous [batch, C, h, w] -> y [batch, C, 2h, 2w].
  void operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                  kernels::Context& ctx) const;
  double arena_floats(std::size_t batch, std::size_t hw) const;
};

/** diffusers AutoencoderTinyBlock (TAESD's `Block`), a residual stack of plain convs:
 *
 *      y = relu(conv.4(act(conv.2(act(conv.0(x))))) + skip(x))
 *
 *  conv.N are 3x3 convs with bias (padding 1); skip is the identity, or a 1x1 conv without bias
 *  when in != out; the final ReLU (`fuse`) is always a ReLU, `act` is the config's act_fn (ReLU in
 *  every published TAESD). The skip is added in the last conv's epilogue (no extra pass). */
struct DIFFUSE_API AutoencoderTinyBlock {
  Conv2d conv0, conv2, conv4, skip;
  bool has_skip = false;
  std::size_t in = 0, out = 0;
  kernels::Activation act = kernels::Activation::relu;

  static AutoencoderTinyBlock bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out,
                                   kernels::Activation act = kernels::Activation::relu);
  /// x contiguous [batch, in, h, w] -> y contiguous [batch, out, h, w]; y must not overlap x.
  void operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* y,
                  kernels::Context& ctx) const;
  /// Floats of the arena the forward uses at most.
  double arena_floats(std::size_t batch, std::size_t hw) const;
};

}  // namespace nn
DIFFUSE_END_NAMESPACE
