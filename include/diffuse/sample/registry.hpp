// SPDX-License-Identifier: MIT
/** @file registry.hpp
 *  Samplers by name, as users know them from k-diffusion and ComfyUI, and diffusers scheduler
 *  class names mapped onto them. One `SamplerParams` bag carries every option; each factory reads
 *  the fields it understands (unset `eta` means the sampler's own default).
 *
 *  **Example**
 *  @code
 *  diffuse::SamplerParams<float> p;
 *  p.eta = 0.5f;
 *  auto s = diffuse::make_sampler<float>("dpmpp_2m_sde", sigmas, p);
 *  auto noise = diffuse::gaussian_noise<float>(seed);
 *  s->run(denoiser, x, noise);
 *  @endcode
 */
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "diffuse/sample/adaptive.hpp"
#include "diffuse/sample/ddim.hpp"
#include "diffuse/sample/ddpm.hpp"
#include "diffuse/sample/deis.hpp"
#include "diffuse/sample/dpm_solver.hpp"
#include "diffuse/sample/euler.hpp"
#include "diffuse/sample/flow.hpp"
#include "diffuse/sample/heun.hpp"
#include "diffuse/sample/lcm.hpp"
#include "diffuse/sample/lms.hpp"
#include "diffuse/sample/pndm.hpp"
#include "diffuse/sample/sampler.hpp"
#include "diffuse/sample/unipc.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Every sampler option in one place; fields a sampler does not use are ignored.
template <class T>
struct SamplerParams {
  std::optional<T> eta;                            ///< unset: the sampler's default
  T s_noise = T(1);
  T s_churn = T(0), s_tmin = T(0), s_tmax = std::numeric_limits<T>::infinity();
  std::size_t order = 0;                           ///< 0: the sampler's default (lms 4, unipc 2, deis 3, adaptive 3)
  SolverType solver_type = SolverType::midpoint;   ///< dpmpp_2m_sde
  UniPcVariant unipc_variant = UniPcVariant::bh2;
  bool use_corrector = true;                       ///< unipc
  bool lower_order_final = true;                   ///< unipc, deis
  bool exact_phi3 = false;                         ///< dpmpp_3m(_sde), see DpmppSdeOptions
  VarianceType variance_type = VarianceType::fixed_small;  ///< ddpm
  std::vector<T> alphas_cumprod;                   ///< ddpm
  T rtol = T(0.05), atol = T(0.0078), h_init = T(0.05);  ///< dpm_adaptive
  std::size_t max_steps = 0;                       ///< dpm_adaptive: budget of trials (0: none)
  T r = T(0.5);                                    ///< dpmpp_sde
};

namespace detail {

template <class T>
using SamplerFactory = std::function<std::unique_ptr<Sampler<T>>(std::vector<T>, const SamplerParams<T>&)>;

template <class T>
struct RegistryEntry {
  std::string_view name;
  SamplerFactory<T> make;
};

template <class T>
ChurnOptions<T> churn(const SamplerParams<T>& p) {
  return {p.s_churn, p.s_tmin, p.s_tmax, p.s_noise};
}

template <class T>
const std::vector<RegistryEntry<T>>& registry() {
  static const std::vector<RegistryEntry<T>> entries = [] {
    std::vector<RegistryEntry<T>> e;
    auto add = [&](std::string_view name, SamplerFactory<T> f) { e.push_back({name, std::move(f)}); };
    add("euler", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<EulerSampler<T>>(std::move(s), churn(p));
    });
    add("euler_a", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<EulerAncestralSampler<T>>(std::move(s), EulerAncestralOptions<T>{p.eta.value_or(T(1)), p.s_noise});
    });
    add("heun", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<HeunSampler<T>>(std::move(s), churn(p));
    });
    add("dpm_2", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpm2Sampler<T>>(std::move(s), churn(p));
    });
    add("dpm_2_a", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpm2AncestralSampler<T>>(std::move(s), EulerAncestralOptions<T>{p.eta.value_or(T(1)), p.s_noise});
    });
    add("lms", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<LmsSampler<T>>(std::move(s), typename LmsSampler<T>::Options{p.order ? p.order : 4});
    });
    add("dpmpp_2m", [](std::vector<T> s, const SamplerParams<T>&) { return std::make_unique<Dpmpp2mSampler<T>>(std::move(s)); });
    add("dpmpp_3m", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpmpp3mSdeSampler<T>>(std::move(s), DpmppSdeOptions<T>{T(0), p.s_noise, p.solver_type, p.exact_phi3});
    });
    add("dpmpp_2m_sde", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpmpp2mSdeSampler<T>>(std::move(s), DpmppSdeOptions<T>{p.eta.value_or(T(1)), p.s_noise, p.solver_type, p.exact_phi3});
    });
    add("dpmpp_3m_sde", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpmpp3mSdeSampler<T>>(std::move(s), DpmppSdeOptions<T>{p.eta.value_or(T(1)), p.s_noise, p.solver_type, p.exact_phi3});
    });
    add("dpmpp_2s_a", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<Dpmpp2sAncestralSampler<T>>(
          std::move(s), typename Dpmpp2sAncestralSampler<T>::Options{p.eta.value_or(T(1)), p.s_noise});
    });
    add("dpmpp_sde", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<DpmppSdeSampler<T>>(std::move(s),
                                                  typename DpmppSdeSampler<T>::Options{p.eta.value_or(T(1)), p.s_noise, p.r});
    });
    add("dpm_fast", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<DpmFastSampler<T>>(std::move(s), DpmFastOptions<T>{p.eta.value_or(T(0)), p.s_noise});
    });
    add("dpm_adaptive", [](std::vector<T> s, const SamplerParams<T>& p) {
      DpmAdaptiveOptions<T> o;
      o.order = p.order ? p.order : 3;
      o.rtol = p.rtol;
      o.atol = p.atol;
      o.h_init = p.h_init;
      o.max_steps = p.max_steps;
      o.eta = p.eta.value_or(T(0));
      o.s_noise = p.s_noise;
      return std::make_unique<DpmAdaptiveSampler<T>>(std::move(s), o);
    });
    add("unipc", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<UniPcSampler<T>>(
          std::move(s), UniPcOptions<T>{p.order ? p.order : 2, p.unipc_variant, p.use_corrector, p.lower_order_final});
    });
    add("deis", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<DeisSampler<T>>(std::move(s), DeisOptions<T>{p.order ? p.order : 3, p.lower_order_final});
    });
    add("lcm", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<LcmSampler<T>>(std::move(s), typename LcmSampler<T>::Options{p.s_noise});
    });
    add("ddim", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<DdimSampler<T>>(std::move(s), DdimOptions<T>{p.eta.value_or(T(0)), p.s_noise});
    });
    add("ddpm", [](std::vector<T> s, const SamplerParams<T>& p) {
      return std::make_unique<DdpmSampler<T>>(std::move(s), DdpmOptions<T>{p.variance_type, p.alphas_cumprod});
    });
    add("pndm",
        [](std::vector<T> s, const SamplerParams<T>&) { return std::make_unique<PndmSampler<T>>(std::move(s)); });
    add("flow_euler", [](std::vector<T> s, const SamplerParams<T>&) { return std::make_unique<FlowEulerSampler<T>>(std::move(s)); });
    add("flow_heun", [](std::vector<T> s, const SamplerParams<T>&) { return std::make_unique<FlowHeunSampler<T>>(std::move(s)); });
    return e;
  }();
  return entries;
}

/// Other spellings users type (k-diffusion function names, ComfyUI/A1111 labels) -> registry name.
inline std::string_view canonical_sampler_name(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> kAliases[] = {
      {"euler_ancestral", "euler_a"},   {"dpm_2_ancestral", "dpm_2_a"}, {"dpmpp_2s_ancestral", "dpmpp_2s_a"},
      {"adaptive", "dpm_adaptive"},     {"unipc_bh1", "unipc"},         {"unipc_bh2", "unipc"},
      {"dpmpp_2m_sde_heun", "dpmpp_2m_sde"}, {"k_euler", "euler"},      {"k_euler_a", "euler_a"},
      {"k_heun", "heun"},               {"k_lms", "lms"},               {"k_dpm_2", "dpm_2"},
      {"k_dpm_2_a", "dpm_2_a"},         {"dpmpp_3m_ode", "dpmpp_3m"},   {"plms", "pndm"},
  };
  for (const auto& [alias, target] : kAliases)
    if (alias == name) return target;
  return name;
}

}  // namespace detail

/// The registry names, in registration order.
inline std::vector<std::string> list_samplers() {
  std::vector<std::string> out;
  for (const auto& e : detail::registry<double>()) out.emplace_back(e.name);
  return out;
}

/** The fewest steps at which sampler `name` (aliases accepted) gives an image rather than noise, as
 *  measured: 1 for the first-order and multistep samplers; 6 for heun, 5 for dpm_2, 8 for dpm_2_a
 *  and 10 for dpm_fast. Below that their second-order update, taken across a step whose sigma
 *  shrinks by a factor of 25 to 1000, amplifies the denoiser's change over the step instead of
 *  following it: k-diffusion's own samplers do the same on the same sigmas (docs/samplers.md, "Few
 *  steps"; tools/few_step_samplers.py). Measured on models/digits-unet (karras 0.01..157) and
 *  models/digits-dit (flow sigmas, 999..0.001 in VE); a model with a narrower sigma range may get
 *  away with fewer. The pipeline warns below it. 1 for an unknown name. */
inline std::size_t min_sensible_steps(std::string_view name) {
  const std::string_view c = detail::canonical_sampler_name(name);
  if (c == "heun") return 6;
  if (c == "dpm_2") return 5;
  if (c == "dpm_2_a") return 8;
  if (c == "dpm_fast") return 10;
  return 1;
}

/** A sampler by name (aliases accepted: euler_ancestral, adaptive, unipc_bh1, dpmpp_2m_sde_heun, ...).
 *  Throws value_error "unknown sampler 'x' (known: ...)". */
template <class T>
std::unique_ptr<Sampler<T>> make_sampler(std::string_view name, std::vector<T> sigmas, SamplerParams<T> params = {}) {
  if (name == "unipc_bh1") params.unipc_variant = UniPcVariant::bh1;
  if (name == "unipc_bh2") params.unipc_variant = UniPcVariant::bh2;
  if (name == "dpmpp_2m_sde_heun") params.solver_type = SolverType::heun;
  const std::string_view canonical = detail::canonical_sampler_name(name);
  for (const auto& e : detail::registry<T>())
    if (e.name == canonical) return e.make(std::move(sigmas), params);
  std::string known;
  for (const auto& e : detail::registry<T>()) {
    if (!known.empty()) known += ", ";
    known += e.name;
  }
  raise<value_error>("make_sampler", "unknown sampler '" + std::string(name) + "' (known: " + known + ")");
}

/// Runs the sampler `name` over the whole schedule and returns the final sample.
template <class T, class D>
BasicTensor<T> sample(std::string_view name, D&& denoiser, BasicTensor<T> x, std::type_identity_t<std::span<const T>> sigmas,
                      NoiseSource<T>& noise, const Callback<T>& callback = {}, const SamplerParams<T>& params = {}) {
  auto s = make_sampler<T>(name, std::vector<T>(sigmas.begin(), sigmas.end()), params);
  const AnyDenoiser<T> any = denoiser_ref<T>(denoiser);
  s->run(any, x, noise, callback);
  return x;
}

/// The fields of a diffusers scheduler configuration that choose the sampler (the full
/// diffusers-compatible scheduler is `DiffusersScheduler<T>` in diffusers_scheduler.hpp).
struct DiffusersSamplerChoice {
  std::string class_name;               ///< "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", ...
  std::string algorithm_type = "dpmsolver++";  ///< DPMSolverMultistepScheduler
  std::size_t solver_order = 2;         ///< DPMSolver*, UniPC, DEIS
  std::string solver_type = "midpoint";  ///< DPMSolver ("midpoint" / "heun"), UniPC ("bh1" / "bh2")
  std::string variance_type = "fixed_small";  ///< DDPMScheduler
};

/** The registry name for a diffusers scheduler, with the matching fields of `params` set.
 *  Throws value_error for a class or an algorithm_type without an equivalent here. */
template <class T>
std::string sampler_for_diffusers(const DiffusersSamplerChoice& cfg, SamplerParams<T>& params) {
  const std::string& c = cfg.class_name;
  const auto fail = [&](const std::string& why) -> std::string {
    raise<value_error>("sampler_for_diffusers", why);
  };
  if (c == "EulerDiscreteScheduler") return "euler";
  if (c == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (c == "HeunDiscreteScheduler") return "heun";
  if (c == "KDPM2DiscreteScheduler") return "dpm_2";
  if (c == "KDPM2AncestralDiscreteScheduler") return "dpm_2_a";
  if (c == "LMSDiscreteScheduler") return "lms";
  if (c == "DPMSolverSDEScheduler") return "dpmpp_sde";
  if (c == "LCMScheduler") return "lcm";
  if (c == "DDIMScheduler") return "ddim";
  if (c == "PNDMScheduler") return "pndm";  // skip_prk_steps: true (PLMS)
  if (c == "FlowMatchEulerDiscreteScheduler") return "flow_euler";
  if (c == "FlowMatchHeunDiscreteScheduler") return "flow_heun";
  if (c == "DDPMScheduler") {
    if (cfg.variance_type == "fixed_small") params.variance_type = VarianceType::fixed_small;
    else if (cfg.variance_type == "fixed_small_log") params.variance_type = VarianceType::fixed_small_log;
    else if (cfg.variance_type == "fixed_large") params.variance_type = VarianceType::fixed_large;
    else return fail("DDPMScheduler variance_type '" + cfg.variance_type + "' is not supported (fixed_small, fixed_small_log, fixed_large)");
    return "ddpm";
  }
  if (c == "UniPCMultistepScheduler") {
    params.order = cfg.solver_order;
    params.unipc_variant = cfg.solver_type == "bh1" ? UniPcVariant::bh1 : UniPcVariant::bh2;
    return "unipc";
  }
  if (c == "DEISMultistepScheduler") {
    params.order = cfg.solver_order;
    return "deis";
  }
  if (c == "DPMSolverMultistepScheduler") {
    params.solver_type = cfg.solver_type == "heun" ? SolverType::heun : SolverType::midpoint;
    const bool sde = cfg.algorithm_type == "sde-dpmsolver++";
    if (cfg.algorithm_type != "dpmsolver++" && !sde)
      return fail("DPMSolverMultistepScheduler algorithm_type '" + cfg.algorithm_type +
                  "' has no equivalent here (use dpmsolver++ or sde-dpmsolver++)");
    if (cfg.solver_order == 1) {
      // First-order DPM-Solver++ in the VE space is exactly the Euler step; its SDE form has no
      // multistep-free sampler here.
      if (sde) return fail("sde-dpmsolver++ with solver_order 1 has no equivalent here");
      return "euler";
    }
    if (cfg.solver_order == 2) {
      if (sde) return "dpmpp_2m_sde";
      if (params.solver_type == SolverType::heun) {
        params.eta = T(0);
        return "dpmpp_2m_sde";
      }
      return "dpmpp_2m";
    }
    if (cfg.solver_order == 3) return sde ? "dpmpp_3m_sde" : "dpmpp_3m";
    return fail("DPMSolverMultistepScheduler solver_order must be 2 or 3, got " + std::to_string(cfg.solver_order));
  }
  return fail("no sampler for diffusers class '" + c + "'");
}

DIFFUSE_END_NAMESPACE
