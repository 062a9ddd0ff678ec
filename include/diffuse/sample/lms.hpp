// SPDX-License-Identifier: MIT
/** @file lms.hpp
 *  Linear multistep (Adams–Bashforth in sigma) of k-diffusion `sample_lms` (Karras et al. 2022,
 *  arXiv:2206.00364 cite it as the classical LMS baseline; diffusers `LMSDiscreteScheduler`):
 *
 *      x_{i+1} = x_i + sum_j c_j d_{i-j},   c_j = integral_{sigma_i}^{sigma_{i+1}} L_j(tau) dtau,
 *
 *  where d = (x - D)/sigma and L_j is the Lagrange basis polynomial on the last `order` sigmas. The
 *  integral is computed by Gauss–Legendre quadrature with `order` nodes, exact for the degree
 *  order-1 polynomial (k-diffusion uses scipy.integrate.quad). Warm-up steps use order min(i+1, order),
 *  with i the absolute step index (also after `begin_at`, as diffusers).
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

namespace detail {
/// Gauss–Legendre nodes and weights on [-1, 1] (Newton on P_n; exact for degree 2n-1).
inline void gauss_legendre(std::size_t n, std::vector<double>& nodes, std::vector<double>& weights) {
  constexpr double kPi = 3.14159265358979323846;
  nodes.assign(n, 0.0);
  weights.assign(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    double z = std::cos(kPi * (static_cast<double>(i) + 0.75) / (static_cast<double>(n) + 0.5));
    double dp = 1.0;
    for (int it = 0; it < 100; ++it) {
      double p0 = 1.0, p1 = z;
      for (std::size_t k = 2; k <= n; ++k) {
        const double pk = ((2.0 * static_cast<double>(k) - 1.0) * z * p1 - (static_cast<double>(k) - 1.0) * p0) /
                          static_cast<double>(k);
        p0 = p1;
        p1 = pk;
      }
      if (n == 1) p0 = 1.0, p1 = z;
      dp = static_cast<double>(n) * (z * p1 - p0) / (z * z - 1.0);
      const double dz = p1 / dp;
      z -= dz;
      if (std::abs(dz) < 1e-16) break;
    }
    nodes[i] = z;
    weights[i] = 2.0 / ((1.0 - z * z) * dp * dp);
  }
}

/// integral_{a}^{b} prod_{k != j} (tau - s_k) / (s_j - s_k) dtau over the nodes s (double precision).
inline double lagrange_integral(const std::vector<double>& s, std::size_t j, double a, double b) {
  std::vector<double> nodes, weights;
  gauss_legendre(std::max<std::size_t>(s.size(), 1), nodes, weights);
  const double half = 0.5 * (b - a), mid = 0.5 * (b + a);
  double acc = 0.0;
  for (std::size_t q = 0; q < nodes.size(); ++q) {
    const double tau = mid + half * nodes[q];
    double prod = 1.0;
    for (std::size_t k = 0; k < s.size(); ++k)
      if (k != j) prod *= (tau - s[k]) / (s[j] - s[k]);
    acc += weights[q] * prod;
  }
  return acc * half;
}
}  // namespace detail

/** Linear multistep sampler (k-diffusion `sample_lms`, order 4 by default). */
template <class T>
class LmsSampler : public Sampler<T> {
 public:
  struct Options {
    std::size_t order = 4;
  };
  explicit LmsSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_lms"), o_(o) {
    if (o_.order < 1 || o_.order > 8) raise<value_error>("sample_lms", "order must lie in [1, 8], got " + std::to_string(o_.order));
  }
  DIFFUSE_SAMPLER_BOILERPLATE(LmsSampler, "lms")
  bool accepts(NoiseSpace) const override { return true; }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>&) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& den = this->denoise(d, x, sigma);
    // Newest derivative goes to the front of the history ring.
    if (ds_.size() < o_.order) ds_.emplace_back();
    for (std::size_t k = ds_.size() - 1; k > 0; --k) std::swap(ds_[k], ds_[k - 1]);
    detail::ensure_like(ds_[0], x);
    const std::size_t n = x.size();
    T* px = x.data();
    const T* pd = den.data();
    T* d0 = ds_[0].data();
    const T inv = T(1) / sigma;
    for (std::size_t k = 0; k < n; ++k) d0[k] = (px[k] - pd[k]) * inv;
    // The order comes from the absolute step index, min(i + 1, order), and the Lagrange nodes are
    // the schedule's sigmas[i], sigmas[i-1], ... (k-diffusion, diffusers). After begin_at(k) fewer
    // derivatives than nodes exist for the first steps: only the newest ones get a coefficient
    // (diffusers zips the coefficients with the derivatives it has).
    const std::size_t cur = std::min(i + 1, o_.order);
    nodes_.clear();
    for (std::size_t j = 0; j < cur; ++j) nodes_.push_back(static_cast<double>(this->sigmas_[i - j]));
    for (std::size_t j = 0; j < std::min(cur, ds_.size()); ++j) {
      const T c = static_cast<T>(detail::lagrange_integral(nodes_, j, static_cast<double>(sigma), static_cast<double>(sigma_next)));
      detail::axpby(x, T(1), ds_[j], c);
    }
  }

 private:
  Options o_;
  std::vector<BasicTensor<T>> ds_;  ///< derivatives, newest first
  std::vector<double> nodes_;       ///< scratch: the Lagrange nodes of the step
};

/// Whole-loop LMS.
template <class T, class D>
BasicTensor<T> sample_lms(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                          NoiseSource<T>& noise, const Callback<T>& callback = {},
                          const typename LmsSampler<T>::Options& options = {}) {
  return detail::run_loop(LmsSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
