// SPDX-License-Identifier: MIT
/** @file flow.hpp
 *  Flow-matching / rectified-flow schedules (`x_sigma = (1 - sigma) x0 + sigma * noise`): the
 *  sigmas of diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux), its static and dynamic
 *  (resolution-dependent) shifts, the terminal stretch, and the `calculate_shift` of the Flux/SD3
 *  pipelines.
 *
 *  Shifts: Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution Image
 *  Synthesis" (arXiv:2403.03206), eq. 23: `shift*t / (1 + (shift-1)*t)`; the dynamic form
 *  `e^mu / (e^mu + (1/t - 1))` is the same with `shift = e^mu`.
 *
 *  **Example**:
 *  ```
 *  double mu = diffuse::calculate_shift(4096);                     // 1.15 for a 1024x1024 Flux image
 *  auto s = diffuse::flow_match_sigmas({.use_dynamic_shifting = true}, 28, mu);
 *  // s.sigmas: 29 floats from 1.0 down to 0; s.timesteps = sigmas * 1000
 *  ``` */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/numeric.hpp"
#include "diffuse/schedule/sigmas.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// `time_shift_type` of diffusers' flow schedulers.
enum class TimeShift { exponential, linear };

/// Parses a `time_shift_type` name ("exponential", "linear").
inline TimeShift time_shift_from_name(std::string_view name) {
  if (name == "exponential") return TimeShift::exponential;
  if (name == "linear") return TimeShift::linear;
  raise<value_error>("time_shift_from_name",
                     "time_shift_type: unknown name " + detail::quoted(name) + " (expected exponential or linear)");
}

/** `calculate_shift` of the Flux/SD3 pipelines: mu linear in the image sequence length (number of
 *  latent patches), from `base_shift` at `base_seq_len` to `max_shift` at `max_seq_len`. */
inline double calculate_shift(double image_seq_len, double base_seq_len = 256, double max_seq_len = 4096,
                              double base_shift = 0.5, double max_shift = 1.15) {
  constexpr std::string_view where = "calculate_shift";
  if (!std::isfinite(image_seq_len) || image_seq_len < 0)
    raise<value_error>(where, "image_seq_len must be finite and >= 0, got " + detail::num(image_seq_len));
  if (!std::isfinite(base_seq_len) || !std::isfinite(max_seq_len) || max_seq_len == base_seq_len)
    raise<value_error>(where, "max_seq_len must differ from base_seq_len and both be finite");
  if (!std::isfinite(base_shift) || !std::isfinite(max_shift))
    raise<value_error>(where, "base_shift and max_shift must be finite");
  const double m = (max_shift - base_shift) / (max_seq_len - base_seq_len);
  const double b = base_shift - detail::rounded(m * base_seq_len);
  return detail::rounded(image_seq_len * m) + b;
}

/// Static shift `shift*t / (1 + (shift-1)*t)` (SD3 eq. 23), in double.
inline double shift_sigma(double t, double shift) noexcept {
  return shift * t / (1.0 + detail::rounded((shift - 1.0) * t));
}

/// Dynamic shift: `e^mu / (e^mu + (1/t - 1))` (exponential) or `mu / (mu + (1/t - 1))` (linear).
inline double time_shift(TimeShift type, double mu, double t) noexcept {
  if (type == TimeShift::exponential) {
    const double e = std::exp(mu);
    return e / (e + (1.0 / t - 1.0));
  }
  return mu / (mu + (1.0 / t - 1.0));
}

/** `stretch_shift_to_terminal`: rescales `1 - s` so that the last sigma becomes `shift_terminal`
 *  (used by LTX-Video and Wan). In place, in double. */
inline void stretch_shift_to_terminal(std::vector<double>& s, double shift_terminal) {
  constexpr std::string_view where = "stretch_shift_to_terminal";
  if (!(shift_terminal >= 0.0 && shift_terminal < 1.0))
    raise<value_error>(where, "shift_terminal must be in [0, 1), got " + detail::num(shift_terminal));
  if (s.empty()) return;
  const double scale = (1.0 - s.back()) / (1.0 - shift_terminal);
  if (!(scale != 0.0)) raise<value_error>(where, "the last sigma is 1: nothing to stretch");
  for (auto& v : s) v = 1.0 - (1.0 - v) / scale;
}

/// How FlowMatchEulerDiscreteScheduler builds its sigmas (its config keys).
struct FlowMatchOptions {
  std::int64_t num_train_timesteps = 1000;
  double shift = 1.0;                   ///< static shift; ignored when use_dynamic_shifting
  bool use_dynamic_shifting = false;    ///< shift by `mu` (set_timesteps' argument) instead
  TimeShift time_shift_type = TimeShift::exponential;
  std::optional<double> shift_terminal;  ///< stretch so the last sigma equals this
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  bool invert_sigmas = false;           ///< Mochi: sigmas = 1 - sigmas, final 1 instead of 0
};

/// Timesteps and sigmas of a flow schedule.
struct FlowSchedule {
  std::vector<float> timesteps;  ///< n values, `sigmas * num_train_timesteps` in float32
  std::vector<float> sigmas;     ///< n + 1 values, the last 0 (or 1 with invert_sigmas)
};

namespace detail {
/// The float32 training sigmas of FlowMatch `__init__`: `linspace(1, N, N)[::-1] / N`, shifted
/// statically in float32 unless dynamic.
inline std::vector<float> flow_train_sigmas(std::int64_t N, double shift, bool dynamic) {
  std::vector<float> s(static_cast<std::size_t>(N));
  const auto nf = static_cast<float>(N);
  const auto sh = static_cast<float>(shift);
  const auto sh1 = static_cast<float>(shift - 1.0);
  for (std::int64_t i = 0; i < N; ++i) {
    float v = static_cast<float>(N - i) / nf;
    if (!dynamic) v = rounded(sh * v) / (1.0f + rounded(sh1 * v));
    s[static_cast<std::size_t>(i)] = v;
  }
  return s;
}
}  // namespace detail

/** The timesteps and sigmas of `FlowMatchEulerDiscreteScheduler.set_timesteps(n, mu=mu)` in
 *  diffusers 0.42, to the bit where numpy's libm agrees with glibc:
 *  1. `t = np.linspace(sigma_max*N, sigma_min*N, n)`, `s = t/N`, where sigma_max/min are the
 *     (statically shifted, float32) ends of the training table;
 *  2. shift: `time_shift(mu)` if dynamic, else the static shift **again** (diffusers applies the
 *     static shift in `__init__` and in `set_timesteps`: huggingface/diffusers#13243);
 *  3. `shift_terminal` stretch; 4. optional karras / exponential / beta between the ends;
 *  5. float32; `timesteps = sigmas * N` in float32; append 0, or invert and append 1. */
inline FlowSchedule flow_match_sigmas(const FlowMatchOptions& opt, std::int64_t num_inference_steps,
                                      std::optional<double> mu = std::nullopt) {
  constexpr std::string_view where = "flow_match_sigmas";
  if (num_inference_steps < 1)
    raise<value_error>(where, "num_inference_steps must be >= 1, got " + std::to_string(num_inference_steps));
  if (opt.num_train_timesteps < 1)
    raise<value_error>(where, "num_train_timesteps must be >= 1, got " + std::to_string(opt.num_train_timesteps));
  if (!std::isfinite(opt.shift) || !(opt.shift > 0.0))
    raise<value_error>(where, "shift must be finite and > 0, got " + detail::num(opt.shift));
  if (int(opt.use_karras_sigmas) + int(opt.use_exponential_sigmas) + int(opt.use_beta_sigmas) > 1)
    raise<value_error>(where, "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be set");
  if (opt.use_dynamic_shifting && !mu)
    raise<value_error>(where, "mu must be given when use_dynamic_shifting is set");
  if (mu && !std::isfinite(*mu)) raise<value_error>(where, "mu must be finite, got " + detail::num(*mu));
  if (mu && opt.use_dynamic_shifting && opt.time_shift_type == TimeShift::linear && !(*mu > 0.0))
    raise<value_error>(where, "mu must be > 0 for the linear time shift, got " + detail::num(*mu));
  const auto N = static_cast<double>(opt.num_train_timesteps);
  const auto train = detail::flow_train_sigmas(opt.num_train_timesteps, opt.shift, opt.use_dynamic_shifting);
  const double sigma_max = train.front();
  const double sigma_min = train.back();
  auto s = detail::np_linspace(sigma_max * N, sigma_min * N, num_inference_steps);
  for (auto& v : s) v = v / N;
  for (auto& v : s)
    v = opt.use_dynamic_shifting ? time_shift(opt.time_shift_type, *mu, v) : shift_sigma(v, opt.shift);
  if (opt.shift_terminal && *opt.shift_terminal != 0.0) stretch_shift_to_terminal(s, *opt.shift_terminal);
  const auto n = num_inference_steps;
  if (opt.use_karras_sigmas) s = get_sigmas_karras<double>(n, s.back(), s.front(), 7.0, false);
  else if (opt.use_exponential_sigmas) s = get_sigmas_exponential<double>(n, s.back(), s.front(), false);
  else if (opt.use_beta_sigmas) s = get_sigmas_beta<double>(n, s.back(), s.front(), 0.6, 0.6, false);
  FlowSchedule out;
  const auto nf = static_cast<float>(N);
  for (double v : s) {
    float f = static_cast<float>(v);
    if (opt.invert_sigmas) f = 1.0f - f;
    out.sigmas.push_back(f);
    out.timesteps.push_back(f * nf);
  }
  out.sigmas.push_back(opt.invert_sigmas ? 1.0f : 0.0f);
  return out;
}

/** `FlowMatchHeunDiscreteScheduler.set_timesteps(n)`: the static-shift flow schedule, with every
 *  interior entry doubled for the two Heun stages: `timesteps = [t0, t1, t1, ...]` (2n - 1),
 *  `sigmas = [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]` (2n). */
inline FlowSchedule flow_match_heun_sigmas(std::int64_t num_train_timesteps, double shift,
                                           std::int64_t num_inference_steps) {
  FlowMatchOptions opt;
  opt.num_train_timesteps = num_train_timesteps;
  opt.shift = shift;
  const auto base = flow_match_sigmas(opt, num_inference_steps);
  FlowSchedule out;
  for (std::size_t i = 0; i < base.timesteps.size(); ++i) {
    out.timesteps.push_back(base.timesteps[i]);
    if (i > 0) out.timesteps.push_back(base.timesteps[i]);
  }
  for (std::size_t i = 0; i < base.sigmas.size(); ++i) {
    out.sigmas.push_back(base.sigmas[i]);
    if (i > 0 && i + 1 < base.sigmas.size()) out.sigmas.push_back(base.sigmas[i]);
  }
  return out;
}

/** Flow sigmas of DPM-Solver (multistep and singlestep) and DEIS with `use_flow_sigmas`:
 *  `a = np.linspace(1, 1/N, n+1)`, `s = shift(1 - a)` flipped, last (zero) dropped: n values
 *  descending, in double. */
inline std::vector<double> flow_sigmas_dpm(std::int64_t num_train_timesteps, std::int64_t n, double flow_shift) {
  if (n < 1) raise<value_error>("flow_sigmas_dpm", "n must be >= 1, got " + std::to_string(n));
  const auto a = detail::np_linspace(1.0, 1.0 / static_cast<double>(num_train_timesteps), n + 1);
  std::vector<double> s;
  for (std::int64_t i = n; i >= 1; --i) s.push_back(shift_sigma(1.0 - a[static_cast<std::size_t>(i)], flow_shift));
  return s;
}

/** Flow sigmas of UniPC with `use_flow_sigmas`: `np.linspace(1, 1/N, n+1)[:-1]`, shifted
 *  statically by `flow_shift` or, if `dynamic`, by `time_shift(mu)`, optionally stretched to `shift_terminal`,
 *  and `s[0] -= 1e-6` when it is within 1e-6 of 1. n values descending, in double. */
inline std::vector<double> flow_sigmas_unipc(std::int64_t num_train_timesteps, std::int64_t n, double flow_shift,
                                             bool dynamic = false, double mu = 0.0,
                                             TimeShift type = TimeShift::exponential,
                                             std::optional<double> shift_terminal = std::nullopt) {
  if (n < 1) raise<value_error>("flow_sigmas_unipc", "n must be >= 1, got " + std::to_string(n));
  auto s = detail::np_linspace(1.0, 1.0 / static_cast<double>(num_train_timesteps), n + 1);
  s.pop_back();
  for (auto& v : s) v = dynamic ? time_shift(type, mu, v) : shift_sigma(v, flow_shift);
  if (shift_terminal && *shift_terminal != 0.0) stretch_shift_to_terminal(s, *shift_terminal);
  if (std::fabs(s[0] - 1.0) < 1e-6) s[0] -= 1e-6;
  return s;
}

DIFFUSE_END_NAMESPACE
