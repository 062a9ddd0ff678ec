// SPDX-License-Identifier: MIT
/** @file parameterization.hpp
 *  Turns a raw network `net(x_in, t) -> output` into a denoiser D(x, sigma), with the
 *  preconditioning of Karras et al. 2022 (arXiv:2206.00364, §5 and Table 1):
 *
 *      D(x, sigma) = c_skip(sigma) x + c_out(sigma) net(c_in(sigma) x, t(sigma))
 *
 *  | prediction     | c_skip            | c_out                   | c_in              | t(sigma)        |
 *  |----------------|-------------------|-------------------------|-------------------|-----------------|
 *  | `epsilon`      | 1                 | -sigma                  | 1/sqrt(sigma²+1)  | train-table t   |
 *  | `v_prediction` | 1/(sigma²+1)      | -sigma/sqrt(sigma²+1)   | 1/sqrt(sigma²+1)  | train-table t   |
 *  | `sample` (x0)  | 0                 | 1                       | 1/sqrt(sigma²+1)  | train-table t   |
 *  | `flow`         | 1                 | -sigma                  | 1                 | sigma * scale   |
 *
 *  VP models (epsilon, v, sample) run in the VE space: x = x_vp / sqrt(ac), sigma = sqrt((1-ac)/ac),
 *  so the network sees x_vp = c_in x. The discrete timestep is recovered from sigma by linear
 *  interpolation in log-sigma over the train sigma table (k-diffusion `DiscreteSchedule.sigma_to_t`,
 *  diffusers `_sigma_to_t`). Flow models (rectified flow, x = (1-s) x0 + s eps, the network predicts
 *  v = eps - x0) run in the flow space with t = sigma * `flow_time_scale` (1000 by default).
 *
 *  Optional post-processing of x0 (diffusers `clip_sample`, and `thresholding`, the dynamic
 *  thresholding of Saharia et al. 2022, Imagen, arXiv:2205.11487 §2.3; thresholding wins when
 *  both are set).
 *
 *  **Example**
 *  @code
 *  auto net = [&](const diffuse::Tensor& x_in, float t) { return unet.forward(x_in, t, context); };
 *  auto d = diffuse::make_denoiser<float>(net, diffuse::Prediction::epsilon, train_sigmas);
 *  @endcode
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/denoise/denoiser.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// What the network outputs.
enum class Prediction { epsilon, v_prediction, sample, flow };

/// "epsilon", "v_prediction", "sample", "flow" (also diffusers' "flow_prediction"); value_error otherwise.
inline Prediction parse_prediction(std::string_view s) {
  if (s == "epsilon") return Prediction::epsilon;
  if (s == "v_prediction" || s == "v") return Prediction::v_prediction;
  if (s == "sample" || s == "x0") return Prediction::sample;
  if (s == "flow" || s == "flow_prediction") return Prediction::flow;
  raise<value_error>("parse_prediction", "unknown prediction type '" + std::string(s) +
                                             "' (known: epsilon, v_prediction, sample, flow)");
}

/// The Karras et al. 2022 preconditioning coefficients.
template <class T>
struct Scalings {
  T c_skip, c_out, c_in;
};

/// c_skip, c_out, c_in for `p` at noise level sigma (see the table in the file comment).
template <class T>
Scalings<T> scalings(Prediction p, T sigma) {
  const T s2p1 = sigma * sigma + T(1);
  const T c_in = T(1) / std::sqrt(s2p1);
  switch (p) {
    case Prediction::epsilon: return {T(1), -sigma, c_in};
    case Prediction::v_prediction: return {T(1) / s2p1, -sigma / std::sqrt(s2p1), c_in};
    case Prediction::sample: return {T(0), T(1), c_in};
    case Prediction::flow: return {T(1), -sigma, T(1)};
  }
  return {T(1), -sigma, c_in};
}

/** The fractional train timestep of `sigma`: log-sigma linear interpolation over the ascending
 *  train sigma table (diffusers `_sigma_to_t`, schedulers.md §2.2), clamped to [0, N-1]. */
template <class T>
T sigma_to_t(T sigma, const std::vector<T>& log_sigmas) {
  const std::size_t n = log_sigmas.size();
  const T ls = std::log(std::max(sigma, T(1e-10)));
  // low = last i with ls >= log_sigmas[i], clipped to n-2.
  std::size_t low = 0;
  const auto it = std::upper_bound(log_sigmas.begin(), log_sigmas.end(), ls);
  if (it != log_sigmas.begin()) low = static_cast<std::size_t>(it - log_sigmas.begin()) - 1;
  low = std::min(low, n - 2);
  const std::size_t high = low + 1;
  T w = (log_sigmas[low] - ls) / (log_sigmas[low] - log_sigmas[high]);
  w = std::clamp(w, T(0), T(1));
  return (T(1) - w) * static_cast<T>(low) + w * static_cast<T>(high);
}

/// Options of the parameterised denoiser.
template <class T>
struct ParameterizationOptions {
  bool clip_sample = false;            ///< clamp x0 to [-clip_sample_range, clip_sample_range]
  T clip_sample_range = T(1);
  bool thresholding = false;           ///< Imagen dynamic thresholding of x0, per batch item
  T dynamic_thresholding_ratio = T(0.995);
  T sample_max_value = T(1);
  T flow_time_scale = T(1000);         ///< flow models: t = sigma * flow_time_scale
  /// VP models: the network gets sigma_to_t(sigma) rounded to an integer (half to even, as
  /// torch.round), what diffusers' DDPM/DDIM/DPM-Solver/UniPC/DEIS/LCM pass as `timesteps`.
  bool integer_timesteps = false;
  /// VP models: (sigma, t) pairs of a schedule whose timesteps came first and whose sigmas were
  /// interpolated from them (diffusers' Euler-family set_timesteps): at a sigma equal to one of
  /// them the network gets that t, exactly what diffusers passes (249.75, where sigma_to_t's
  /// log-sigma inverse of the linear interpolation gives 249.75036); other sigmas use sigma_to_t.
  std::vector<std::pair<T, T>> timestep_table;
};

namespace detail {
/// A config value for an error message: shortest round-trip form ("5", "1.5", "-1", "nan").
inline std::string x0_value_text(double v) {
  if (std::isnan(v)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  for (int prec = 1; prec < 17; ++prec) {  // shortest form that reads back as v
    char t[32];
    std::snprintf(t, sizeof t, "%.*g", prec, v);
    if (std::strtod(t, nullptr) == v) return t;
  }
  return buf;
}
}  // namespace detail

/** Checks the x0 post-processing keys of a scheduler config (diffusers `clip_sample_range`,
 *  `dynamic_thresholding_ratio`, `sample_max_value`). Only the keys that are used are checked:
 *  the range when `clip_sample` is set, the ratio and the maximum when `thresholding` is set.
 *  Allowed: `dynamic_thresholding_ratio` in (0, 1] (the quantile of |x0|; diffusers passes it to
 *  torch.quantile, which rejects anything outside [0, 1], and 0 would threshold at min |x0|),
 *  `sample_max_value` > 0 and `clip_sample_range` > 0 (+inf allowed for both: no bound; 0 or a
 *  negative value would divide by zero or clamp to an empty interval). value_error naming the key,
 *  the value and the allowed range, raised from `where`. */
inline void check_x0_post_keys(std::string_view where, bool clip_sample, double clip_sample_range, bool thresholding,
                               double dynamic_thresholding_ratio, double sample_max_value) {
  auto bad = [where](std::string_view key, double v, std::string_view allowed) {
    raise<value_error>(where, "config key '" + std::string(key) + "' = " + detail::x0_value_text(v) +
                                  " is out of range: it must be " + std::string(allowed));
  };
  if (thresholding) {
    if (!(dynamic_thresholding_ratio > 0.0 && dynamic_thresholding_ratio <= 1.0))
      bad("dynamic_thresholding_ratio", dynamic_thresholding_ratio, "in (0, 1] (a quantile of |x0|)");
    if (!(sample_max_value > 0.0)) bad("sample_max_value", sample_max_value, "> 0");
  }
  if (clip_sample && !(clip_sample_range > 0.0)) bad("clip_sample_range", clip_sample_range, "> 0");
}

/** Imagen dynamic thresholding (Saharia et al. 2022, arXiv:2205.11487 §2.3; diffusers
 *  `_threshold_sample`), in place. Per batch item (dim 0): s = quantile(|x0|, ratio) with torch's
 *  linear interpolation, s = min(max(s, 1), max_value), x0 = clamp(x0, -s, s) / s.
 *  value_error unless ratio is in (0, 1] and max_value > 0 (see `check_x0_post_keys`); the
 *  quantile position is computed in double and clamped to the last element, so no value reads
 *  outside x0. */
template <class T>
void dynamic_threshold(BasicTensor<T>& x0, T ratio, T max_value) {
  check_x0_post_keys("dynamic_threshold", false, 1.0, true, static_cast<double>(ratio), static_cast<double>(max_value));
  const std::size_t batch = x0.ndim() > 0 ? x0.dim(0) : 1;
  if (batch == 0 || x0.size() == 0) return;
  const std::size_t per = x0.size() / batch;
  std::vector<T> a(per);
  for (std::size_t b = 0; b < batch; ++b) {
    T* p = x0.data() + b * per;
    for (std::size_t i = 0; i < per; ++i) a[i] = std::abs(p[i]);
    const double pos = std::min(static_cast<double>(ratio) * static_cast<double>(per - 1), static_cast<double>(per - 1));
    const std::size_t lo = std::min(static_cast<std::size_t>(std::floor(pos)), per - 1);
    const std::size_t hi = std::min(lo + 1, per - 1);
    std::nth_element(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(lo), a.end());
    const T vlo = a[lo];
    T vhi = vlo;
    if (hi != lo) vhi = *std::min_element(a.begin() + static_cast<std::ptrdiff_t>(lo) + 1, a.end());
    T s = vlo + static_cast<T>(pos - static_cast<double>(lo)) * (vhi - vlo);
    s = std::min(std::max(s, T(1)), max_value);  // torch.clamp(min=1, max=max_value)
    for (std::size_t i = 0; i < per; ++i) p[i] = std::clamp(p[i], -s, s) / s;
  }
}

/** A network wrapped into a denoiser by its prediction type. `Net` is any callable
 *  `(const BasicTensor<T>& x_in, T t) -> BasicTensor<T>`; conditioning is bound into it. */
template <class T, class Net>
class ParameterizedDenoiser {
 public:
  /// `train_sigmas`: the ascending train sigmas sqrt((1-ac)/ac) (needed by VP predictions, ignored by flow).
  ParameterizedDenoiser(Net net, Prediction prediction, const std::vector<T>& train_sigmas,
                        ParameterizationOptions<T> options = {})
      : net_(std::move(net)), p_(prediction), o_(options) {
    if (p_ != Prediction::flow) {
      if (train_sigmas.size() < 2)
        raise<value_error>("make_denoiser", "a VP prediction type needs the train sigma table (>= 2 values), got " +
                                                std::to_string(train_sigmas.size()));
      log_sigmas_.reserve(train_sigmas.size());
      for (std::size_t i = 0; i < train_sigmas.size(); ++i) {
        if (!(train_sigmas[i] > T(0)) || (i > 0 && train_sigmas[i] < train_sigmas[i - 1]))
          raise<value_error>("make_denoiser", "train sigmas must be positive and ascending (index " +
                                                  std::to_string(i) + ")");
        log_sigmas_.push_back(std::log(train_sigmas[i]));
      }
    }
    check_x0_post_keys("make_denoiser", o_.clip_sample, static_cast<double>(o_.clip_sample_range), o_.thresholding,
                       static_cast<double>(o_.dynamic_thresholding_ratio), static_cast<double>(o_.sample_max_value));
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (p_ == Prediction::flow && (sigma < T(0) || sigma > T(1)))
      raise<value_error>("ParameterizedDenoiser", "a flow model needs sigma in [0, 1], got " + std::to_string(sigma));
    const Scalings<T> c = scalings(p_, sigma);
    BasicTensor<T> x_in(x.shape());
    {
      const T* px = x.data();
      T* pi = x_in.data();
      for (std::size_t i = 0; i < x.size(); ++i) pi[i] = px[i] * c.c_in;
    }
    BasicTensor<T> out = net_(x_in, timestep(sigma));
    check_same_shape(out, x, "ParameterizedDenoiser", "network output", "x");
    T* po = out.data();
    const T* px = x.data();
    for (std::size_t i = 0; i < x.size(); ++i) po[i] = c.c_skip * px[i] + c.c_out * po[i];
    if (o_.thresholding) {
      dynamic_threshold(out, o_.dynamic_thresholding_ratio, o_.sample_max_value);
    } else if (o_.clip_sample) {
      for (std::size_t i = 0; i < out.size(); ++i) po[i] = std::clamp(po[i], -o_.clip_sample_range, o_.clip_sample_range);
    }
    return out;
  }

  /// The timestep the network is called with at `sigma`.
  T timestep(T sigma) const {
    if (p_ == Prediction::flow) return sigma * o_.flow_time_scale;
    T t = T(-1);
    for (const auto& [s, ts] : o_.timestep_table)
      if (s == sigma) {
        t = ts;
        break;
      }
    if (t < T(0)) t = sigma_to_t(sigma, log_sigmas_);
    return o_.integer_timesteps ? std::nearbyint(t) : t;  // the default rounding mode: half to even
  }
  Prediction prediction() const { return p_; }
  NoiseSpace space() const { return p_ == Prediction::flow ? NoiseSpace::flow : NoiseSpace::ve; }

 private:
  Net net_;
  Prediction p_;
  ParameterizationOptions<T> o_;
  std::vector<T> log_sigmas_;
};

/// Wraps `net` into a denoiser (see ParameterizedDenoiser).
template <class T, class Net>
ParameterizedDenoiser<T, std::decay_t<Net>> make_denoiser(Net&& net, Prediction prediction,
                                                          const std::vector<T>& train_sigmas = {},
                                                          ParameterizationOptions<T> options = {}) {
  return ParameterizedDenoiser<T, std::decay_t<Net>>(std::forward<Net>(net), prediction, train_sigmas, options);
}

DIFFUSE_END_NAMESPACE
