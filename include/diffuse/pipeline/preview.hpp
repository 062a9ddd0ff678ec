// SPDX-License-Identifier: MIT
/** @file preview.hpp
 *  The cheap preview of a latent: a per-pixel linear map from the diffusion model's latent
 *  channels to RGB, `rgb = latent · F + b` (F is channels x 3), the preview that ComfyUI
 *  (comfy/latent_formats.py, `latent_rgb_factors` and `latent_rgb_factors_bias`) and
 *  stable-diffusion.cpp show between steps. The factors were fitted by those projects by least
 *  squares from model-space latents (the VAE's latents times scaling_factor, shifted for SD3 and
 *  Flux) to the decoded images of the published VAEs, so they are only meaningful for latents of
 *  those VAEs; the result is about [-1, 1] like a decoded image, at the latent's resolution.
 *
 *  The VAE family is recognised from its config (latent_channels, scaling_factor, shift_factor):
 *  - "sd" (SD 1.x / 2.x, DiT: 4 channels, 0.18215), "sdxl" (4 channels, 0.13025),
 *  - "sd3" (16 channels, 1.5305, shift 0.0609), "flux" (16 channels, 0.3611, shift 0.1159).
 *  Another VAE has no projection (`latent_rgb_projection` returns nullopt): a preview then needs
 *  the decoder (Generation::preview_image does that).
 *
 *  **Example**
 *  @code
 *  if (auto p = diffuse::pipeline::latent_rgb_projection(vae.config()))
 *    diffuse::Tensor rgb = diffuse::pipeline::project_latents(generation.preview(), *p);  // [B, 3, h, w]
 *  @endcode */
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/models/vae.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

/// A latent-to-RGB map (see the file comment).
struct LatentRgbProjection {
  std::string family;            ///< "sd", "sdxl", "sd3", "flux"
  std::size_t channels = 0;      ///< latent channels
  std::vector<float> factors;    ///< channels x 3, row c = the RGB weights of latent channel c
  std::array<float, 3> bias{};   ///< added to R, G, B
};

/// The projection of a published VAE family, or nullopt (see the file comment).
DIFFUSE_API std::optional<LatentRgbProjection> latent_rgb_projection(const models::AutoencoderKLConfig& vae);

/// The projection of the named family ("sd", "sdxl", "sd3", "flux"); value_error otherwise.
DIFFUSE_API LatentRgbProjection latent_rgb_projection(const std::string& family);

/** latents [B, channels, h, w] (model space) -> [B, 3, h * upscale, w * upscale], each latent
 *  pixel repeated upscale x upscale times (nearest), not clamped. shape_error when the channels
 *  differ from the projection's, value_error for upscale < 1 or > 64. */
DIFFUSE_API Tensor project_latents(const Tensor& latents, const LatentRgbProjection& projection,
                                   std::size_t upscale = 1);

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
