// SPDX-License-Identifier: MIT
/** @file sampler.hpp
 *  What every sampler shares: the noise source, the per-step callback, and the step-wise
 *  `Sampler<T>` base that each algorithm implements once.
 *
 *  A sampler is a value: it holds the schedule, the step index and whatever history a multistep
 *  method needs (previous denoised estimates, step sizes). Copying it mid-run (`clone()`), together
 *  with a copy of the noise source, reproduces the rest of the run exactly, which a host (a game
 *  loop, an interactive preview) can use to branch or rewind. The whole-loop functions
 *  `sample_X(denoiser, x, sigmas, noise, callback, options)` are thin loops over `step()`.
 *
 *  **Example**
 *  @code
 *  auto noise = diffuse::gaussian_noise<float>(42);
 *  diffuse::EulerSampler<float> s(sigmas);
 *  diffuse::AnyDenoiser<float> d = my_denoiser;
 *  while (!s.done()) { s.step(d, x, noise); show(s.denoised()); }   // one step per frame
 *  @endcode
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/denoise/denoiser.hpp"

DIFFUSE_BEGIN_NAMESPACE

/** Where per-step noise comes from: a callable `(step, sigma, sigma_next, out)` that fills `out`
 *  (already shaped like x) with standard normal values for the step from `sigma` to `sigma_next`.
 *  The sigma pair lets a Brownian-tree source return W(sigma, sigma_next) / sqrt|sigma - sigma_next|
 *  as k-diffusion's `BrownianTreeNoiseSampler` does; i.i.d. normals are equal in distribution.
 *  Copying a NoiseSource copies the callable and therefore the generator state. */
template <class T>
class NoiseSource {
 public:
  using function_type = std::function<void(std::size_t step, T sigma, T sigma_next, BasicTensor<T>& out)>;

  NoiseSource() = default;
  explicit NoiseSource(function_type fn) : fn_(std::move(fn)) {}

  /// Fills `out` with N(0, 1) noise for `step`. Throws value_error when empty.
  void fill(std::size_t step, T sigma, T sigma_next, BasicTensor<T>& out) {
    if (!fn_) raise<value_error>("NoiseSource::fill", "the sampler needs noise but the noise source is empty");
    fn_(step, sigma, sigma_next, out);
  }
  explicit operator bool() const { return static_cast<bool>(fn_); }

 private:
  function_type fn_;
};

/** The default noise: std::mt19937_64 seeded with `seed`, Box–Muller in double. Deterministic and
 *  portable, but *not* torch's stream (that generator lives in core/random.hpp). */
template <class T>
NoiseSource<T> gaussian_noise(std::uint64_t seed) {
  return NoiseSource<T>([rng = std::mt19937_64(seed)](std::size_t, T, T, BasicTensor<T>& out) mutable {
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    T* p = out.data();
    const std::size_t n = out.size();
    for (std::size_t i = 0; i < n; i += 2) {
      // u1 in (0, 1] so the log is finite; u2 in [0, 1).
      const double u1 = (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53;
      const double u2 = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      const double r = std::sqrt(-2.0 * std::log(u1));
      p[i] = static_cast<T>(r * std::cos(kTwoPi * u2));
      if (i + 1 < n) p[i + 1] = static_cast<T>(r * std::sin(kTwoPi * u2));
    }
  });
}

/// What the callback sees after each step.
template <class T>
struct StepInfo {
  std::size_t step;                ///< index of the step just taken (0-based)
  T sigma;                         ///< noise level at the start of the step
  T sigma_next;                    ///< noise level reached
  const BasicTensor<T>& x;         ///< the sample after the step
  const BasicTensor<T>& denoised;  ///< the denoised estimate the step started from (a preview)
};

template <class T>
using Callback = std::function<void(const StepInfo<T>&)>;

namespace detail {

/// Checks a schedule: at least 2 finite, non-negative, non-increasing values.
template <class T>
void check_sigmas(std::span<const T> sigmas, std::string_view where) {
  if (sigmas.size() < 2)
    raise<value_error>(where, "sigmas needs at least 2 values (start and end), got " + std::to_string(sigmas.size()));
  for (std::size_t i = 0; i < sigmas.size(); ++i) {
    if (!std::isfinite(sigmas[i]) || sigmas[i] < T(0))
      raise<value_error>(where, "sigmas[" + std::to_string(i) + "] = " + std::to_string(sigmas[i]) +
                                    " is not a finite non-negative noise level");
    if (i > 0 && sigmas[i] > sigmas[i - 1])
      raise<value_error>(where, "sigmas must be non-increasing, but sigmas[" + std::to_string(i) + "] = " +
                                    std::to_string(sigmas[i]) + " > sigmas[" + std::to_string(i - 1) +
                                    "] = " + std::to_string(sigmas[i - 1]));
  }
}

/// Resizes `buf` to the shape of `like` unless it already has it (no allocation in steady state).
template <class T>
void ensure_like(BasicTensor<T>& buf, const BasicTensor<T>& like) {
  if (!buf.same_shape(like)) buf = BasicTensor<T>(like.shape());
}

/// True when every value is finite. Branch-free with 8 independent accumulators so that it
/// vectorises (x - x is 0 for finite x and NaN for NaN and +-inf); ~8x faster than an early-exit scan.
template <class T>
bool all_finite(const BasicTensor<T>& t) {
  const T* p = t.data();
  const std::size_t n = t.size();
  T acc[8] = {};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (std::size_t k = 0; k < 8; ++k) acc[k] += p[i + k] - p[i + k];
  for (; i < n; ++i) acc[0] += p[i] - p[i];
  T sum = 0;
  for (T a : acc) sum += a;
  return sum == T(0);
}

/// check_finite with the fast path above; the slow scan only runs to name the offending index.
template <class T>
void require_finite(const BasicTensor<T>& t, std::string_view where, std::string_view name) {
  if (!all_finite(t)) check_finite(t, where, name);
}

/// dst <- src, reusing dst's storage when the shapes match.
template <class T>
void copy_into(BasicTensor<T>& dst, const BasicTensor<T>& src) {
  ensure_like(dst, src);
  std::copy(src.begin(), src.end(), dst.begin());
}

/// get_ancestral_step of k-diffusion: (sigma_down, sigma_up) for an ancestral step with `eta`.
template <class T>
std::pair<T, T> ancestral_step(T sigma_from, T sigma_to, T eta) {
  if (eta == T(0) || sigma_from == T(0)) return {sigma_to, T(0)};
  const T up = std::min(
      sigma_to, eta * std::sqrt(std::max(T(0), sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                                                   (sigma_from * sigma_from))));
  const T down = std::sqrt(std::max(T(0), sigma_to * sigma_to - up * up));
  return {down, up};
}

}  // namespace detail

/** The step-wise sampler. A step takes the sample from `sigmas[i]` to `sigmas[i + 1]` (the adaptive
 *  solver instead takes one trial step per call). Derived classes implement `do_step`; the base
 *  checks the schedule, the noise space, shapes and finiteness. */
template <class T>
class Sampler {
 public:
  virtual ~Sampler() = default;

  /// A copy of the whole state (schedule, step index, history, buffers).
  virtual std::unique_ptr<Sampler> clone() const = 0;
  /// The registry name ("euler", "dpmpp_2m", ...).
  virtual std::string_view name() const = 0;
  /// Spaces the algorithm is valid in; `flow` samplers also require sigmas[0] <= 1.
  virtual bool accepts(NoiseSpace space) const { return space == NoiseSpace::ve; }

  /// Advances x by one step. Throws value_error when done, when the denoiser's noise space does not
  /// suit the sampler, or when a non-finite value is produced.
  void step(const AnyDenoiser<T>& denoiser, BasicTensor<T>& x, NoiseSource<T>& noise) {
    if (done()) raise<value_error>(where(), "step() called after the last step");
    if (!accepts(denoiser.space()))
      raise<value_error>(where(), std::string("this sampler cannot use a denoiser in the '") +
                                      noise_space_name(denoiser.space()) + "' noise space");
    if (denoiser.space() == NoiseSpace::flow && sigmas_.front() > T(1))
      raise<value_error>(where(), "a flow-space denoiser needs sigmas in [0, 1], got sigmas[0] = " +
                                      std::to_string(sigmas_.front()));
    if (index_ + 1 < sigmas_.size()) report(sigmas_[index_], sigmas_[index_ + 1]);
    // Two equal sigmas (diffusers' final_sigmas_type="sigma_min" repeats sigma_min): h = 0, the
    // step is the identity. Skipped without a denoiser call; multistep history is left untouched.
    // Not for a sampler that still acts on such a step (UniPC's corrector, see acts_on_zero_steps).
    if (skip_equal_ && !acts_on_zero_steps() && index_ + 1 < sigmas_.size() && sigmas_[index_] == sigmas_[index_ + 1]) {
      ++index_;
      return;
    }
    do_step(denoiser, x, noise);
    if (check_finite_) detail::require_finite(x, where(), "x");
    ++index_;
  }

  /// Runs the remaining steps.
  void run(const AnyDenoiser<T>& denoiser, BasicTensor<T>& x, NoiseSource<T>& noise, const Callback<T>& cb = {}) {
    while (!done()) {
      const std::size_t i = index_;
      step(denoiser, x, noise);
      if (cb) cb(StepInfo<T>{i, last_sigma_, last_sigma_next_, x, denoised_});
    }
  }

  /** Starts the run at step `k` instead of 0 (img2img and inpainting: diffusers' `set_begin_index`;
   *  x must then be noised to sigmas[k]). Only before the first step. The schedule keeps its
   *  earlier entries, so the rules that count the whole schedule see all of it, as diffusers'
   *  absolute step index does: Euler's churn gamma, UniPC's and DEIS' lower-order final steps,
   *  LMS's order min(k + 1, order) and its Lagrange nodes on the earlier sigmas. The history of a
   *  multistep sampler starts empty. value_error after a step, for k past the last step, or for
   *  a sampler that does not walk the schedule index by index (the adaptive ones). */
  void begin_at(std::size_t k) {
    if (!skip_equal_) raise<value_error>(where(), "begin_at: this sampler does not walk the schedule step by step");
    if (nfe_ != 0 || index_ != 0) raise<value_error>(where(), "begin_at must be called before the first step");
    if (k + 1 >= sigmas_.size())
      raise<value_error>(where(), "begin_at(" + std::to_string(k) + "): the schedule has " +
                                      std::to_string(sigmas_.size() - 1) + " steps");
    index_ = k;
  }

  virtual bool done() const { return index_ + 1 >= sigmas_.size(); }
  /// Steps taken so far.
  std::size_t step_index() const { return index_; }
  /// Steps in the schedule (sigmas.size() - 1); for the adaptive solver, not known in advance.
  virtual std::size_t num_steps() const { return sigmas_.size() - 1; }
  const std::vector<T>& sigmas() const { return sigmas_; }
  /// The denoised estimate of the last step (empty before the first): a preview of the result.
  const BasicTensor<T>& denoised() const { return denoised_; }
  /// Denoiser calls so far.
  std::size_t nfe() const { return nfe_; }
  /// Turns the per-step NaN/inf check of x and of every denoiser output on or off (default on).
  void set_check_finite(bool on) { check_finite_ = on; }

 protected:
  explicit Sampler(std::vector<T> sigmas, std::string_view where) : sigmas_(std::move(sigmas)) {
    detail::check_sigmas<T>(sigmas_, where);
  }
  Sampler(const Sampler&) = default;
  Sampler& operator=(const Sampler&) = default;

  virtual void do_step(const AnyDenoiser<T>& denoiser, BasicTensor<T>& x, NoiseSource<T>& noise) = 0;

  /** True for a sampler whose step still changes x when sigmas[i] == sigmas[i + 1]: UniPC's
   *  corrector, which at step i corrects the previous step's result with the new evaluation at
   *  sigmas[i] (diffusers applies it on the zero-length last step of karras + sigma_min). The
   *  base then hands such a step to do_step instead of skipping it. For every other sampler the
   *  zero-length step is the identity (h = 0) and is skipped without a denoiser call. */
  virtual bool acts_on_zero_steps() const { return false; }

  std::string where() const { return "sample_" + std::string(name()); }

  /// Calls the denoiser, checks the result's shape and finiteness, counts the call.
  BasicTensor<T> call(const AnyDenoiser<T>& denoiser, const BasicTensor<T>& x, T sigma) {
    BasicTensor<T> out = denoiser(x, sigma);
    ++nfe_;
    check_same_shape(out, x, where(), "denoised", "x");
    if (check_finite_) detail::require_finite(out, where(), "denoised");
    return out;
  }
  /// Like `call`, and keeps the result as the step's preview `denoised()`.
  const BasicTensor<T>& denoise(const AnyDenoiser<T>& denoiser, const BasicTensor<T>& x, T sigma) {
    denoised_ = call(denoiser, x, sigma);
    return denoised_;
  }
  /// Records the sigma pair reported to the callback.
  void report(T sigma, T sigma_next) {
    last_sigma_ = sigma;
    last_sigma_next_ = sigma_next;
  }
  T sigma_at(std::size_t i) const { return sigmas_[i]; }

  std::vector<T> sigmas_;
  std::size_t index_ = 0;
  std::size_t nfe_ = 0;
  BasicTensor<T> denoised_;
  BasicTensor<T> noise_;  ///< buffer for per-step noise
  T last_sigma_ = T(0);
  T last_sigma_next_ = T(0);
  bool check_finite_ = true;
  bool skip_equal_ = true;  ///< false for samplers that do not walk the schedule index by index
};

/// Makes `clone()` and `name()` for a final sampler class.
#define DIFFUSE_SAMPLER_BOILERPLATE(Class, Name)                                                      \
  std::unique_ptr<Sampler<T>> clone() const override { return std::make_unique<Class>(*this); }      \
  std::string_view name() const override { return Name; }

namespace detail {

/// The whole-loop function shared by every `sample_X`: wraps the denoiser and runs the steps.
template <class T, class S, class D>
BasicTensor<T> run_loop(S sampler, D& denoiser, BasicTensor<T> x, NoiseSource<T>& noise, const Callback<T>& cb) {
  if constexpr (std::same_as<std::remove_cv_t<D>, AnyDenoiser<T>>) {
    sampler.run(denoiser, x, noise, cb);
  } else {
    const AnyDenoiser<T> any = denoiser_ref<T>(denoiser);
    sampler.run(any, x, noise, cb);
  }
  return x;
}

/// x[i] = a * x[i] + b * y[i]
template <class T>
inline void axpby(BasicTensor<T>& x, T a, const BasicTensor<T>& y, T b) {
  T* px = x.data();
  const T* py = y.data();
  const std::size_t n = x.size();
  for (std::size_t i = 0; i < n; ++i) px[i] = a * px[i] + b * py[i];
}

/// One Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma from `from` to `to`:
/// x + (x - D) / from * (to - from), written as (1 + r) x - r D with r = (to - from) / from.
template <class T>
inline void euler_step(BasicTensor<T>& x, const BasicTensor<T>& denoised, T from, T to) {
  const T r = (to - from) / from;
  axpby(x, T(1) + r, denoised, -r);
}

}  // namespace detail

DIFFUSE_END_NAMESPACE
