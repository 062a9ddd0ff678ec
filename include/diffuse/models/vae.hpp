// SPDX-License-Identifier: MIT
/** @file vae.hpp
 *  The variational autoencoder of latent diffusion, as diffusers' `AutoencoderKL`
 *  (autoencoders/autoencoder_kl.py, autoencoders/vae.py): the decoder that turns a latent into
 *  pixels, and the encoder that turns pixels into the latent distribution (for img2img).
 *
 *  **Networks** (composed of nn/blocks.hpp modules; every GroupNorm has eps 1e-6):
 *  - Decoder: conv_in (latent -> C_last) | mid block (resnet, one-head attention, resnet) | one
 *    UpDecoderBlock2D per entry of block_out_channels, reversed (layers_per_block + 1 resnets,
 *    then a nearest-2x Upsample2D except in the last) | GroupNorm | SiLU | conv_out.
 *    `post_quant_conv` (1x1) first when the config has it.
 *  - Encoder: conv_in | one DownEncoderBlock2D per entry (layers_per_block resnets, then a
 *    stride-2 Downsample2D with one row and column of zero padding at the bottom right, except in
 *    the last) | mid block | GroupNorm | SiLU | conv_out to 2 * latent_channels (mean, logvar),
 *    then `quant_conv` (1x1) when present.
 *
 *  **Latents**: the diffusion model works on scaled latents; `to_vae_latents` undoes the scaling
 *  before decode as the diffusers pipelines do (z = latents / scaling_factor + shift_factor, or
 *  z = latents * latents_std / scaling_factor + latents_mean per channel when the config has
 *  latents_mean and latents_std), `to_model_latents` applies it after encode.
 *
 *  **Weights**: diffusers names (`encoder.down_blocks.0.resnets.0.norm1.weight`, with the
 *  pre-0.14 attention names `query`/`key`/`value`/`proj_attn` too), or the original LDM names of
 *  single-file checkpoints (`first_stage_model.decoder.up.3.block.0.norm1.weight`,
 *  `mid.attn_1.q` as a 1x1 conv, `nin_shortcut`), mapped at load (load_ldm); no tensor is copied
 *  for the renaming. F32, F16 and BF16 storage (computed in f32).
 *
 *  **Tiling**: decode_tiled / encode_tiled are diffusers' `enable_tiling()` algorithm exactly
 *  (tiles of sample_size pixels, 1/4 overlap, linear blends of the overlaps with the tile above
 *  and to the left, in place and in raster order as diffusers does), so a tiled decode matches
 *  diffusers' tiled decode. decode() tiles by itself when DecodeOptions::tiling is automatic and
 *  the untiled decode would need more than DecodeOptions::tile_above bytes of activations.
 *
 *  **Example**
 *  @code
 *  auto vae = diffuse::models::AutoencoderKL::load("DiT-XL-2-256/vae");
 *  diffuse::kernels::Context ctx(2);
 *  Tensor image = vae.decode(vae.to_vae_latents(latents), ctx);  // [B, 3, 8h, 8w], about [-1, 1]
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
#include "diffuse/core/random.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// config.json of an AutoencoderKL (diffusers 0.42 defaults for absent keys).
struct DIFFUSE_API AutoencoderKLConfig {
  std::size_t in_channels = 3;
  std::size_t out_channels = 3;
  std::vector<std::string> down_block_types{"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types{"UpDecoderBlock2D"};
  std::vector<std::size_t> block_out_channels{64};
  std::size_t layers_per_block = 1;
  std::string act_fn = "silu";
  std::size_t latent_channels = 4;
  std::size_t norm_num_groups = 32;
  std::size_t sample_size = 32;  ///< the tile size of tiled decoding, in pixels
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;
  std::vector<double> latents_mean;  ///< empty, or latent_channels values
  std::vector<double> latents_std;
  bool force_upcast = true;  ///< recorded; diffuse computes in f32 anyway
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  /// Parses and checks a config.json object (format_error naming `where` and the key; every size
  /// bounded, unsupported block types refused by name).
  static AutoencoderKLConfig from_json(const nlohmann::json& config, std::string_view where);
  /// The published configs, for single files that carry none: "sd" (SD 1.x / 2.x, DiT:
  /// sd-vae-ft-ema/mse), "sdxl" (scaling_factor 0.13025), "sd3" (16 channels, shift 0.0609,
  /// no quant convs), "flux" (16 channels, scaling 0.3611, shift 0.1159). value_error otherwise.
  static AutoencoderKLConfig family(std::string_view name);
};

/// How decode() tiles.
struct VaeDecodeOptions {
  enum class Tiling { automatic, on, off };
  Tiling tiling = Tiling::automatic;
  /// With automatic tiling: tile when the untiled decode needs more activation bytes than this.
  /// 0: 1 GiB. Tiling only applies to latents larger than one tile.
  std::uint64_t tile_above = 0;
};

/// A loaded AutoencoderKL (immutable; decode/encode are const and may run concurrently on
/// different contexts).
class DIFFUSE_API AutoencoderKL {
 public:
  /// A `vae` folder: config.json + diffusion_pytorch_model.safetensors (diffusers names).
  static AutoencoderKL load(const std::filesystem::path& path, const nn::LoadOptions& options = {});
  static AutoencoderKL load(io::ModelDir dir, const nn::LoadOptions& options = {});
  /// The VAE inside a single-file checkpoint: original LDM names under `prefix` (e.g.
  /// "first_stage_model." for SD 1.x/2.x and SDXL files, "" for a standalone .safetensors VAE in
  /// LDM layout); tensors outside the prefix are left alone. `config` describes the file (it has
  /// none): AutoencoderKLConfig::family.
  static AutoencoderKL load_ldm(io::ModelDir file, std::string prefix, AutoencoderKLConfig config,
                                const nn::LoadOptions& options = {});
  /// True when `dir` holds LDM-named VAE tensors under `prefix` (`PREFIXdecoder.conv_in.weight`
  /// and `PREFIXdecoder.up.0.block.0.conv1.weight`).
  static bool has_ldm_names(const io::ModelDir& dir, std::string_view prefix);

  AutoencoderKL(AutoencoderKL&&) noexcept;
  AutoencoderKL& operator=(AutoencoderKL&&) noexcept;
  ~AutoencoderKL();

  /// z [B, latent_channels, h, w] (already unscaled, see to_vae_latents) -> image [B,
  /// out_channels, 8h, 8w] in the decoder's range (about [-1, 1]; not clamped). shape_error for a
  /// wrong shape, value_error for a non-finite input, memory_error when the activations exceed the
  /// context's memory limit.
  Tensor decode(const Tensor& z, kernels::Context& ctx, const VaeDecodeOptions& options = {}) const;
  /// diffusers' tiled_decode (see the file comment); equals decode() for a latent of one tile.
  Tensor decode_tiled(const Tensor& z, kernels::Context& ctx) const;

  /// image [B, in_channels, H, W] in [-1, 1] (H, W multiples of 8) -> the posterior's moments
  /// [B, 2 * latent_channels, H/8, W/8]: mean, then logvar (after quant_conv).
  Tensor encode_moments(const Tensor& image, kernels::Context& ctx) const;
  /// diffusers' _tiled_encode of the moments.
  Tensor encode_moments_tiled(const Tensor& image, kernels::Context& ctx) const;
  /// The posterior's mean [B, latent_channels, H/8, W/8] (`latent_dist.mode()`).
  static Tensor posterior_mean(const Tensor& moments);
  /// A sample of the posterior, `latent_dist.sample(generator)`: mean + exp(0.5 * clamp(logvar,
  /// -30, 20)) * randn(gen, mean.shape), the noise drawn as torch draws it.
  static Tensor posterior_sample(const Tensor& moments, TorchGenerator& gen);

  /// Scaled (diffusion-model) latents -> the decoder's input (see the file comment).
  Tensor to_vae_latents(const Tensor& latents) const;
  /// The encoder's latents -> scaled latents for the diffusion model.
  Tensor to_model_latents(const Tensor& z) const;

  /// Activation bytes of decode / encode_moments at this size (untiled), what the memory check
  /// uses. Saturates instead of overflowing.
  std::uint64_t decode_bytes(std::size_t batch, std::size_t latent_h, std::size_t latent_w) const;
  std::uint64_t encode_bytes(std::size_t batch, std::size_t height, std::size_t width) const;
  /// Peak bytes of decode() of one [1, C, h, w] latent with `options`: decode_bytes when it does
  /// not tile, else one tile's activations plus the decoded tiles and the image.
  std::uint64_t decode_peak_bytes(std::size_t latent_h, std::size_t latent_w, const VaeDecodeOptions& options = {}) const;
  /// The spatial factor between image and latent (2^(number of blocks - 1), 8 for every published VAE).
  std::size_t scale_factor() const noexcept;

  const AutoencoderKLConfig& config() const noexcept;
  /// Parameters bound (scalars).
  std::size_t parameters() const noexcept;

 private:
  struct Impl;
  explicit AutoencoderKL(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace models
DIFFUSE_END_NAMESPACE
