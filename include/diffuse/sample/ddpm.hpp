// SPDX-License-Identifier: MIT
/** @file ddpm.hpp
 *  DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239, Algorithm 2 and eq. 7), diffusers
 *  `DDPMScheduler.step`, written in the VE space. With a = ac(sigma), ap = ac(sigma_next),
 *  beta' = 1 - a/ap:
 *
 *      mu_vp   = sqrt(ap) beta'/(1-a) x0 + sqrt(a/ap) (1-ap)/(1-a) x_vp        (eq. 7)
 *      x_next  = (mu_vp + std z) / sqrt(ap),   x_vp = sqrt(a) x
 *
 *  std: fixed_small / fixed_small_log sqrt((1-ap)/(1-a) beta') (clamped at 1e-20 before the sqrt),
 *  fixed_large sqrt(beta'). ac comes from `alphas_cumprod` (one per schedule sigma) or, when that is
 *  empty, from ac = 1/(1 + sigma^2), which is exact for sigmas taken from the train table.
 *  No noise is added on the step to sigma = 0.
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

enum class VarianceType { fixed_small, fixed_small_log, fixed_large };

template <class T>
struct DdpmOptions {
  VarianceType variance_type = VarianceType::fixed_small;
  std::vector<T> alphas_cumprod;  ///< ac at each schedule sigma; empty: 1/(1 + sigma^2)
};

/** DDPM ancestral step, Ho et al. 2020 (arXiv:2006.11239) Algorithm 2 on the VP chain. */
template <class T>
class DdpmSampler : public Sampler<T> {
 public:
  using Options = DdpmOptions<T>;
  explicit DdpmSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_ddpm"), o_(std::move(o)) {
    if (!o_.alphas_cumprod.empty()) {
      if (o_.alphas_cumprod.size() != this->sigmas_.size())
        raise<value_error>("sample_ddpm", "alphas_cumprod needs one value per sigma (" +
                                              std::to_string(this->sigmas_.size()) + "), got " +
                                              std::to_string(o_.alphas_cumprod.size()));
      for (T a : o_.alphas_cumprod)
        if (!(a > T(0) && a <= T(1))) raise<value_error>("sample_ddpm", "alphas_cumprod values must lie in (0, 1]");
    }
  }
  DIFFUSE_SAMPLER_BOILERPLATE(DdpmSampler, "ddpm")

 protected:
  T ac(std::size_t i) const {
    if (!o_.alphas_cumprod.empty()) return o_.alphas_cumprod[i];
    const T s = this->sigmas_[i];
    return T(1) / (T(1) + s * s);
  }

  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    const T a = ac(i), ap = ac(i + 1);
    const T beta = T(1) - a / ap;
    const T c_x0 = beta / (T(1) - a);
    const T c_x = (a / ap) * (T(1) - ap) / (T(1) - a);
    detail::axpby(x, c_x, den, c_x0);
    if (sigma_next > T(0)) {
      T var = o_.variance_type == VarianceType::fixed_large ? beta : std::max((T(1) - ap) / (T(1) - a) * beta, T(1e-20));
      const T std_ve = std::sqrt(var / ap);
      detail::ensure_like(this->noise_, x);
      noise.fill(i, sigma, sigma_next, this->noise_);
      detail::axpby(x, T(1), this->noise_, std_ve);
    }
  }

 private:
  Options o_;
};

/// Whole-loop DDPM.
template <class T, class D>
BasicTensor<T> sample_ddpm(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                           NoiseSource<T>& noise, const Callback<T>& callback = {}, const DdpmOptions<T>& options = {}) {
  return detail::run_loop(DdpmSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
