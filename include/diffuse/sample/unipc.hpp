// SPDX-License-Identifier: MIT
/** @file unipc.hpp
 *  UniPC (Zhao et al. 2023, arXiv:2302.04867): the multistep predictor UniP-p followed, at the next
 *  step, by the corrector UniC that reuses the new model evaluation (no extra NFE), raising the
 *  order to p + 1. Data prediction (`predict_x0=True`), B(h) = h (bh1) or e^h - 1 (bh2), as in
 *  diffusers `UniPCMultistepScheduler` (§4.9 of schedulers.md), written in the VE space
 *  (lambda = -log sigma, the alpha_t factors cancel). The step to sigma = 0 returns D.
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
/// Solves the small dense system A y = b (n <= 4) by Gaussian elimination with partial pivoting.
inline std::vector<double> solve_small(std::vector<std::vector<double>> a, std::vector<double> b) {
  const std::size_t n = b.size();
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t piv = c;
    for (std::size_t r = c + 1; r < n; ++r)
      if (std::abs(a[r][c]) > std::abs(a[piv][c])) piv = r;
    std::swap(a[c], a[piv]);
    std::swap(b[c], b[piv]);
    for (std::size_t r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k < n; ++k) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> y(n);
  for (std::size_t c = n; c-- > 0;) {
    double s = b[c];
    for (std::size_t k = c + 1; k < n; ++k) s -= a[c][k] * y[k];
    y[c] = s / a[c][c];
  }
  return y;
}
}  // namespace detail

enum class UniPcVariant { bh1, bh2 };

template <class T>
struct UniPcOptions {
  std::size_t order = 2;                 ///< predictor order p (1..3); with the corrector the order is p + 1
  UniPcVariant variant = UniPcVariant::bh2;
  bool use_corrector = true;             ///< UniC (diffusers: disable_corrector lists the exceptions)
  bool lower_order_final = true;         ///< p <= steps remaining (diffusers default)
};

/** UniPC, Zhao et al. 2023 (arXiv:2302.04867), Algorithms 2 (UniC) and 3 (UniP), bh1/bh2. */
template <class T>
class UniPcSampler : public Sampler<T> {
 public:
  using Options = UniPcOptions<T>;
  explicit UniPcSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_unipc"), o_(o) {
    if (o_.order < 1 || o_.order > 3) raise<value_error>("sample_unipc", "order must be 1, 2 or 3");
  }
  DIFFUSE_SAMPLER_BOILERPLATE(UniPcSampler, "unipc")

 protected:
  /// The corrector acts on a zero-length step too (see Sampler::acts_on_zero_steps).
  bool acts_on_zero_steps() const override { return o_.use_corrector; }

  /// The shared coefficients: h_phi_1, B_h and b_k for k = 1..p.
  struct Coeffs {
    double h_phi_1, b_h;
    std::vector<double> b;
  };
  Coeffs coeffs(double h, std::size_t p) const {
    const double hh = -h;
    Coeffs c;
    c.h_phi_1 = std::expm1(hh);
    c.b_h = o_.variant == UniPcVariant::bh1 ? hh : std::expm1(hh);
    double h_phi_k = c.h_phi_1 / hh - 1.0, fact = 1.0;
    for (std::size_t k = 1; k <= p; ++k) {
      c.b.push_back(h_phi_k * fact / c.b_h);
      fact *= static_cast<double>(k + 1);
      h_phi_k = h_phi_k / hh - 1.0 / fact;
    }
    return c;
  }

  /// x <- (s_t/s_0) x - h_phi_1 m0 - B_h (sum rho_k D1_k [+ rho_last (m_t - m0)]), history from ms_.
  void update(BasicTensor<T>& x, const BasicTensor<T>* m_t, double sigma_t, std::size_t p) {
    const double lambda_s0 = lam_[0], h = -std::log(sigma_t) - lambda_s0;
    const Coeffs c = coeffs(h, p);
    std::vector<double> rks;
    for (std::size_t k = 1; k < p; ++k) rks.push_back((lam_[k] - lambda_s0) / h);
    rks.push_back(1.0);
    std::vector<double> rhos;
    const bool corrector = m_t != nullptr;
    if (corrector) {
      if (p == 1) {
        rhos = {0.5};
      } else {
        std::vector<std::vector<double>> r(p, std::vector<double>(p));
        for (std::size_t i = 0; i < p; ++i)
          for (std::size_t j = 0; j < p; ++j) r[i][j] = std::pow(rks[j], static_cast<double>(i));
        rhos = detail::solve_small(r, c.b);
      }
    } else if (p == 2) {
      rhos = {0.5};
    } else if (p > 2) {
      std::vector<std::vector<double>> r(p - 1, std::vector<double>(p - 1));
      for (std::size_t i = 0; i + 1 < p; ++i)
        for (std::size_t j = 0; j + 1 < p; ++j) r[i][j] = std::pow(rks[j], static_cast<double>(i));
      rhos = detail::solve_small(r, std::vector<double>(c.b.begin(), c.b.end() - 1));
    }
    // Coefficients of x, m0, history m_k (k >= 1) and m_t.
    const double cx = sigma_t / std::exp(-lambda_s0);
    double cm0 = -c.h_phi_1;
    std::vector<double> ck(p, 0.0);
    for (std::size_t k = 1; k < p; ++k) {
      const double w = -c.b_h * rhos[k - 1] / rks[k - 1];
      ck[k] = w;
      cm0 -= w;
    }
    double ct = 0.0;
    if (corrector) {
      ct = -c.b_h * rhos[p - 1];
      cm0 -= ct;
    }
    const std::size_t n = x.size();
    T* px = x.data();
    const T* p0 = ms_[0].data();
    const T a = static_cast<T>(cx), b0 = static_cast<T>(cm0);
    for (std::size_t i = 0; i < n; ++i) px[i] = a * px[i] + b0 * p0[i];
    for (std::size_t k = 1; k < p; ++k) detail::axpby(x, T(1), ms_[k], static_cast<T>(ck[k]));
    if (corrector) detail::axpby(x, T(1), *m_t, static_cast<T>(ct));
  }

  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>&) override {
    const std::size_t i = this->index_;
    const T sigma = this->sigmas_[i], sigma_next = this->sigmas_[i + 1];
    const BasicTensor<T>& m_t = this->denoise(d, x, sigma);
    // UniC: correct the sample of the previous step with the new evaluation (no extra NFE).
    if (o_.use_corrector && have_last_) {
      detail::copy_into(x, last_sample_);
      update(x, &m_t, static_cast<double>(sigma), this_order_);
    }
    // Push the new model output (newest first).
    if (ms_.size() < o_.order) {
      ms_.emplace_back();
      lam_.push_back(0.0);
    }
    for (std::size_t k = ms_.size() - 1; k > 0; --k) {
      std::swap(ms_[k], ms_[k - 1]);
      lam_[k] = lam_[k - 1];
    }
    detail::copy_into(ms_[0], m_t);
    lam_[0] = -std::log(static_cast<double>(sigma));
    std::size_t p = std::min(o_.order, lower_order_nums_ + 1);
    if (o_.lower_order_final) p = std::min(p, this->num_steps() - i);
    this_order_ = p;
    if (o_.use_corrector) {
      detail::copy_into(last_sample_, x);
      have_last_ = true;
    }
    if (sigma_next == sigma) {
      // Zero-length step (karras + final sigma_min repeats the last sigma): h = 0, the predictor
      // is the identity (diffusers: h_phi_1 = B_h = 0); the corrector above has already acted.
    } else if (sigma_next == T(0)) {
      std::copy(m_t.begin(), m_t.end(), x.begin());  // the limit of every order: x = D
    } else {
      update(x, nullptr, static_cast<double>(sigma_next), p);
    }
    lower_order_nums_ = std::min(lower_order_nums_ + 1, o_.order);
  }

 private:
  Options o_;
  std::vector<BasicTensor<T>> ms_;  ///< converted model outputs (x0), newest first
  std::vector<double> lam_;         ///< their lambda = -log sigma
  BasicTensor<T> last_sample_;
  bool have_last_ = false;
  std::size_t this_order_ = 1;
  std::size_t lower_order_nums_ = 0;
};

/// Whole-loop UniPC.
template <class T, class D>
BasicTensor<T> sample_unipc(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                            NoiseSource<T>& noise, const Callback<T>& callback = {}, const UniPcOptions<T>& options = {}) {
  return detail::run_loop(UniPcSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

DIFFUSE_END_NAMESPACE
