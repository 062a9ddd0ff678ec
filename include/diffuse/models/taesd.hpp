// SPDX-License-Identifier: MIT
/** @file taesd.hpp
 *  The tiny autoencoder TAESD (madebyollin/taesd), as diffusers' `AutoencoderTiny`
 *  (autoencoders/autoencoder_tiny.py, EncoderTiny / DecoderTiny in autoencoders/vae.py,
 *  AutoencoderTinyBlock in unets/unet_2d_blocks.py): a distilled VAE of plain 3x3 convs and
 *  ReLUs, about 1.2 M parameters per half, that decodes a 64x64 latent into a 512x512 image for a
 *  preview or a cheap final decode.
 *
 *  **Networks** (`layers.N` are the indices of diffusers' nn.Sequential; every conv is 3x3,
 *  padding 1; "block" is nn::AutoencoderTinyBlock, relu(conv-act-conv-act-conv + x)):
 *  - Decoder: clamp x = tanh(x / 3) * 3 | conv (latent -> C, bias) | ReLU | per entry i of
 *    num_decoder_blocks: that many blocks, then, except after the last entry, nearest 2x upsampling
 *    and a conv without bias; after the last, a conv with bias to out_channels | y * 2 - 1.
 *    taesd (3, 3, 3, 1): 0 conv, 1 ReLU, 2-4 blocks, 5 up, 6 conv, 7-9, 10 up, 11 conv, 12-14,
 *    15 up, 16 conv, 17 block, 18 conv_out.
 *  - Encoder: (x + 1) / 2 | per entry i of num_encoder_blocks: a conv (the first: in_channels ->
 *    C with bias; the others stride 2 without bias), then that many blocks | a conv with bias to
 *    latent_channels. No activation outside the blocks. Each stride-2 conv maps H to ceil(H / 2).
 *
 *  **Range and latents**: decode() returns what diffusers' AutoencoderTiny.decode returns, the
 *  image in [-1, 1] (the decoder's [0, 1] output times 2 minus 1; not clamped); encode() takes an
 *  image in [-1, 1] and returns the latents of AutoencoderTiny.encode. These are the latents the
 *  diffusion model works on divided by scaling_factor (plus shift_factor when the config has one),
 *  what diffusers' pipelines pass to `vae.decode`: to_vae_latents / to_model_latents apply that
 *  relation as for AutoencoderKL. For taesd and taesdxl scaling_factor is 1.0: TAESD was
 *  distilled on the *scaled* latents of SD / SDXL (the UNet's own latents), so the UNet's latents go
 *  to decode() unchanged. family("taesd3") / family("taef1") carry the SD3 / Flux VAE's scaling and
 *  shift (1.5305 / 0.0609, 0.3611 / 0.1159), which the SD3 / Flux pipelines read from the TAE's config
 *  (so its decode() takes the unscaled VAE latents, as AutoencoderKL); a folder's config.json, when
 *  present, is what counts.
 *  scale_latents / unscale_latents are diffusers' mapping of raw latents to [0, 1] (latent_magnitude,
 *  latent_shift) for storing latents as 8-bit images, as AutoencoderTiny.forward uses it.
 *
 *  **Weights**: a diffusers folder (config.json + diffusion_pytorch_model.safetensors, names
 *  `decoder.layers.3.conv.0.weight`), or the original files `taesd_decoder.safetensors` /
 *  `taesd_encoder.safetensors` (names `4.conv.0.weight` in the decoder, shifted by the Clamp module
 *  the original Decoder starts with, `3.conv.0.weight` in the encoder: diffusers'
 *  scripts/convert_tiny_autoencoder_to_diffusers.py), mapped at load; no tensor is copied for the
 *  renaming. F32, F16 and BF16 storage (computed in f32).
 *
 *  **Example**
 *  @code
 *  auto taesd = diffuse::models::AutoencoderTiny::load("taesd");   // diffusers folder or original files
 *  diffuse::kernels::Context ctx(2);
 *  Tensor image = taesd.decode(taesd.to_vae_latents(latents), ctx);  // [B, 3, 8h, 8w] in [-1, 1]
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// config.json of an AutoencoderTiny (diffusers' defaults for absent keys: the taesd config).
struct DIFFUSE_API AutoencoderTinyConfig {
  std::size_t in_channels = 3;
  std::size_t out_channels = 3;
  std::vector<std::size_t> encoder_block_out_channels{64, 64, 64, 64};
  std::vector<std::size_t> decoder_block_out_channels{64, 64, 64, 64};
  std::string act_fn = "relu";       ///< only "relu" (every published TAESD)
  std::string upsample_fn = "nearest";  ///< only "nearest"
  std::size_t latent_channels = 4;
  std::size_t upsampling_scaling_factor = 2;  ///< only 2
  std::vector<std::size_t> num_encoder_blocks{1, 3, 3, 3};
  std::vector<std::size_t> num_decoder_blocks{3, 3, 3, 1};
  double latent_magnitude = 3.0;
  double latent_shift = 0.5;
  double scaling_factor = 1.0;
  std::optional<double> shift_factor;
  std::vector<double> latents_mean;  ///< empty, or latent_channels values
  std::vector<double> latents_std;
  bool force_upcast = false;  ///< recorded; diffuse computes in f32 anyway

  /// Parses and checks a config.json object (format_error naming `where` and the key; every size
  /// bounded; an act_fn, upsample_fn or upsampling_scaling_factor other than the supported one is
  /// refused by name; block channels that diffusers' layers could not chain are refused).
  static AutoencoderTinyConfig from_json(const nlohmann::json& config, std::string_view where);
  /// The published configs, for the original files that carry none: "taesd" (SD 1.x / 2.x),
  /// "taesdxl", "taesd3" (16 channels, scaling 1.5305, shift 0.0609), "taef1" (16 channels,
  /// scaling 0.3611, shift 0.1159). value_error otherwise.
  static AutoencoderTinyConfig family(std::string_view name);
};

/// A loaded AutoencoderTiny (immutable; decode/encode are const and may run concurrently on
/// different contexts). Either half may be absent when loaded from the original files.
class DIFFUSE_API AutoencoderTiny {
 public:
  /// A diffusers folder (config.json + diffusion_pytorch_model.safetensors); or a folder with the
  /// original `NAME_decoder.safetensors` (and optionally `NAME_encoder.safetensors`), NAME one of
  /// the families, configured by its config.json when present, else by family(NAME).
  static AutoencoderTiny load(const std::filesystem::path& path, const nn::LoadOptions& options = {});
  static AutoencoderTiny load(io::ModelDir dir, const nn::LoadOptions& options = {});
  /// The original files (either path may be empty, not both): decoder keys `N...` for diffusers'
  /// `decoder.layers.(N-1)...`, encoder keys `N...` for `encoder.layers.N...`.
  static AutoencoderTiny load_original(const std::filesystem::path& decoder_file,
                                       const std::filesystem::path& encoder_file, AutoencoderTinyConfig config,
                                       const nn::LoadOptions& options = {});

  AutoencoderTiny(AutoencoderTiny&&) noexcept;
  AutoencoderTiny& operator=(AutoencoderTiny&&) noexcept;
  ~AutoencoderTiny();

  /// z [B, latent_channels, h, w] (already unscaled, see to_vae_latents) -> image [B, out_channels,
  /// f h, f w] in [-1, 1], f = decoder_scale_factor(). shape_error for a wrong shape, value_error for
  /// a non-finite input or a model without a decoder, memory_error when the activations exceed the
  /// context's memory limit.
  Tensor decode(const Tensor& z, kernels::Context& ctx) const;
  /// image [B, in_channels, H, W] in [-1, 1] -> latents [B, latent_channels, H', W'] with H' = H
  /// halved (rounding up) once per stride-2 conv. Errors as decode().
  Tensor encode(const Tensor& image, kernels::Context& ctx) const;

  /// diffusers' scale_latents: raw latents -> clamp(x / (2 latent_magnitude) + latent_shift, 0, 1).
  Tensor scale_latents(const Tensor& x) const;
  /// diffusers' unscale_latents: [0, 1] -> (x - latent_shift) * 2 latent_magnitude.
  Tensor unscale_latents(const Tensor& x) const;
  /// Scaled (diffusion-model) latents -> the decoder's input (see the file comment).
  Tensor to_vae_latents(const Tensor& latents) const;
  /// The encoder's latents -> scaled latents for the diffusion model.
  Tensor to_model_latents(const Tensor& z) const;

  /// Activation bytes of decode / encode at this size, what the memory check uses (saturating).
  std::uint64_t decode_bytes(std::size_t batch, std::size_t latent_h, std::size_t latent_w) const;
  std::uint64_t encode_bytes(std::size_t batch, std::size_t height, std::size_t width) const;
  /// 2^(decoder entries - 1): 8 for every published TAESD.
  std::size_t decoder_scale_factor() const noexcept;
  /// 2^(encoder entries - 1).
  std::size_t encoder_scale_factor() const noexcept;
  bool has_decoder() const noexcept;
  bool has_encoder() const noexcept;

  const AutoencoderTinyConfig& config() const noexcept;
  /// Parameters bound (scalars).
  std::size_t parameters() const noexcept;

 private:
  struct Impl;
  explicit AutoencoderTiny(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace models
DIFFUSE_END_NAMESPACE
