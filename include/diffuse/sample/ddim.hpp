// SPDX-License-Identifier: MIT
/** @file ddim.hpp
 *  DDIM (Song et al. 2021, arXiv:2010.02502, eq. 12) in the VE sigma space. With x0 = D(x, sigma) and
 *  eps = (x - x0)/sigma, diffusers' VP update
 *  `sqrt(ap) x0 + sqrt(1 - ap - std^2) eps + std z`, std = eta sqrt((1-ap)/(1-a)) sqrt(1 - a/ap),
 *  divided by sqrt(ap) with sigma^2 = (1-a)/a, becomes
 *
 *      x_next = x0 + sigma_down eps + sigma_up z,
 *
 *  with (sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, eta) — so DDIM(eta) equals
 *  Euler ancestral with the same eta (and DDIM(0) equals Euler). diffusers `DDIMScheduler`.
 */
#pragma once

#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

template <class T>
struct DdimOptions {
  T eta = T(0);
  T s_noise = T(1);
};

/** DDIM, Song et al. 2021 (arXiv:2010.02502) eq. 12 with eta (first order). */
template <class T>
class DdimSampler : public Sampler<T> {
 public:
  using Options = DdimOptions<T>;
  explicit DdimSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_ddim"), o_(o) {
    if (!(o_.eta >= T(0))) raise<value_error>("sample_ddim", "eta must be >= 0");
  }
  DIFFUSE_SAMPLER_BOILERPLATE(DdimSampler, "ddim")

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    const auto [down, up] = detail::ancestral_step(sigma, sigma_next, o_.eta);
    // x0 + down (x - x0)/sigma
    const T r = down / sigma;
    detail::axpby(x, r, den, T(1) - r);
    if (sigma_next > T(0) && up > T(0)) {
      detail::ensure_like(this->noise_, x);
      noise.fill(i, sigma, sigma_next, this->noise_);
      detail::axpby(x, T(1), this->noise_, o_.s_noise * up);
    }
  }

 private:
  Options o_;
};

/// Whole-loop DDIM.
template <class T, class D>
BasicTensor<T> sample_ddim(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                           NoiseSource<T>& noise, const Callback<T>& callback = {}, const DdimOptions<T>& options = {}) {
  return detail::run_loop(DdimSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
