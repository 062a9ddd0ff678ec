// SPDX-License-Identifier: MIT
/** @file heun.hpp
 *  Second-order single-step samplers of the probability-flow ODE: Heun (Karras et al. 2022,
 *  Algorithm 2), DPM-Solver-2 in sigma form (k-diffusion `sample_dpm_2`, a midpoint step at the
 *  geometric mean of the two sigmas) and its ancestral variant.
 */
#pragma once

#include <cmath>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/euler.hpp"
#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

/** Heun's method, Karras et al. 2022 (arXiv:2206.00364) Algorithm 2 (second order, 2 NFE per step;
 *  the step to sigma = 0 is an Euler step). k-diffusion `sample_heun`, diffusers
 *  `HeunDiscreteScheduler`. Valid in both noise spaces (flow_heun is this algorithm). */
template <class T>
class HeunSampler : public Sampler<T> {
 public:
  using Options = ChurnOptions<T>;
  explicit HeunSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_heun"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(HeunSampler, "heun")
  bool accepts(NoiseSpace) const override { return true; }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const T sigma_hat = detail::apply_churn(o_, this->num_steps(), i, sigma, sigma_next, x, this->noise_, noise);
    const BasicTensor<T>& den = this->denoise(d, x, sigma_hat);
    const T dt = sigma_next - sigma_hat;
    if (sigma_next == T(0)) {
      detail::euler_step(x, den, sigma_hat, sigma_next);
      return;
    }
    // x2 = x + d dt, d = (x - D) / sigma_hat
    detail::ensure_like(x2_, x);
    const std::size_t n = x.size();
    T* px = x.data();
    T* p2 = x2_.data();
    const T* pd = den.data();
    const T r = dt / sigma_hat;
    for (std::size_t k = 0; k < n; ++k) p2[k] = px[k] + (px[k] - pd[k]) * r;
    const BasicTensor<T> den2 = this->call(d, x2_, sigma_next);
    const T* pd2 = den2.data();
    // x += (d + d2) / 2 dt
    const T a = T(0.5) * dt / sigma_hat, b = T(0.5) * dt / sigma_next;
    for (std::size_t k = 0; k < n; ++k) px[k] += (px[k] - pd[k]) * a + (p2[k] - pd2[k]) * b;
  }

 private:
  Options o_;
  BasicTensor<T> x2_;
};

/** DPM-Solver-2 (Lu et al. 2022, arXiv:2206.00927, Algorithm 1 with r = 1/2) in the sigma form of
 *  k-diffusion `sample_dpm_2` (Karras et al. 2022 churn included): a half step to the geometric
 *  mean of sigma_hat and sigma_next, then the full step with the midpoint slope. Second order;
 *  diffusers `KDPM2DiscreteScheduler`. */
template <class T>
class Dpm2Sampler : public Sampler<T> {
 public:
  using Options = ChurnOptions<T>;
  explicit Dpm2Sampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_dpm_2"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(Dpm2Sampler, "dpm_2")
  bool accepts(NoiseSpace) const override { return true; }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const T sigma_hat = detail::apply_churn(o_, this->num_steps(), i, sigma, sigma_next, x, this->noise_, noise);
    const BasicTensor<T>& den = this->denoise(d, x, sigma_hat);
    midpoint_step(*this, d, x, den, sigma_hat, sigma_next, x2_);
  }

 private:
  template <class S>
  static void midpoint_step(S& self, const AnyDenoiser<T>& d, BasicTensor<T>& x, const BasicTensor<T>& den,
                            T sigma, T target, BasicTensor<T>& x2) {
    if (target == T(0)) {
      detail::euler_step(x, den, sigma, target);
      return;
    }
    const T sigma_mid = std::exp(T(0.5) * (std::log(sigma) + std::log(target)));
    detail::ensure_like(x2, x);
    const std::size_t n = x.size();
    T* px = x.data();
    T* p2 = x2.data();
    const T* pd = den.data();
    const T r1 = (sigma_mid - sigma) / sigma;
    for (std::size_t k = 0; k < n; ++k) p2[k] = px[k] + (px[k] - pd[k]) * r1;
    const BasicTensor<T> den2 = self.call(d, x2, sigma_mid);
    const T* pd2 = den2.data();
    const T r2 = (target - sigma) / sigma_mid;
    for (std::size_t k = 0; k < n; ++k) px[k] += (p2[k] - pd2[k]) * r2;
  }
  template <class>
  friend class Dpm2AncestralSampler;

  Options o_;
  BasicTensor<T> x2_;
};

/** DPM-Solver-2 ancestral (k-diffusion `sample_dpm_2_ancestral`; diffusers
 *  `KDPM2AncestralDiscreteScheduler`): the DPM-2 step to sigma_down, then noise of std sigma_up. */
template <class T>
class Dpm2AncestralSampler : public Sampler<T> {
 public:
  using Options = EulerAncestralOptions<T>;
  explicit Dpm2AncestralSampler(std::vector<T> sigmas, Options o = {})
      : Sampler<T>(std::move(sigmas), "sample_dpm_2_a"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(Dpm2AncestralSampler, "dpm_2_a")

  // The midpoint helper calls back into the protected `call`.
  BasicTensor<T> call(const AnyDenoiser<T>& d, const BasicTensor<T>& x, T sigma) { return Sampler<T>::call(d, x, sigma); }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    const auto [down, up] = detail::ancestral_step(sigma, sigma_next, o_.eta);
    Dpm2Sampler<T>::midpoint_step(*this, d, x, den, sigma, down, x2_);
    if (down > T(0) && up > T(0)) {
      detail::ensure_like(this->noise_, x);
      noise.fill(i, sigma, sigma_next, this->noise_);
      detail::axpby(x, T(1), this->noise_, o_.s_noise * up);
    }
  }

 private:
  Options o_;
  BasicTensor<T> x2_;
};

/// Whole-loop Heun (Karras et al. 2022, Algorithm 2).
template <class T, class D>
BasicTensor<T> sample_heun(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                           NoiseSource<T>& noise, const Callback<T>& callback = {}, const ChurnOptions<T>& options = {}) {
  return detail::run_loop(HeunSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

/// Whole-loop DPM-Solver-2 (sigma form).
template <class T, class D>
BasicTensor<T> sample_dpm_2(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                            NoiseSource<T>& noise, const Callback<T>& callback = {}, const ChurnOptions<T>& options = {}) {
  return detail::run_loop(Dpm2Sampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

/// Whole-loop DPM-Solver-2 ancestral.
template <class T, class D>
BasicTensor<T> sample_dpm_2_ancestral(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                                      NoiseSource<T>& noise, const Callback<T>& callback = {},
                                      const EulerAncestralOptions<T>& options = {}) {
  return detail::run_loop(Dpm2AncestralSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x),
                          noise, callback);
}

DIFFUSE_END_NAMESPACE
