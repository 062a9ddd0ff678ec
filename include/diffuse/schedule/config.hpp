// SPDX-License-Identifier: MIT
/** @file config.hpp
 *  `ScheduleConfig`: the schedule-related keys of a diffusers `scheduler_config.json`, and
 *  `make_schedule`, which builds the timesteps and sigmas that the named diffusers scheduler class
 *  holds after `set_timesteps(n)`, in one call.
 *
 *  | class                                       | timesteps                  | sigmas                                    |
 *  |---------------------------------------------|----------------------------|-------------------------------------------|
 *  | DDPMScheduler, DDIMScheduler                | `ddpm_timesteps` (int)     | none                                      |
 *  | LCMScheduler                                | `lcm_timesteps` (int)      | none                                      |
 *  | PNDMScheduler (skip_prk_steps)              | `ddpm_timesteps`, 2nd twice | none (`pndm_sigmas`: the core sampler's) |
 *  | EulerDiscrete, EulerAncestralDiscrete, LMSDiscrete | `euler_timesteps` (f32) | interp at t, karras/exp/beta, final   |
 *  | HeunDiscreteScheduler                       | as Euler, interleaved      | as Euler (final 0), interleaved           |
 *  | DPMSolverMultistep, UniPCMultistep, DEISMultistep | `dpm_timesteps` (int) | interp / karras / lu / exp / beta / flow |
 *  | DPMSolverSinglestepScheduler                | `dpm_singlestep_timesteps` | as DPMSolverMultistep                     |
 *  | FlowMatchEulerDiscreteScheduler             | sigmas * N (f32)           | `flow_match_sigmas`                       |
 *  | FlowMatchHeunDiscreteScheduler              | interleaved                | `flow_match_heun_sigmas`                  |
 *
 *  Unknown keys are ignored, as diffusers ignores them. A key with the wrong JSON type raises
 *  format_error naming it; a known key with an unknown value raises value_error.
 *
 *  **Example**:
 *  ```
 *  auto cfg = diffuse::ScheduleConfig::from_json(nlohmann::json::parse(text));
 *  auto s = diffuse::make_schedule(cfg, 25);        // class from "_class_name"
 *  // s.timesteps (25), s.sigmas (26, ending in 0), s.alphas_cumprod (1000)
 *  ``` */
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/flow.hpp"
#include "diffuse/schedule/sigmas.hpp"
#include "diffuse/schedule/timesteps.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// The diffusers scheduler classes whose schedules `make_schedule` reproduces.
enum class SchedulerClass {
  ddpm,
  ddim,
  euler,
  euler_ancestral,
  heun,
  lms,
  dpm_multistep,
  dpm_singlestep,
  unipc,
  deis,
  lcm,
  flow_match_euler,
  flow_match_heun,
  pndm,
};

/// Parses a diffusers class name ("EulerDiscreteScheduler", ...). Raises value_error if unknown.
inline SchedulerClass scheduler_class_from_name(std::string_view name) {
  struct Entry {
    std::string_view name;
    SchedulerClass cls;
  };
  static constexpr Entry kClasses[] = {
      {"DDPMScheduler", SchedulerClass::ddpm},
      {"DDIMScheduler", SchedulerClass::ddim},
      {"EulerDiscreteScheduler", SchedulerClass::euler},
      {"EulerAncestralDiscreteScheduler", SchedulerClass::euler_ancestral},
      {"HeunDiscreteScheduler", SchedulerClass::heun},
      {"LMSDiscreteScheduler", SchedulerClass::lms},
      {"DPMSolverMultistepScheduler", SchedulerClass::dpm_multistep},
      {"DPMSolverSinglestepScheduler", SchedulerClass::dpm_singlestep},
      {"UniPCMultistepScheduler", SchedulerClass::unipc},
      {"DEISMultistepScheduler", SchedulerClass::deis},
      {"LCMScheduler", SchedulerClass::lcm},
      {"FlowMatchEulerDiscreteScheduler", SchedulerClass::flow_match_euler},
      {"FlowMatchHeunDiscreteScheduler", SchedulerClass::flow_match_heun},
      {"PNDMScheduler", SchedulerClass::pndm},
  };
  for (const auto& e : kClasses)
    if (e.name == name) return e.cls;
  raise<value_error>("scheduler_class_from_name", "unknown scheduler class " + detail::quoted(name));
}

/** The keys of a diffusers `scheduler_config.json` that decide the schedule. Keys whose default
 *  depends on the class are optional and resolved by `make_schedule`. */
struct ScheduleConfig {
  std::string class_name;  ///< "_class_name", if present
  std::int64_t num_train_timesteps = 1000;
  /// Largest num_train_timesteps accepted (the per-timestep tables are 8 bytes x this each).
  static constexpr std::int64_t kMaxTrainTimesteps = 100000;
  std::optional<double> beta_start;             ///< default 1e-4 (0.00085 for Heun, LCM)
  std::optional<double> beta_end;               ///< default 0.02 (0.012 for Heun, LCM)
  std::optional<BetaSchedule> beta_schedule;    ///< default linear (scaled_linear for LCM)
  std::optional<std::vector<double>> trained_betas;
  bool rescale_betas_zero_snr = false;
  std::optional<TimestepSpacing> timestep_spacing;  ///< default linspace (leading for DDPM, DDIM)
  std::int64_t steps_offset = 0;
  std::string prediction_type = "epsilon";
  std::string interpolation_type = "linear";   ///< Euler: "linear" or "log_linear"
  std::string timestep_type = "discrete";      ///< Euler: "discrete" or "continuous"
  std::string algorithm_type;                  ///< DPM-Solver: "dpmsolver++" by default
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  bool use_lu_lambdas = false;
  bool use_flow_sigmas = false;
  std::optional<double> sigma_min;  ///< Euler, UniPC: karras/exponential/beta range override
  std::optional<double> sigma_max;
  FinalSigmas final_sigmas_type = FinalSigmas::zero;
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  double flow_shift = 1.0;  ///< DPM/UniPC/DEIS flow sigmas
  double shift = 1.0;       ///< FlowMatch static shift
  bool use_dynamic_shifting = false;
  TimeShift time_shift_type = TimeShift::exponential;
  std::optional<double> shift_terminal;
  bool invert_sigmas = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  std::int64_t base_image_seq_len = 256;
  std::int64_t max_image_seq_len = 4096;
  std::int64_t original_inference_steps = 50;  ///< LCM
  /// PNDM: false is the original Runge-Kutta warm-up (PRK), which make_schedule refuses; the
  /// published Stable Diffusion folders set true (PLMS from the first step).
  bool skip_prk_steps = false;
  /// DDIM, PNDM, LCM: the alphas_cumprod the last step goes to, 1 (true) or alphas_cumprod[0]
  /// (false); default true for DDIM and LCM, false for PNDM.
  std::optional<bool> set_alpha_to_one;

  /// Parses a scheduler config object. Raises format_error for a non-object or a key of the wrong
  /// type (naming the key), value_error for an unknown name in a known key or an integer out of
  /// range (see `validate`).
  static ScheduleConfig from_json(const nlohmann::json& j);

  /** Checks the integer keys, so that no later arithmetic overflows or indexes out of the tables:
   *  - `num_train_timesteps` in [2, kMaxTrainTimesteps];
   *  - `steps_offset` in [0, num_train_timesteps) (diffusers uses 0 or 1; a timestep past the
   *    train table would be clamped to sigma_max, i.e. a run that never denoises);
   *  - `original_inference_steps` (LCM) in [1, kMaxTrainTimesteps] (and <= num_train_timesteps
 *    when LCM uses it);
   *  - with `use_dynamic_shifting`: 1 <= `base_image_seq_len` < `max_image_seq_len` <= 2^31
   *    (their difference divides `calculate_shift`).
   *  value_error naming the key, the value and the allowed range. */
  void validate() const;

  /** `calculate_shift` with this config's base/max shift and sequence lengths: the `mu` the
   *  Flux/SD3 pipelines pass for `image_seq_len` latent tokens. */
  double mu_for(double image_seq_len) const {
    return calculate_shift(image_seq_len, static_cast<double>(base_image_seq_len),
                           static_cast<double>(max_image_seq_len), base_shift, max_shift);
  }
};

namespace detail {
constexpr std::string_view kConfigWhere = "ScheduleConfig::from_json";

[[noreturn]] inline void wrong_type(std::string_view key, std::string_view expected, const nlohmann::json& v) {
  raise<format_error>(kConfigWhere, "key '" + std::string(key) + "' must be " + std::string(expected) + ", got " +
                                        std::string(v.type_name()));
}

inline const nlohmann::json* present(const nlohmann::json& j, std::string_view key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

inline void read(const nlohmann::json& j, std::string_view key, bool& dst) {
  if (const auto* v = present(j, key)) {
    if (!v->is_boolean()) wrong_type(key, "a boolean", *v);
    dst = v->get<bool>();
  }
}

inline void read(const nlohmann::json& j, std::string_view key, std::int64_t& dst) {
  if (const auto* v = present(j, key)) {
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      raise<value_error>(kConfigWhere, "key '" + std::string(key) + "' = " + std::to_string(v->get<std::uint64_t>()) +
                                           " is out of range (larger than 2^63 - 1)");
    } else if (v->is_number_integer()) {
      dst = v->get<std::int64_t>();
    } else if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
               std::fabs(v->get<double>()) < 9.0e15) {
      dst = static_cast<std::int64_t>(v->get<double>());
    } else {
      wrong_type(key, "an integer", *v);
    }
  }
}

inline double number(std::string_view key, const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {  // Python's json writes non-finite floats as bare words; accept them quoted
    const auto& s = v.get_ref<const std::string&>();
    if (s == "-inf" || s == "-Infinity") return -std::numeric_limits<double>::infinity();
    if (s == "inf" || s == "Infinity") return std::numeric_limits<double>::infinity();
  }
  wrong_type(key, "a number", v);
}

inline void read(const nlohmann::json& j, std::string_view key, double& dst) {
  if (const auto* v = present(j, key)) dst = number(key, *v);
}

inline void read(const nlohmann::json& j, std::string_view key, std::optional<double>& dst) {
  if (const auto* v = present(j, key)) dst = number(key, *v);
}

inline void read(const nlohmann::json& j, std::string_view key, std::string& dst) {
  if (const auto* v = present(j, key)) {
    if (!v->is_string()) wrong_type(key, "a string", *v);
    dst = v->get<std::string>();
  }
}

template <class E, class F>
void read_enum(const nlohmann::json& j, std::string_view key, E& dst, F from_name) {
  if (const auto* v = present(j, key)) {
    if (!v->is_string()) wrong_type(key, "a string", *v);
    dst = from_name(v->get_ref<const std::string&>());
  }
}
}  // namespace detail

inline ScheduleConfig ScheduleConfig::from_json(const nlohmann::json& j) {
  using detail::read;
  if (!j.is_object()) raise<format_error>(detail::kConfigWhere, "a scheduler config must be a JSON object");
  ScheduleConfig c;
  read(j, "_class_name", c.class_name);
  read(j, "num_train_timesteps", c.num_train_timesteps);
  if (c.num_train_timesteps < 1 || c.num_train_timesteps > kMaxTrainTimesteps)
    raise<format_error>(detail::kConfigWhere, "key 'num_train_timesteps' is " + std::to_string(c.num_train_timesteps) +
                                                  ", outside 1.." + std::to_string(kMaxTrainTimesteps) +
                                                  " (published models use 1000 to 4000)");
  read(j, "beta_start", c.beta_start);
  read(j, "beta_end", c.beta_end);
  if (const auto* v = detail::present(j, "beta_schedule")) {
    if (!v->is_string()) detail::wrong_type("beta_schedule", "a string", *v);
    c.beta_schedule = beta_schedule_from_name(v->get_ref<const std::string&>());
  }
  if (const auto* v = detail::present(j, "trained_betas")) {
    if (!v->is_array()) detail::wrong_type("trained_betas", "an array of numbers", *v);
    if (v->size() > static_cast<std::size_t>(kMaxTrainTimesteps))
      raise<format_error>(detail::kConfigWhere, "key 'trained_betas' has " + std::to_string(v->size()) +
                                                    " entries, more than " + std::to_string(kMaxTrainTimesteps));
    std::vector<double> b;
    for (const auto& e : *v) {
      if (!e.is_number()) detail::wrong_type("trained_betas", "an array of numbers", e);
      b.push_back(e.get<double>());
    }
    c.trained_betas = std::move(b);
  }
  read(j, "rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  if (const auto* v = detail::present(j, "timestep_spacing")) {
    if (!v->is_string()) detail::wrong_type("timestep_spacing", "a string", *v);
    c.timestep_spacing = timestep_spacing_from_name(v->get_ref<const std::string&>());
  }
  read(j, "steps_offset", c.steps_offset);
  read(j, "prediction_type", c.prediction_type);
  read(j, "interpolation_type", c.interpolation_type);
  if (c.interpolation_type != "linear" && c.interpolation_type != "log_linear")
    raise<value_error>(detail::kConfigWhere, "interpolation_type: unknown value " + detail::quoted(c.interpolation_type));
  read(j, "timestep_type", c.timestep_type);
  if (c.timestep_type != "discrete" && c.timestep_type != "continuous")
    raise<value_error>(detail::kConfigWhere, "timestep_type: unknown value " + detail::quoted(c.timestep_type));
  read(j, "algorithm_type", c.algorithm_type);
  read(j, "use_karras_sigmas", c.use_karras_sigmas);
  read(j, "use_exponential_sigmas", c.use_exponential_sigmas);
  read(j, "use_beta_sigmas", c.use_beta_sigmas);
  read(j, "use_lu_lambdas", c.use_lu_lambdas);
  read(j, "use_flow_sigmas", c.use_flow_sigmas);
  read(j, "sigma_min", c.sigma_min);
  read(j, "sigma_max", c.sigma_max);
  detail::read_enum(j, "final_sigmas_type", c.final_sigmas_type, final_sigmas_from_name);
  read(j, "lambda_min_clipped", c.lambda_min_clipped);
  read(j, "flow_shift", c.flow_shift);
  read(j, "shift", c.shift);
  read(j, "use_dynamic_shifting", c.use_dynamic_shifting);
  detail::read_enum(j, "time_shift_type", c.time_shift_type, time_shift_from_name);
  read(j, "shift_terminal", c.shift_terminal);
  read(j, "invert_sigmas", c.invert_sigmas);
  read(j, "base_shift", c.base_shift);
  read(j, "max_shift", c.max_shift);
  read(j, "base_image_seq_len", c.base_image_seq_len);
  read(j, "max_image_seq_len", c.max_image_seq_len);
  read(j, "original_inference_steps", c.original_inference_steps);
  read(j, "skip_prk_steps", c.skip_prk_steps);
  if (const auto* v = detail::present(j, "set_alpha_to_one")) {
    if (!v->is_boolean()) detail::wrong_type("set_alpha_to_one", "a boolean", *v);
    c.set_alpha_to_one = v->get<bool>();
  }
  c.validate();
  return c;
}

inline void ScheduleConfig::validate() const {
  auto out_of_range = [](std::string_view key, std::int64_t v, const std::string& allowed) {
    raise<value_error>(detail::kConfigWhere, "key '" + std::string(key) + "' = " + std::to_string(v) +
                                                 " is out of range: it must be " + allowed);
  };
  const std::int64_t N = num_train_timesteps;
  if (N < 2 || N > kMaxTrainTimesteps)
    out_of_range("num_train_timesteps", N, "in [2, " + std::to_string(kMaxTrainTimesteps) + "]");
  if (steps_offset < 0 || steps_offset >= N)
    out_of_range("steps_offset", steps_offset, "in [0, num_train_timesteps) = [0, " + std::to_string(N) + ")");
  // (LCM also needs it <= num_train_timesteps, checked by lcm_timesteps: the default 50 is kept
  // by configs of every class, whatever their num_train_timesteps.)
  if (original_inference_steps < 1 || original_inference_steps > kMaxTrainTimesteps)
    out_of_range("original_inference_steps", original_inference_steps,
                 "in [1, " + std::to_string(kMaxTrainTimesteps) + "]");
  if (use_dynamic_shifting) {
    constexpr std::int64_t kMaxSeq = std::int64_t(1) << 31;
    if (base_image_seq_len < 1 || base_image_seq_len >= kMaxSeq)
      out_of_range("base_image_seq_len", base_image_seq_len, "in [1, 2^31)");
    if (max_image_seq_len <= base_image_seq_len || max_image_seq_len > kMaxSeq)
      out_of_range("max_image_seq_len", max_image_seq_len,
                   "in (base_image_seq_len, 2^31] = (" + std::to_string(base_image_seq_len) + ", 2^31]");
  }
}

/// What a diffusers scheduler holds after `set_timesteps`.
struct Schedule {
  /// `scheduler.timesteps`, each value exact (int64, or float32 widened to double).
  std::vector<double> timesteps;
  bool integer_timesteps = false;  ///< true when diffusers stores int64 timesteps
  /// `scheduler.sigmas` (float32); empty for DDPM, DDIM, LCM and PNDM, which have none.
  std::vector<float> sigmas;
  /// `scheduler.alphas_cumprod` (float32, bit-exact); empty for the flow-matching classes.
  std::vector<float> alphas_cumprod;
  /// `scheduler.init_noise_sigma`: the scale of the initial noise.
  float init_noise_sigma = 1.0f;
};

namespace detail {
inline bool has_zero_snr(SchedulerClass c) {
  return c == SchedulerClass::ddpm || c == SchedulerClass::ddim || c == SchedulerClass::euler ||
         c == SchedulerClass::euler_ancestral || c == SchedulerClass::dpm_multistep || c == SchedulerClass::unipc ||
         c == SchedulerClass::lcm;
}
inline bool patches_terminal_alpha(SchedulerClass c) {
  return c == SchedulerClass::euler || c == SchedulerClass::euler_ancestral || c == SchedulerClass::dpm_multistep ||
         c == SchedulerClass::unipc;
}

/// The float32 alphas_cumprod of a discrete class's `__init__`.
inline std::vector<float> class_alphas_cumprod(SchedulerClass cls, const ScheduleConfig& c) {
  constexpr std::string_view where = "make_schedule";
  const bool sd_defaults = cls == SchedulerClass::heun || cls == SchedulerClass::lcm;
  const double b0 = c.beta_start.value_or(sd_defaults ? 0.00085 : 0.0001);
  const double b1 = c.beta_end.value_or(sd_defaults ? 0.012 : 0.02);
  const BetaSchedule sched =
      c.beta_schedule.value_or(cls == SchedulerClass::lcm ? BetaSchedule::scaled_linear : BetaSchedule::linear);
  std::vector<float> betas;
  if (c.trained_betas) {
    betas = make_trained_betas<double>(*c.trained_betas);
  } else {
    const bool allowed = sched == BetaSchedule::linear || sched == BetaSchedule::scaled_linear ||
                         sched == BetaSchedule::squaredcos_cap_v2 ||
                         (cls == SchedulerClass::ddpm && (sched == BetaSchedule::sigmoid || sched == BetaSchedule::laplace)) ||
                         (cls == SchedulerClass::heun && sched == BetaSchedule::exp);
    if (!allowed)
      raise<value_error>(where, "beta_schedule '" + std::string(to_string(sched)) + "' is not implemented for this class");
    betas = make_betas(sched, c.num_train_timesteps, b0, b1);
  }
  if (c.rescale_betas_zero_snr && has_zero_snr(cls)) betas = rescale_zero_terminal_snr(betas);
  auto ac = alphas_cumprod(betas);
  if (c.rescale_betas_zero_snr && has_zero_snr(cls) && patches_terminal_alpha(cls))
    ac.back() = 0x1p-24f;  // "close to 0 without being 0 so first sigma is not inf"
  return ac;
}

inline int count_conversions(const ScheduleConfig& c) {
  return int(c.use_karras_sigmas) + int(c.use_exponential_sigmas) + int(c.use_beta_sigmas);
}

inline void to_f32_times(Schedule& s, const std::vector<double>& t) {
  s.timesteps.clear();
  for (double v : t) s.timesteps.push_back(static_cast<double>(static_cast<float>(v)));
}

inline void to_int_times(Schedule& s, const std::vector<double>& t, bool round) {
  s.timesteps.clear();
  s.integer_timesteps = true;
  for (double v : t) s.timesteps.push_back(static_cast<double>(static_cast<std::int64_t>(round ? np_round(v) : v)));
}

inline std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }
}  // namespace detail

/** The schedule of diffusers' `cls` built from `c` after `set_timesteps(num_inference_steps, mu=mu)`
 *  (diffusers 0.42). `mu` is required for `use_dynamic_shifting` (see `ScheduleConfig::mu_for`).
 *  Raises value_error for a bad argument or an unsupported combination, as diffusers raises. */
inline Schedule make_schedule(SchedulerClass cls, const ScheduleConfig& c, std::int64_t num_inference_steps,
                              std::optional<double> mu = std::nullopt) {
  constexpr std::string_view where = "make_schedule";
  using detail::to_f32_times;
  using detail::to_int_times;
  const std::int64_t n = num_inference_steps;
  const std::int64_t N = c.num_train_timesteps;
  if (n < 1 || n > ScheduleConfig::kMaxTrainTimesteps)
    raise<value_error>(where, "num_inference_steps must be in [1, " + std::to_string(ScheduleConfig::kMaxTrainTimesteps) +
                                  "], got " + std::to_string(n));
  c.validate();
  if (detail::count_conversions(c) > 1)
    raise<value_error>(where, "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be set");
  Schedule s;

  if (cls == SchedulerClass::flow_match_euler) {
    FlowMatchOptions o;
    o.num_train_timesteps = N;
    o.shift = c.shift;
    o.use_dynamic_shifting = c.use_dynamic_shifting;
    o.time_shift_type = c.time_shift_type;
    o.shift_terminal = c.shift_terminal;
    o.use_karras_sigmas = c.use_karras_sigmas;
    o.use_exponential_sigmas = c.use_exponential_sigmas;
    o.use_beta_sigmas = c.use_beta_sigmas;
    o.invert_sigmas = c.invert_sigmas;
    auto f = flow_match_sigmas(o, n, mu);
    s.timesteps = detail::widen(f.timesteps);
    s.sigmas = std::move(f.sigmas);
    return s;
  }
  if (cls == SchedulerClass::flow_match_heun) {
    auto f = flow_match_heun_sigmas(N, c.shift, n);
    s.timesteps = detail::widen(f.timesteps);
    s.sigmas = std::move(f.sigmas);
    return s;
  }

  s.alphas_cumprod = detail::class_alphas_cumprod(cls, c);
  const auto& ac = s.alphas_cumprod;
  if (c.trained_betas && static_cast<std::int64_t>(ac.size()) < N)
    raise<value_error>(where, "trained_betas has " + std::to_string(ac.size()) + " entries, fewer than num_train_timesteps (" +
                                  std::to_string(N) + ")");
  const bool ddpm_like = cls == SchedulerClass::ddpm || cls == SchedulerClass::ddim || cls == SchedulerClass::pndm;
  const TimestepSpacing spacing =
      c.timestep_spacing.value_or(ddpm_like ? TimestepSpacing::leading : TimestepSpacing::linspace);

  if (cls == SchedulerClass::pndm && !c.skip_prk_steps)
    raise<value_error>(where,
                       "PNDMScheduler with skip_prk_steps false (the Runge-Kutta warm-up, PRK) is not "
                       "implemented; set skip_prk_steps to true (PLMS, as the Stable Diffusion folders do)");
  if (ddpm_like) {
    for (auto t : ddpm_timesteps(spacing, N, n, c.steps_offset)) {
      // DDPM and DDIM index alphas_cumprod with the timestep (diffusers raises IndexError).
      if (t < 0 || t >= N)
        raise<value_error>(where, "steps_offset " + std::to_string(c.steps_offset) + " with " + std::to_string(n) +
                                      " steps gives timestep " + std::to_string(t) +
                                      ", outside the train table [0, " + std::to_string(N - 1) + "]");
      s.timesteps.push_back(static_cast<double>(t));
    }
    if (cls == SchedulerClass::pndm) {
      // diffusers' plms_timesteps: the second timestep twice (the warm-up's two calls), n + 1 in
      // all (1 for n = 1). The repeat evaluates at t_1 from t_0's Euler step, then again from the
      // corrected sample.
      // (The warm-up's second call steps from t_1 + N // n, which is <= t_0 for every spacing.)
      if (s.timesteps.size() >= 2) s.timesteps.insert(s.timesteps.begin() + 1, s.timesteps[1]);
    }
    s.integer_timesteps = true;
    return s;
  }
  if (cls == SchedulerClass::lcm) {
    for (auto t : lcm_timesteps(N, n, c.original_inference_steps)) s.timesteps.push_back(static_cast<double>(t));
    s.integer_timesteps = true;
    return s;
  }

  const auto train = train_sigmas(ac);
  const auto logs = log_sigmas(train);
  const bool has_range_keys = cls == SchedulerClass::euler || cls == SchedulerClass::unipc;
  auto lo_of = [&](double fallback) { return has_range_keys && c.sigma_min ? *c.sigma_min : fallback; };
  auto hi_of = [&](double fallback) { return has_range_keys && c.sigma_max ? *c.sigma_max : fallback; };
  // karras / exponential / beta between the ends of `sig` (descending): diffusers `_convert_to_*`.
  auto convert = [&](const std::vector<double>& sig) {
    const double lo = lo_of(sig.back());
    const double hi = hi_of(sig.front());
    if (c.use_karras_sigmas) return get_sigmas_karras<double>(n, lo, hi, 7.0, false);
    if (c.use_exponential_sigmas) return get_sigmas_exponential<double>(n, lo, hi, false);
    return get_sigmas_beta<double>(n, lo, hi, 0.6, 0.6, false);
  };
  auto to_t = [&](const std::vector<double>& sig) {
    std::vector<double> t;
    for (double v : sig) t.push_back(sigma_to_t<double>(v, logs));
    return t;
  };
  const bool converts = detail::count_conversions(c) == 1;

  switch (cls) {
    case SchedulerClass::euler:
    case SchedulerClass::euler_ancestral:
    case SchedulerClass::heun:
    case SchedulerClass::lms: {
      const bool euler = cls == SchedulerClass::euler;
      const auto ts = euler_timesteps(spacing, N, n, c.steps_offset);
      std::vector<double> sig;
      std::vector<float> sig32;
      if (euler && c.interpolation_type == "log_linear") {
        const float l0 = static_cast<float>(std::log(static_cast<double>(train.back())));
        const float l1 = static_cast<float>(std::log(static_cast<double>(train.front())));
        for (float v : detail::torch_linspace_f32(l0, l1, n + 1))
          sig.push_back(static_cast<float>(std::exp(static_cast<double>(v))));
      } else {
        sig = interp_sigmas<float>(ts, train);
      }
      std::vector<double> tsd = detail::widen(ts);
      if (converts && cls != SchedulerClass::euler_ancestral) {
        sig = convert(sig);
        tsd = to_t(sig);
      }
      for (double v : sig) sig32.push_back(static_cast<float>(v));
      sig32.push_back(euler ? final_sigma(c.final_sigmas_type, ac) : 0.0f);
      to_f32_times(s, tsd);
      if (euler && c.timestep_type == "continuous" && c.prediction_type == "v_prediction") {
        s.timesteps.clear();
        for (std::size_t i = 0; i + 1 < sig32.size(); ++i)
          s.timesteps.push_back(detail::rounded(0.25f * std::log(sig32[i])));
      }
      if (cls == SchedulerClass::heun) {
        std::vector<float> si;
        std::vector<double> ti;
        for (std::size_t i = 0; i < sig32.size(); ++i) {
          si.push_back(sig32[i]);
          if (i > 0 && i + 1 < sig32.size()) si.push_back(sig32[i]);
        }
        for (std::size_t i = 0; i < s.timesteps.size(); ++i) {
          ti.push_back(s.timesteps[i]);
          if (i > 0) ti.push_back(s.timesteps[i]);
        }
        sig32 = std::move(si);
        s.timesteps = std::move(ti);
      }
      s.sigmas = std::move(sig32);
      float mx = 0.0f;
      for (float v : s.sigmas) mx = std::max(mx, v);
      s.init_noise_sigma = spacing == TimestepSpacing::leading ? std::sqrt(detail::rounded(mx * mx) + 1.0f) : mx;
      return s;
    }
    case SchedulerClass::dpm_multistep:
    case SchedulerClass::dpm_singlestep:
    case SchedulerClass::unipc:
    case SchedulerClass::deis: {
      const bool dpm = cls == SchedulerClass::dpm_multistep || cls == SchedulerClass::dpm_singlestep;
      if (cls == SchedulerClass::dpm_multistep || cls == SchedulerClass::dpm_singlestep) {
        const std::string algo = c.algorithm_type.empty() ? "dpmsolver++" : c.algorithm_type;
        if (c.final_sigmas_type == FinalSigmas::zero && algo != "dpmsolver++" && algo != "sde-dpmsolver++" &&
            algo != "deis")
          raise<value_error>(where, "final_sigmas_type 'zero' is not supported for algorithm_type " +
                                        detail::quoted(algo) + ": use 'sigma_min'");
      }
      double flow_shift = c.flow_shift;
      if (mu) {
        if (!c.use_dynamic_shifting || c.time_shift_type != TimeShift::exponential)
          raise<value_error>(where, "mu requires use_dynamic_shifting with time_shift_type 'exponential'");
        flow_shift = std::exp(*mu);
      } else if (cls == SchedulerClass::unipc && c.use_dynamic_shifting) {
        raise<value_error>(where, "mu must be given when use_dynamic_shifting is set");
      }
      // Index where lambda_t = ln(alpha_t) - ln(sigma_t) (float32) first reaches lambda_min_clipped,
      // counted from the end: torch.searchsorted(flip(lambda_t), lambda_min_clipped).
      std::int64_t clipped = 0;
      if (dpm && !std::isinf(c.lambda_min_clipped)) {
        std::vector<float> lambda(ac.size());
        for (std::size_t i = 0; i < ac.size(); ++i) {
          const float at = std::sqrt(ac[i]);
          const float st = std::sqrt(1.0f - ac[i]);
          lambda[i] = static_cast<float>(std::log(static_cast<double>(at))) -
                      static_cast<float>(std::log(static_cast<double>(st)));
        }
        clipped = static_cast<std::int64_t>(lambda.size());
        for (std::size_t k = 0; k < lambda.size(); ++k)
          if (static_cast<double>(lambda[lambda.size() - 1 - k]) >= c.lambda_min_clipped) {
            clipped = static_cast<std::int64_t>(k);
            break;
          }
      }
      std::vector<std::int64_t> ti;
      if (cls == SchedulerClass::dpm_singlestep) {
        ti = dpm_singlestep_timesteps(N, n, clipped);
      } else {
        ti = dpm_timesteps(spacing, N, n, c.steps_offset, N - clipped);
      }
      std::vector<double> t(ti.begin(), ti.end());
      std::vector<double> sig;
      std::vector<double> descending(train.rbegin(), train.rend());
      const bool cos = c.beta_schedule == BetaSchedule::squaredcos_cap_v2;
      bool round_t = false;
      bool last_is_dup = false;  // the final sigma repeats the last one instead of the VP sigma_min
      if (converts) {
        sig = convert(descending);
        if (cls == SchedulerClass::unipc && c.use_flow_sigmas && c.use_karras_sigmas) {
          for (auto& v : sig) v = v / (v + 1.0);
          t.clear();
          for (double v : sig) t.push_back(detail::rounded(v * static_cast<double>(N)));
        } else {
          t = to_t(sig);
          round_t = c.use_karras_sigmas &&
                    (cls == SchedulerClass::dpm_singlestep || cls == SchedulerClass::unipc ||
                     cls == SchedulerClass::deis || !cos);
        }
        last_is_dup = cls == SchedulerClass::unipc || cls == SchedulerClass::deis;
      } else if (cls == SchedulerClass::dpm_multistep && c.use_lu_lambdas) {
        const double lmax = logs.back();
        const double lmin = logs.front();
        const auto ramp = detail::np_linspace(0.0, 1.0, n);
        for (double r : ramp) sig.push_back(std::exp(lmax + detail::rounded(r * (lmin - lmax))));
        t = to_t(sig);
        round_t = !cos;
      } else if (c.use_flow_sigmas) {
        if (cls == SchedulerClass::unipc) {
          sig = flow_sigmas_unipc(N, n, c.flow_shift, c.use_dynamic_shifting, mu.value_or(0.0), c.time_shift_type,
                                  c.shift_terminal);
        } else {
          sig = flow_sigmas_dpm(N, n, flow_shift);
        }
        t.clear();
        for (double v : sig) t.push_back(detail::rounded(v * static_cast<double>(N)));
        last_is_dup = cls == SchedulerClass::unipc || cls == SchedulerClass::deis;
      } else {
        sig = interp_sigmas<double>(t, train);
      }
      to_int_times(s, t, round_t);
      for (double v : sig) s.sigmas.push_back(static_cast<float>(v));
      if (cls == SchedulerClass::deis) {
        s.sigmas.push_back(last_is_dup ? s.sigmas.back() : train.front());
      } else if (c.final_sigmas_type == FinalSigmas::zero) {
        s.sigmas.push_back(0.0f);
      } else {
        s.sigmas.push_back(last_is_dup ? static_cast<float>(sig.back()) : train.front());
      }
      return s;
    }
    default: break;
  }
  raise<value_error>(where, "unsupported scheduler class");
}

/** The noise levels at which diffusers' PNDMScheduler (`skip_prk_steps: true`) runs, as the core
 *  `pndm` sampler takes them (sample/pndm.hpp): the VE sigmas of the n distinct timesteps of
 *  `set_timesteps(n)` (the warm-up's repeated timestep once), then the level the last step goes
 *  to, diffusers' `final_alpha_cumprod`: 0 with `set_alpha_to_one`, else
 *  sigma(alphas_cumprod[0]) (0.0292 for Stable Diffusion's betas), as DDIMScheduler's last step in
 *  `DiffusersScheduler`. n + 1 values. `final_to_zero` ends at 0 instead (for samplers other than
 *  pndm on a PNDM config).
 *
 *  diffusers steps from t to t - N // n whatever the spacing, so these levels are its steps
 *  exactly when the timesteps are N // n apart: "leading" spacing (the Stable Diffusion folders;
 *  steps_offset does not change that) and "trailing" when n divides N. With "linspace" (or
 *  "trailing" otherwise) diffusers evaluates the network at one timestep and transfers the sample
 *  from a slightly different one; the sampler here takes the timesteps' own levels (the step
 *  `DiffusersScheduler` reproduces is diffusers'). value_error as `make_schedule`. */
inline std::vector<float> pndm_sigmas(const ScheduleConfig& c, std::int64_t num_inference_steps,
                                      bool final_to_zero = false) {
  const Schedule s = make_schedule(SchedulerClass::pndm, c, num_inference_steps);
  const std::vector<float> train = train_sigmas(s.alphas_cumprod);
  std::vector<float> out;
  for (std::size_t i = 0; i < s.timesteps.size(); ++i) {
    if (i == 2) continue;  // the repeat of timesteps[1]
    out.push_back(train[static_cast<std::size_t>(s.timesteps[i])]);
  }
  const bool to_one = c.set_alpha_to_one.value_or(false);
  out.push_back(final_to_zero || to_one ? 0.0f : train.front());
  return out;
}

/// `make_schedule` for a class given by its diffusers name ("EulerDiscreteScheduler", ...).
inline Schedule make_schedule(std::string_view class_name, const ScheduleConfig& c, std::int64_t num_inference_steps,
                              std::optional<double> mu = std::nullopt) {
  return make_schedule(scheduler_class_from_name(class_name), c, num_inference_steps, mu);
}

/// `make_schedule` for the class named by the config's "_class_name".
inline Schedule make_schedule(const ScheduleConfig& c, std::int64_t num_inference_steps,
                              std::optional<double> mu = std::nullopt) {
  if (c.class_name.empty()) raise<value_error>("make_schedule", "the config has no _class_name");
  return make_schedule(scheduler_class_from_name(c.class_name), c, num_inference_steps, mu);
}

DIFFUSE_END_NAMESPACE
