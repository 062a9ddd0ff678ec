// SPDX-License-Identifier: MIT
/** @file sigmas.hpp
 *  Noise levels ("sigmas", the VE/Karras parameterisation `x = x0 + sigma*eps`) for samplers:
 *  the training sigmas of a discrete VP schedule, their interpolation at inference timesteps,
 *  the Karras / exponential / polyexponential / beta / simple / sgm_uniform schedules, and the
 *  timestep <-> sigma maps of diffusers and k-diffusion.
 *
 *  Schedule generators are named as k-diffusion names them (`get_sigmas_karras`, ...), compute in
 *  double as diffusers' numpy code does, and by default append the final zero as k-diffusion does.
 *
 *  **Example**:
 *  ```
 *  auto ac = diffuse::alphas_cumprod(diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012));
 *  auto train = diffuse::train_sigmas(ac);                            // ascending, 0.0292 .. 14.61
 *  auto s = diffuse::get_sigmas_karras(25, train.front(), train.back());  // 26 floats, last 0
 *  ``` */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/numeric.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// What diffusers appends after the last inference sigma (`final_sigmas_type`).
enum class FinalSigmas {
  zero,       ///< 0: the sampler ends on the clean sample
  sigma_min,  ///< `sqrt((1 - ac[0]) / ac[0])`, the smallest training sigma
};

/// Parses a `final_sigmas_type` name ("zero", "sigma_min").
inline FinalSigmas final_sigmas_from_name(std::string_view name) {
  if (name == "zero") return FinalSigmas::zero;
  if (name == "sigma_min") return FinalSigmas::sigma_min;
  raise<value_error>("final_sigmas_from_name",
                     "final_sigmas_type: unknown name " + detail::quoted(name) + " (expected zero or sigma_min)");
}

namespace detail {
inline std::string num(double v) {
  std::string s = std::to_string(v);
  if (std::fabs(v) < 1e-3 && v != 0.0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    s = buf;
  }
  return s;
}

inline void check_count(std::string_view where, std::int64_t n) {
  if (n < 1) raise<value_error>(where, "n must be >= 1, got " + std::to_string(n));
}

inline void check_range(std::string_view where, double sigma_min, double sigma_max, bool positive) {
  if (!std::isfinite(sigma_min) || sigma_min < 0.0 || (positive && sigma_min == 0.0))
    raise<value_error>(where, std::string("sigma_min must be finite and ") + (positive ? "> 0" : ">= 0") + ", got " +
                                  num(sigma_min));
  if (!std::isfinite(sigma_max) || sigma_max < sigma_min)
    raise<value_error>(where, "sigma_max must be finite and >= sigma_min (" + num(sigma_min) + "), got " +
                                  num(sigma_max));
}

template <class T>
std::vector<T> finish(const std::vector<double>& s, bool append_zero) {
  std::vector<T> r;
  r.reserve(s.size() + 1);
  for (double v : s) r.push_back(static_cast<T>(v));
  if (append_zero) r.push_back(T(0));
  return r;
}

inline double log_beta_function(double a, double b) { return std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b); }

/// Continued fraction of I_x(a, b) (DLMF 8.17.22), evaluated with the modified Lentz method.
inline double incomplete_beta_cf(double a, double b, double x) {
  constexpr double tiny = 1e-300;
  constexpr double eps = 1e-16;
  double c = 1.0;
  double d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double f = d;
  for (int m = 1; m <= 10000; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));  // even step d_{2m}
    d = 1.0 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    f *= d * c;
    aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));  // odd step d_{2m+1}
    d = 1.0 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double delta = d * c;
    f *= delta;
    if (std::fabs(delta - 1.0) < eps) break;
  }
  return f;
}
}  // namespace detail

/** The regularized incomplete beta function I_x(a, b) (the CDF of Beta(a, b)), in double, to
 *  about 1e-15. Raises value_error unless a > 0, b > 0 and x in [0, 1]. */
inline double regularized_incomplete_beta(double x, double a, double b) {
  constexpr std::string_view where = "regularized_incomplete_beta";
  if (!(a > 0.0) || !std::isfinite(a)) raise<value_error>(where, "a must be finite and > 0, got " + detail::num(a));
  if (!(b > 0.0) || !std::isfinite(b)) raise<value_error>(where, "b must be finite and > 0, got " + detail::num(b));
  if (!(x >= 0.0 && x <= 1.0)) raise<value_error>(where, "x must be in [0, 1], got " + detail::num(x));
  if (x == 0.0) return 0.0;
  if (x == 1.0) return 1.0;
  const double front = std::exp(a * std::log(x) + b * std::log1p(-x) - detail::log_beta_function(a, b));
  if (x < (a + 1.0) / (a + b + 2.0)) return front * detail::incomplete_beta_cf(a, b, x) / a;
  return 1.0 - front * detail::incomplete_beta_cf(b, a, 1.0 - x) / b;
}

/** The inverse of I_x(a, b) in x: `scipy.stats.beta.ppf(p, a, b)`, in double to ~1e-14.
 *  Safeguarded Newton iteration on a shrinking bracket; ppf(0) = 0 and ppf(1) = 1. */
inline double beta_ppf(double p, double a, double b) {
  constexpr std::string_view where = "beta_ppf";
  if (!(a > 0.0) || !std::isfinite(a)) raise<value_error>(where, "alpha must be finite and > 0, got " + detail::num(a));
  if (!(b > 0.0) || !std::isfinite(b)) raise<value_error>(where, "beta must be finite and > 0, got " + detail::num(b));
  if (!(p >= 0.0 && p <= 1.0)) raise<value_error>(where, "p must be in [0, 1], got " + detail::num(p));
  if (p == 0.0) return 0.0;
  if (p == 1.0) return 1.0;
  const double lbeta = detail::log_beta_function(a, b);
  // Starting point from the tails: I_x ~ x^a / (a B) near 0 and 1 - (1-x)^b / (b B) near 1.
  double x = 0.5;
  const double lo_guess = std::exp((std::log(p) + std::log(a) + lbeta) / a);
  const double hi_guess = 1.0 - std::exp((std::log1p(-p) + std::log(b) + lbeta) / b);
  if (lo_guess < 0.5 && regularized_incomplete_beta(lo_guess, a, b) >= p * 0.5) x = lo_guess;
  else if (hi_guess > 0.5 && hi_guess < 1.0) x = hi_guess;
  double lo = 0.0;
  double hi = 1.0;
  for (int it = 0; it < 400; ++it) {
    if (!(x > lo && x < hi)) x = 0.5 * (lo + hi);
    const double f = regularized_incomplete_beta(x, a, b) - p;
    if (f == 0.0) return x;
    if (f < 0.0) lo = x;
    else hi = x;
    const double log_pdf = (a - 1.0) * std::log(x) + (b - 1.0) * std::log1p(-x) - lbeta;
    const double step = f / std::exp(log_pdf);
    double next = x - step;
    if (!(next > lo && next < hi) || !std::isfinite(next)) next = 0.5 * (lo + hi);
    if (std::fabs(next - x) <= 4 * std::numeric_limits<double>::epsilon() * std::max(x, 1e-300) || hi - lo <= 0.0)
      return next;
    x = next;
  }
  return x;
}

/// Training sigmas `sqrt((1 - ac) / ac)` in float32 (ascending in t), as diffusers computes them.
/// A zero alphas_cumprod (zero terminal SNR without the 2^-24 patch) gives +inf.
inline std::vector<float> train_sigmas(std::span<const float> alphas_cumprod) {
  std::vector<float> s(alphas_cumprod.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const float a = alphas_cumprod[i];
    s[i] = std::sqrt(detail::rounded((1.0f - a) / a));
  }
  return s;
}

/// `np.log(sigmas)` of float32 training sigmas, kept in float32 (as `log_sigmas` in diffusers).
inline std::vector<float> log_sigmas(std::span<const float> sigmas) {
  std::vector<float> l(sigmas.size());
  for (std::size_t i = 0; i < l.size(); ++i) l[i] = static_cast<float>(std::log(static_cast<double>(sigmas[i])));
  return l;
}

/// `np.interp(timesteps, arange(L), train_sigmas)` in double: the sigma at each (fractional) timestep.
template <class T>
std::vector<double> interp_sigmas(std::span<const T> timesteps, std::span<const float> train) {
  if (train.empty()) raise<value_error>("interp_sigmas", "train sigmas are empty");
  std::vector<double> r(timesteps.size());
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = detail::np_interp_index(static_cast<double>(timesteps[i]), train);
  return r;
}

/** The fractional timestep of `sigma` by linear interpolation in log-sigma (diffusers
 *  `_sigma_to_t`; k-diffusion `DiscreteSchedule.sigma_to_t`). `log_sigmas` is ascending float32.
 *  `W` is the precision numpy works in: double for sigmas computed in float64, float for a
 *  user-given float32 sigma list (`set_timesteps(sigmas=...)`). */
template <class W = double>
double sigma_to_t(W sigma, std::span<const float> log_sigmas) {
  const std::size_t L = log_sigmas.size();
  if (L < 2) raise<value_error>("sigma_to_t", "log_sigmas needs at least 2 entries, got " + std::to_string(L));
  const W floor_v = static_cast<W>(1e-10);
  const W ls = static_cast<W>(std::log(static_cast<double>(sigma > floor_v ? sigma : floor_v)));
  std::size_t low = 0;
  for (std::size_t i = 0; i < L; ++i)
    if (ls - static_cast<W>(log_sigmas[i]) >= W(0)) low = i;  // last index with dists >= 0 (argmax of cumsum)
  if (low > L - 2) low = L - 2;
  const float lo = log_sigmas[low];
  const float hi = log_sigmas[low + 1];
  const float span = lo - hi;  // float32 in numpy as well: both operands are float32
  W w = static_cast<W>((static_cast<W>(lo) - ls) / static_cast<W>(span));
  w = std::clamp(w, W(0), W(1));
  const double wd = static_cast<double>(w);
  return detail::rounded((1.0 - wd) * static_cast<double>(low)) + detail::rounded(wd * static_cast<double>(low + 1));
}

/** The sigma at fractional timestep `t` by log-linear interpolation (k-diffusion
 *  `DiscreteSchedule.t_to_sigma`, ComfyUI `ModelSamplingDiscrete.sigma`); `t` is clamped to
 *  [0, L-1]. */
inline double t_to_sigma(double t, std::span<const float> log_sigmas) {
  if (log_sigmas.empty()) raise<value_error>("t_to_sigma", "log_sigmas is empty");
  if (std::isnan(t)) raise<value_error>("t_to_sigma", "t is NaN");
  const double tc = std::clamp(t, 0.0, static_cast<double>(log_sigmas.size() - 1));
  const auto low = static_cast<std::size_t>(std::floor(tc));
  const auto high = static_cast<std::size_t>(std::ceil(tc));
  const double w = tc - std::floor(tc);
  return std::exp(detail::rounded((1.0 - w) * static_cast<double>(log_sigmas[low])) +
                  detail::rounded(w * static_cast<double>(log_sigmas[high])));
}

/** Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
 *  eq. 5: `(smax^(1/rho) + i/(n-1) * (smin^(1/rho) - smax^(1/rho)))^rho`, i = 0..n-1, in double
 *  with `np.linspace` ramp (diffusers `_convert_to_karras`), plus a final 0 if `append_zero`.
 *  The first and last values are sigma_max and sigma_min up to the rounding of the powers. */
template <class T = float>
std::vector<T> get_sigmas_karras(std::int64_t n, double sigma_min, double sigma_max, double rho = 7.0,
                                 bool append_zero = true) {
  constexpr std::string_view where = "get_sigmas_karras";
  detail::check_count(where, n);
  detail::check_range(where, sigma_min, sigma_max, false);
  if (!(rho > 0.0) || !std::isfinite(rho)) raise<value_error>(where, "rho must be finite and > 0, got " + detail::num(rho));
  const auto ramp = detail::np_linspace(0.0, 1.0, n);
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> s(ramp.size());
  for (std::size_t i = 0; i < s.size(); ++i)
    s[i] = std::pow(max_inv_rho + detail::rounded(ramp[i] * (min_inv_rho - max_inv_rho)), rho);
  return detail::finish<T>(s, append_zero);
}

/// Sigmas evenly spaced in log-sigma: `exp(np.linspace(ln smax, ln smin, n))` (k-diffusion
/// `get_sigmas_exponential`, diffusers `_convert_to_exponential`), plus a final 0 if `append_zero`.
template <class T = float>
std::vector<T> get_sigmas_exponential(std::int64_t n, double sigma_min, double sigma_max, bool append_zero = true) {
  constexpr std::string_view where = "get_sigmas_exponential";
  detail::check_count(where, n);
  detail::check_range(where, sigma_min, sigma_max, true);
  auto s = detail::np_linspace(std::log(sigma_max), std::log(sigma_min), n);
  for (auto& v : s) v = std::exp(v);
  return detail::finish<T>(s, append_zero);
}

/// k-diffusion `get_sigmas_polyexponential`: `exp(ramp^rho * (ln smax - ln smin) + ln smin)`
/// with `ramp = linspace(1, 0, n)`, in double, plus a final 0 if `append_zero`.
template <class T = float>
std::vector<T> get_sigmas_polyexponential(std::int64_t n, double sigma_min, double sigma_max, double rho = 1.0,
                                          bool append_zero = true) {
  constexpr std::string_view where = "get_sigmas_polyexponential";
  detail::check_count(where, n);
  detail::check_range(where, sigma_min, sigma_max, true);
  if (!(rho > 0.0) || !std::isfinite(rho)) raise<value_error>(where, "rho must be finite and > 0, got " + detail::num(rho));
  const double lmin = std::log(sigma_min);
  const double lmax = std::log(sigma_max);
  auto s = detail::np_linspace(1.0, 0.0, n);
  for (auto& v : s) v = std::exp(detail::rounded(std::pow(v, rho) * (lmax - lmin)) + lmin);
  return detail::finish<T>(s, append_zero);
}

/** Beta-distributed sigmas: Lee et al. (2024), "Beta Sampling is All You Need"
 *  (arXiv:2407.12173), as diffusers `_convert_to_beta`:
 *  `smin + ppf(1 - linspace(0, 1, n)[i]; alpha, beta) * (smax - smin)`, plus a final 0 if
 *  `append_zero`. The inverse regularized incomplete beta is `beta_ppf`. */
template <class T = float>
std::vector<T> get_sigmas_beta(std::int64_t n, double sigma_min, double sigma_max, double alpha = 0.6,
                               double beta = 0.6, bool append_zero = true) {
  constexpr std::string_view where = "get_sigmas_beta";
  detail::check_count(where, n);
  detail::check_range(where, sigma_min, sigma_max, false);
  if (!(alpha > 0.0) || !std::isfinite(alpha))
    raise<value_error>(where, "alpha must be finite and > 0, got " + detail::num(alpha));
  if (!(beta > 0.0) || !std::isfinite(beta))
    raise<value_error>(where, "beta must be finite and > 0, got " + detail::num(beta));
  auto s = detail::np_linspace(0.0, 1.0, n);
  for (auto& v : s) v = sigma_min + detail::rounded(beta_ppf(1.0 - v, alpha, beta) * (sigma_max - sigma_min));
  return detail::finish<T>(s, append_zero);
}

/** ComfyUI's "simple" schedule (`comfy/samplers.py::simple_scheduler`): `steps` training sigmas
 *  taken from the top at stride `L/steps`, `sigmas[L-1-floor(x*L/steps)]`, plus a final 0.
 *  `train` is the ascending training sigma table. */
template <class T = float>
std::vector<T> get_sigmas_simple(std::span<const float> train, std::int64_t steps) {
  constexpr std::string_view where = "get_sigmas_simple";
  detail::check_count(where, steps);
  if (train.empty()) raise<value_error>(where, "train sigmas are empty");
  const double ss = static_cast<double>(train.size()) / static_cast<double>(steps);
  std::vector<T> r;
  for (std::int64_t x = 0; x < steps; ++x) {
    const auto k = static_cast<std::size_t>(static_cast<double>(x) * ss);  // Python int(): truncation
    r.push_back(static_cast<T>(train[train.size() - 1 - std::min(k, train.size() - 1)]));
  }
  r.push_back(T(0));
  return r;
}

namespace detail {
/// ComfyUI `ModelSamplingDiscrete.timestep`: the index of the nearest log-sigma.
inline std::size_t nearest_timestep(double sigma, std::span<const float> log_sig) {
  const double ls = std::log(sigma);
  std::size_t best = 0;
  for (std::size_t i = 1; i < log_sig.size(); ++i)
    if (std::fabs(ls - log_sig[i]) < std::fabs(ls - log_sig[best])) best = i;
  return best;
}
}  // namespace detail

/** ComfyUI's "normal" (`sgm = false`) and "sgm_uniform" (`sgm = true`) schedules
 *  (`comfy/samplers.py::normal_scheduler`): timesteps evenly spaced from t(sigma_max) to
 *  t(sigma_min) (`steps` points, or `steps + 1` with the last dropped for sgm_uniform), mapped to
 *  sigmas by `t_to_sigma`, plus a final 0. For "normal", when sigma(t_end) is ~0 the zero is not
 *  appended and one more point is taken instead. */
template <class T = float>
std::vector<T> get_sigmas_normal(std::span<const float> train, std::int64_t steps, bool sgm = false) {
  constexpr std::string_view where = "get_sigmas_normal";
  detail::check_count(where, steps);
  if (train.size() < 2) raise<value_error>(where, "train sigmas need at least 2 entries");
  const auto log_sig = log_sigmas(train);
  const auto start = static_cast<double>(detail::nearest_timestep(train.back(), log_sig));
  const auto end = static_cast<double>(detail::nearest_timestep(train.front(), log_sig));
  bool append_zero = true;
  std::vector<float> ts;
  if (sgm) {
    ts = detail::torch_linspace_f32(start, end, steps + 1);
    ts.pop_back();
  } else {
    if (std::fabs(t_to_sigma(end, log_sig)) <= 1e-5) {
      ++steps;
      append_zero = false;
    }
    ts = detail::torch_linspace_f32(start, end, steps);
  }
  std::vector<T> r;
  for (float t : ts) r.push_back(static_cast<T>(static_cast<float>(t_to_sigma(t, log_sig))));
  if (append_zero) r.push_back(T(0));
  return r;
}

/// ComfyUI's "sgm_uniform" schedule: `get_sigmas_normal(train, steps, true)`.
template <class T = float>
std::vector<T> get_sigmas_sgm_uniform(std::span<const float> train, std::int64_t steps) {
  return get_sigmas_normal<T>(train, steps, true);
}

/** Checks a user-given sigma list: non-empty, every entry finite and >= 0, strictly decreasing.
 *  Raises value_error naming the first offending index. */
template <class T>
void validate_sigmas(std::span<const T> sigmas, std::string_view where = "validate_sigmas") {
  if (sigmas.empty()) raise<value_error>(where, "sigmas is empty");
  for (std::size_t i = 0; i < sigmas.size(); ++i) {
    const auto v = static_cast<double>(sigmas[i]);
    if (!std::isfinite(v))
      raise<value_error>(where, "sigmas[" + std::to_string(i) + "] is not finite (" + std::to_string(v) + ")");
    if (v < 0.0) raise<value_error>(where, "sigmas[" + std::to_string(i) + "] = " + detail::num(v) + " is negative");
    if (i > 0 && !(v < static_cast<double>(sigmas[i - 1])))
      raise<value_error>(where, "sigmas must be strictly decreasing: sigmas[" + std::to_string(i) + "] = " +
                                    detail::num(v) + " >= sigmas[" + std::to_string(i - 1) +
                                    "] = " + detail::num(static_cast<double>(sigmas[i - 1])));
  }
}

/// The value diffusers appends for `final_sigmas_type`: 0, or `sqrt((1-ac[0])/ac[0])` in float32.
inline float final_sigma(FinalSigmas type, std::span<const float> alphas_cumprod) {
  if (type == FinalSigmas::zero) return 0.0f;
  if (alphas_cumprod.empty()) raise<value_error>("final_sigma", "alphas_cumprod is empty");
  return train_sigmas(alphas_cumprod.first(1))[0];
}

DIFFUSE_END_NAMESPACE
