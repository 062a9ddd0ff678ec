// SPDX-License-Identifier: MIT
/** @file deis.hpp
 *  DEIS (Zhang & Chen 2023, arXiv:2204.13902), the multistep exponential integrator with the noise
 *  prediction eps = (x - D)/sigma interpolated by a Lagrange polynomial in log sigma, as diffusers
 *  `DEISMultistepScheduler` (algorithm "deis", log-rho integration). In the VE space the ODE is
 *  dx/dsigma = eps, so
 *
 *      x_t = x_s + sum_j eps_j integral_{sigma_s}^{sigma_t} L_j(log tau) dtau,
 *
 *  with the closed-form antiderivatives of diffusers (`ind_fn`) for orders 2 and 3; order 1 is the
 *  Euler / DDIM step. Warm-up uses lower orders; the step to sigma = 0 returns D.
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

template <class T>
struct DeisOptions {
  std::size_t order = 3;            ///< 1..3 (diffusers' default solver_order is 3)
  bool lower_order_final = true;    ///< as diffusers: lower orders in the last steps when steps < 15
};

/** DEIS multistep (log-rho "tAB" variant), Zhang & Chen 2023 (arXiv:2204.13902). */
template <class T>
class DeisSampler : public Sampler<T> {
 public:
  using Options = DeisOptions<T>;
  explicit DeisSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_deis"), o_(o) {
    if (o_.order < 1 || o_.order > 3) raise<value_error>("sample_deis", "order must be 1, 2 or 3");
  }
  DIFFUSE_SAMPLER_BOILERPLATE(DeisSampler, "deis")

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>&) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    if (eps_.size() < o_.order) {
      eps_.emplace_back();
      rho_.push_back(0.0);
    }
    for (std::size_t k = eps_.size() - 1; k > 0; --k) {
      std::swap(eps_[k], eps_[k - 1]);
      rho_[k] = rho_[k - 1];
    }
    detail::ensure_like(eps_[0], x);
    rho_[0] = static_cast<double>(sigma);
    const std::size_t n = x.size();
    T* px = x.data();
    const T* pd = den.data();
    T* pe = eps_[0].data();
    for (std::size_t k = 0; k < n; ++k) pe[k] = (px[k] - pd[k]) / sigma;
    std::size_t p = std::min(o_.order, lower_order_nums_ + 1);
    const std::size_t steps = this->num_steps();
    if (o_.lower_order_final && steps < 15) p = std::min(p, steps - i);
    lower_order_nums_ = std::min(lower_order_nums_ + 1, o_.order);
    if (sigma_next == T(0)) {
      std::copy(pd, pd + n, px);
      return;
    }
    const double t = static_cast<double>(sigma_next), s0 = rho_[0];
    std::vector<double> c(p);
    if (p == 1) {
      c[0] = t - s0;
    } else if (p == 2) {
      const double s1 = rho_[1];
      auto ind = [](double u, double b, double cc) {
        return u * (-std::log(cc) + std::log(u) - 1.0) / (std::log(b) - std::log(cc));
      };
      c[0] = ind(t, s0, s1) - ind(s0, s0, s1);
      c[1] = ind(t, s1, s0) - ind(s0, s1, s0);
    } else {
      const double s1 = rho_[1], s2 = rho_[2];
      auto ind = [](double u, double b, double cc, double dd) {
        const double lu = std::log(u), lc = std::log(cc), ld = std::log(dd), lb = std::log(b);
        return u * (lc * (ld - lu + 1.0) - ld * lu + ld + lu * lu - 2.0 * lu + 2.0) / ((lb - lc) * (lb - ld));
      };
      c[0] = ind(t, s0, s1, s2) - ind(s0, s0, s1, s2);
      c[1] = ind(t, s1, s2, s0) - ind(s0, s1, s2, s0);
      c[2] = ind(t, s2, s0, s1) - ind(s0, s2, s0, s1);
    }
    for (std::size_t j = 0; j < p; ++j) detail::axpby(x, T(1), eps_[j], static_cast<T>(c[j]));
  }

 private:
  Options o_;
  std::vector<BasicTensor<T>> eps_;  ///< eps history, newest first
  std::vector<double> rho_;          ///< their sigmas
  std::size_t lower_order_nums_ = 0;
};

/// Whole-loop DEIS.
template <class T, class D>
BasicTensor<T> sample_deis(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                           NoiseSource<T>& noise, const Callback<T>& callback = {}, const DeisOptions<T>& options = {}) {
  return detail::run_loop(DeisSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
