// SPDX-License-Identifier: MIT
/** @file lcm.hpp
 *  Multistep consistency sampling (Song et al. 2023, Consistency Models, arXiv:2303.01469,
 *  Algorithm 1; Luo et al. 2023, LCM, arXiv:2310.04378): take the denoised estimate, then re-noise
 *  it to the next sigma with fresh noise. VE: x = D + sigma_next z; flow: x = (1 - s) D + s z.
 *  k-diffusion/ComfyUI `sample_lcm`; diffusers `LCMScheduler` (whose c_skip/c_out boundary
 *  condition belongs to the model wrapper, not to this loop).
 */
#pragma once

#include <algorithm>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

/** LCM / consistency multistep sampler, Song et al. 2023 (arXiv:2303.01469) Algorithm 1. */
template <class T>
class LcmSampler : public Sampler<T> {
 public:
  struct Options {
    T s_noise = T(1);
  };
  explicit LcmSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_lcm"), o_(o) {}
  DIFFUSE_SAMPLER_BOILERPLATE(LcmSampler, "lcm")
  bool accepts(NoiseSpace) const override { return true; }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    const bool flow = d.space() == NoiseSpace::flow;
    const T keep = flow ? T(1) - sigma_next : T(1);
    const std::size_t n = x.size();
    T* px = x.data();
    const T* pd = den.data();
    for (std::size_t k = 0; k < n; ++k) px[k] = keep * pd[k];
    if (sigma_next > T(0)) {
      detail::ensure_like(this->noise_, x);
      noise.fill(i, sigma, sigma_next, this->noise_);
      detail::axpby(x, T(1), this->noise_, o_.s_noise * sigma_next);
    }
  }

 private:
  Options o_;
};

/// Whole-loop LCM.
template <class T, class D>
BasicTensor<T> sample_lcm(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                          NoiseSource<T>& noise, const Callback<T>& callback = {},
                          const typename LcmSampler<T>::Options& options = {}) {
  return detail::run_loop(LcmSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
