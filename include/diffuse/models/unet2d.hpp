// SPDX-License-Identifier: MIT
/** @file unet2d.hpp
 *  diffusers `UNet2DModel` (the DDPM pixel UNets: google/ddpm-cifar10-32, ddpm-cat-256, our
 *  shipped models/digits-unet): its config, parsed from `config.json` with diffusers' defaults.
 *  The network itself is loaded through `models::load_network()` (the config's `_class_name` is
 *  "UNet2DModel") and runs behind the `Network` interface.
 *
 *  Supported (everything UNet2DModel builds from these fields, as diffusers 0.42 defines it):
 *  - blocks: DownBlock2D, AttnDownBlock2D, UpBlock2D, AttnUpBlock2D (also with diffusers'
 *    "UNetRes" prefix), mid block UNetMidBlock2D or null, with or without attention;
 *  - time embedding "positional" (sinusoidal), "learned" (nn.Embedding over integer timesteps)
 *    and "fourier" (GaussianFourierProjection; the output is divided by the timestep, as diffusers);
 *  - class conditioning: nn.Embedding (`num_class_embeds`) or "timestep"; resnet time embedding
 *    "default" or "scale_shift"; act_fn silu/swish or gelu; downsample/upsample type "conv";
 *  - attention parameters under both namings (to_q/to_k/to_v/to_out.0 and the legacy
 *    query/key/value/proj_attn of checkpoints made before diffusers 0.14).
 *
 *  Not supported (format_error naming the field and what is supported): Skip/K/CrossAttn block
 *  types, downsample_type/upsample_type "resnet", resnet_time_scale_shift "spatial",
 *  class_embed_type "identity" (it takes embedding vectors, not integer labels), act_fn mish/relu.
 *
 *  **Example**
 *  @code
 *  auto dir = diffuse::io::ModelDir::open("models/digits-unet");
 *  diffuse::models::UNet2DConfig cfg = diffuse::models::UNet2DConfig::from_json(dir.config(), "digits-unet");
 *  // cfg.block_out_channels == {32, 64, 64}, cfg.num_class_embeds == 11, cfg.null_class_label == 10
 *  auto net = diffuse::models::load_network("models/digits-unet");
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// The fields of a UNet2DModel config.json, with diffusers' defaults (unet_2d.py).
struct DIFFUSE_API UNet2DConfig {
  std::optional<std::size_t> sample_height;  ///< sample_size (int, or [h, w]); null = absent
  std::optional<std::size_t> sample_width;
  std::size_t in_channels = 3;
  std::size_t out_channels = 3;
  bool center_input_sample = false;              ///< x -> 2x - 1 first
  std::string time_embedding_type = "positional";  ///< "positional", "learned", "fourier"
  std::optional<std::size_t> time_embedding_dim;   ///< null -> 4 * block_out_channels[0]
  double freq_shift = 0;
  bool flip_sin_to_cos = true;
  std::vector<std::string> down_block_types{"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
  std::optional<std::string> mid_block_type = "UNetMidBlock2D";  ///< null = no mid block
  std::vector<std::string> up_block_types{"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  std::vector<std::size_t> block_out_channels{224, 448, 672, 896};
  std::size_t layers_per_block = 2;
  double mid_block_scale_factor = 1;
  std::size_t downsample_padding = 1;
  std::string downsample_type = "conv";
  std::string upsample_type = "conv";
  double dropout = 0;  ///< ignored at inference
  std::string act_fn = "silu";
  std::optional<std::size_t> attention_head_dim = 8;  ///< null -> one head over all channels
  std::optional<std::size_t> norm_num_groups = 32;
  std::optional<std::size_t> attn_norm_num_groups;
  double norm_eps = 1e-5;
  std::string resnet_time_scale_shift = "default";  ///< "default" or "scale_shift"
  bool add_attention = true;
  std::optional<std::string> class_embed_type;  ///< null, "timestep" ("identity" is rejected)
  std::optional<std::size_t> num_class_embeds;
  std::optional<std::size_t> num_train_timesteps;
  /// Our extension (diffusers ignores unknown fields): the label that means "no class" for
  /// classifier-free guidance, e.g. 10 for digits-unet (num_class_embeds 11).
  std::optional<std::int64_t> null_class_label;

  /// Width of the time embedding: time_embedding_dim or 4 * block_out_channels[0].
  std::size_t time_embed_dim() const {
    return time_embedding_dim.value_or(block_out_channels.empty() ? 0 : 4 * block_out_channels[0]);
  }

  /** Parses a config.json object. Absent fields take diffusers' defaults; a field of the wrong
   *  JSON type, an inconsistent config (block lists of different lengths, channels not divisible
   *  by the groups) or an unsupported choice raises format_error "[where] ..." naming the field
   *  and listing what is supported. */
  static UNet2DConfig from_json(const nlohmann::json& config, std::string_view where);
};

}  // namespace models
DIFFUSE_END_NAMESPACE
