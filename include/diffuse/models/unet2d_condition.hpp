// SPDX-License-Identifier: MIT
/** @file unet2d_condition.hpp
 *  diffusers `UNet2DConditionModel`, the text-conditioned U-Net of Stable Diffusion 1.x / 2.x and
 *  SDXL, with its config parsed from `config.json` with diffusers' (0.42) defaults.
 *
 *  **Forward** (unets/unet_2d_condition.py): emb = time_embedding(Timesteps(C0, flip_sin_to_cos,
 *  freq_shift)(t)) (+ SDXL's add_embedding([text_embeds; Timesteps(addition_time_embed_dim)(time_ids)])
 *  with `addition_embed_type: "text_time"`); conv_in; the down blocks (DownBlock2D, or
 *  CrossAttnDownBlock2D: a Transformer2DModel after every resnet), UNetMidBlock2DCrossAttn
 *  (resnet, transformer, resnet), the up blocks (UpBlock2D / CrossAttnUpBlock2D, each resnet on
 *  torch.cat([h, skip])), GroupNorm, SiLU, conv_out. The transformers attend to
 *  `encoder_hidden_states` [B, tokens, cross_attention_dim] (77 * k tokens from the CLIP encoders,
 *  any count is accepted). Everything in f32 (`upcast_attention` is recorded, and is what f32
 *  does anyway).
 *
 *  **Config**: `attention_head_dim` is, as in diffusers, the number of heads (an int or one per
 *  block: SD 2.x's [5, 10, 20, 20]); head width = channels / heads. `transformer_layers_per_block`,
 *  `layers_per_block` and `cross_attention_dim` are an int or one per block. Supported otherwise:
 *  `use_linear_projection`, `upcast_attention`, `center_input_sample`, `conv_in_kernel` /
 *  `conv_out_kernel` (odd), `time_embedding_dim`, `mid_block_type` UNetMidBlock2DCrossAttn or
 *  null. A field with a value this class does not implement is refused by name (format_error):
 *  `num_attention_heads` (diffusers itself refuses it), `only_cross_attention` /
 *  `mid_block_only_cross_attention` true, `dual_cross_attention`, `class_embed_type`,
 *  `num_class_embeds`, `encoder_hid_dim(_type)`, `addition_embed_type` other than "text_time",
 *  `time_embedding_type` other than positional, `time_embedding_act_fn`, `timestep_post_act`,
 *  `time_cond_proj_dim` (LCM), `attention_type` other than default, `class_embeddings_concat`,
 *  `cross_attention_norm`, `resnet_skip_time_act`, `resnet_out_scale_factor` != 1,
 *  `resnet_time_scale_shift` other than default, `reverse_transformer_layers_per_block`, act_fn
 *  other than silu, other block types. Every size is bounded (nn::ConfigReader).
 *
 *  A `Network` (load_network picks it for `_class_name` UNet2DConditionModel): its
 *  `forward_conditioned` takes the text states (Conditioning::text, and for "text_time" the pooled
 *  embedding and the time ids); the label forward of the interface is refused (it needs text).
 *
 *  **Example**
 *  @code
 *  auto unet = diffuse::models::UNet2DConditionModel::load("stable-diffusion-v1-5/unet");
 *  diffuse::kernels::Context ctx(2);
 *  diffuse::Tensor x({2, 4, 64, 64}), text({2, 77, 768});
 *  float t = 999;
 *  diffuse::Tensor eps = unet.forward(x, {&t, 1}, text, ctx);
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// The fields of a UNet2DConditionModel config.json, per-block lists expanded (diffusers' defaults).
struct DIFFUSE_API UNet2DConditionConfig {
  std::optional<std::size_t> sample_height, sample_width;  ///< sample_size (int or [h, w]); null = absent
  std::size_t in_channels = 4;
  std::size_t out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "DownBlock2D"};
  std::optional<std::string> mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"};
  std::vector<std::size_t> block_out_channels{320, 640, 1280, 1280};
  std::vector<std::size_t> layers_per_block;              ///< per block (config: int or list; default 2)
  std::vector<std::size_t> transformer_layers_per_block;  ///< per block (default 1)
  std::vector<std::size_t> attention_heads;               ///< per block, from attention_head_dim (default 8)
  std::vector<std::size_t> cross_attention_dim;           ///< per block (default 1280), all equal
  std::size_t downsample_padding = 1;
  double mid_block_scale_factor = 1;
  std::string act_fn = "silu";
  std::size_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;
  bool upcast_attention = false;  ///< recorded; the forward is f32 throughout
  std::optional<std::size_t> time_embedding_dim;  ///< null -> 4 * block_out_channels[0]
  std::size_t conv_in_kernel = 3, conv_out_kernel = 3;
  std::optional<std::string> addition_embed_type;  ///< null or "text_time"
  std::optional<std::size_t> addition_time_embed_dim;                 ///< text_time: Timesteps width (256)
  std::optional<std::size_t> projection_class_embeddings_input_dim;   ///< text_time: add_embedding input (2816)

  std::size_t time_embed_dim() const { return time_embedding_dim.value_or(4 * block_out_channels.at(0)); }

  /** Parses a config.json object; format_error "[where] config.json \"key\": ..." naming the field
   *  for a wrong type, an out-of-range size, inconsistent lists or an unsupported value. */
  static UNet2DConditionConfig from_json(const nlohmann::json& config, std::string_view where);
};

/// SDXL's added conditions (addition_embed_type "text_time").
struct UNet2DConditionAdded {
  const Tensor* text_embeds = nullptr;  ///< [B, P]: the pooled, projected text embedding
  const Tensor* time_ids = nullptr;     ///< [B, n]: original size, crop top-left, target size (n = 6)
};

/// A loaded UNet2DConditionModel (immutable; forward is const and may run concurrently on
/// different contexts).
class DIFFUSE_API UNet2DConditionModel final : public Network {
 public:
  /// Loads a unet folder (config.json + diffusion_pytorch_model[.variant].safetensors).
  static UNet2DConditionModel load(const std::filesystem::path& path, const nn::LoadOptions& options = {});
  /// From an opened folder (the model keeps the mapping alive: f32 weights are used in place).
  static UNet2DConditionModel load(io::ModelDir dir, const nn::LoadOptions& options = {});
  /** The U-Net inside a single-file checkpoint (SD 1.x / 2.x / XL as A1111 keeps them): the
   *  original LDM names under `prefix` ("model.diffusion_model."), mapped to the diffusers names
   *  at load without copying a tensor (`input_blocks.N.M`, `middle_block.N`, `output_blocks.N.M`,
   *  `time_embed.0/2`, `label_emb.0.0/0.2`, `out.0/2`; resnets' `in_layers`, `emb_layers`,
   *  `out_layers`, `skip_connection`; docs/single_file.md). `config` describes the file (it has
   *  none; models/checkpoint.hpp knows the families') and is checked as a config.json is. A tensor
   *  under the prefix that the config does not explain is refused by name (format_error); tensors
   *  outside it are left alone. */
  static UNet2DConditionModel load_original(io::ModelDir file, std::string prefix, UNet2DConditionConfig config,
                                            const nn::LoadOptions& options = {});
  /// True when `dir` holds an LDM U-Net under `prefix` (`PREFIXinput_blocks.0.0.weight`,
  /// `PREFIXtime_embed.0.weight` and `PREFIXout.2.weight`).
  static bool has_original_names(const io::ModelDir& dir, std::string_view prefix);

  UNet2DConditionModel(UNet2DConditionModel&&) noexcept;
  UNet2DConditionModel& operator=(UNet2DConditionModel&&) noexcept;
  ~UNet2DConditionModel() override;

  /** out = unet(x, t, encoder_hidden_states, added) with x [B, in_channels, H, W] (H, W multiples
   *  of 2^(blocks - 1)), `timesteps` of size B or 1 (broadcast), encoder_hidden_states
   *  [B, tokens, cross_attention_dim], and for a "text_time" model `added` with text_embeds and
   *  time_ids whose widths fill projection_class_embeddings_input_dim. Returns
   *  [B, out_channels, H, W]. shape_error / value_error naming the argument otherwise. */
  Tensor forward(const Tensor& x, std::span<const float> timesteps, const Tensor& encoder_hidden_states,
                 kernels::Context& ctx, const UNet2DConditionAdded& added = {}) const;

  /// Network: forward(x, t, *c.text, ctx, {c.pooled, c.time_ids}); value_error without c.text.
  Tensor forward_conditioned(const Tensor& x, std::span<const float> timesteps, const Conditioning& c,
                             kernels::Context& ctx) const override;
  /// Network: refused (value_error): this network needs text states (forward_conditioned).
  Tensor forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                 kernels::Context& ctx) const override;

  /// An estimate of the bytes one forward allocates (arena peak + output), saturating at UINT64_MAX.
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width,
                              std::size_t text_tokens) const;
  /// Network: the same for 77 text tokens.
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const override {
    return forward_bytes(batch, height, width, 77);
  }

  const UNet2DConditionConfig& config() const noexcept;
  /// architecture "UNet2DConditionModel", channels, sample size, size multiple, text_dim
  /// (cross_attention_dim), pooled_dim and time_ids for "text_time", parameters, dtypes.
  const NetworkInfo& info() const noexcept override;

 private:
  struct Impl;
  explicit UNet2DConditionModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace models
DIFFUSE_END_NAMESPACE
