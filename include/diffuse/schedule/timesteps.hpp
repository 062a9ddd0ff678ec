// SPDX-License-Identifier: MIT
/** @file timesteps.hpp
 *  Inference timesteps as diffusers' `set_timesteps` spaces them: "linspace", "leading" and
 *  "trailing" (Lin et al., arXiv:2305.08891, Table 2) with `steps_offset`. The families differ:
 *
 *  | family                            | function                   | points  | dtype   |
 *  |-----------------------------------|----------------------------|---------|---------|
 *  | DDPM, DDIM                        | `ddpm_timesteps`           | n       | int64   |
 *  | Euler, Euler a, Heun, LMS         | `euler_timesteps`          | n       | float32 |
 *  | DPM-Solver++ (multistep), UniPC, DEIS | `dpm_timesteps`        | n+1, last dropped | int64 |
 *  | DPM-Solver (singlestep)           | `dpm_singlestep_timesteps` | n+1, last dropped | int64 |
 *  | LCM                               | `lcm_timesteps`            | n       | int64   |
 *
 *  All arithmetic is numpy float64 (`np.linspace`, `np.arange`, `np.round` half-to-even). */
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/numeric.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// The `timestep_spacing` values of diffusers.
enum class TimestepSpacing { linspace, leading, trailing };

/// Parses a `timestep_spacing` name. Raises value_error for an unknown name.
inline TimestepSpacing timestep_spacing_from_name(std::string_view name) {
  if (name == "linspace") return TimestepSpacing::linspace;
  if (name == "leading") return TimestepSpacing::leading;
  if (name == "trailing") return TimestepSpacing::trailing;
  raise<value_error>("timestep_spacing_from_name", "timestep_spacing: unknown name " + detail::quoted(name) +
                                                       " (expected linspace, leading or trailing)");
}

/// The diffusers name of a spacing.
constexpr std::string_view to_string(TimestepSpacing s) noexcept {
  switch (s) {
    case TimestepSpacing::linspace: return "linspace";
    case TimestepSpacing::leading: return "leading";
    case TimestepSpacing::trailing: return "trailing";
  }
  return "?";
}

namespace detail {
/// Bound of num_train_timesteps and num_inference_steps here (1e6: every product below fits int64).
constexpr std::int64_t kMaxTimesteps = 1'000'000;

inline void check_steps(std::string_view where, std::int64_t num_train_timesteps, std::int64_t num_inference_steps,
                        bool capped = true) {
  if (num_train_timesteps < 1 || num_train_timesteps > kMaxTimesteps)
    raise<value_error>(where, "num_train_timesteps must be in [1, 1000000], got " + std::to_string(num_train_timesteps));
  if (num_inference_steps < 1 || num_inference_steps > kMaxTimesteps)
    raise<value_error>(where, "num_inference_steps must be in [1, 1000000], got " + std::to_string(num_inference_steps));
  if (capped && num_inference_steps > num_train_timesteps)
    raise<value_error>(where, "num_inference_steps (" + std::to_string(num_inference_steps) +
                                  ") cannot be larger than num_train_timesteps (" +
                                  std::to_string(num_train_timesteps) + ")");
}

/// steps_offset in [0, N): the leading timesteps i * (N / n) + offset then stay below 2N (no overflow).
inline void check_offset(std::string_view where, std::int64_t N, std::int64_t steps_offset) {
  if (steps_offset < 0 || steps_offset >= N)
    raise<value_error>(where, "steps_offset must be in [0, num_train_timesteps) = [0, " + std::to_string(N) + "), got " +
                                  std::to_string(steps_offset));
}

/// Spaced timesteps in float64 before the scheduler's cast: n points, descending.
inline std::vector<double> spaced(TimestepSpacing spacing, std::int64_t N, std::int64_t n, std::int64_t steps_offset,
                                  bool round_linspace) {
  check_offset("set_timesteps", N, steps_offset);
  std::vector<double> t;
  switch (spacing) {
    case TimestepSpacing::linspace: {
      auto l = np_linspace(0.0, static_cast<double>(N - 1), n);
      t.assign(l.rbegin(), l.rend());
      if (round_linspace)
        for (auto& v : t) v = np_round(v);
      break;
    }
    case TimestepSpacing::leading: {
      const std::int64_t ratio = N / n;
      for (std::int64_t i = n - 1; i >= 0; --i) t.push_back(static_cast<double>(i * ratio + steps_offset));
      break;
    }
    case TimestepSpacing::trailing: {
      const double ratio = static_cast<double>(N) / static_cast<double>(n);
      t = np_arange(static_cast<double>(N), 0.0, -ratio);
      for (auto& v : t) v = np_round(v) - 1.0;
      break;
    }
  }
  return t;
}
}  // namespace detail

/** DDPM/DDIM timesteps: integers, `linspace` rounded half-to-even, `leading` plus `steps_offset`,
 *  `trailing` as `round(arange(N, 0, -N/n)) - 1` (which ignores `steps_offset`, as diffusers). */
inline std::vector<std::int64_t> ddpm_timesteps(TimestepSpacing spacing, std::int64_t num_train_timesteps,
                                                std::int64_t num_inference_steps, std::int64_t steps_offset = 0) {
  detail::check_steps("ddpm_timesteps", num_train_timesteps, num_inference_steps);
  const auto t = detail::spaced(spacing, num_train_timesteps, num_inference_steps, steps_offset, true);
  return {t.begin(), t.end()};
}

/** Euler-family timesteps (Euler, Euler ancestral, Heun, LMS): as `ddpm_timesteps`, but
 *  `linspace` is not rounded and everything is float32 (`np.linspace(..., dtype=np.float32)`). */
inline std::vector<float> euler_timesteps(TimestepSpacing spacing, std::int64_t num_train_timesteps,
                                          std::int64_t num_inference_steps, std::int64_t steps_offset = 0) {
  detail::check_steps("euler_timesteps", num_train_timesteps, num_inference_steps, false);
  const auto t = detail::spaced(spacing, num_train_timesteps, num_inference_steps, steps_offset, false);
  std::vector<float> r(t.size());
  for (std::size_t i = 0; i < t.size(); ++i) r[i] = static_cast<float>(t[i]);
  return r;
}

/** Multistep DPM-Solver / UniPC / DEIS timesteps: n+1 points with the last one dropped.
 *  `last_timestep` is `N - clipped_index` (`N` unless `lambda_min_clipped` cuts the schedule):
 *  - linspace: `round(linspace(0, last-1, n+1))[::-1][:-1]`
 *  - leading:  `(arange(n+1) * (last // (n+1)))[::-1][:-1] + steps_offset`
 *  - trailing: `round(arange(last, 0, -N/n)) - 1` */
inline std::vector<std::int64_t> dpm_timesteps(TimestepSpacing spacing, std::int64_t num_train_timesteps,
                                               std::int64_t num_inference_steps, std::int64_t steps_offset = 0,
                                               std::int64_t last_timestep = -1) {
  constexpr std::string_view where = "dpm_timesteps";
  detail::check_steps(where, num_train_timesteps, num_inference_steps, false);
  if (last_timestep < 0) last_timestep = num_train_timesteps;
  if (last_timestep < 1 || last_timestep > num_train_timesteps)
    raise<value_error>(where, "last_timestep must be in [1, num_train_timesteps], got " + std::to_string(last_timestep));
  detail::check_offset(where, num_train_timesteps, steps_offset);
  const std::int64_t n = num_inference_steps;
  std::vector<std::int64_t> t;
  switch (spacing) {
    case TimestepSpacing::linspace: {
      const auto l = detail::np_linspace(0.0, static_cast<double>(last_timestep - 1), n + 1);
      for (std::int64_t i = n; i >= 1; --i)
        t.push_back(static_cast<std::int64_t>(detail::np_round(l[static_cast<std::size_t>(i)])));
      break;
    }
    case TimestepSpacing::leading: {
      const std::int64_t ratio = last_timestep / (n + 1);
      for (std::int64_t i = n; i >= 1; --i) t.push_back(i * ratio + steps_offset);
      break;
    }
    case TimestepSpacing::trailing: {
      const double ratio = static_cast<double>(num_train_timesteps) / static_cast<double>(n);
      for (double v : detail::np_arange(static_cast<double>(last_timestep), 0.0, -ratio))
        t.push_back(static_cast<std::int64_t>(detail::np_round(v)) - 1);
      break;
    }
  }
  return t;
}

/// DPMSolverSinglestep timesteps: always `round(linspace(0, N-1-clipped_index, n+1))[::-1][:-1]`.
inline std::vector<std::int64_t> dpm_singlestep_timesteps(std::int64_t num_train_timesteps,
                                                          std::int64_t num_inference_steps,
                                                          std::int64_t clipped_index = 0) {
  detail::check_steps("dpm_singlestep_timesteps", num_train_timesteps, num_inference_steps);
  if (clipped_index < 0 || clipped_index >= num_train_timesteps)
    raise<value_error>("dpm_singlestep_timesteps",
                       "clipped_index must be in [0, num_train_timesteps), got " + std::to_string(clipped_index));
  const auto l = detail::np_linspace(0.0, static_cast<double>(num_train_timesteps - 1 - clipped_index),
                                     num_inference_steps + 1);
  std::vector<std::int64_t> t;
  for (std::int64_t i = num_inference_steps; i >= 1; --i)
    t.push_back(static_cast<std::int64_t>(detail::np_round(l[static_cast<std::size_t>(i)])));
  return t;
}

/** LCM timesteps (Luo et al., "Latent Consistency Models", arXiv:2310.04378; diffusers
 *  `LCMScheduler.set_timesteps`): the distillation grid `k*[1..orig*strength] - 1` with
 *  `k = N // orig`, reversed, sampled at `floor(linspace(0, len, n, endpoint=False))`. */
inline std::vector<std::int64_t> lcm_timesteps(std::int64_t num_train_timesteps, std::int64_t num_inference_steps,
                                               std::int64_t original_inference_steps = 50, double strength = 1.0) {
  constexpr std::string_view where = "lcm_timesteps";
  detail::check_steps(where, num_train_timesteps, num_inference_steps);
  if (original_inference_steps < 1 || original_inference_steps > num_train_timesteps)
    raise<value_error>(where, "original_inference_steps must be in [1, num_train_timesteps], got " +
                                  std::to_string(original_inference_steps));
  if (!(strength > 0.0 && strength <= 1.0))
    raise<value_error>(where, "strength must be in (0, 1], got " + std::to_string(strength));
  const std::int64_t k = num_train_timesteps / original_inference_steps;
  const auto count = static_cast<std::int64_t>(static_cast<double>(original_inference_steps) * strength);
  if (count / num_inference_steps < 1)
    raise<value_error>(where, "num_inference_steps (" + std::to_string(num_inference_steps) +
                                  ") exceeds original_inference_steps x strength (" + std::to_string(count) + ")");
  if (num_inference_steps > original_inference_steps)
    raise<value_error>(where, "num_inference_steps cannot be larger than original_inference_steps");
  std::vector<std::int64_t> origin;
  for (std::int64_t i = count; i >= 1; --i) origin.push_back(i * k - 1);
  const auto idx = detail::np_linspace(0.0, static_cast<double>(origin.size()), num_inference_steps, false);
  std::vector<std::int64_t> t;
  for (double v : idx) t.push_back(origin[static_cast<std::size_t>(std::floor(v))]);
  return t;
}

DIFFUSE_END_NAMESPACE
