// SPDX-License-Identifier: MIT
/** @file euler.hpp
 *  First-order samplers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma
 *  (Karras et al. 2022, arXiv:2206.00364): Euler with optional churn, and Euler ancestral.
 *  The same ODE holds in the flow space (dx/ds = v = (x - D) / s), so `euler` also runs rectified
 *  flow models; `flow.hpp` has the flow-only names.
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Stochastic churn of Karras et al. 2022 Algorithm 2 (all zero: the plain ODE step).
template <class T>
struct ChurnOptions {
  T s_churn = T(0);                                  ///< total churn; gamma = min(s_churn / steps, sqrt2 - 1)
  T s_tmin = T(0);                                   ///< churn only for sigma in [s_tmin, s_tmax]
  T s_tmax = std::numeric_limits<T>::infinity();     ///< (inclusive)
  T s_noise = T(1);                                  ///< scale of the added noise
};

namespace detail {
/// Algorithm 2 lines 4-6: raises sigma to sigma_hat = sigma (1 + gamma) by adding fresh noise.
/// Noise is only drawn when gamma > 0 (diffusers' rule; k-diffusion draws it every step).
template <class T>
T apply_churn(const ChurnOptions<T>& o, std::size_t n_steps, std::size_t i, T sigma, T sigma_next,
              BasicTensor<T>& x, BasicTensor<T>& noise, NoiseSource<T>& source) {
  const T gamma = (o.s_tmin <= sigma && sigma <= o.s_tmax)
                      ? std::min(o.s_churn / static_cast<T>(n_steps), std::sqrt(T(2)) - T(1))
                      : T(0);
  const T sigma_hat = sigma * (gamma + T(1));
  if (gamma > T(0)) {
    ensure_like(noise, x);
    source.fill(i, sigma, sigma_next, noise);
    axpby(x, T(1), noise, o.s_noise * std::sqrt(sigma_hat * sigma_hat - sigma * sigma));
  }
  return sigma_hat;
}
}  // namespace detail

/** Euler steps of Karras et al. 2022 (arXiv:2206.00364), Algorithm 2 with S_churn (first order;
 *  k-diffusion `sample_euler`, diffusers `EulerDiscreteScheduler`). */
template <class T>
class EulerSampler : public Sampler<T> {
 public:
  using Options = ChurnOptions<T>;
  explicit EulerSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_euler"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(EulerSampler, "euler")
  bool accepts(NoiseSpace) const override { return true; }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const T sigma_hat = detail::apply_churn(o_, this->num_steps(), i, sigma, sigma_next, x, this->noise_, noise);
    const BasicTensor<T>& den = this->denoise(d, x, sigma_hat);
    detail::euler_step(x, den, sigma_hat, sigma_next);
  }

 private:
  Options o_;
};

/// Options of Euler ancestral.
template <class T>
struct EulerAncestralOptions {
  T eta = T(1);      ///< 0: the ODE (Euler); 1: the ancestral (DDPM-like) step
  T s_noise = T(1);  ///< scale of the added noise
};

/** Euler ancestral: an Euler step down to sigma_down, then fresh noise of std sigma_up so the
 *  marginal at sigma_next is right (Ho et al. 2020, arXiv:2006.11239, ancestral sampling, in the
 *  k-diffusion form `sample_euler_ancestral`; diffusers `EulerAncestralDiscreteScheduler`). */
template <class T>
class EulerAncestralSampler : public Sampler<T> {
 public:
  using Options = EulerAncestralOptions<T>;
  explicit EulerAncestralSampler(std::vector<T> sigmas, Options o = {})
      : Sampler<T>(std::move(sigmas), "sample_euler_a"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(EulerAncestralSampler, "euler_a")

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    const auto [down, up] = detail::ancestral_step(sigma, sigma_next, o_.eta);
    detail::euler_step(x, den, sigma, down);
    if (sigma_next > T(0) && up > T(0)) {
      detail::ensure_like(this->noise_, x);
      noise.fill(i, sigma, sigma_next, this->noise_);
      detail::axpby(x, T(1), this->noise_, o_.s_noise * up);
    }
  }

 private:
  Options o_;
};

/// Whole-loop Euler (Karras et al. 2022, Algorithm 2). Returns the final sample.
template <class T, class D>
BasicTensor<T> sample_euler(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                            NoiseSource<T>& noise, const Callback<T>& callback = {},
                            const ChurnOptions<T>& options = {}) {
  return detail::run_loop(EulerSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

/// Whole-loop Euler ancestral.
template <class T, class D>
BasicTensor<T> sample_euler_ancestral(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                                      NoiseSource<T>& noise, const Callback<T>& callback = {},
                                      const EulerAncestralOptions<T>& options = {}) {
  return detail::run_loop(EulerAncestralSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x),
                          noise, callback);
}

DIFFUSE_END_NAMESPACE
