// SPDX-License-Identifier: MIT
/** @file betas.hpp
 *  Beta schedules and the float32 arrays derived from them (`alphas`, `alphas_cumprod`), computed
 *  exactly as diffusers' schedulers compute them in `__init__` with torch float32 kernels, so that
 *  `alphas_cumprod(make_betas(...))` equals `scheduler.alphas_cumprod` bit for bit.
 *
 *  **Example**:
 *  ```
 *  auto betas = diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012);
 *  auto ac = diffuse::alphas_cumprod(betas);  // ac[999] == 0.0046601...f, as torch
 *  ``` */
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/schedule/numeric.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// The `beta_schedule` values of diffusers.
enum class BetaSchedule {
  linear,             ///< `torch.linspace(beta_start, beta_end, N)`
  scaled_linear,      ///< `torch.linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2` (latent diffusion)
  squaredcos_cap_v2,  ///< Nichol & Dhariwal (2021) cosine schedule, `betas_for_alpha_bar(N, 0.999, cosine)`
  sigmoid,            ///< GeoDiff sigmoid schedule (DDPM only in diffusers)
  exp,                ///< `betas_for_alpha_bar(N, 0.999, exp)` (Heun only in diffusers)
  laplace,            ///< `betas_for_alpha_bar(N, 0.999, laplace)` (DDPM only in diffusers)
};

/// The `alpha_transform_type` of diffusers' `betas_for_alpha_bar`.
enum class AlphaTransform { cosine, exp, laplace };

namespace detail {
inline std::string quoted(std::string_view s) {
  std::string r;
  r.reserve(s.size() + 2);
  r += '\'';
  r += s;
  r += '\'';
  return r;
}
}  // namespace detail

/// Parses a diffusers `beta_schedule` name. Raises value_error for an unknown name.
inline BetaSchedule beta_schedule_from_name(std::string_view name) {
  if (name == "linear") return BetaSchedule::linear;
  if (name == "scaled_linear") return BetaSchedule::scaled_linear;
  if (name == "squaredcos_cap_v2") return BetaSchedule::squaredcos_cap_v2;
  if (name == "sigmoid") return BetaSchedule::sigmoid;
  if (name == "exp") return BetaSchedule::exp;
  if (name == "laplace") return BetaSchedule::laplace;
  raise<value_error>("beta_schedule_from_name",
                     "beta_schedule: unknown name " + detail::quoted(name) +
                         " (expected linear, scaled_linear, squaredcos_cap_v2, sigmoid, exp or laplace)");
}

/// The diffusers name of a beta schedule.
constexpr std::string_view to_string(BetaSchedule s) noexcept {
  switch (s) {
    case BetaSchedule::linear: return "linear";
    case BetaSchedule::scaled_linear: return "scaled_linear";
    case BetaSchedule::squaredcos_cap_v2: return "squaredcos_cap_v2";
    case BetaSchedule::sigmoid: return "sigmoid";
    case BetaSchedule::exp: return "exp";
    case BetaSchedule::laplace: return "laplace";
  }
  return "?";
}

/// Parses an `alpha_transform_type` name ("cosine", "exp", "laplace").
inline AlphaTransform alpha_transform_from_name(std::string_view name) {
  if (name == "cosine") return AlphaTransform::cosine;
  if (name == "exp") return AlphaTransform::exp;
  if (name == "laplace") return AlphaTransform::laplace;
  raise<value_error>("alpha_transform_from_name",
                     "alpha_transform_type: unknown name " + detail::quoted(name) + " (expected cosine, exp or laplace)");
}

/// `alpha_bar(t)` for t in [0, 1], in double, as the closures of diffusers' `betas_for_alpha_bar`.
inline double alpha_bar(double t, AlphaTransform transform) noexcept {
  switch (transform) {
    case AlphaTransform::cosine: {
      // Improved DDPM, Nichol & Dhariwal (2021), eq. 17 with s = 0.008.
      const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2);
      return c * c;
    }
    case AlphaTransform::exp: return std::exp(t * -12.0);
    case AlphaTransform::laplace: {
      const double lmb = -0.5 * std::copysign(1.0, 0.5 - t) * std::log(1 - 2 * std::fabs(0.5 - t) + 1e-6);
      const double snr = std::exp(lmb);
      return std::sqrt(snr / (1 + snr));
    }
  }
  return 0.0;
}

/** Betas that discretize `alpha_bar`: `beta_i = min(1 - abar((i+1)/N)/abar(i/N), max_beta)`,
 *  computed in double and rounded to float32 (`betas_for_alpha_bar` of diffusers). */
template <class T = float>
std::vector<T> betas_for_alpha_bar(std::int64_t num_diffusion_timesteps, double max_beta = 0.999,
                                   AlphaTransform transform = AlphaTransform::cosine) {
  if (num_diffusion_timesteps < 1)
    raise<value_error>("betas_for_alpha_bar", "num_diffusion_timesteps must be >= 1, got " +
                                                  std::to_string(num_diffusion_timesteps));
  if (!(max_beta > 0.0 && max_beta <= 1.0))
    raise<value_error>("betas_for_alpha_bar", "max_beta must be in (0, 1], got " + std::to_string(max_beta));
  std::vector<T> betas(static_cast<std::size_t>(num_diffusion_timesteps));
  const auto n = static_cast<double>(num_diffusion_timesteps);
  for (std::int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / n;
    const double t2 = static_cast<double>(i + 1) / n;
    const double b = 1 - alpha_bar(t2, transform) / alpha_bar(t1, transform);
    betas[static_cast<std::size_t>(i)] = static_cast<T>(static_cast<float>(b < max_beta ? b : max_beta));
  }
  return betas;
}

/** The betas of `beta_schedule` for `num_train_timesteps` steps, as float32 tensors of diffusers.
 *  `beta_start`/`beta_end` are used by linear, scaled_linear and sigmoid.
 *
 *  sigmoid uses torch's vectorised float32 exp upstream (1-ulp Sleef), here a correctly rounded
 *  one: its betas can differ from torch in the last bit. All other schedules are bit-exact. */
inline std::vector<float> make_betas(BetaSchedule schedule, std::int64_t num_train_timesteps, double beta_start = 0.0001,
                                     double beta_end = 0.02) {
  constexpr std::string_view where = "make_betas";
  if (num_train_timesteps < 2)
    raise<value_error>(where, "num_train_timesteps must be >= 2, got " + std::to_string(num_train_timesteps));
  const bool uses_range =
      schedule == BetaSchedule::linear || schedule == BetaSchedule::scaled_linear || schedule == BetaSchedule::sigmoid;
  if (uses_range) {
    if (!std::isfinite(beta_start) || !(beta_start >= 0.0) || beta_start > 1.0)
      raise<value_error>(where, "beta_start must be in [0, 1], got " + std::to_string(beta_start));
    if (!std::isfinite(beta_end) || !(beta_end >= 0.0) || beta_end > 1.0)
      raise<value_error>(where, "beta_end must be in [0, 1], got " + std::to_string(beta_end));
    if (beta_start > beta_end)
      raise<value_error>(where, "beta_start (" + std::to_string(beta_start) + ") must not exceed beta_end (" +
                                    std::to_string(beta_end) + ")");
  }
  switch (schedule) {
    case BetaSchedule::linear: return detail::torch_linspace_f32(beta_start, beta_end, num_train_timesteps);
    case BetaSchedule::scaled_linear: {
      auto b = detail::torch_linspace_f32(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), num_train_timesteps);
      for (auto& v : b) v = detail::rounded(v * v);  // torch pow(x, 2) is x*x in float32
      return b;
    }
    case BetaSchedule::squaredcos_cap_v2:
      return betas_for_alpha_bar<float>(num_train_timesteps, 0.999, AlphaTransform::cosine);
    case BetaSchedule::exp: return betas_for_alpha_bar<float>(num_train_timesteps, 0.999, AlphaTransform::exp);
    case BetaSchedule::laplace:
      return betas_for_alpha_bar<float>(num_train_timesteps, 0.999, AlphaTransform::laplace);
    case BetaSchedule::sigmoid: {
      // GeoDiff (Xu et al., 2022): sigmoid(linspace(-6, 6, N)) * (beta_end - beta_start) + beta_start.
      auto x = detail::torch_linspace_f32(-6.0, 6.0, num_train_timesteps);
      const auto scale = static_cast<float>(beta_end - beta_start);
      const auto offset = static_cast<float>(beta_start);
      for (auto& v : x) {
        const auto s = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(v))));
        v = detail::rounded(s * scale) + offset;
      }
      return x;
    }
  }
  return {};
}

/** Validates user-given `trained_betas` (finite, in [0, 1]) and rounds them to float32 as
 *  `torch.tensor(trained_betas, dtype=float32)` does. */
template <class T>
std::vector<float> make_trained_betas(std::span<const T> trained_betas) {
  if (trained_betas.empty()) raise<value_error>("make_trained_betas", "trained_betas is empty");
  std::vector<float> b(trained_betas.size());
  for (std::size_t i = 0; i < b.size(); ++i) {
    const auto v = static_cast<double>(trained_betas[i]);
    if (!std::isfinite(v) || v < 0.0 || v > 1.0)
      raise<value_error>("make_trained_betas", "trained_betas[" + std::to_string(i) + "] = " + std::to_string(v) +
                                                   " is not in [0, 1]");
    b[i] = static_cast<float>(v);
  }
  return b;
}

/// `alphas = 1 - betas` in float32.
inline std::vector<float> alphas_from_betas(std::span<const float> betas) {
  std::vector<float> a(betas.size());
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 1.0f - betas[i];
  return a;
}

/** `alphas_cumprod = torch.cumprod(1 - betas)`: the float32 alphas multiplied in a double
 *  accumulator, rounded to float32 at each output (torch's CPU cumprod). */
inline std::vector<float> alphas_cumprod(std::span<const float> betas) {
  if (betas.empty()) raise<value_error>("alphas_cumprod", "betas is empty");
  const auto a = alphas_from_betas(betas);
  return detail::torch_cumprod_f32(a);
}

/** Rescales betas to zero terminal SNR: Lin et al., "Common Diffusion Noise Schedules and Sample
 *  Steps are Flawed" (arXiv:2305.08891), Algorithm 1, in float32 as diffusers'
 *  `rescale_zero_terminal_snr`. The last beta becomes 1, so the last alphas_cumprod is 0. */
inline std::vector<float> rescale_zero_terminal_snr(std::span<const float> betas) {
  constexpr std::string_view where = "rescale_zero_terminal_snr";
  if (betas.size() < 2) raise<value_error>(where, "betas needs at least 2 entries, got " + std::to_string(betas.size()));
  auto s = alphas_cumprod(betas);
  for (auto& v : s) v = std::sqrt(v);
  const float s0 = s.front();
  const float sT = s.back();
  if (!(s0 > sT))
    raise<value_error>(where, "betas: sqrt(alphas_cumprod) must decrease from first to last to be rescaled");
  const float scale = s0 / (s0 - sT);
  for (auto& v : s) v = detail::rounded(v - sT) * scale;
  std::vector<float> abar(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) abar[i] = detail::rounded(s[i] * s[i]);
  std::vector<float> out(s.size());
  out[0] = 1.0f - abar[0];
  for (std::size_t i = 1; i < s.size(); ++i) out[i] = 1.0f - abar[i] / abar[i - 1];
  return out;
}

DIFFUSE_END_NAMESPACE
