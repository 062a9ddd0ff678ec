// SPDX-License-Identifier: MIT
/** @file analytic.hpp
 *  Closed-form denoisers: the exact posterior mean E[x0 | x] for data distributions simple enough to
 *  integrate. They make samplers testable against exact answers and serve as training-free
 *  generators.
 *
 *  | type                      | data                             | D(x, sigma) (VE space)                              |
 *  |---------------------------|----------------------------------|-----------------------------------------------------|
 *  | `GaussianDenoiser`        | N(mu, diag(v))                   | mu + v / (v + sigma^2) (x - mu)                     |
 *  | `GaussianFullDenoiser`    | N(mu, Sigma), full covariance    | mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)          |
 *  | `GaussianMixtureDenoiser` | sum_k w_k N(mu_k, diag(v_k))     | posterior-weighted mix of the component denoisers   |
 *  | `EmpiricalDenoiser`       | N points y_i (the "optimal denoiser" of a dataset) | softmax(-|x - y_i|^2 / (2 sigma^2)) weighted mean |
 *
 *  A tensor `x` is read as rows of length d (the data dimension): its size must be a multiple of d,
 *  so a batch [B, d] or [B, C, H, W] with d = C*H*W both work. Every denoiser also works in the flow
 *  space `x = (1 - s) x0 + s eps` (pass `NoiseSpace::flow`); there D_flow(x, s) = D_ve(x / (1 - s),
 *  s / (1 - s)), and at s = 1 the prior mean.
 *
 *  The Gaussian denoisers also give the exact solution of the probability-flow ODE (Song et al.
 *  2021, arXiv:2011.13456; Karras et al. 2022, arXiv:2206.00364, eq. 4) from (x0, s0) to s, per
 *  eigen-direction: x(s) = mu + sqrt((lambda + s^2) / (lambda + s0^2)) (x0 - mu) — the yardstick of
 *  the convergence tests.
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

// GCC 12 reports false -Wmaybe-uninitialized inside Eigen's AVX-512 packet code (-march=native -O3)
// at the points where this header inlines Eigen products; silenced for this header only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <Eigen/Dense>  // Eigen3::Eigen, linked by diffuse::core

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/denoise/denoiser.hpp"

DIFFUSE_BEGIN_NAMESPACE

namespace detail {

/// Number of rows of length d in x; throws shape_error when x.size() is not a multiple of d.
template <class T>
std::size_t rows_of(const BasicTensor<T>& x, std::size_t d, const char* where) {
  if (d == 0 || x.size() % d != 0)
    raise<shape_error>(where, "x of shape " + shape_string(x.shape()) + " has " + std::to_string(x.size()) +
                                  " elements, not a multiple of the data dimension " + std::to_string(d));
  return x.size() / d;
}

/// Calls `ve(x_ve, sigma_ve, out)` per the flow <-> VE map, or writes `prior` rows at s >= 1.
template <class T, class F>
BasicTensor<T> flow_via_ve(const BasicTensor<T>& x, T s, const std::vector<T>& prior, F&& ve) {
  if (s >= T(1)) {
    BasicTensor<T> out(x.shape());
    const std::size_t d = prior.size();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = prior[i % d];
    return out;
  }
  BasicTensor<T> y(x.shape());
  const T scale = T(1) / (T(1) - s);
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale;
  return ve(y, s * scale);
}

template <class T>
void check_positive(const std::vector<T>& v, const char* where, const char* name) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!(v[i] > T(0)) || !std::isfinite(v[i]))
      raise<value_error>(where, std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v[i]) +
                                    " must be finite and > 0");
}

}  // namespace detail

/** The exact denoiser of Gaussian data N(mu, diag(var)) (Karras et al. 2022, arXiv:2206.00364,
 *  Appendix B.3 for the Gaussian case). */
template <class T>
class GaussianDenoiser {
 public:
  GaussianDenoiser(std::vector<T> mu, std::vector<T> var, NoiseSpace space = NoiseSpace::ve)
      : mu_(std::move(mu)), var_(std::move(var)), space_(space) {
    if (mu_.empty() || mu_.size() != var_.size())
      raise<value_error>("GaussianDenoiser", "mu and var must be non-empty and of equal length, got " +
                                                 std::to_string(mu_.size()) + " and " + std::to_string(var_.size()));
    detail::check_positive(var_, "GaussianDenoiser", "var");
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    const std::size_t d = mu_.size();
    detail::rows_of(x, d, "GaussianDenoiser");
    BasicTensor<T> out(x.shape());
    const T* px = x.data();
    T* po = out.data();
    if (space_ == NoiseSpace::ve) {
      const T s2 = sigma * sigma;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const std::size_t j = i % d;
        po[i] = mu_[j] + var_[j] / (var_[j] + s2) * (px[i] - mu_[j]);
      }
    } else {
      // D = mu + v (1-s) / (v (1-s)^2 + s^2) (x - (1-s) mu): the VE formula through the flow map,
      // written so that it stays finite at s = 1.
      const T a = T(1) - sigma, s2 = sigma * sigma;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const std::size_t j = i % d;
        po[i] = mu_[j] + var_[j] * a / (var_[j] * a * a + s2) * (px[i] - a * mu_[j]);
      }
    }
    return out;
  }

  /// The exact probability-flow ODE solution from x0 at s0 to s1, per dimension.
  BasicTensor<T> ode_solution(const BasicTensor<T>& x0, T s0, T s1) const {
    const std::size_t d = mu_.size();
    detail::rows_of(x0, d, "GaussianDenoiser::ode_solution");
    BasicTensor<T> out(x0.shape());
    for (std::size_t i = 0; i < x0.size(); ++i) {
      const std::size_t j = i % d;
      const T v = var_[j];
      if (space_ == NoiseSpace::ve) {
        out[i] = mu_[j] + std::sqrt((v + s1 * s1) / (v + s0 * s0)) * (x0[i] - mu_[j]);
      } else {
        const T a0 = T(1) - s0, a1 = T(1) - s1;
        out[i] = a1 * mu_[j] + std::sqrt((v * a1 * a1 + s1 * s1) / (v * a0 * a0 + s0 * s0)) * (x0[i] - a0 * mu_[j]);
      }
    }
    return out;
  }

  const std::vector<T>& mean() const { return mu_; }
  const std::vector<T>& variance() const { return var_; }
  NoiseSpace space() const { return space_; }

 private:
  std::vector<T> mu_, var_;
  NoiseSpace space_;
};

/** The exact denoiser of Gaussian data N(mu, Sigma) with a full (symmetric positive definite)
 *  covariance: D = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu), computed in the eigenbasis of Sigma
 *  (decomposed once, Eigen's SelfAdjointEigenSolver) as mu + Q diag(l / (l + sigma^2)) Q^T (x - mu). */
template <class T>
class GaussianFullDenoiser {
 public:
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  /// `cov` is d x d, row-major.
  GaussianFullDenoiser(std::vector<T> mu, const std::vector<T>& cov, NoiseSpace space = NoiseSpace::ve)
      : mu_(std::move(mu)), space_(space) {
    const auto d = static_cast<Eigen::Index>(mu_.size());
    if (d == 0 || cov.size() != mu_.size() * mu_.size())
      raise<value_error>("GaussianFullDenoiser", "cov must hold d*d = " + std::to_string(mu_.size() * mu_.size()) +
                                                     " values, got " + std::to_string(cov.size()));
    const Matrix c = Eigen::Map<const RowMatrix>(cov.data(), d, d);
    if (!c.isApprox(c.transpose(), T(1e-6)))
      raise<value_error>("GaussianFullDenoiser", "cov is not symmetric");
    Eigen::SelfAdjointEigenSolver<Matrix> es(c);
    if (es.info() != Eigen::Success) raise<value_error>("GaussianFullDenoiser", "eigen-decomposition of cov failed");
    lambda_ = es.eigenvalues();
    q_ = es.eigenvectors();
    if (!(lambda_.minCoeff() > T(0))) raise<value_error>("GaussianFullDenoiser", "cov is not positive definite");
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (space_ == NoiseSpace::flow)
      return detail::flow_via_ve(x, sigma, mu_, [&](const BasicTensor<T>& y, T s) { return ve(y, s); });
    return ve(x, sigma);
  }

  /// The exact probability-flow ODE solution from x0 at s0 to s1, per eigen-direction.
  BasicTensor<T> ode_solution(const BasicTensor<T>& x0, T s0, T s1) const {
    Vector g(lambda_.size());
    for (Eigen::Index k = 0; k < lambda_.size(); ++k) {
      const T l = lambda_[k];
      if (space_ == NoiseSpace::ve) {
        g[k] = std::sqrt((l + s1 * s1) / (l + s0 * s0));
      } else {
        const T a0 = T(1) - s0, a1 = T(1) - s1;
        g[k] = std::sqrt((l * a1 * a1 + s1 * s1) / (l * a0 * a0 + s0 * s0));
      }
    }
    const T shift0 = space_ == NoiseSpace::ve ? T(1) : T(1) - s0;
    const T shift1 = space_ == NoiseSpace::ve ? T(1) : T(1) - s1;
    return transform(x0, g, shift0, shift1, "GaussianFullDenoiser::ode_solution");
  }

  const Vector& eigenvalues() const { return lambda_; }
  NoiseSpace space() const { return space_; }

 private:
  BasicTensor<T> ve(const BasicTensor<T>& x, T sigma) const {
    Vector g(lambda_.size());
    for (Eigen::Index k = 0; k < lambda_.size(); ++k) g[k] = lambda_[k] / (lambda_[k] + sigma * sigma);
    return transform(x, g, T(1), T(1), "GaussianFullDenoiser");
  }
  /// shift1 mu + Q diag(g) Q^T (x - shift0 mu), row by row.
  BasicTensor<T> transform(const BasicTensor<T>& x, const Vector& g, T shift0, T shift1, const char* where) const {
    const std::size_t d = mu_.size();
    const auto rows = static_cast<Eigen::Index>(detail::rows_of(x, d, where));
    const auto di = static_cast<Eigen::Index>(d);
    const Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> mu(mu_.data(), di);
    BasicTensor<T> out(x.shape());
    Eigen::Map<const RowMatrix> X(x.data(), rows, di);
    Eigen::Map<RowMatrix> O(out.data(), rows, di);
    RowMatrix y = (X.rowwise() - shift0 * mu) * q_;
    y = y * g.asDiagonal();
    O.noalias() = y * q_.transpose();
    O.rowwise() += shift1 * mu;
    return out;
  }

  std::vector<T> mu_;
  NoiseSpace space_;
  Vector lambda_;
  Matrix q_;
};

/** The exact denoiser of a Gaussian mixture sum_k w_k N(mu_k, diag(v_k)): the posterior
 *  p(k | x) ∝ w_k N(x; mu_k, v_k + sigma^2) (computed in log space) weights the per-component
 *  Gaussian denoisers. */
template <class T>
class GaussianMixtureDenoiser {
 public:
  /// `means` and `vars` are K x d row-major; `weights` has K entries (normalised here).
  GaussianMixtureDenoiser(std::vector<T> weights, std::vector<T> means, std::vector<T> vars, std::size_t dim,
                          NoiseSpace space = NoiseSpace::ve)
      : w_(std::move(weights)), mu_(std::move(means)), var_(std::move(vars)), d_(dim), space_(space) {
    const std::size_t k = w_.size();
    if (k == 0 || dim == 0 || mu_.size() != k * dim || var_.size() != k * dim)
      raise<value_error>("GaussianMixtureDenoiser", "need K >= 1 weights and K*d means and variances (K = " +
                                                        std::to_string(k) + ", d = " + std::to_string(dim) + ")");
    detail::check_positive(w_, "GaussianMixtureDenoiser", "weights");
    detail::check_positive(var_, "GaussianMixtureDenoiser", "vars");
    T total = 0;
    for (T w : w_) total += w;
    prior_.assign(d_, T(0));
    for (std::size_t c = 0; c < k; ++c) {
      w_[c] /= total;
      for (std::size_t j = 0; j < d_; ++j) prior_[j] += w_[c] * mu_[c * d_ + j];
    }
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (space_ == NoiseSpace::flow)
      return detail::flow_via_ve(x, sigma, prior_, [&](const BasicTensor<T>& y, T s) { return ve(y, s); });
    return ve(x, sigma);
  }
  NoiseSpace space() const { return space_; }

 private:
  BasicTensor<T> ve(const BasicTensor<T>& x, T sigma) const {
    const std::size_t rows = detail::rows_of(x, d_, "GaussianMixtureDenoiser");
    const std::size_t k = w_.size();
    const T s2 = sigma * sigma;
    BasicTensor<T> out(x.shape(), T(0));
    std::vector<T> logp(k);
    for (std::size_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * d_;
      T* orow = out.data() + r * d_;
      T mx = -std::numeric_limits<T>::infinity();
      for (std::size_t c = 0; c < k; ++c) {
        T acc = std::log(w_[c]);
        for (std::size_t j = 0; j < d_; ++j) {
          const T v = var_[c * d_ + j] + s2, e = xr[j] - mu_[c * d_ + j];
          acc -= T(0.5) * (e * e / v + std::log(v));
        }
        logp[c] = acc;
        mx = std::max(mx, acc);
      }
      T z = 0;
      for (std::size_t c = 0; c < k; ++c) z += (logp[c] = std::exp(logp[c] - mx));
      for (std::size_t c = 0; c < k; ++c) {
        const T p = logp[c] / z;
        for (std::size_t j = 0; j < d_; ++j) {
          const T v = var_[c * d_ + j], m = mu_[c * d_ + j];
          orow[j] += p * (m + v / (v + s2) * (xr[j] - m));
        }
      }
    }
    return out;
  }

  std::vector<T> w_, mu_, var_;
  std::size_t d_;
  NoiseSpace space_;
  std::vector<T> prior_;
};

/** The optimal denoiser of an empirical dataset {y_1..y_N} (Karras et al. 2022, arXiv:2206.00364,
 *  Appendix B.3, eq. 57): D(x, sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i, with the
 *  softmax taken in log space (max subtracted). At sigma = 0 it returns the nearest data point.
 *  Sampling with it reproduces training points: a training-free generator and a memorisation probe. */
template <class T>
class EmpiricalDenoiser {
 public:
  /// `data` holds N rows of length `dim`, row-major.
  EmpiricalDenoiser(std::vector<T> data, std::size_t dim, NoiseSpace space = NoiseSpace::ve)
      : y_(std::move(data)), d_(dim), space_(space) {
    if (dim == 0 || y_.empty() || y_.size() % dim != 0)
      raise<value_error>("EmpiricalDenoiser", "data must hold N >= 1 rows of length d = " + std::to_string(dim) +
                                                  ", got " + std::to_string(y_.size()) + " values");
    n_ = y_.size() / d_;
    prior_.assign(d_, T(0));
    for (std::size_t i = 0; i < n_; ++i)
      for (std::size_t j = 0; j < d_; ++j) prior_[j] += y_[i * d_ + j] / static_cast<T>(n_);
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (space_ == NoiseSpace::flow)
      return detail::flow_via_ve(x, sigma, prior_, [&](const BasicTensor<T>& y, T s) { return ve(y, s); });
    return ve(x, sigma);
  }
  std::size_t size() const { return n_; }
  NoiseSpace space() const { return space_; }

 private:
  BasicTensor<T> ve(const BasicTensor<T>& x, T sigma) const {
    const std::size_t rows = detail::rows_of(x, d_, "EmpiricalDenoiser");
    BasicTensor<T> out(x.shape(), T(0));
    std::vector<T> logit(n_);
    for (std::size_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * d_;
      T* orow = out.data() + r * d_;
      T mx = -std::numeric_limits<T>::infinity();
      std::size_t best = 0;
      for (std::size_t i = 0; i < n_; ++i) {
        T dist = 0;
        for (std::size_t j = 0; j < d_; ++j) {
          const T e = xr[j] - y_[i * d_ + j];
          dist += e * e;
        }
        logit[i] = -dist;  // scaled by 1 / (2 sigma^2) below
        if (logit[i] > mx) {
          mx = logit[i];
          best = i;
        }
      }
      if (sigma == T(0)) {
        std::copy(y_.begin() + static_cast<std::ptrdiff_t>(best * d_),
                  y_.begin() + static_cast<std::ptrdiff_t>((best + 1) * d_), orow);
        continue;
      }
      const T inv = T(1) / (T(2) * sigma * sigma);
      T z = 0;
      for (std::size_t i = 0; i < n_; ++i) z += (logit[i] = std::exp((logit[i] - mx) * inv));
      for (std::size_t i = 0; i < n_; ++i) {
        const T p = logit[i] / z;
        if (p == T(0)) continue;
        for (std::size_t j = 0; j < d_; ++j) orow[j] += p * y_[i * d_ + j];
      }
    }
    return out;
  }

  std::vector<T> y_;
  std::size_t d_;
  std::size_t n_ = 0;
  NoiseSpace space_;
  std::vector<T> prior_;
};

DIFFUSE_END_NAMESPACE

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
