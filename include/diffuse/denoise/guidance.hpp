// SPDX-License-Identifier: MIT
/** @file guidance.hpp
 *  Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) as a denoiser wrapper:
 *
 *      D(x, sigma) = D_u + scale (D_c - D_u)
 *
 *  with the optional guidance rescale of Lin et al. 2023 (arXiv:2305.08891 §3.4, diffusers
 *  `rescale_noise_cfg`): per batch item, g' = phi g std(c)/std(g) + (1 - phi) g, where std is the
 *  unbiased standard deviation over all non-batch dims. diffusers applies it to the network's
 *  output (`noise_pred`): `RescaleSpace::epsilon` (default, an epsilon model's) does the same
 *  through eps = (x - D)/sigma, `RescaleSpace::v_prediction` (a v model's, e.g. SD 2.x 768) through
 *  v = alpha eps - s D with alpha = 1/sqrt(1 + sigma^2), s = sigma alpha (the VP form of the VE
 *  sample x = D + sigma eps) and back by D = alpha^2 x - s v; `RescaleSpace::denoised` applies
 *  it to D directly.
 *
 *  The wrapped model is a callable `(x, sigma, Branch) -> BasicTensor<T>`. If the trait
 *  `cfg_batchable<Model>` is true (the model declares `static constexpr bool batched_cfg = true`,
 *  or the trait is specialised), both passes go in one call with `Branch::both` on the batch-2B
 *  input [x; x], returning [D_u; D_c]; otherwise two calls are made. Conditioning (prompt, negative
 *  prompt) is bound into the model by whoever builds it.
 */
#pragma once

#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/denoise/denoiser.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Which conditioning a guided model call uses.
enum class Branch { uncond, cond, both };

/// True when `M` can run both branches in one batch-2B call (declares `batched_cfg = true`).
template <class M>
struct cfg_batchable : std::bool_constant<requires { requires M::batched_cfg == true; }> {};
/// A std::ref-wrapped model is batchable when the model is.
template <class M>
struct cfg_batchable<std::reference_wrapper<M>> : cfg_batchable<std::remove_cv_t<M>> {};
template <class M>
inline constexpr bool cfg_batchable_v = cfg_batchable<std::remove_cvref_t<M>>::value;

enum class RescaleSpace { epsilon, v_prediction, denoised };

template <class T>
struct GuidanceOptions {
  T scale = T(7.5);               ///< 1: the conditional pass alone (then only it is computed)
  T guidance_rescale = T(0);      ///< phi of Lin et al. 2023; 0 disables
  RescaleSpace rescale_space = RescaleSpace::epsilon;
  bool allow_batching = true;     ///< use the batch-2B call when the model supports it
};

namespace detail {
/// [a; b] along dim 0.
template <class T>
BasicTensor<T> concat_batch(const BasicTensor<T>& a, const BasicTensor<T>& b) {
  Shape s = a.shape();
  if (s.empty()) s = {1};
  s[0] *= 2;
  BasicTensor<T> out(s);
  std::copy(a.begin(), a.end(), out.begin());
  std::copy(b.begin(), b.end(), out.begin() + static_cast<std::ptrdiff_t>(a.size()));
  return out;
}

/// Unbiased std of each batch item of `t` (torch.std over dims 1..).
template <class T>
T item_std(const T* p, std::size_t n) {
  if (n < 2) return T(0);
  T mean = 0;
  for (std::size_t i = 0; i < n; ++i) mean += p[i];
  mean /= static_cast<T>(n);
  T ss = 0;
  for (std::size_t i = 0; i < n; ++i) ss += (p[i] - mean) * (p[i] - mean);
  return std::sqrt(ss / static_cast<T>(n - 1));
}

/// g <- phi g std(c)/std(g) + (1 - phi) g, per batch item.
template <class T>
void rescale_cfg(BasicTensor<T>& g, const BasicTensor<T>& c, T phi) {
  const std::size_t batch = g.ndim() > 0 ? g.dim(0) : 1;
  const std::size_t per = batch ? g.size() / batch : 0;
  for (std::size_t b = 0; b < batch; ++b) {
    T* pg = g.data() + b * per;
    const T sc = item_std(c.data() + b * per, per), sg = item_std(pg, per);
    const T f = sg > T(0) ? phi * sc / sg + (T(1) - phi) : T(1);
    for (std::size_t i = 0; i < per; ++i) pg[i] *= f;
  }
}
}  // namespace detail

/** The CFG denoiser. `Model` is `(const BasicTensor<T>& x, T sigma, Branch) -> BasicTensor<T>`
 *  returning a denoised estimate (e.g. a ParameterizedDenoiser per branch, dispatched by a lambda). */
template <class T, class Model>
class GuidedDenoiser {
 public:
  GuidedDenoiser(Model model, GuidanceOptions<T> options, NoiseSpace space = NoiseSpace::ve)
      : model_(std::move(model)), o_(options), space_(space) {
    if (!std::isfinite(o_.scale)) raise<value_error>("GuidedDenoiser", "guidance scale must be finite");
    if (!(o_.guidance_rescale >= T(0) && o_.guidance_rescale <= T(1)))
      raise<value_error>("GuidedDenoiser", "guidance_rescale must lie in [0, 1]");
  }

  BasicTensor<T> operator()(const BasicTensor<T>& x, T sigma) const {
    if (o_.scale == T(1) && o_.guidance_rescale == T(0)) return model_(x, sigma, Branch::cond);
    BasicTensor<T> u, c;
    if constexpr (cfg_batchable_v<Model>) {
      if (o_.allow_batching) {
        const BasicTensor<T> both = model_(detail::concat_batch(x, x), sigma, Branch::both);
        if (both.size() != 2 * x.size())
          raise<shape_error>("GuidedDenoiser", "the batched model returned " + std::to_string(both.size()) +
                                                   " values for a batch-2B input of " + std::to_string(2 * x.size()));
        u = BasicTensor<T>(x.shape());
        c = BasicTensor<T>(x.shape());
        std::copy(both.begin(), both.begin() + static_cast<std::ptrdiff_t>(x.size()), u.begin());
        std::copy(both.begin() + static_cast<std::ptrdiff_t>(x.size()), both.end(), c.begin());
      } else {
        u = model_(x, sigma, Branch::uncond);
        c = model_(x, sigma, Branch::cond);
      }
    } else {
      u = model_(x, sigma, Branch::uncond);
      c = model_(x, sigma, Branch::cond);
    }
    check_same_shape(u, x, "GuidedDenoiser", "uncond output", "x");
    check_same_shape(c, x, "GuidedDenoiser", "cond output", "x");
    const std::size_t n = x.size();
    T* pu = u.data();
    T* pc = c.data();
    for (std::size_t i = 0; i < n; ++i) pu[i] = pu[i] + o_.scale * (pc[i] - pu[i]);
    if (o_.guidance_rescale > T(0)) {
      if (o_.rescale_space == RescaleSpace::denoised || sigma == T(0)) {
        detail::rescale_cfg(u, c, o_.guidance_rescale);
      } else if (o_.rescale_space == RescaleSpace::v_prediction) {
        // To v = alpha eps - s D = alpha (x - D) / sigma - s D, rescale, and back: D = alpha^2 x - s v.
        const T* px = x.data();
        const T alpha = T(1) / std::sqrt(T(1) + sigma * sigma), s = sigma * alpha, k = alpha / sigma;
        for (std::size_t i = 0; i < n; ++i) {
          pu[i] = k * (px[i] - pu[i]) - s * pu[i];
          pc[i] = k * (px[i] - pc[i]) - s * pc[i];
        }
        detail::rescale_cfg(u, c, o_.guidance_rescale);
        for (std::size_t i = 0; i < n; ++i) pu[i] = alpha * alpha * px[i] - s * pu[i];
      } else {
        // To eps = (x - D)/sigma, rescale, and back.
        const T* px = x.data();
        const T inv = T(1) / sigma;
        for (std::size_t i = 0; i < n; ++i) {
          pu[i] = (px[i] - pu[i]) * inv;
          pc[i] = (px[i] - pc[i]) * inv;
        }
        detail::rescale_cfg(u, c, o_.guidance_rescale);
        for (std::size_t i = 0; i < n; ++i) pu[i] = px[i] - sigma * pu[i];
      }
    }
    return u;
  }

  NoiseSpace space() const { return space_; }
  const GuidanceOptions<T>& options() const { return o_; }

 private:
  Model model_;
  GuidanceOptions<T> o_;
  NoiseSpace space_;
};

/// Wraps `model` into a CFG denoiser.
template <class T, class Model>
GuidedDenoiser<T, std::decay_t<Model>> make_guided(Model&& model, GuidanceOptions<T> options,
                                                   NoiseSpace space = NoiseSpace::ve) {
  return GuidedDenoiser<T, std::decay_t<Model>>(std::forward<Model>(model), options, space);
}

DIFFUSE_END_NAMESPACE
