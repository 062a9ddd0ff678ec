// SPDX-License-Identifier: MIT
/** @file diffusers_scheduler.hpp
 *  `DiffusersScheduler<T>`: the diffusers scheduler API (`set_timesteps`, `timesteps`, `sigmas`,
 *  `init_noise_sigma`, `scale_model_input`, `step`, `order`) on top of diffuse's schedules and
 *  samplers, built from a `scheduler_config.json`. It reproduces diffusers' trajectories step for
 *  step, including the noise stream of the stochastic classes when given a `TorchGenerator`
 *  (diffusers' `randn_tensor(shape, generator)` on the CPU is `torch.randn`, i.e. `randn(gen, shape)`).
 *
 *  | class                           | step implemented by                                             |
 *  |---------------------------------|-----------------------------------------------------------------|
 *  | EulerDiscreteScheduler          | core `EulerSampler` (churn included)                            |
 *  | EulerAncestralDiscreteScheduler | core `EulerAncestralSampler`                                    |
 *  | LMSDiscreteScheduler            | core `LmsSampler`                                               |
 *  | UniPCMultistepScheduler         | core `UniPcSampler` (VP sample mapped to VE)                    |
 *  | DEISMultistepScheduler          | core `DeisSampler` (VP sample mapped to VE)                     |
 *  | LCMScheduler                    | core `LcmSampler` (boundary condition applied here)             |
 *  | FlowMatchEulerDiscreteScheduler | core `EulerSampler` (denoised = x - sigma v)                    |
 *  | DDPMScheduler, DDIMScheduler    | here: clipping decouples x0 from eps, VP form needed (see below) |
 *  | HeunDiscrete, FlowMatchHeun     | here: one diffusers call is half a core step (state machine)    |
 *  | DPMSolverMultistepScheduler     | here: per-step order rules (lower_order_final, euler_at_final)  |
 *  | DPMSolverSinglestepScheduler    | here: order list and block-start sample                          |
 *  | PNDMScheduler (skip_prk_steps)  | here: one call is a warm-up half or a PLMS step (VP, counter)    |
 *
 *  The core samplers work in the VE space x = x0 + sigma eps with a denoised estimate D. The
 *  facade turns diffusers' `model_output` into D with the config's prediction type, maps the VP
 *  sample of the DPM/UniPC/DEIS/LCM classes to VE (x_ve = x_vp / alpha_t = x_vp sqrt(1 + sigma^2),
 *  or x / (1 - s) for flow sigmas) and back after the step.
 *
 *  **Example**
 *  @code
 *  auto sched = diffuse::DiffusersScheduler<float>::from_file("scheduler/scheduler_config.json");
 *  sched.set_timesteps(25);
 *  diffuse::TorchGenerator gen(42);
 *  diffuse::Tensor x = diffuse::randn(gen, {1, 4, 64, 64});
 *  x.array() *= sched.init_noise_sigma();
 *  for (double t : sched.timesteps()) {
 *    diffuse::Tensor eps = unet(sched.scale_model_input(x, t), t, prompt);
 *    x = sched.step(eps, t, x, &gen);
 *  }
 *  @endcode
 */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/denoise/parameterization.hpp"
#include "diffuse/sample/deis.hpp"
#include "diffuse/sample/euler.hpp"
#include "diffuse/sample/lcm.hpp"
#include "diffuse/sample/lms.hpp"
#include "diffuse/sample/sampler.hpp"
#include "diffuse/sample/unipc.hpp"
#include "diffuse/schedule/config.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Per-call arguments of diffusers' `step()` that are not in the config.
template <class T>
struct DiffusersStepOptions {
  T eta = T(0);                           ///< DDIM
  bool use_clipped_model_output = false;  ///< DDIM
  T s_churn = T(0);                       ///< Euler, Heun (flow): Karras churn
  T s_tmin = T(0);
  T s_tmax = std::numeric_limits<T>::infinity();
  T s_noise = T(1);
  std::size_t lms_order = 4;              ///< LMS `order`
};

/** The step-related keys of a diffusers scheduler config (the schedule keys are in
 *  `ScheduleConfig`). Defaults depend on the class and are resolved by `from_json`. */
struct DiffusersStepConfig {
  Prediction prediction = Prediction::epsilon;
  std::string variance_type;             ///< DDPM: fixed_small, ...; DPM: "" / learned / learned_range
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  bool set_alpha_to_one = true;          ///< DDIM, LCM; PNDM (default false there)
  std::int64_t solver_order = 2;         ///< DPM, UniPC, DEIS
  std::string algorithm_type;            ///< DPM: dpmsolver++ / sde-dpmsolver++; DEIS: deis
  std::string solver_type;               ///< DPM: midpoint / heun; UniPC: bh1 / bh2; DEIS: logrho
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_corrector = true;             ///< UniPC: disable_corrector empty
  double timestep_scaling = 10.0;        ///< LCM
  bool stochastic_sampling = false;      ///< FlowMatchEuler

  /// Parses the keys for `cls`; format_error for a key of the wrong type, value_error for an
  /// unknown or unsupported value, both naming the key.
  static DiffusersStepConfig from_json(const nlohmann::json& j, SchedulerClass cls);
};

namespace detail {
constexpr std::string_view kDfsWhere = "DiffusersScheduler";

inline const nlohmann::json* dfs_present(const nlohmann::json& j, std::string_view key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}
[[noreturn]] inline void dfs_wrong_type(std::string_view key, std::string_view expected, const nlohmann::json& v) {
  raise<format_error>(kDfsWhere, "config key '" + std::string(key) + "' must be " + std::string(expected) + ", got " +
                                     std::string(v.type_name()));
}
[[noreturn]] inline void dfs_bad_value(std::string_view key, std::string_view value, std::string_view allowed) {
  raise<value_error>(kDfsWhere, "config key '" + std::string(key) + "': unknown or unsupported value '" +
                                    std::string(value) + "' (supported: " + std::string(allowed) + ")");
}
inline void dfs_read(const nlohmann::json& j, std::string_view key, bool& dst) {
  if (const auto* v = dfs_present(j, key)) {
    if (!v->is_boolean()) dfs_wrong_type(key, "a boolean", *v);
    dst = v->get<bool>();
  }
}
inline void dfs_read(const nlohmann::json& j, std::string_view key, double& dst) {
  if (const auto* v = dfs_present(j, key)) {
    if (!v->is_number()) dfs_wrong_type(key, "a number", *v);
    dst = v->get<double>();
  }
}
inline void dfs_read(const nlohmann::json& j, std::string_view key, std::int64_t& dst) {
  if (const auto* v = dfs_present(j, key)) {
    if (!v->is_number_integer()) dfs_wrong_type(key, "an integer", *v);
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      raise<value_error>(kDfsWhere, "config key '" + std::string(key) + "' = " + std::to_string(v->get<std::uint64_t>()) +
                                        " is out of range (larger than 2^63 - 1)");
    dst = v->get<std::int64_t>();
  }
}
inline void dfs_read(const nlohmann::json& j, std::string_view key, std::string& dst) {
  if (const auto* v = dfs_present(j, key)) {
    if (!v->is_string()) dfs_wrong_type(key, "a string", *v);
    dst = v->get<std::string>();
  }
}
template <class... S>
void dfs_check_one_of(std::string_view key, const std::string& v, std::string_view allowed, S... options) {
  if (!((v == options) || ...)) dfs_bad_value(key, v, allowed);
}
}  // namespace detail

inline DiffusersStepConfig DiffusersStepConfig::from_json(const nlohmann::json& j, SchedulerClass cls) {
  using detail::dfs_read;
  using C = SchedulerClass;
  if (!j.is_object()) raise<format_error>(detail::kDfsWhere, "a scheduler config must be a JSON object");
  DiffusersStepConfig c;
  const bool flow_class = cls == C::flow_match_euler || cls == C::flow_match_heun;
  std::string pred = flow_class ? "flow_prediction" : "epsilon";
  if (!flow_class) dfs_read(j, "prediction_type", pred);
  if (cls == C::pndm && pred != "epsilon" && pred != "v_prediction")
    detail::dfs_bad_value("prediction_type", pred, "epsilon, v_prediction (PNDMScheduler)");
  if (pred == "flow_prediction") {
    if (!(flow_class || cls == C::dpm_multistep || cls == C::dpm_singlestep || cls == C::unipc || cls == C::deis))
      detail::dfs_bad_value("prediction_type", pred, "epsilon, v_prediction, sample");
    c.prediction = Prediction::flow;
  } else {
    detail::dfs_check_one_of("prediction_type", pred, "epsilon, v_prediction, sample, flow_prediction", "epsilon",
                             "v_prediction", "sample");
    c.prediction = parse_prediction(pred);
  }
  // clip_sample: on by default for DDPM and DDIM only.
  c.clip_sample = cls == C::ddpm || cls == C::ddim;
  dfs_read(j, "clip_sample", c.clip_sample);
  dfs_read(j, "clip_sample_range", c.clip_sample_range);
  dfs_read(j, "thresholding", c.thresholding);
  dfs_read(j, "dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  dfs_read(j, "sample_max_value", c.sample_max_value);
  check_x0_post_keys(detail::kDfsWhere, c.clip_sample, c.clip_sample_range, c.thresholding, c.dynamic_thresholding_ratio,
                     c.sample_max_value);
  if (cls == C::pndm) c.set_alpha_to_one = false;  // PNDMScheduler's default (DDIM's and LCM's is true)
  dfs_read(j, "set_alpha_to_one", c.set_alpha_to_one);
  if (cls == C::pndm) {
    // PNDMScheduler has no x0 clipping or thresholding (diffusers ignores the keys), and its
    // Runge-Kutta warm-up (skip_prk_steps false, diffusers' default) is not implemented.
    c.clip_sample = false;
    c.thresholding = false;
    bool skip_prk = false;
    dfs_read(j, "skip_prk_steps", skip_prk);
    if (!skip_prk)
      raise<value_error>(detail::kDfsWhere,
                         "config key 'skip_prk_steps': false (or absent: diffusers' default) asks for PNDM's "
                         "Runge-Kutta warm-up (PRK), which is not implemented; the Stable Diffusion folders set "
                         "true (PLMS)");
  }
  dfs_read(j, "timestep_scaling", c.timestep_scaling);
  dfs_read(j, "stochastic_sampling", c.stochastic_sampling);
  if (cls == C::ddpm) {
    c.variance_type = "fixed_small";
    dfs_read(j, "variance_type", c.variance_type);
    detail::dfs_check_one_of("variance_type", c.variance_type,
                             "fixed_small, fixed_small_log, fixed_large, learned, learned_range", "fixed_small",
                             "fixed_small_log", "fixed_large", "learned", "learned_range");
  } else if (cls == C::dpm_multistep || cls == C::dpm_singlestep) {
    // Only learned / learned_range mean something here; diffusers stores and ignores any other value
    // (e.g. a DDPM config's "fixed_small" reused for DPM-Solver), and so do we.
    dfs_read(j, "variance_type", c.variance_type);
    if (c.variance_type != "learned" && c.variance_type != "learned_range") c.variance_type.clear();
  }
  if (cls == C::dpm_multistep || cls == C::dpm_singlestep || cls == C::unipc || cls == C::deis) {
    dfs_read(j, "solver_order", c.solver_order);
    const std::int64_t max_order = cls == C::unipc ? 3 : 3;
    if (c.solver_order < 1 || c.solver_order > max_order)
      raise<value_error>(detail::kDfsWhere, "config key 'solver_order' must be 1, 2 or 3, got " +
                                                std::to_string(c.solver_order));
    c.lower_order_final = cls != C::dpm_singlestep;
    dfs_read(j, "lower_order_final", c.lower_order_final);
  }
  if (cls == C::dpm_multistep || cls == C::dpm_singlestep) {
    c.algorithm_type = "dpmsolver++";
    c.solver_type = "midpoint";
    dfs_read(j, "algorithm_type", c.algorithm_type);
    dfs_read(j, "solver_type", c.solver_type);
    detail::dfs_check_one_of("algorithm_type", c.algorithm_type, "dpmsolver++, sde-dpmsolver++", "dpmsolver++",
                             "sde-dpmsolver++");
    // diffusers maps the DEIS/UniPC solver names to midpoint for DPM.
    if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") c.solver_type = "midpoint";
    detail::dfs_check_one_of("solver_type", c.solver_type, "midpoint, heun", "midpoint", "heun");
    if (cls == C::dpm_multistep) dfs_read(j, "euler_at_final", c.euler_at_final);
  } else if (cls == C::unipc) {
    c.solver_type = "bh2";
    dfs_read(j, "solver_type", c.solver_type);
    if (c.solver_type == "midpoint" || c.solver_type == "heun" || c.solver_type == "logrho") c.solver_type = "bh2";
    detail::dfs_check_one_of("solver_type", c.solver_type, "bh1, bh2", "bh1", "bh2");
    bool predict_x0 = true;
    dfs_read(j, "predict_x0", predict_x0);
    if (!predict_x0) detail::dfs_bad_value("predict_x0", "false", "true");
    if (const auto* v = detail::dfs_present(j, "disable_corrector")) {
      if (!v->is_array()) detail::dfs_wrong_type("disable_corrector", "an array", *v);
      if (!v->empty()) detail::dfs_bad_value("disable_corrector", v->dump(), "[] (the corrector at every step)");
    }
    if (detail::dfs_present(j, "solver_p")) detail::dfs_bad_value("solver_p", "a solver", "null");
  } else if (cls == C::deis) {
    c.algorithm_type = "deis";
    c.solver_type = "logrho";
    dfs_read(j, "algorithm_type", c.algorithm_type);
    dfs_read(j, "solver_type", c.solver_type);
    detail::dfs_check_one_of("algorithm_type", c.algorithm_type, "deis", "deis");
    detail::dfs_check_one_of("solver_type", c.solver_type, "logrho", "logrho");
  }
  return c;
}

/** A diffusers scheduler (see the file comment). Copying copies the whole state (step index,
 *  multistep history, Heun's pending half step): a copy continues the run independently. */
template <class T>
class DiffusersScheduler {
 public:
  /// Builds the scheduler from a parsed config; the class is `class_name`, else `_class_name`.
  explicit DiffusersScheduler(const nlohmann::json& config, std::string_view class_name = {})
      : sched_cfg_(ScheduleConfig::from_json(config)) {
    const std::string name = class_name.empty() ? sched_cfg_.class_name : std::string(class_name);
    if (name.empty())
      raise<value_error>(detail::kDfsWhere, "config key '_class_name' is missing and no class name was given");
    try {
      cls_ = scheduler_class_from_name(name);
    } catch (const value_error&) {
      raise<value_error>(detail::kDfsWhere, "config key '_class_name': unknown scheduler class '" + name + "'");
    }
    class_name_ = name;
    cfg_ = DiffusersStepConfig::from_json(config, cls_);
  }

  /// Reads and parses `scheduler_config.json` with the strict reader (core/json.hpp): io_error if
  /// unreadable, format_error if not a regular file, over 4 MiB, not JSON, too deep or with a
  /// duplicate key.
  static DiffusersScheduler from_file(const std::filesystem::path& path, std::string_view class_name = {}) {
    return DiffusersScheduler(read_json_file(path, detail::kDfsWhere, "scheduler config"), class_name);
  }

  DiffusersScheduler(const DiffusersScheduler& o) { *this = o; }
  DiffusersScheduler& operator=(const DiffusersScheduler& o) {
    if (this == &o) return *this;
    sched_cfg_ = o.sched_cfg_;
    cfg_ = o.cfg_;
    cls_ = o.cls_;
    class_name_ = o.class_name_;
    sched_ = o.sched_;
    n_ = o.n_;
    step_index_ = o.step_index_;
    begin_index_ = o.begin_index_;
    first_index_ = o.first_index_;
    core_ = o.core_ ? o.core_->clone() : nullptr;
    hist_ = o.hist_;
    hist_sigma_ = o.hist_sigma_;
    lower_order_nums_ = o.lower_order_nums_;
    stored_ = o.stored_;
    prev_derivative_ = o.prev_derivative_;
    dt_ = o.dt_;
    order_list_ = o.order_list_;
    ets_ = o.ets_;
    pndm_counter_ = o.pndm_counter_;
    return *this;
  }
  DiffusersScheduler(DiffusersScheduler&&) noexcept = default;
  DiffusersScheduler& operator=(DiffusersScheduler&&) noexcept = default;
  ~DiffusersScheduler() = default;

  SchedulerClass scheduler_class() const { return cls_; }
  const std::string& class_name() const { return class_name_; }
  const ScheduleConfig& schedule_config() const { return sched_cfg_; }
  const DiffusersStepConfig& step_config() const { return cfg_; }

  /// diffusers' `order`: model calls per schedule step (2 for the Heun classes, else 1).
  int order() const { return cls_ == SchedulerClass::heun || cls_ == SchedulerClass::flow_match_heun ? 2 : 1; }

  /// `set_timesteps(n, mu=mu)`; resets the step state.
  void set_timesteps(std::int64_t num_inference_steps, std::optional<double> mu = std::nullopt) {
    if (num_inference_steps < 1)
      raise<value_error>(detail::kDfsWhere, "num_inference_steps must be >= 1, got " +
                                                std::to_string(num_inference_steps));
    sched_ = make_schedule(cls_, sched_cfg_, num_inference_steps, mu);
    n_ = num_inference_steps;
    reset();
    if (cls_ == SchedulerClass::dpm_singlestep) make_order_list();
  }

  /// `scheduler.timesteps` (exact values; integers for the integer-timestep classes).
  const std::vector<double>& timesteps() const { return sched_.timesteps; }
  /// `scheduler.sigmas` (float32; empty for DDPM, DDIM, LCM and PNDM).
  const std::vector<float>& sigmas() const { return sched_.sigmas; }
  /// `scheduler.alphas_cumprod` (float32).
  const std::vector<float>& alphas_cumprod() const { return sched_.alphas_cumprod; }
  /// `scheduler.init_noise_sigma`.
  T init_noise_sigma() const { return static_cast<T>(sched_.init_noise_sigma); }
  /// diffusers' `step_index`: the index of the next step, once the first `scale_model_input` or
  /// `step` fixed it (empty before; reset by `set_timesteps`).
  std::optional<std::size_t> step_index() const { return step_index_; }
  /// diffusers' `begin_index`: what `set_begin_index` set (empty otherwise; reset by `set_timesteps`).
  std::optional<std::size_t> begin_index() const { return begin_index_; }
  std::int64_t num_inference_steps() const { return n_; }

  /** diffusers' `set_begin_index(k)`: the first `scale_model_input` / `step` then starts at step
   *  `k` (it must be given `timesteps()[k]`), and `add_noise` before that uses `sigmas[k]`. This
   *  is how diffusers' img2img and inpainting pipelines start part-way (k = t_start * order). Every
   *  multistep rule that counts steps uses the absolute index, as diffusers: LMS's order
   *  min(k + 1, order), the lower-order final steps of DPM-Solver, UniPC and DEIS, DPM singlestep's
   *  order list. value_error before `set_timesteps`, after the first step, or for k >= the number
   *  of timesteps. Accepted for every class (diffusers' DDPM and DDIM have no such method: their
   *  step does not depend on the index, only on t). */
  void set_begin_index(std::size_t k) {
    require_timesteps("set_begin_index");
    if (step_index_)
      raise<value_error>(detail::kDfsWhere, "[set_begin_index] the run has started (step index " +
                                                std::to_string(*step_index_) + "); call set_timesteps first");
    if (k >= sched_.timesteps.size())
      raise<value_error>(detail::kDfsWhere, "[set_begin_index] begin index " + std::to_string(k) + " is past the " +
                                                std::to_string(sched_.timesteps.size()) + " timesteps");
    begin_index_ = k;
  }

  /** diffusers' `add_noise(original_samples, noise, timesteps)`: the forward process at each batch
   *  item's timestep (`timesteps` holds one value for the whole batch or one per item, dim 0).
   *  - DDPM, DDIM, LCM, PNDM: sqrt(ac[t]) x0 + sqrt(1 - ac[t]) noise for any integer t in [0, N)
   *    (no `set_timesteps` needed);
   *  - Euler, Euler ancestral, Heun, LMS: x0 + sigma noise;
   *  - DPM-Solver (multi/singlestep), UniPC, DEIS: alpha_t x0 + sigma_t noise (`_sigma_to_alpha_sigma_t`);
   *  - FlowMatch Euler / Heun (diffusers' `scale_noise`): (1 - sigma) x0 + sigma noise.
   *  For the sigma classes, sigma = sigmas[i] with i, as in diffusers: without `set_begin_index`,
   *  index_for_timestep(t) per item (the second match if t occurs twice; DPM-Solver, UniPC and DEIS
   *  take the last index for a t not in the schedule, the others raise value_error); with it, the
   *  step index once the run has started (inpainting), else the begin index (img2img).
   *  shape_error if the shapes differ or the timestep count fits neither; value_error for a
   *  timestep outside the train table (DDPM, DDIM, LCM) or before `set_timesteps` (the others). */
  BasicTensor<T> add_noise(const BasicTensor<T>& original, const BasicTensor<T>& noise,
                           std::span<const double> timesteps) const {
    using C = SchedulerClass;
    if (!original.same_shape(noise))
      raise<shape_error>(detail::kDfsWhere, "[add_noise] original has shape " + shape_string(original.shape()) +
                                                " but noise has shape " + shape_string(noise.shape()));
    const std::size_t batch = original.ndim() > 0 ? original.dim(0) : 1;
    if (timesteps.empty() || (timesteps.size() != 1 && timesteps.size() != batch))
      raise<shape_error>(detail::kDfsWhere, "[add_noise] " + std::to_string(timesteps.size()) +
                                                " timesteps for a batch of " + std::to_string(batch) +
                                                " (give one, or one per item)");
    // Per item: out = a x0 + b noise.
    std::vector<std::pair<T, T>> coef;
    const bool vp_table = cls_ == C::ddpm || cls_ == C::ddim || cls_ == C::lcm || cls_ == C::pndm;
    std::vector<float> table;
    if (vp_table && sched_.alphas_cumprod.empty()) table = detail::class_alphas_cumprod(cls_, sched_cfg_);
    const std::vector<float>& acs = vp_table && sched_.alphas_cumprod.empty() ? table : sched_.alphas_cumprod;
    for (double t : timesteps) {
      if (vp_table) {
        if (!(t >= 0.0 && t < static_cast<double>(acs.size())) || std::floor(t) != t)
          raise<value_error>(detail::kDfsWhere, "[add_noise] timestep " + number(t) + " is not an integer in [0, " +
                                                    std::to_string(acs.size()) + ")");
        const T a = static_cast<T>(acs[static_cast<std::size_t>(t)]);
        coef.emplace_back(std::sqrt(a), std::sqrt(T(1) - a));
        continue;
      }
      const T sigma = sig(noise_index(t));
      if (cls_ == C::flow_match_euler || cls_ == C::flow_match_heun) {
        coef.emplace_back(T(1) - sigma, sigma);
      } else if (cls_ == C::euler || cls_ == C::euler_ancestral || cls_ == C::heun || cls_ == C::lms) {
        coef.emplace_back(T(1), sigma);
      } else {
        coef.push_back(alpha_sigma(sigma));
      }
    }
    BasicTensor<T> out(original.shape());
    const std::size_t per = batch == 0 ? 0 : original.size() / batch;
    for (std::size_t b = 0; b < batch; ++b) {
      const auto [a, c] = coef[coef.size() == 1 ? 0 : b];
      for (std::size_t k = b * per; k < (b + 1) * per; ++k) out[k] = a * original[k] + c * noise[k];
    }
    return out;
  }
  /// `add_noise` with one timestep for the whole batch.
  BasicTensor<T> add_noise(const BasicTensor<T>& original, const BasicTensor<T>& noise, double timestep) const {
    return add_noise(original, noise, std::span<const double>(&timestep, 1));
  }
  /// diffusers' `scale_noise(sample, timestep, noise)` of the FlowMatch classes: `add_noise` with
  /// the arguments in that order (any class). Unlike diffusers' FlowMatchHeun it does not fix the
  /// step index.
  BasicTensor<T> scale_noise(const BasicTensor<T>& sample, double timestep, const BasicTensor<T>& noise) const {
    return add_noise(sample, noise, timestep);
  }

  /// `scale_model_input(sample, t)`: x / sqrt(sigma^2 + 1) for the Euler-style classes, else x.
  BasicTensor<T> scale_model_input(const BasicTensor<T>& sample, double t) {
    const std::size_t i = locate(t, "scale_model_input");
    using C = SchedulerClass;
    if (cls_ == C::euler || cls_ == C::euler_ancestral || cls_ == C::heun || cls_ == C::lms) {
      const T sigma = sig(i);
      // diffusers: sample / ((sigma**2 + 1) ** 0.5)
      const T d = std::sqrt(sigma * sigma + T(1));
      BasicTensor<T> out(sample.shape());
      for (std::size_t k = 0; k < sample.size(); ++k) out[k] = sample[k] / d;
      return out;
    }
    return sample;
  }

  /// `step(model_output, t, sample, generator=gen).prev_sample`. `gen` is needed by the
  /// stochastic steps (DDPM, DDIM eta > 0, EulerAncestral, SDE-DPM, LCM, churn, stochastic flow).
  BasicTensor<T> step(const BasicTensor<T>& model_output, double t, const BasicTensor<T>& sample,
                      TorchGenerator* gen = nullptr, const DiffusersStepOptions<T>& opt = {}) {
    NoiseSource<T> src;
    if (gen != nullptr)
      src = NoiseSource<T>([gen](std::size_t, T, T, BasicTensor<T>& out) {
        const Tensor z = randn(*gen, out.shape());
        std::copy(z.begin(), z.end(), out.begin());
      });
    return step(model_output, t, sample, src, opt);
  }

  /// The same with any noise source (N(0, 1) values, drawn with the sample's shape).
  BasicTensor<T> step(const BasicTensor<T>& model_output, double t, const BasicTensor<T>& sample,
                      NoiseSource<T>& noise, const DiffusersStepOptions<T>& opt = {}) {
    const std::size_t i = locate(t, "step");
    BasicTensor<T> m = model_output;
    split_variance(m, sample);
    if (!m.same_shape(sample))
      raise<shape_error>(detail::kDfsWhere, "[step] model_output has shape " + shape_string(m.shape()) +
                                                " but sample has shape " + shape_string(sample.shape()));
    BasicTensor<T> out;
    using C = SchedulerClass;
    switch (cls_) {
      case C::ddpm: out = step_ddpm(i, model_output, m, sample, noise); break;
      case C::ddim: out = step_ddim(i, m, sample, noise, opt); break;
      case C::euler:
      case C::euler_ancestral:
      case C::lms:
      case C::flow_match_euler: out = step_core_ve(i, m, sample, noise, opt); break;
      case C::unipc:
      case C::deis:
      case C::lcm: out = step_core_vp(i, m, sample, noise); break;
      case C::heun:
      case C::flow_match_heun: out = step_heun(i, m, sample, noise, opt); break;
      case C::dpm_multistep: out = step_dpm_multistep(i, m, sample, noise); break;
      case C::dpm_singlestep: out = step_dpm_singlestep(i, m, sample, noise); break;
      case C::pndm: out = step_pndm(i, m, sample); break;
    }
    step_index_ = i + 1;
    return out;
  }

 private:
  // ---------------------------------------------------------------- state and helpers

  void reset() {
    step_index_.reset();
    begin_index_.reset();
    first_index_ = 0;
    core_.reset();
    hist_.clear();
    hist_sigma_.clear();
    lower_order_nums_ = 0;
    stored_ = BasicTensor<T>();
    prev_derivative_ = BasicTensor<T>();
    dt_.reset();
    ets_.clear();
    pndm_counter_ = 0;
  }

  void require_timesteps(std::string_view fn) const {
    if (n_ == 0)
      raise<value_error>(detail::kDfsWhere, "[" + std::string(fn) + "] call set_timesteps before " + std::string(fn));
  }

  /** The step index for timestep `t`. The first call fixes it: `begin_index` if set (diffusers
   *  `_init_step_index`; `t` must then be `timesteps()[begin_index]`), else from `t` (diffusers
   *  `index_for_timestep`: the second match when `t` occurs twice, as in Heun's interleaved
   *  schedule); later calls must pass `timesteps()[step_index]`. A `t` that is not in the
   *  schedule is a value_error (diffusers DPM would silently take the last index). */
  std::size_t locate(double t, std::string_view fn) {
    require_timesteps(fn);
    const auto& ts = sched_.timesteps;
    if (step_index_) {
      const std::size_t i = *step_index_;
      if (i >= ts.size())
        raise<value_error>(detail::kDfsWhere, "[" + std::string(fn) + "] all " + std::to_string(ts.size()) +
                                                  " steps are done; call set_timesteps to start again");
      if (ts[i] != t)
        raise<value_error>(detail::kDfsWhere, "[" + std::string(fn) + "] timestep " + number(t) +
                                                  " is not the next one in the schedule (expected " + number(ts[i]) +
                                                  " at step " + std::to_string(i) + ")");
      return i;
    }
    if (begin_index_) {
      const std::size_t i = *begin_index_;
      if (ts[i] != t)
        raise<value_error>(detail::kDfsWhere, "[" + std::string(fn) + "] timestep " + number(t) +
                                                  " is not the one at begin_index " + std::to_string(i) + " (expected " +
                                                  number(ts[i]) + ")");
      step_index_ = i;
      first_index_ = i;
      return i;
    }
    std::vector<std::size_t> hits;
    for (std::size_t k = 0; k < ts.size(); ++k)
      if (ts[k] == t) hits.push_back(k);
    if (hits.empty())
      raise<value_error>(detail::kDfsWhere, "[" + std::string(fn) + "] timestep " + number(t) +
                                                " is not in the schedule set by set_timesteps");
    const std::size_t i = hits.size() > 1 ? hits[1] : hits[0];
    step_index_ = i;
    first_index_ = i;
    return i;
  }

  /// The sigma index add_noise uses for timestep `t` (see add_noise).
  std::size_t noise_index(double t) const {
    require_timesteps("add_noise");
    if (begin_index_) return step_index_ ? std::min(*step_index_, sched_.sigmas.size() - 1) : *begin_index_;
    const auto& ts = sched_.timesteps;
    std::vector<std::size_t> hits;
    for (std::size_t k = 0; k < ts.size(); ++k)
      if (ts[k] == t) hits.push_back(k);
    using C = SchedulerClass;
    if (hits.empty()) {
      if (cls_ == C::dpm_multistep || cls_ == C::dpm_singlestep || cls_ == C::unipc || cls_ == C::deis)
        return ts.size() - 1;  // diffusers' index_for_timestep of these classes
      raise<value_error>(detail::kDfsWhere, "[add_noise] timestep " + number(t) +
                                                " is not in the schedule set by set_timesteps");
    }
    return hits.size() > 1 ? hits[1] : hits[0];
  }

  static std::string number(double v) {
    std::ostringstream s;
    s.precision(17);
    s << v;
    return s.str();
  }

  T sig(std::size_t i) const { return static_cast<T>(sched_.sigmas[i]); }
  T ac(double t) const {
    const auto k = static_cast<std::size_t>(t);
    return static_cast<T>(sched_.alphas_cumprod[k]);
  }
  bool flow_sigmas() const {
    return sched_cfg_.use_flow_sigmas || cls_ == SchedulerClass::flow_match_euler ||
           cls_ == SchedulerClass::flow_match_heun;
  }
  /// diffusers `_sigma_to_alpha_sigma_t`: (alpha_t, sigma_t) of the VP (or flow) process.
  std::pair<T, T> alpha_sigma(T sigma) const {
    if (flow_sigmas()) return {T(1) - sigma, sigma};
    const T a = T(1) / std::sqrt(sigma * sigma + T(1));
    return {a, sigma * a};
  }

  /// learned / learned_range: the model output carries the variance in its second half of channels.
  void split_variance(BasicTensor<T>& m, const BasicTensor<T>& sample) const {
    if (cfg_.variance_type != "learned" && cfg_.variance_type != "learned_range") return;
    if (m.ndim() < 2 || sample.ndim() < 2 || m.dim(1) != 2 * sample.dim(1)) return;
    m = first_channels(m, sample.dim(1), 0);
  }
  static BasicTensor<T> first_channels(const BasicTensor<T>& m, std::size_t c, std::size_t offset) {
    Shape s = m.shape();
    const std::size_t batch = s[0], full = s[1];
    std::size_t inner = 1;
    for (std::size_t d = 2; d < s.size(); ++d) inner *= s[d];
    s[1] = c;
    BasicTensor<T> out(s);
    for (std::size_t b = 0; b < batch; ++b)
      std::copy(m.data() + (b * full + offset) * inner, m.data() + (b * full + offset + c) * inner,
                out.data() + b * c * inner);
    return out;
  }

  /// Clip or threshold x0 (thresholding wins), as diffusers' step does after predicting x0.
  void post_process(BasicTensor<T>& x0) const {
    if (cfg_.thresholding) {
      dynamic_threshold(x0, static_cast<T>(cfg_.dynamic_thresholding_ratio), static_cast<T>(cfg_.sample_max_value));
    } else if (cfg_.clip_sample) {
      const T r = static_cast<T>(cfg_.clip_sample_range);
      for (auto& v : x0.values()) v = std::clamp(v, -r, r);
    }
  }

  /// x0 in the VP form of DDPM/DDIM/LCM with a = alphas_cumprod[t] (schedulers.md §3).
  BasicTensor<T> vp_x0(const BasicTensor<T>& m, const BasicTensor<T>& x, T a) const {
    const T sa = std::sqrt(a), sb = std::sqrt(T(1) - a);
    BasicTensor<T> x0(x.shape());
    for (std::size_t k = 0; k < x.size(); ++k) {
      switch (cfg_.prediction) {
        case Prediction::epsilon: x0[k] = (x[k] - sb * m[k]) / sa; break;
        case Prediction::sample: x0[k] = m[k]; break;
        default: x0[k] = sa * x[k] - sb * m[k]; break;  // v_prediction
      }
    }
    return x0;
  }

  /// x0 of the DPM / UniPC / DEIS `convert_model_output` (data prediction).
  BasicTensor<T> dpm_x0(const BasicTensor<T>& m, const BasicTensor<T>& x, T sigma) const {
    const auto [alpha_t, sigma_t] = alpha_sigma(sigma);
    BasicTensor<T> x0(x.shape());
    for (std::size_t k = 0; k < x.size(); ++k) {
      switch (cfg_.prediction) {
        case Prediction::epsilon: x0[k] = (x[k] - sigma_t * m[k]) / alpha_t; break;
        case Prediction::sample: x0[k] = m[k]; break;
        case Prediction::v_prediction: x0[k] = alpha_t * x[k] - sigma_t * m[k]; break;
        case Prediction::flow: x0[k] = x[k] - sigma_t * m[k]; break;
      }
    }
    // These classes have thresholding but no clip_sample.
    if (cfg_.thresholding)
      dynamic_threshold(x0, static_cast<T>(cfg_.dynamic_thresholding_ratio), static_cast<T>(cfg_.sample_max_value));
    return x0;
  }

  /// x0 of the k-diffusion-style classes (Euler, EulerA, Heun, LMS) at VE noise level sigma;
  /// `sigma_v` is the level v-prediction uses (diffusers uses sigma, not sigma_hat, there).
  BasicTensor<T> ve_x0(const BasicTensor<T>& m, const BasicTensor<T>& x, T sigma, T sigma_v) const {
    BasicTensor<T> x0(x.shape());
    const T s2 = sigma_v * sigma_v + T(1);
    const T cv = -sigma_v / std::sqrt(s2);
    for (std::size_t k = 0; k < x.size(); ++k) {
      switch (cfg_.prediction) {
        case Prediction::epsilon: x0[k] = x[k] - sigma * m[k]; break;
        case Prediction::sample: x0[k] = m[k]; break;
        case Prediction::v_prediction: x0[k] = m[k] * cv + x[k] / s2; break;
        case Prediction::flow: x0[k] = x[k] - sigma * m[k]; break;
      }
    }
    return x0;
  }

  /// Draws one N(0, 1) tensor shaped like `like` (diffusers `randn_tensor`).
  static BasicTensor<T> draw(NoiseSource<T>& noise, std::size_t i, T s, T s_next, const BasicTensor<T>& like) {
    BasicTensor<T> z(like.shape());
    noise.fill(i, s, s_next, z);
    return z;
  }

  /// A noise source that forwards to `noise` and records whether it was used.
  static NoiseSource<T> recording(NoiseSource<T>& noise, bool& used) {
    return NoiseSource<T>([&noise, &used](std::size_t i, T s, T sn, BasicTensor<T>& out) {
      used = true;
      noise.fill(i, s, sn, out);
    });
  }

  // ---------------------------------------------------------------- DDPM, DDIM (VP, here)

  // DDPM's clipped x0 and DDIM's un-recomputed eps (eps = model_output even after x0 is
  // clipped, unless use_clipped_model_output) are not a function of one denoised estimate, and
  // zero-terminal-SNR schedules have alpha_T = 0 (VE sigma = inf): both steps are written here
  // in diffusers' VP form and order rather than through the VE core samplers.

  BasicTensor<T> step_ddpm(std::size_t i, const BasicTensor<T>& raw, const BasicTensor<T>& m,
                           const BasicTensor<T>& x, NoiseSource<T>& noise) {
    const double t = sched_.timesteps[i];
    const bool last = i + 1 >= sched_.timesteps.size();
    const T a = ac(t);
    const T ap = last ? T(1) : ac(sched_.timesteps[i + 1]);
    const T b = T(1) - a, bp = T(1) - ap;
    const T cur_alpha = a / ap, cur_beta = T(1) - cur_alpha;
    BasicTensor<T> x0 = vp_x0(m, x, a);
    post_process(x0);
    const T c0 = std::sqrt(ap) * cur_beta / b;
    const T cx = std::sqrt(cur_alpha) * bp / b;
    BasicTensor<T> out(x.shape());
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = c0 * x0[k] + cx * x[k];
    if (t > 0) {
      const BasicTensor<T> z = draw(noise, i, T(0), T(0), x);
      const T var = std::max(bp / b * cur_beta, T(1e-20));
      const std::string& vt = cfg_.variance_type;
      if (vt == "learned" || vt == "learned_range") {
        if (raw.ndim() < 2 || raw.dim(1) != 2 * x.dim(1))
          raise<shape_error>(detail::kDfsWhere, "[step] variance_type '" + vt + "' needs a model output with " +
                                                    "twice the sample's channels, got " + shape_string(raw.shape()));
        const BasicTensor<T> pv = first_channels(raw, x.dim(1), x.dim(1));
        const T min_log = std::log(var), max_log = std::log(cur_beta);
        for (std::size_t k = 0; k < x.size(); ++k) {
          T s;
          if (vt == "learned") {
            s = std::sqrt(pv[k]);
          } else {
            const T frac = (pv[k] + T(1)) / T(2);
            s = std::exp(T(0.5) * (frac * max_log + (T(1) - frac) * min_log));
          }
          out[k] += s * z[k];
        }
      } else {
        T s;
        if (vt == "fixed_small_log") s = std::exp(T(0.5) * std::log(var));
        else if (vt == "fixed_large") s = std::sqrt(cur_beta);
        else s = std::sqrt(var);
        for (std::size_t k = 0; k < x.size(); ++k) out[k] += s * z[k];
      }
    }
    return out;
  }

  BasicTensor<T> step_ddim(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& x, NoiseSource<T>& noise,
                           const DiffusersStepOptions<T>& opt) {
    const double t = sched_.timesteps[i];
    // diffusers: prev = t - N // n whatever the spacing.
    const double prev = t - static_cast<double>(sched_cfg_.num_train_timesteps / n_);
    const T final_ac = cfg_.set_alpha_to_one ? T(1) : static_cast<T>(sched_.alphas_cumprod.front());
    const T a = ac(t);
    const T ap = prev >= 0 ? ac(prev) : final_ac;
    const T b = T(1) - a, bp = T(1) - ap;
    const T sa = std::sqrt(a), sb = std::sqrt(b);
    BasicTensor<T> x0 = vp_x0(m, x, a);
    BasicTensor<T> eps(x.shape());
    for (std::size_t k = 0; k < x.size(); ++k) {
      switch (cfg_.prediction) {
        case Prediction::epsilon: eps[k] = m[k]; break;
        case Prediction::sample: eps[k] = (x[k] - sa * x0[k]) / sb; break;
        default: eps[k] = sa * m[k] + sb * x[k]; break;
      }
    }
    post_process(x0);
    const T var = (bp / b) * (T(1) - a / ap);
    const T std_dev = opt.eta * std::sqrt(var);
    if (opt.use_clipped_model_output)
      for (std::size_t k = 0; k < x.size(); ++k) eps[k] = (x[k] - sa * x0[k]) / sb;
    const T cdir = std::sqrt(T(1) - ap - std_dev * std_dev), cx0 = std::sqrt(ap);
    BasicTensor<T> out(x.shape());
    for (std::size_t k = 0; k < x.size(); ++k) out[k] = cx0 * x0[k] + cdir * eps[k];
    if (opt.eta > T(0)) {
      const BasicTensor<T> z = draw(noise, i, T(0), T(0), x);
      for (std::size_t k = 0; k < x.size(); ++k) out[k] += std_dev * z[k];
    }
    return out;
  }

  // ---------------------------------------------------------------- core samplers, VE classes

  /// The core sampler's schedule from index `begin` on, in VE sigmas.
  std::vector<T> ve_sigmas_from(std::size_t begin) const {
    std::vector<T> s;
    for (std::size_t k = begin; k < sched_.sigmas.size(); ++k) {
      const T v = sig(k);
      if (flow_sigmas() && cls_ != SchedulerClass::flow_match_euler) {
        s.push_back(v / (T(1) - v));  // flow sigma -> VE sigma (x_ve = x / (1 - s))
      } else {
        s.push_back(v);
      }
    }
    return s;
  }

  /// One step of a core sampler with a denoiser that returns what `den(x, sigma)` gives.
  template <class F>
  void core_step(BasicTensor<T>& x, NoiseSource<T>& noise, bool& drew, F den) {
    AnyDenoiser<T> d([&den](const BasicTensor<T>& xx, T s) { return den(xx, s); });
    NoiseSource<T> rec = recording(noise, drew);
    core_->set_check_finite(false);  // diffusers propagates NaN/inf; so do we (unipc bh1, see tests)
    core_->step(d, x, rec);
  }

  BasicTensor<T> step_core_ve(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                              NoiseSource<T>& noise, const DiffusersStepOptions<T>& opt) {
    using C = SchedulerClass;
    if (cls_ == C::flow_match_euler && cfg_.stochastic_sampling) {
      // x0 = x - s v; x_next = (1 - s_next) x0 + s_next z.
      const T s = sig(i), sn = sig(i + 1);
      const BasicTensor<T> z = draw(noise, i, s, sn, sample);
      BasicTensor<T> out(sample.shape());
      for (std::size_t k = 0; k < sample.size(); ++k) out[k] = (T(1) - sn) * (sample[k] - s * m[k]) + sn * z[k];
      return out;
    }
    if (!core_) {
      std::vector<T> s = ve_sigmas_from(0);
      if (cls_ == C::euler || cls_ == C::flow_match_euler) {
        ChurnOptions<T> o;
        // gamma = s_churn / (len(sigmas) - 1) in both (the core keeps the whole schedule).
        o.s_churn = opt.s_churn;
        o.s_tmin = opt.s_tmin;
        o.s_tmax = opt.s_tmax;
        o.s_noise = opt.s_noise;
        core_ = std::make_unique<EulerSampler<T>>(std::move(s), o);
      } else if (cls_ == C::euler_ancestral) {
        core_ = std::make_unique<EulerAncestralSampler<T>>(std::move(s));
      } else {
        core_ = std::make_unique<LmsSampler<T>>(std::move(s), typename LmsSampler<T>::Options{opt.lms_order});
      }
      // img2img: the run starts at first_index_ of the whole schedule, so LMS takes its order
      // from the absolute step index, min(step_index + 1, order), as diffusers.
      core_->begin_at(first_index_);
    }
    BasicTensor<T> x = sample;
    bool drew = false;
    const T sigma = sig(i);
    const bool flow = cls_ == C::flow_match_euler;
    core_step(x, noise, drew, [&](const BasicTensor<T>& xx, T s) {
      // Euler with churn evaluates at sigma_hat on the churned x: diffusers' epsilon x0 uses
      // sigma_hat there, v-prediction uses sigma.
      if (flow) return ve_x0(m, xx, s, s);
      return ve_x0(m, xx, s, sigma);
    });
    // EulerAncestral draws its noise on every step, also the last (sigma_up = 0), where the core
    // does not: draw and drop it so the generator stays in step with diffusers'.
    if (cls_ == C::euler_ancestral && !drew) (void)draw(noise, i, sigma, T(0), sample);
    return x;
  }

  // ---------------------------------------------------------------- core samplers, VP classes

  BasicTensor<T> step_core_vp(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                              NoiseSource<T>& noise) {
    using C = SchedulerClass;
    if (cls_ == C::lcm) return step_lcm(i, m, sample, noise);
    if (!core_) {
      std::vector<T> s = ve_sigmas_from(0);
      if (cls_ == C::unipc) {
        UniPcOptions<T> o;
        o.order = static_cast<std::size_t>(cfg_.solver_order);
        o.variant = cfg_.solver_type == "bh1" ? UniPcVariant::bh1 : UniPcVariant::bh2;
        o.use_corrector = cfg_.use_corrector;
        o.lower_order_final = cfg_.lower_order_final;
        core_ = std::make_unique<UniPcSampler<T>>(std::move(s), o);
      } else {
        DeisOptions<T> o;
        o.order = static_cast<std::size_t>(cfg_.solver_order);
        o.lower_order_final = cfg_.lower_order_final;
        core_ = std::make_unique<DeisSampler<T>>(std::move(s), o);
      }
      core_->begin_at(first_index_);  // img2img: diffusers' step index is absolute
    }
    const T sigma = sig(i), sigma_next = sig(i + 1);
    const BasicTensor<T> x0 = dpm_x0(m, sample, sigma);
    const T a = alpha_sigma(sigma).first, an = alpha_sigma(sigma_next).first;
    BasicTensor<T> x(sample.shape());
    for (std::size_t k = 0; k < x.size(); ++k) x[k] = sample[k] / a;  // VP -> VE
    bool drew = false;
    core_step(x, noise, drew, [&x0](const BasicTensor<T>&, T) { return x0; });
    for (auto& v : x.values()) v *= an;  // VE -> VP
    return x;
  }

  BasicTensor<T> step_lcm(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                          NoiseSource<T>& noise) {
    const double t = sched_.timesteps[i];
    const bool last = i + 1 >= sched_.timesteps.size();
    const double prev = last ? t : sched_.timesteps[i + 1];
    const T final_ac = cfg_.set_alpha_to_one ? T(1) : static_cast<T>(sched_.alphas_cumprod.front());
    const T a = ac(t);
    const T ap = prev >= 0 ? ac(prev) : final_ac;
    // Boundary condition of the consistency model. diffusers computes it in float32 (t is an
    // int64 tensor times a Python float), so do we, to get the same c_skip / c_out.
    const float st = static_cast<float>(t) * static_cast<float>(cfg_.timestep_scaling);
    const float c_skip = 0.25f / (st * st + 0.25f);
    const float c_out = st / std::sqrt(st * st + 0.25f);
    BasicTensor<T> x0 = vp_x0(m, sample, a);
    post_process(x0);
    BasicTensor<T> den(sample.shape());
    for (std::size_t k = 0; k < den.size(); ++k)
      den[k] = static_cast<T>(c_out) * x0[k] + static_cast<T>(c_skip) * sample[k];
    // Core LCM step in VE from sigma(t) to sigma(prev) (0 at the end): x_ve = D + sigma' z, then
    // x_vp = sqrt(ap) x_ve = sqrt(ap) D + sqrt(1 - ap) z.
    const T s = std::sqrt((T(1) - a) / std::max(a, std::numeric_limits<T>::min()));
    const T sn = last ? T(0) : std::sqrt((T(1) - ap) / ap);
    LcmSampler<T> core(std::vector<T>{std::max(s, sn), sn});
    BasicTensor<T> x = den;
    bool drew = false;
    AnyDenoiser<T> d([&den](const BasicTensor<T>&, T) { return den; });
    NoiseSource<T> rec = recording(noise, drew);
    core.set_check_finite(false);
    core.step(d, x, rec);
    if (!last)
      for (auto& v : x.values()) v *= std::sqrt(ap);
    return x;
  }

  // ---------------------------------------------------------------- Heun state machines (here)

  // One diffusers call is half of Heun's step (the first call predicts, the second corrects with
  // the stored derivative); the core HeunSampler makes both model calls inside one step, so the
  // state machine lives here, in diffusers' arithmetic order.
  BasicTensor<T> step_heun(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                           NoiseSource<T>& noise, const DiffusersStepOptions<T>& opt) {
    const bool first = !dt_.has_value();
    const bool flow = cls_ == SchedulerClass::flow_match_heun;
    const T sigma = first ? sig(i) : sig(i - 1);
    const T sigma_next = first ? sig(i + 1) : sig(i);
    BasicTensor<T> x = sample;
    T sigma_hat = sigma;
    if (flow) {
      const T gamma = (opt.s_tmin <= sigma && sigma <= opt.s_tmax)
                          ? std::min(opt.s_churn / static_cast<T>(sched_.sigmas.size() - 1), std::sqrt(T(2)) - T(1))
                          : T(0);
      sigma_hat = sigma * (gamma + T(1));
      if (gamma > T(0)) {
        const BasicTensor<T> z = draw(noise, i, sigma, sigma_next, x);
        const T eps = opt.s_noise * std::sqrt(sigma_hat * sigma_hat - sigma * sigma);
        for (std::size_t k = 0; k < x.size(); ++k) x[k] += z[k] * eps;
      }
    }
    const T sigma_in = first ? sigma_hat : sigma_next;
    BasicTensor<T> x0 = ve_x0(m, x, sigma_in, sigma_in);
    if (!flow) post_process_heun(x0);
    BasicTensor<T> out(x.shape());
    if (first) {
      BasicTensor<T> d(x.shape());
      for (std::size_t k = 0; k < x.size(); ++k) d[k] = (x[k] - x0[k]) / sigma_hat;
      const T dt = sigma_next - sigma_hat;
      for (std::size_t k = 0; k < x.size(); ++k) out[k] = x[k] + d[k] * dt;
      prev_derivative_ = std::move(d);
      dt_ = dt;
      stored_ = x;
    } else {
      const T dt = *dt_;
      for (std::size_t k = 0; k < x.size(); ++k) {
        const T d2 = (x[k] - x0[k]) / sigma_next;
        const T d = flow ? T(0.5) * (prev_derivative_[k] + d2) : (prev_derivative_[k] + d2) / T(2);
        out[k] = stored_[k] + d * dt;
      }
      prev_derivative_ = BasicTensor<T>();
      stored_ = BasicTensor<T>();
      dt_.reset();
    }
    return out;
  }
  void post_process_heun(BasicTensor<T>& x0) const {
    if (cfg_.clip_sample) {
      const T r = static_cast<T>(cfg_.clip_sample_range);
      for (auto& v : x0.values()) v = std::clamp(v, -r, r);
    }
  }

  // ---------------------------------------------------------------- DPM-Solver++ (here)

  // The core's DPM++ samplers fix the order per step from the history length alone; diffusers
  // lowers it at the end (lower_order_final with n < 15, final_sigmas_type "zero", euler_at_final)
  // and allows solver_order 1. That per-step order rule is missing from the core, so the
  // multistep update is written here, in diffusers' VP form: the coefficients are computed as
  // diffusers groups them, which keeps the float32 rounding close to upstream.

  struct Lam {
    T alpha, sigma, lambda;
  };
  Lam lam(T s) const {
    const auto [a, sv] = alpha_sigma(s);
    return {a, sv, std::log(a) - std::log(sv)};
  }

  void push_history(const BasicTensor<T>& x0, T sigma, std::size_t depth) {
    hist_.insert(hist_.begin(), x0);
    hist_sigma_.insert(hist_sigma_.begin(), sigma);
    if (hist_.size() > depth) {
      hist_.pop_back();
      hist_sigma_.pop_back();
    }
  }

  /// x_t from `x` at s0 with D0 and the D1 / D2 differences (order 1, 2 or 3), plus noise z (SDE).
  BasicTensor<T> dpm_update(const BasicTensor<T>& x, const Lam& t, const Lam& s0, T h, const BasicTensor<T>& d0,
                            const BasicTensor<T>* d1, const BasicTensor<T>* d2, const BasicTensor<T>* z,
                            bool heun) const {
    BasicTensor<T> out(x.shape());
    const bool sde = cfg_.algorithm_type == "sde-dpmsolver++";
    if (!sde) {
      const T em1 = std::exp(-h) - T(1);
      const T cx = t.sigma / s0.sigma;
      const T c0 = t.alpha * em1;
      // midpoint (order 2): -0.5 alpha_t (e^-h - 1) D1; heun and order 3: +alpha_t ((e^-h - 1)/h + 1) D1.
      const T c1 = (d2 != nullptr || heun) ? t.alpha * (em1 / h + T(1)) : T(0.5) * (t.alpha * em1);
      const T c2 = t.alpha * ((std::exp(-h) - T(1) + h) / (h * h) - T(0.5));
      for (std::size_t k = 0; k < x.size(); ++k) {
        T v = cx * x[k] - c0 * d0[k];
        if (d1 != nullptr) v = (d2 != nullptr || heun) ? v + c1 * (*d1)[k] : v - c1 * (*d1)[k];
        if (d2 != nullptr) v -= c2 * (*d2)[k];
        out[k] = v;
      }
    } else {
      const T e2 = T(1) - std::exp(T(-2) * h);
      const T cx = t.sigma / s0.sigma * std::exp(-h);
      const T c0 = t.alpha * e2;
      const T c1 = (d2 != nullptr || heun) ? t.alpha * (e2 / (T(-2) * h) + T(1)) : T(0.5) * (t.alpha * e2);
      const T c2 = t.alpha * ((T(1) - std::exp(T(-2) * h) - T(2) * h) / ((T(2) * h) * (T(2) * h)) - T(0.5));
      const T cz = t.sigma * std::sqrt(T(1) - std::exp(T(-2) * h));
      for (std::size_t k = 0; k < x.size(); ++k) {
        T v = cx * x[k] + c0 * d0[k];
        if (d1 != nullptr) v += c1 * (*d1)[k];
        if (d2 != nullptr) v += c2 * (*d2)[k];
        out[k] = v + cz * (*z)[k];
      }
    }
    return out;
  }

  BasicTensor<T> step_dpm_multistep(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                                    NoiseSource<T>& noise) {
    const std::size_t n = sched_.timesteps.size();
    const std::size_t order = static_cast<std::size_t>(cfg_.solver_order);
    const bool lo_final = i + 1 == n && (cfg_.euler_at_final || (cfg_.lower_order_final && n < 15) ||
                                         sched_cfg_.final_sigmas_type == FinalSigmas::zero);
    const bool lo_second = i + 2 == n && cfg_.lower_order_final && n < 15;
    const T sigma = sig(i);
    push_history(dpm_x0(m, sample, sigma), sigma, order);
    std::optional<BasicTensor<T>> z;
    if (cfg_.algorithm_type == "sde-dpmsolver++") z = draw(noise, i, sigma, sig(i + 1), sample);
    std::size_t use = 3;
    if (order == 1 || lower_order_nums_ < 1 || lo_final) use = 1;
    else if (order == 2 || lower_order_nums_ < 2 || lo_second) use = 2;
    const Lam lt = lam(sig(i + 1)), l0 = lam(sigma);
    const T h = lt.lambda - l0.lambda;
    const bool heun = cfg_.solver_type == "heun";
    const BasicTensor<T>* zp = z ? &*z : nullptr;
    BasicTensor<T> out;
    const BasicTensor<T>& m0 = hist_[0];
    if (use == 1) {
      out = dpm_update(sample, lt, l0, h, m0, nullptr, nullptr, zp, heun);
    } else {
      const Lam l1 = lam(hist_sigma_[1]);
      const T r0 = (l0.lambda - l1.lambda) / h;
      BasicTensor<T> d1(sample.shape());
      const BasicTensor<T>& m1 = hist_[1];
      if (use == 2) {
        for (std::size_t k = 0; k < d1.size(); ++k) d1[k] = (T(1) / r0) * (m0[k] - m1[k]);
        out = dpm_update(sample, lt, l0, h, m0, &d1, nullptr, zp, heun);
      } else {
        const Lam l2 = lam(hist_sigma_[2]);
        const T r1 = (l1.lambda - l2.lambda) / h;
        const BasicTensor<T>& m2 = hist_[2];
        BasicTensor<T> d2(sample.shape());
        for (std::size_t k = 0; k < d1.size(); ++k) {
          const T d10 = (T(1) / r0) * (m0[k] - m1[k]), d11 = (T(1) / r1) * (m1[k] - m2[k]);
          d1[k] = d10 + (r0 / (r0 + r1)) * (d10 - d11);
          d2[k] = (T(1) / (r0 + r1)) * (d10 - d11);
        }
        out = dpm_update(sample, lt, l0, h, m0, &d1, &d2, zp, heun);
      }
    }
    lower_order_nums_ = std::min(lower_order_nums_ + 1, order);
    return out;
  }

  void make_order_list() {
    const auto steps = static_cast<std::size_t>(n_);
    const auto order = static_cast<std::size_t>(cfg_.solver_order);
    // diffusers forces lower_order_final when n % order != 0 or the final sigma is zero.
    const bool lof = cfg_.lower_order_final || steps % order != 0 || sched_cfg_.final_sigmas_type == FinalSigmas::zero;
    std::vector<std::size_t> o;
    auto rep = [&o](std::initializer_list<std::size_t> block, std::size_t times) {
      for (std::size_t r = 0; r < times; ++r) o.insert(o.end(), block.begin(), block.end());
    };
    if (order == 1) {
      o.assign(steps, 1);
    } else if (order == 2) {
      if (lof && steps % 2 == 0) {
        rep({1, 2}, steps / 2 - 1);
        rep({1, 1}, 1);
      } else {
        rep({1, 2}, steps / 2);
        if (lof) o.push_back(1);
      }
    } else {
      if (lof) {
        if (steps % 3 == 0) {
          rep({1, 2, 3}, steps / 3 - 1);
          rep({1, 2, 1}, 1);
        } else {
          rep({1, 2, 3}, steps / 3);
          if (steps % 3 == 1) o.push_back(1);
          else rep({1, 2}, 1);
        }
      } else {
        rep({1, 2, 3}, steps / 3);
      }
    }
    if (!o.empty() && sched_cfg_.final_sigmas_type == FinalSigmas::zero) o.back() = 1;
    order_list_ = std::move(o);
  }

  BasicTensor<T> step_dpm_singlestep(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample,
                                     NoiseSource<T>& noise) {
    if (cfg_.solver_order == 3)
      raise<value_error>(detail::kDfsWhere, "[step] DPMSolverSinglestepScheduler with solver_order 3 is not implemented");
    const std::size_t order_cfg = static_cast<std::size_t>(cfg_.solver_order);
    const T sigma = sig(i);
    // Outputs since the block start, newest first; a block restarts at every order-1 step.
    std::size_t order = i < order_list_.size() ? order_list_[i] : 1;
    push_history(dpm_x0(m, sample, sigma), sigma, order_cfg);
    std::optional<BasicTensor<T>> z;
    if (cfg_.algorithm_type == "sde-dpmsolver++") z = draw(noise, i, sigma, sig(i + 1), sample);
    while (order > hist_.size()) --order;  // img2img: the first steps run at order 1
    if (order == 1) stored_ = sample;
    const BasicTensor<T>* zp = z ? &*z : nullptr;
    const bool heun = cfg_.solver_type == "heun";
    const Lam lt = lam(sig(i + 1));
    if (order == 1) {
      const Lam l0 = lam(sigma);
      return dpm_update(stored_, lt, l0, lt.lambda - l0.lambda, hist_[0], nullptr, nullptr, zp, heun);
    }
    // Second order from the block start s1 = sigmas[i-1]: D0 = m1, D1 = (m0 - m1) / r0.
    const Lam l0 = lam(sigma), l1 = lam(sig(i - 1));
    const T h = lt.lambda - l1.lambda, r0 = (l0.lambda - l1.lambda) / h;
    BasicTensor<T> d1(sample.shape());
    for (std::size_t k = 0; k < d1.size(); ++k) d1[k] = (T(1) / r0) * (hist_[0][k] - hist_[1][k]);
    return dpm_update(stored_, lt, l1, h, hist_[1], &d1, nullptr, zp, heun);
  }

  // ---------------------------------------------------------------- PNDM (PLMS, here)

  // diffusers' PNDMScheduler.step_plms: one call is one network output. Call 0 steps from t_0
  // with e_0 and keeps the sample; call 1 (at t_1, the repeated timestep) redoes that step with
  // (e_0 + e_1) / 2 and drops e_1; later calls step with Adams-Bashforth 2, 3, 4 of the kept
  // outputs. The outputs are combined as given (v with v_prediction, converted to eps afterwards
  // with the current sample), which the core PndmSampler (it combines eps) does not do; and the
  // step goes from t to t - N // n whatever the spacing. So the step is written here, in diffusers'
  // VP form (the paper's eq. 9) and order.
  BasicTensor<T> step_pndm(std::size_t i, const BasicTensor<T>& m, const BasicTensor<T>& sample) {
    const auto ratio = static_cast<double>(sched_cfg_.num_train_timesteps / n_);
    const double t_in = sched_.timesteps[i];
    double t = t_in, prev = t_in - ratio;
    if (pndm_counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin());
      ets_.push_back(m);
    } else {
      prev = t_in;
      t = t_in + ratio;
    }
    const std::size_t n = m.size();
    BasicTensor<T> comb(m.shape());
    const BasicTensor<T>* x = &sample;
    BasicTensor<T> start;
    const std::size_t k = ets_.size();
    if (k == 1 && pndm_counter_ == 0) {
      comb = m;
      stored_ = sample;
    } else if (k == 1 && pndm_counter_ == 1) {
      for (std::size_t q = 0; q < n; ++q) comb[q] = (m[q] + ets_[0][q]) / T(2);
      start = std::move(stored_);
      stored_ = BasicTensor<T>();
      x = &start;
    } else if (k == 2) {
      for (std::size_t q = 0; q < n; ++q) comb[q] = (T(3) * ets_[1][q] - ets_[0][q]) / T(2);
    } else if (k == 3) {
      for (std::size_t q = 0; q < n; ++q)
        comb[q] = (T(23) * ets_[2][q] - T(16) * ets_[1][q] + T(5) * ets_[0][q]) / T(12);
    } else {
      const T c = static_cast<T>(1.0 / 24.0);
      for (std::size_t q = 0; q < n; ++q)
        comb[q] = c * (T(55) * ets_[3][q] - T(59) * ets_[2][q] + T(37) * ets_[1][q] - T(9) * ets_[0][q]);
    }
    ++pndm_counter_;
    // _get_prev_sample: eq. 9 of the paper, with diffusers' grouping.
    const T final_ac = cfg_.set_alpha_to_one ? T(1) : static_cast<T>(sched_.alphas_cumprod.front());
    const T a = ac(t);
    const T ap = prev >= 0 ? ac(prev) : final_ac;
    const T b = T(1) - a, bp = T(1) - ap;
    if (cfg_.prediction == Prediction::v_prediction)
      for (std::size_t q = 0; q < n; ++q) comb[q] = std::sqrt(a) * comb[q] + std::sqrt(b) * (*x)[q];
    const T sample_coeff = std::sqrt(ap / a);
    const T denom = a * std::sqrt(bp) + std::sqrt(a * b * ap);
    BasicTensor<T> out(sample.shape());
    for (std::size_t q = 0; q < n; ++q) out[q] = sample_coeff * (*x)[q] - (ap - a) * comb[q] / denom;
    return out;
  }

  // ---------------------------------------------------------------- members

  ScheduleConfig sched_cfg_;
  DiffusersStepConfig cfg_;
  SchedulerClass cls_ = SchedulerClass::euler;
  std::string class_name_;
  Schedule sched_;
  std::int64_t n_ = 0;
  std::optional<std::size_t> step_index_;
  std::optional<std::size_t> begin_index_;  ///< diffusers' begin_index (set_begin_index)
  std::size_t first_index_ = 0;             ///< the step index the run started at
  std::unique_ptr<Sampler<T>> core_;       ///< the core sampler of the classes that reuse one
  std::vector<BasicTensor<T>> hist_;       ///< DPM: converted outputs, newest first
  std::vector<T> hist_sigma_;              ///< their sigmas
  std::size_t lower_order_nums_ = 0;
  BasicTensor<T> stored_;                  ///< Heun: sample of the first stage; DPM singlestep: block start
  BasicTensor<T> prev_derivative_;         ///< Heun: derivative of the first stage
  std::optional<T> dt_;                    ///< Heun: pending step size (set = second stage next)
  std::vector<std::size_t> order_list_;    ///< DPM singlestep
  std::vector<BasicTensor<T>> ets_;        ///< PNDM: kept model outputs, oldest first (at most 4)
  std::size_t pndm_counter_ = 0;           ///< PNDM: diffusers' counter (calls so far)
};

DIFFUSE_END_NAMESPACE
