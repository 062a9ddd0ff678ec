// SPDX-License-Identifier: MIT
/** @file flow.hpp
 *  Rectified-flow samplers (Liu et al. 2022, arXiv:2209.03003; Esser et al. 2024, SD3,
 *  arXiv:2403.03206): integrate dx/ds = v(x, s) = (x - D(x, s)) / s from s = sigmas[0] <= 1 down.
 *  That is the same ODE the Euler/Heun samplers integrate, so these are those algorithms
 *  restricted to flow-space denoisers (and refusing VE ones): diffusers
 *  `FlowMatchEulerDiscreteScheduler` (x_next = x + (s_next - s) v) and
 *  `FlowMatchHeunDiscreteScheduler`.
 */
#pragma once

#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/sample/euler.hpp"
#include "diffuse/sample/heun.hpp"

DIFFUSE_BEGIN_NAMESPACE

/** Flow-matching Euler, first order (diffusers `FlowMatchEulerDiscreteScheduler`). */
template <class T>
class FlowEulerSampler : public EulerSampler<T> {
 public:
  explicit FlowEulerSampler(std::vector<T> sigmas) : EulerSampler<T>(std::move(sigmas)) {}
  DIFFUSE_SAMPLER_BOILERPLATE(FlowEulerSampler, "flow_euler")
  bool accepts(NoiseSpace s) const override { return s == NoiseSpace::flow; }
};

/** Flow-matching Heun, second order (diffusers `FlowMatchHeunDiscreteScheduler`). */
template <class T>
class FlowHeunSampler : public HeunSampler<T> {
 public:
  explicit FlowHeunSampler(std::vector<T> sigmas) : HeunSampler<T>(std::move(sigmas)) {}
  DIFFUSE_SAMPLER_BOILERPLATE(FlowHeunSampler, "flow_heun")
  bool accepts(NoiseSpace s) const override { return s == NoiseSpace::flow; }
};

/// Whole-loop flow Euler.
template <class T, class D>
BasicTensor<T> sample_flow_euler(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                                 NoiseSource<T>& noise, const Callback<T>& callback = {}) {
  return detail::run_loop(FlowEulerSampler<T>({sigmas.begin(), sigmas.end()}), denoiser, std::move(x), noise, callback);
}

/// Whole-loop flow Heun.
template <class T, class D>
BasicTensor<T> sample_flow_heun(D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                                NoiseSource<T>& noise, const Callback<T>& callback = {}) {
  return detail::run_loop(FlowHeunSampler<T>({sigmas.begin(), sigmas.end()}), denoiser, std::move(x), noise, callback);
}

DIFFUSE_END_NAMESPACE
