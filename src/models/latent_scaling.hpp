// SPDX-License-Identifier: MIT
// The diffusers pipelines' map between a diffusion model's latents and a VAE's, shared by
// AutoencoderKL and AutoencoderTiny (include/diffuse/models/vae.hpp, taesd.hpp): per channel
// z = latents * std / scaling + mean when the config has latents_mean / latents_std, else
// z = latents / scaling + shift (shift 0 when absent); and its inverse. Internal to src/models.
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models::detail {

/// `x` [B, L, h, w] (checked by the caller) mapped channel by channel: to the VAE's latents when
/// `to_vae`, else back to the model's.
inline Tensor map_latents(const Tensor& x, bool to_vae, double scaling_factor, const std::optional<double>& shift_factor,
                          const std::vector<double>& latents_mean, const std::vector<double>& latents_std) {
  Tensor out = x;
  const std::size_t B = out.dim(0), L = out.dim(1), hw = out.dim(2) * out.dim(3);
  const float s = static_cast<float>(scaling_factor);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l) {
      float* p = out.data() + (b * L + l) * hw;
      if (!latents_mean.empty()) {
        const float mu = static_cast<float>(latents_mean[l]), sd = static_cast<float>(latents_std[l]);
        if (to_vae)
          for (std::size_t i = 0; i < hw; ++i) p[i] = p[i] * sd / s + mu;
        else
          for (std::size_t i = 0; i < hw; ++i) p[i] = (p[i] - mu) * s / sd;
      } else {
        const float shift = static_cast<float>(shift_factor.value_or(0.0));
        if (to_vae)
          for (std::size_t i = 0; i < hw; ++i) p[i] = p[i] / s + shift;
        else
          for (std::size_t i = 0; i < hw; ++i) p[i] = (p[i] - shift) * s;
      }
    }
  return out;
}

}  // namespace models::detail
DIFFUSE_END_NAMESPACE
