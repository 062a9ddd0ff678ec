// SPDX-License-Identifier: MIT
/** @file pndm.hpp
 *  PLMS, the pseudo linear multistep method of Liu et al. 2022, "Pseudo Numerical Methods for
 *  Diffusion Models on Manifolds" (arXiv:2202.09778; the transfer is its eq. 9), as diffusers'
 *  `PNDMScheduler` with `skip_prk_steps: true` runs it (crowsonkb's PLMS for latent diffusion;
 *  A1111's "PLMS"). A pseudo numerical method keeps the transfer part of DDIM, which is exact
 *  when eps is constant over the step, and replaces the eps it transfers with a linear multistep
 *  combination of the network's eps at the previous steps. In the VE space x = x0 + sigma eps the
 *  DDIM transfer (the paper's eq. 9, divided by sqrt(alpha_bar)) is
 *
 *      x_next = x + (sigma_next - sigma) eps',   eps = (x - D(x, sigma)) / sigma,
 *
 *  and eps' combines the eps e_0, e_1, ... of the steps taken so far (e_k the newest):
 *  - the first step (diffusers' warm-up): e_0 at sigma_0, the transfer to sigma_1 with it,
 *    e at sigma_1 from that sample, then the step from sigma_0 again with (e_0 + e) / 2 (a
 *    pseudo improved Euler step; e is not kept);
 *  - then Adams-Bashforth of order 2, 3 and 4 with the constant coefficients of equal steps:
 *    (3 e_k - e_{k-1}) / 2, (23 e_k - 16 e_{k-1} + 5 e_{k-2}) / 12,
 *    (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24.
 *
 *  Network evaluations: steps + 1 (two in the first step, one in each other; a one-step schedule
 *  is a single DDIM step, as diffusers with one inference step). The first step of a run is the
 *  warm-up, also after `begin_at`; the last step never is.
 *
 *  The coefficients assume steps of equal length in the variable the schedule is uniform in, which
 *  for diffusers' schedule is the timestep, not sigma: on a schedule uniform in sigma PLMS is
 *  Adams-Bashforth 4 for dx/dsigma = eps with a second-order start (global order 3 as the steps
 *  shrink, the warm-up's error being the largest); on a schedule curved in sigma (diffusers'
 *  timesteps, Karras) the mismatch of the equal-step weights costs an O(h^3) local error and the
 *  global order drops to 2 (tests/sample/sampler_convergence_test.cpp measures both).
 *  `DiffusersScheduler` reproduces diffusers' step in its VP arithmetic (and with v-prediction
 *  its combination of v rather than eps).
 */
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

/** PLMS (pseudo linear multistep), Liu et al. 2022, arXiv:2202.09778, with diffusers' warm-up. */
template <class T>
class PndmSampler : public Sampler<T> {
 public:
  explicit PndmSampler(std::vector<T> sigmas) : Sampler<T>(std::move(sigmas), "sample_pndm") {}
  DIFFUSE_SAMPLER_BOILERPLATE(PndmSampler, "pndm")

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>&) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const T h = sigma_next - sigma;
    const std::size_t n = x.size();
    // The newest eps goes to the front of the history (at most 4 kept).
    if (eps_.size() < 4) eps_.emplace_back();
    for (std::size_t k = eps_.size() - 1; k > 0; --k) std::swap(eps_[k], eps_[k - 1]);
    detail::ensure_like(eps_[0], x);
    eps_of(x, this->denoise(d, x, sigma), sigma, eps_[0]);
    const bool warm_up = eps_.size() == 1 && i + 2 < this->sigmas_.size() && sigma_next > T(0);
    if (warm_up) {
      // Pseudo improved Euler: evaluate again at sigma_next from the DDIM step with e_0, then take
      // the step from x with the mean of the two.
      detail::copy_into(tmp_, x);
      detail::axpby(tmp_, T(1), eps_[0], h);
      const BasicTensor<T> den = this->call(d, tmp_, sigma_next);
      eps_of(tmp_, den, sigma_next, tmp_);
      T* px = x.data();
      const T* e0 = eps_[0].data();
      const T* e1 = tmp_.data();
      for (std::size_t k = 0; k < n; ++k) px[k] += h * ((e0[k] + e1[k]) / T(2));
      return;
    }
    // Adams-Bashforth with the constant coefficients of equal steps, order = history length.
    static constexpr T kCoef[4][4] = {{T(1), T(0), T(0), T(0)},
                                      {T(3) / T(2), T(-1) / T(2), T(0), T(0)},
                                      {T(23) / T(12), T(-16) / T(12), T(5) / T(12), T(0)},
                                      {T(55) / T(24), T(-59) / T(24), T(37) / T(24), T(-9) / T(24)}};
    const std::size_t order = eps_.size();
    for (std::size_t j = 0; j < order; ++j) detail::axpby(x, T(1), eps_[j], h * kCoef[order - 1][j]);
  }

 private:
  /// out = (x - den) / sigma (out may alias x).
  static void eps_of(const BasicTensor<T>& x, const BasicTensor<T>& den, T sigma, BasicTensor<T>& out) {
    detail::ensure_like(out, x);
    const T inv = T(1) / sigma;
    const T* px = x.data();
    const T* pd = den.data();
    T* po = out.data();
    for (std::size_t k = 0; k < x.size(); ++k) po[k] = (px[k] - pd[k]) * inv;
  }

  std::vector<BasicTensor<T>> eps_;  ///< eps of the steps taken, newest first
  BasicTensor<T> tmp_;               ///< the warm-up's intermediate sample, then its eps
};

/// Whole-loop PLMS.
template <class T, class D>
BasicTensor<T> sample_pndm(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                           NoiseSource<T>& noise, const Callback<T>& callback = {}) {
  return detail::run_loop(PndmSampler<T>({sigmas.begin(), sigmas.end()}), denoiser, std::move(x), noise, callback);
}

DIFFUSE_END_NAMESPACE
