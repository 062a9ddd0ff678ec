// SPDX-License-Identifier: MIT
/** @file denoiser.hpp
 *  The denoiser contract every sampler is written against (Karras et al. 2022, arXiv:2206.00364,
 *  §2): a callable `D(x, sigma)` returning the denoised estimate x̂₀ of `x`, a noisy sample at noise
 *  level `sigma`.
 *
 *  **Conditioning** (prompt embeddings, class labels, control images, guidance scale) is *not* an
 *  argument: whoever builds the denoiser binds it into the callable (a lambda capture, a member of
 *  the wrapper, `guidance.hpp` for CFG). Samplers therefore never see it, and a closed-form
 *  denoiser, a network wrapper and a user lambda all look the same to them.
 *
 *  **Noise space.** Most denoisers live in the variance-exploding (VE, k-diffusion) space
 *  `x = x0 + sigma * eps`, sigma in [0, inf). Rectified-flow models live in the flow space
 *  `x = (1 - s) x0 + s eps`, s in [0, 1]. A denoiser may say which by a member `space()`; a plain
 *  callable is taken to be VE. Samplers that only make sense in one space check it.
 *
 *  **Example**
 *  @code
 *  auto d = [&](const diffuse::Tensor& x, float sigma) { return net(x, sigma, prompt); };
 *  static_assert(diffuse::Denoiser<decltype(d), float>);
 *  diffuse::AnyDenoiser<float> any(d);          // type-erased, chosen at run time
 *  @endcode
 */
#pragma once

#include <concepts>
#include <functional>
#include <type_traits>
#include <utility>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Which forward process `x` and `sigma` belong to (see the file comment).
enum class NoiseSpace {
  ve,    ///< x = x0 + sigma * eps (k-diffusion, Karras et al. 2022); sigma in [0, inf)
  flow,  ///< x = (1 - sigma) x0 + sigma * eps (rectified flow); sigma in [0, 1]
};

inline const char* noise_space_name(NoiseSpace s) { return s == NoiseSpace::flow ? "flow" : "ve"; }

/// `D(x, sigma) -> BasicTensor<T>`: the denoised estimate of `x` at noise level `sigma`.
template <class D, class T>
concept Denoiser = std::invocable<D&, const BasicTensor<T>&, T> &&
                   std::convertible_to<std::invoke_result_t<D&, const BasicTensor<T>&, T>, BasicTensor<T>>;

/// The noise space a denoiser declares by a member `space()`, else VE.
template <class D>
NoiseSpace space_of(const D& d) {
  if constexpr (requires { { d.space() } -> std::convertible_to<NoiseSpace>; })
    return d.space();
  else
    return NoiseSpace::ve;
}

/** A type-erased denoiser (like `std::function`), for choices made at run time. Copying copies the
 *  wrapped callable; wrap `std::ref(d)` to share a denoiser that must not be copied (a network). */
template <class T>
class AnyDenoiser {
 public:
  using function_type = std::function<BasicTensor<T>(const BasicTensor<T>&, T)>;

  AnyDenoiser() = default;

  /// Wraps `d`; the noise space is taken from `d.space()` if it has one, else VE.
  template <class D>
    requires(!std::same_as<std::remove_cvref_t<D>, AnyDenoiser> && Denoiser<std::remove_cvref_t<D>, T>)
  AnyDenoiser(D&& d)  // NOLINT(google-explicit-constructor): a denoiser *is* an AnyDenoiser
      : space_(space_of(d)), fn_(std::forward<D>(d)) {}

  /// Wraps `d`, declaring its noise space explicitly.
  template <class D>
    requires(Denoiser<std::remove_cvref_t<D>, T>)
  AnyDenoiser(D&& d, NoiseSpace space) : space_(space), fn_(std::forward<D>(d)) {}

  /// D(x, sigma). Throws value_error when empty.
  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (!fn_) raise<value_error>("AnyDenoiser", "called an empty denoiser");
    return fn_(x, sigma);
  }

  NoiseSpace space() const { return space_; }
  explicit operator bool() const { return static_cast<bool>(fn_); }

 private:
  NoiseSpace space_ = NoiseSpace::ve;
  function_type fn_;
};

/// An AnyDenoiser that refers to `d` (no copy); `d` must outlive it.
template <class T, class D>
  requires Denoiser<D, T>
AnyDenoiser<T> denoiser_ref(D& d) {
  if constexpr (std::same_as<std::remove_cv_t<D>, AnyDenoiser<T>>)
    return AnyDenoiser<T>(std::ref(d), d.space());
  else
    return AnyDenoiser<T>(std::ref(d), space_of(d));
}

/** Adapts a flow-space denoiser to the VE space: with s = sigma / (1 + sigma),
 *  D_ve(y, sigma) = D_flow(y / (1 + sigma), s). Lets the exponential-integrator samplers (DPM++,
 *  UniPC, DEIS) run rectified-flow models exactly, since x_flow / (1 - s) is a VE sample. Pair it
 *  with sigmas mapped by `flow_sigma_to_ve` and the initial x divided by (1 - s0). */
template <class T>
AnyDenoiser<T> flow_to_ve(AnyDenoiser<T> flow) {
  return AnyDenoiser<T>(
      [f = std::move(flow)](const BasicTensor<T>& y, T sigma) {
        const T scale = T(1) / (T(1) + sigma);
        BasicTensor<T> x(y.shape());
        const T* py = y.data();
        T* px = x.data();
        for (std::size_t i = 0; i < y.size(); ++i) px[i] = py[i] * scale;
        return f(x, sigma * scale);
      },
      NoiseSpace::ve);
}

/// Flow noise level s in [0, 1) to the VE sigma s / (1 - s).
template <class T>
T flow_sigma_to_ve(T s) {
  return s / (T(1) - s);
}

DIFFUSE_END_NAMESPACE
