// SPDX-License-Identifier: MIT
// Latent-to-RGB previews (preview.hpp).
#include <cmath>
#include <string>

#include "diffuse/core/error.hpp"
#include "diffuse/pipeline/preview.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {
namespace {

// The factors as ComfyUI's comfy/latent_formats.py lists them (SD15, SDXL, SD3 and Flux classes),
// one row per latent channel: R, G, B.
constexpr float kSd[4][3] = {
    {0.3512f, 0.2297f, 0.3227f}, {0.3250f, 0.4974f, 0.2350f}, {-0.2829f, 0.1762f, 0.2721f}, {-0.2120f, -0.2616f, -0.7177f}};
constexpr float kSdxl[4][3] = {
    {0.3651f, 0.4232f, 0.4341f}, {-0.2533f, -0.0042f, 0.1068f}, {0.1076f, 0.1111f, -0.0362f}, {-0.3165f, -0.2492f, -0.2188f}};
constexpr float kSdxlBias[3] = {0.1084f, -0.0175f, -0.0011f};
constexpr float kSd3[16][3] = {
    {-0.0922f, -0.0175f, 0.0749f}, {0.0311f, 0.0633f, 0.0954f},   {0.1994f, 0.0927f, 0.0458f},
    {0.0856f, 0.0339f, 0.0902f},   {0.0587f, 0.0272f, -0.0496f},  {-0.0006f, 0.1104f, 0.0309f},
    {0.0978f, 0.0306f, 0.0427f},   {-0.0042f, 0.1038f, 0.1358f},  {-0.0194f, 0.0020f, 0.0669f},
    {-0.0488f, 0.0130f, -0.0268f}, {0.0922f, 0.0988f, 0.0951f},   {-0.0278f, 0.0524f, -0.0542f},
    {0.0332f, 0.0456f, 0.0895f},   {-0.0069f, -0.0030f, -0.0810f}, {-0.0596f, -0.0465f, -0.0293f},
    {-0.1448f, -0.1463f, -0.1189f}};
constexpr float kSd3Bias[3] = {0.2394f, 0.2135f, 0.1925f};
constexpr float kFlux[16][3] = {
    {-0.0346f, 0.0244f, 0.0681f},  {0.0034f, 0.0210f, 0.0687f},   {0.0275f, -0.0668f, -0.0433f},
    {-0.0174f, 0.0160f, 0.0617f},  {0.0859f, 0.0721f, 0.0329f},   {0.0004f, 0.0383f, 0.0115f},
    {0.0405f, 0.0861f, 0.0915f},   {-0.0236f, -0.0185f, -0.0259f}, {-0.0245f, 0.0250f, 0.1180f},
    {0.1008f, 0.0755f, -0.0421f},  {-0.0515f, 0.0201f, 0.0011f},  {0.0428f, -0.0012f, -0.0036f},
    {0.0817f, 0.0765f, 0.0749f},   {-0.1264f, -0.0522f, -0.1103f}, {-0.0280f, -0.0881f, -0.0499f},
    {-0.1262f, -0.0982f, -0.0778f}};
constexpr float kFluxBias[3] = {-0.0329f, -0.0718f, -0.0851f};

template <std::size_t C>
LatentRgbProjection make(const char* family, const float (&f)[C][3], const float* bias) {
  LatentRgbProjection p;
  p.family = family;
  p.channels = C;
  for (std::size_t c = 0; c < C; ++c)
    for (int k = 0; k < 3; ++k) p.factors.push_back(f[c][k]);
  if (bias)
    for (int k = 0; k < 3; ++k) p.bias[static_cast<std::size_t>(k)] = bias[k];
  return p;
}

bool near(double a, double b) { return std::fabs(a - b) <= 1e-4 * std::fabs(b); }

}  // namespace

LatentRgbProjection latent_rgb_projection(const std::string& family) {
  if (family == "sd") return make("sd", kSd, nullptr);
  if (family == "sdxl") return make("sdxl", kSdxl, kSdxlBias);
  if (family == "sd3") return make("sd3", kSd3, kSd3Bias);
  if (family == "flux") return make("flux", kFlux, kFluxBias);
  raise<value_error>("latent_rgb_projection", "unknown VAE family '" + family + "' (known: sd, sdxl, sd3, flux)");
}

std::optional<LatentRgbProjection> latent_rgb_projection(const models::AutoencoderKLConfig& v) {
  const double shift = v.shift_factor.value_or(0.0);
  if (!v.latents_mean.empty()) return std::nullopt;  // per-channel normalised latents: none of the four
  if (v.latent_channels == 4 && shift == 0.0 && near(v.scaling_factor, 0.18215)) return latent_rgb_projection("sd");
  if (v.latent_channels == 4 && shift == 0.0 && near(v.scaling_factor, 0.13025)) return latent_rgb_projection("sdxl");
  if (v.latent_channels == 16 && near(v.scaling_factor, 1.5305) && near(shift, 0.0609)) return latent_rgb_projection("sd3");
  if (v.latent_channels == 16 && near(v.scaling_factor, 0.3611) && near(shift, 0.1159)) return latent_rgb_projection("flux");
  return std::nullopt;
}

Tensor project_latents(const Tensor& x, const LatentRgbProjection& p, std::size_t up) {
  constexpr std::string_view where = "project_latents";
  if (x.ndim() != 4 || x.dim(1) != p.channels)
    raise<shape_error>(where, "latents must be [B, " + std::to_string(p.channels) + ", h, w], got " + shape_string(x.shape()));
  if (up < 1 || up > 64) raise<value_error>(where, "upscale must be in 1..64, got " + std::to_string(up));
  const std::size_t B = x.dim(0), C = x.dim(1), h = x.dim(2), w = x.dim(3), H = h * up, W = w * up;
  Tensor out({B, 3, H, W});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t k = 0; k < 3; ++k) {
      float* o = out.data() + (b * 3 + k) * H * W;
      for (std::size_t i = 0; i < h; ++i)
        for (std::size_t j = 0; j < w; ++j) {
          float v = p.bias[k];
          for (std::size_t c = 0; c < C; ++c) v += x.data()[((b * C + c) * h + i) * w + j] * p.factors[c * 3 + k];
          for (std::size_t di = 0; di < up; ++di)
            for (std::size_t dj = 0; dj < up; ++dj) o[(i * up + di) * W + j * up + dj] = v;
        }
    }
  return out;
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
