// SPDX-License-Identifier: MIT
/** @file adaptive.hpp
 *  DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in the noise-prediction form of k-diffusion's
 *  `DPMSolver` class, working in t = -log sigma:
 *
 *  - `dpm_fast`: Algorithm 4 ("DPM-Solver-fast"): NFE = sigmas.size() - 1 split into m uniform steps
 *    in t of orders 3,...,3 then (2, 1) or (NFE mod 3).
 *  - `dpm_adaptive`: Algorithm 5 (adaptive step size): each trial computes a lower/higher order pair
 *    (DPM-Solver-2 with r1 = 1/3 vs DPM-Solver-3, or 1 vs 2), the scaled error
 *    ||(x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|))||_2 / sqrt(n) and a PID step-size
 *    controller (k-diffusion `PIDStepSizeController`; accept when the factor >= accept_safety).
 *
 *  Both integrate from sigmas[0] to the smallest positive sigma of the schedule and stop there
 *  (ComfyUI's semantics; no final denoising to 0). eta > 0 adds ancestral noise. One `step()` of
 *  the adaptive sampler is one trial (accepted or rejected), so a host's frame time stays bounded.
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

/// The eps-form DPM-Solver steps of k-diffusion's DPMSolver, sharing one eps cache per trial.
template <class T>
class DpmSolverCore {
 public:
  static T sigma_of(T t) { return std::exp(-t); }

  /// eps = (x - D(x, sigma(t))) / sigma(t), via `call`.
  template <class Call>
  static void eps(Call& call, const BasicTensor<T>& x, T t, BasicTensor<T>& out) {
    const T s = sigma_of(t);
    const BasicTensor<T> den = call(x, s);
    ensure_like(out, x);
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = (x[k] - den[k]) / s;
  }

  /// x_1 = x - sigma(t_next) expm1(h) eps
  static void step1(const BasicTensor<T>& x, T t, T t_next, const BasicTensor<T>& e, BasicTensor<T>& out) {
    const T c = sigma_of(t_next) * std::expm1(t_next - t);
    ensure_like(out, x);
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = x[k] - c * e[k];
  }

  /// DPM-Solver-2 with intermediate r1; computes eps_r1 into `er1` unless `have_r1`.
  template <class Call>
  static void step2(Call& call, const BasicTensor<T>& x, T t, T t_next, T r1, const BasicTensor<T>& e,
                    BasicTensor<T>& er1, bool have_r1, BasicTensor<T>& u1, BasicTensor<T>& out) {
    const T h = t_next - t, s1 = t + r1 * h;
    if (!have_r1) {
      step1(x, t, s1, e, u1);
      eps(call, u1, s1, er1);
    }
    const T sn = sigma_of(t_next), em = std::expm1(h);
    const T c0 = sn * em, c1 = sn / (T(2) * r1) * em;
    ensure_like(out, x);
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = x[k] - c0 * e[k] - c1 * (er1[k] - e[k]);
  }

  /// DPM-Solver-3 (r1 = 1/3, r2 = 2/3); reuses eps_r1 when `have_r1`.
  template <class Call>
  static void step3(Call& call, const BasicTensor<T>& x, T t, T t_next, const BasicTensor<T>& e, BasicTensor<T>& er1,
                    bool have_r1, BasicTensor<T>& u, BasicTensor<T>& er2, BasicTensor<T>& out) {
    const T r1 = T(1) / T(3), r2 = T(2) / T(3);
    const T h = t_next - t, s1 = t + r1 * h, s2 = t + r2 * h;
    if (!have_r1) {
      step1(x, t, s1, e, u);
      eps(call, u, s1, er1);
    }
    const T ss2 = sigma_of(s2), e2 = std::expm1(r2 * h);
    const T a0 = ss2 * e2, a1 = ss2 * (r2 / r1) * (e2 / (r2 * h) - T(1));
    ensure_like(u, x);
    for (std::size_t k = 0; k < x.size(); ++k) u[k] = x[k] - a0 * e[k] - a1 * (er1[k] - e[k]);
    eps(call, u, s2, er2);
    const T sn = sigma_of(t_next), em = std::expm1(h);
    const T c0 = sn * em, c2 = sn / r2 * (em / h - T(1));
    ensure_like(out, x);
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = x[k] - c0 * e[k] - c2 * (er2[k] - e[k]);
  }
};

/// The smallest positive sigma of a schedule (value_error if there is none).
template <class T>
T smallest_positive(const std::vector<T>& s, const char* where) {
  T m = T(0);
  for (T v : s)
    if (v > T(0)) m = v;
  if (!(m > T(0))) raise<value_error>(where, "needs a positive sigma_min in the schedule");
  return m;
}

}  // namespace detail

template <class T>
struct DpmFastOptions {
  T eta = T(0);
  T s_noise = T(1);
};

/** DPM-Solver-fast, Lu et al. 2022 (arXiv:2206.00927) Algorithm 4; k-diffusion `sample_dpm_fast`. */
template <class T>
class DpmFastSampler : public Sampler<T> {
 public:
  using Options = DpmFastOptions<T>;
  explicit DpmFastSampler(std::vector<T> sigmas, Options o = {}) : Sampler<T>(std::move(sigmas), "sample_dpm_fast"), o_(o) {
    this->skip_equal_ = false;
    const T smin = detail::smallest_positive(this->sigmas_, "sample_dpm_fast");
    const std::size_t nfe = this->sigmas_.size() - 1;
    const std::size_t m = nfe / 3 + 1;
    if (nfe % 3 == 0) {
      orders_.assign(m >= 2 ? m - 2 : 0, 3);
      orders_.push_back(2);
      orders_.push_back(1);
    } else {
      orders_.assign(m - 1, 3);
      orders_.push_back(nfe % 3);
    }
    const T t0 = -std::log(this->sigmas_.front()), t1 = -std::log(smin);
    ts_.resize(orders_.size() + 1);
    for (std::size_t i = 0; i < ts_.size(); ++i)
      ts_[i] = t0 + (t1 - t0) * static_cast<T>(i) / static_cast<T>(m);  // linspace(t0, t1, m + 1)
    t_end_ = t1;
  }
  DIFFUSE_SAMPLER_BOILERPLATE(DpmFastSampler, "dpm_fast")
  bool done() const override { return this->index_ >= orders_.size(); }
  std::size_t num_steps() const override { return orders_.size(); }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    const std::size_t i = this->index_;
    const T t = ts_[i], t_next = ts_[i + 1];
    using Core = detail::DpmSolverCore<T>;
    T t_next_ = t_next, su = T(0);
    if (o_.eta > T(0)) {
      const auto [sd, up] = detail::ancestral_step(Core::sigma_of(t), Core::sigma_of(t_next), o_.eta);
      t_next_ = std::min(t_end_, -std::log(sd));
      const T a = Core::sigma_of(t_next), b = Core::sigma_of(t_next_);
      su = std::sqrt(std::max(T(0), a * a - b * b));
      (void)up;
    }
    this->report(Core::sigma_of(t), Core::sigma_of(t_next));
    auto call = [&](const BasicTensor<T>& xx, T s) { return this->call(d, xx, s); };
    const T sigma = Core::sigma_of(t);
    this->denoised_ = this->call(d, x, sigma);
    detail::ensure_like(e_, x);
    for (std::size_t k = 0; k < x.size(); ++k) e_[k] = (x[k] - this->denoised_[k]) / sigma;
    if (orders_[i] == 1)
      Core::step1(x, t, t_next_, e_, out_);
    else if (orders_[i] == 2)
      Core::step2(call, x, t, t_next_, T(0.5), e_, er1_, false, u_, out_);
    else
      Core::step3(call, x, t, t_next_, e_, er1_, false, u_, er2_, out_);
    std::swap(x, out_);
    if (su > T(0)) {
      detail::ensure_like(this->noise_, x);
      noise.fill(i, Core::sigma_of(t), Core::sigma_of(t_next), this->noise_);
      detail::axpby(x, T(1), this->noise_, su * o_.s_noise);
    }
  }

 private:
  Options o_;
  std::vector<std::size_t> orders_;
  std::vector<T> ts_;
  T t_end_ = T(0);
  BasicTensor<T> e_, er1_, er2_, u_, out_;
};

template <class T>
struct DpmAdaptiveOptions {
  std::size_t order = 3;  ///< 2 or 3
  T rtol = T(0.05);
  T atol = T(0.0078);
  T h_init = T(0.05);
  T pcoeff = T(0), icoeff = T(1), dcoeff = T(0);
  T accept_safety = T(0.81);
  T eta = T(0);
  T s_noise = T(1);
  std::size_t max_trials = 10000;  ///< value_error beyond this (a stuck controller)
  /** A budget of trials (step() calls); 0: none, k-diffusion's algorithm as it is. With a budget
   *  N, trial N (if the solver gets that far) goes straight to the end of the interval with a
   *  first-order step (DPM-Solver-1 = DDIM/Euler, stable for any step size; one network call, none
   *  after a rejection), so the solve always ends within N trials: N = 1 is one Euler step over
   *  the whole interval. Before trial N nothing changes. */
  std::size_t max_steps = 0;
};

/** DPM-Solver adaptive, Lu et al. 2022 (arXiv:2206.00927) Algorithm 5 with k-diffusion's PID
 *  controller (`sample_dpm_adaptive`). One step() = one trial. It integrates from sigmas[0] to the
 *  smallest positive sigma of `sigmas` (which need no other entries); the two must differ. */
template <class T>
class DpmAdaptiveSampler : public Sampler<T> {
 public:
  using Options = DpmAdaptiveOptions<T>;
  explicit DpmAdaptiveSampler(std::vector<T> sigmas, Options o = {})
      : Sampler<T>(std::move(sigmas), "sample_dpm_adaptive"), o_(o) {
    this->skip_equal_ = false;
    if (o_.order != 2 && o_.order != 3) raise<value_error>("sample_dpm_adaptive", "order should be 2 or 3");
    if (!(o_.rtol > T(0)) || !(o_.atol > T(0)) || !(o_.h_init > T(0)))
      raise<value_error>("sample_dpm_adaptive", "rtol, atol and h_init must be > 0");
    s_ = -std::log(this->sigmas_.front());
    t_end_ = -std::log(detail::smallest_positive(this->sigmas_, "sample_dpm_adaptive"));
    if (!(s_ < t_end_ - T(1e-5)))
      raise<value_error>("sample_dpm_adaptive", "the interval is empty: sigmas[0] = " + std::to_string(this->sigmas_.front()) +
                                                    " is the smallest positive sigma (a schedule of one step?)");
    h_ = o_.h_init;
    const T ord = o_.eta > T(0) ? T(1.5) : static_cast<T>(o_.order);
    b1_ = (o_.pcoeff + o_.icoeff + o_.dcoeff) / ord;
    b2_ = -(o_.pcoeff + T(2) * o_.dcoeff) / ord;
    b3_ = o_.dcoeff / ord;
  }
  DIFFUSE_SAMPLER_BOILERPLATE(DpmAdaptiveSampler, "dpm_adaptive")
  bool done() const override { return !(s_ < t_end_ - T(1e-5)); }
  /** Trials in all: when done, the number taken; before, the budget (`max_steps`) if there is
   *  one, else an estimate (trials so far + the rest of the interval at the current step size),
   *  which becomes exact at the end. */
  std::size_t num_steps() const override {
    if (done()) return this->index_;
    if (o_.max_steps > 0) return o_.max_steps;
    const double rest = std::ceil(static_cast<double>((t_end_ - s_) / h_));
    return this->index_ + static_cast<std::size_t>(std::clamp(rest, 1.0, 1e6));
  }
  std::size_t accepted() const { return n_accept_; }
  std::size_t rejected() const { return n_reject_; }
  /// The current noise level.
  T sigma() const { return std::exp(-s_); }

 protected:
  void do_step(const AnyDenoiser<T>& d, BasicTensor<T>& x, NoiseSource<T>& noise) override {
    using Core = detail::DpmSolverCore<T>;
    if (n_accept_ + n_reject_ >= o_.max_trials)
      raise<value_error>(this->where(), "no convergence after " + std::to_string(o_.max_trials) + " trials");
    const bool last = o_.max_steps > 0 && n_accept_ + n_reject_ + 1 >= o_.max_steps;  // the budget's last trial
    const T t = last ? t_end_ : std::min(t_end_, s_ + h_);
    T t_ = t, su = T(0);
    if (o_.eta > T(0)) {
      const auto [sd, up] = detail::ancestral_step(Core::sigma_of(s_), Core::sigma_of(t), o_.eta);
      (void)up;
      t_ = std::min(t_end_, -std::log(sd));
      const T a = Core::sigma_of(t), b = Core::sigma_of(t_);
      su = std::sqrt(std::max(T(0), a * a - b * b));
    }
    this->report(Core::sigma_of(s_), Core::sigma_of(t));
    auto call = [&](const BasicTensor<T>& xx, T s) { return this->call(d, xx, s); };
    if (!have_eps_) {  // x is unchanged after a rejection: its eps is reused (k-diffusion recomputes it)
      const T sigma = Core::sigma_of(s_);
      this->denoised_ = this->call(d, x, sigma);
      detail::ensure_like(e_, x);
      for (std::size_t k = 0; k < x.size(); ++k) e_[k] = (x[k] - this->denoised_[k]) / sigma;
      have_eps_ = true;
      if (x_prev_.empty() || !x_prev_.same_shape(x)) detail::copy_into(x_prev_, x);
    }
    if (last) {  // the budget's last trial: a first-order step (stable for any h) to the end, accepted
      Core::step1(x, s_, t_, e_, high_);
      finish_trial(x, noise, t, su, true, T(1));
      return;
    }
    if (o_.order == 2) {
      Core::step1(x, s_, t_, e_, low_);
      Core::step2(call, x, s_, t_, T(0.5), e_, er1_, false, u_, high_);
    } else {
      Core::step2(call, x, s_, t_, T(1) / T(3), e_, er1_, false, u_, low_);
      Core::step3(call, x, s_, t_, e_, er1_, true, u_, er2_, high_);
    }
    double acc = 0;
    for (std::size_t k = 0; k < x.size(); ++k) {
      const T delta = std::max(o_.atol, o_.rtol * std::max(std::abs(low_[k]), std::abs(x_prev_[k])));
      const double q = static_cast<double>((low_[k] - high_[k]) / delta);
      acc += q * q;
    }
    const T error = static_cast<T>(std::sqrt(acc / static_cast<double>(x.size())));
    // PID controller (k-diffusion PIDStepSizeController.propose_step).
    const T inv = T(1) / (error + T(1e-8));
    if (!have_errs_) {
      errs_[0] = errs_[1] = errs_[2] = inv;
      have_errs_ = true;
    }
    errs_[0] = inv;
    T factor = std::pow(errs_[0], b1_) * std::pow(errs_[1], b2_) * std::pow(errs_[2], b3_);
    factor = T(1) + std::atan(factor - T(1));
    const bool accept = factor >= o_.accept_safety;
    if (accept) {
      errs_[2] = errs_[1];
      errs_[1] = errs_[0];
      std::swap(x_prev_, low_);
    }
    finish_trial(x, noise, t, su, accept, factor);
  }

  /// Takes the trial's result `high_` (to t, plus noise su) when accepted; scales h either way.
  void finish_trial(BasicTensor<T>& x, NoiseSource<T>& noise, T t, T su, bool accept, T factor) {
    using Core = detail::DpmSolverCore<T>;
    if (accept) {
      detail::copy_into(x, high_);
      if (su > T(0)) {
        detail::ensure_like(this->noise_, x);
        noise.fill(n_accept_, Core::sigma_of(s_), Core::sigma_of(t), this->noise_);
        detail::axpby(x, T(1), this->noise_, su * o_.s_noise);
      }
      s_ = t;
      have_eps_ = false;
      ++n_accept_;
    } else {
      ++n_reject_;
    }
    h_ *= factor;
  }

 private:
  Options o_;
  T s_ = T(0), t_end_ = T(0), h_ = T(0);
  T b1_ = T(0), b2_ = T(0), b3_ = T(0);
  T errs_[3] = {T(0), T(0), T(0)};
  bool have_errs_ = false, have_eps_ = false;
  std::size_t n_accept_ = 0, n_reject_ = 0;
  BasicTensor<T> e_, er1_, er2_, u_, low_, high_, x_prev_;
};

/// Whole-loop DPM-Solver-fast.
template <class T, class D>
BasicTensor<T> sample_dpm_fast(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                               NoiseSource<T>& noise, const Callback<T>& callback = {},
                               const DpmFastOptions<T>& options = {}) {
  return detail::run_loop(DpmFastSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x), noise,
                          callback);
}

/// Whole-loop adaptive DPM-Solver.
template <class T, class D>
BasicTensor<T> sample_dpm_adaptive(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                                   NoiseSource<T>& noise, const Callback<T>& callback = {},
                                   const DpmAdaptiveOptions<T>& options = {}) {
  return detail::run_loop(DpmAdaptiveSampler<T>({sigmas.begin(), sigmas.end()}, options), denoiser, std::move(x),
                          noise, callback);
}

DIFFUSE_END_NAMESPACE
