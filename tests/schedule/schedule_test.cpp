// SPDX-License-Identifier: MIT
// Schedules against diffusers fixtures (tools/make_schedule_fixtures.py) plus closed-form checks.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "diffuse/schedule/betas.hpp"
#include "diffuse/schedule/config.hpp"
#include "diffuse/schedule/flow.hpp"
#include "diffuse/schedule/sigmas.hpp"
#include "diffuse/schedule/timesteps.hpp"

namespace {

using nlohmann::json;

const json& fixtures() {
  static const json doc = [] {
    std::ifstream in(std::string(DIFFUSE_TEST_DATA_DIR) + "/schedules/diffusers_schedules.json");
    if (!in) throw std::runtime_error("missing fixture diffusers_schedules.json");
    return json::parse(in);
  }();
  return doc;
}

float from_hex(const json& h) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(std::stoul(h.get<std::string>(), nullptr, 16)));
}

std::int64_t ulp_distance(float a, float b) {
  auto key = [](float f) {
    const auto u = std::bit_cast<std::int32_t>(f);
    return u < 0 ? static_cast<std::int64_t>(std::numeric_limits<std::int32_t>::min()) - u : static_cast<std::int64_t>(u);
  };
  return std::llabs(key(a) - key(b));
}

template <class F>
void expect_raises_value(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no value_error; expected one mentioning " << needle;
  } catch (const diffuse::value_error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- torch / numpy primitives

TEST(ScheduleNumeric, TorchLinspaceReferenceBits) {
  // schedulers.md §1: linear 1e-4..0.02, N=1000: betas[0]=9.9999997e-05, betas[-1]=0.0199999996.
  const auto b = diffuse::make_betas(diffuse::BetaSchedule::linear, 1000, 1e-4, 0.02);
  ASSERT_EQ(b.size(), 1000u);
  EXPECT_EQ(b.front(), 1e-4f);
  EXPECT_EQ(b.back(), 0.02f);
  EXPECT_EQ(diffuse::detail::torch_linspace_f32(3.0, 5.0, 1), std::vector<float>{3.0f});
}

TEST(ScheduleNumeric, NpLinspaceAndArange) {
  const auto l = diffuse::detail::np_linspace(0.0, 999.0, 10);
  EXPECT_EQ(l.front(), 0.0);
  EXPECT_EQ(l.back(), 999.0);
  EXPECT_EQ(l[1], 111.0);
  EXPECT_EQ(diffuse::detail::np_linspace(1.0, 2.0, 4, false), (std::vector<double>{1.0, 1.25, 1.5, 1.75}));
  const auto a = diffuse::detail::np_arange(1000.0, 0.0, -1000.0 / 3.0);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(diffuse::detail::np_round(a[1]), 667.0);
  EXPECT_EQ(diffuse::detail::np_round(2.5), 2.0);  // half to even
  EXPECT_EQ(diffuse::detail::np_round(3.5), 4.0);
}

TEST(ScheduleNumeric, InterpSemantics) {
  const std::vector<float> fp{1.0f, 3.0f, 7.0f};
  EXPECT_EQ(diffuse::detail::np_interp_index<float>(-1.0, fp), 1.0);
  EXPECT_EQ(diffuse::detail::np_interp_index<float>(5.0, fp), 7.0);
  EXPECT_EQ(diffuse::detail::np_interp_index<float>(1.0, fp), 3.0);
  EXPECT_EQ(diffuse::detail::np_interp_index<float>(1.5, fp), 5.0);
}

TEST(ScheduleNumeric, BetaPpfInvertsTheCdf) {
  for (double a : {0.6, 1.0, 2.5}) {
    for (double p : {1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.999}) {
      const double x = diffuse::beta_ppf(p, a, 0.6);
      EXPECT_NEAR(diffuse::regularized_incomplete_beta(x, a, 0.6), p, 1e-14 + 1e-12 * p) << a << " " << p;
    }
  }
  // scipy.stats.beta.ppf (scipy 1.17.1) values.
  EXPECT_NEAR(diffuse::beta_ppf(0.1, 0.6, 0.6), 0.03958440558878085, 1e-14);
  EXPECT_NEAR(diffuse::beta_ppf(0.9, 0.6, 0.6), 0.9604155944112192, 1e-14);
  EXPECT_NEAR(diffuse::beta_ppf(0.999, 0.6, 0.6), 0.9999814412614826, 1e-13);
  EXPECT_NEAR(diffuse::beta_ppf(1e-9, 0.6, 0.6), 1.85588246249141e-15, 1e-26);
  EXPECT_NEAR(diffuse::beta_ppf(0.3, 2.5, 0.6), 0.7472666457178343, 1e-13);
  EXPECT_EQ(diffuse::beta_ppf(0.0, 0.6, 0.6), 0.0);
  EXPECT_EQ(diffuse::beta_ppf(1.0, 0.6, 0.6), 1.0);
  EXPECT_NEAR(diffuse::beta_ppf(0.5, 0.6, 0.6), 0.5, 1e-15);  // symmetric
  // Beta(1, 1) is uniform; Beta(2, 1) has CDF x^2.
  EXPECT_NEAR(diffuse::beta_ppf(0.3, 1.0, 1.0), 0.3, 1e-14);
  EXPECT_NEAR(diffuse::beta_ppf(0.25, 2.0, 1.0), 0.5, 1e-14);
}

// ---------------------------------------------------------------- fixtures

struct Tally {
  int groups = 0, runs = 0, ac_arrays = 0, ts_exact = 0, ts_close = 0, sig_exact = 0, sig_ulp = 0;
  std::int64_t max_ulp = 0;
  double max_t_diff = 0.0;
};

TEST(ScheduleFixtures, AlphasCumprodBitExact) {
  const auto& doc = fixtures();
  int checked = 0;
  for (const auto& g : doc["groups"]) {
    if (g["alphas_cumprod"].is_null()) continue;
    const auto cfg = diffuse::ScheduleConfig::from_json(g["config"]);
    const auto sched = diffuse::make_schedule(g["class"].get<std::string>(), cfg, 1);
    const auto& ref = doc["alphas_cumprod"][g["alphas_cumprod"].get<std::string>()];
    ASSERT_EQ(sched.alphas_cumprod.size(), ref.size()) << g["class"] << " " << g["config"].dump();
    const bool sigmoid = cfg.beta_schedule == diffuse::BetaSchedule::sigmoid;
    // Zero terminal SNR takes a float32 sqrt, and torch 2.15's CPU float32 sqrt is not correctly
    // rounded (measured: +-1 ulp on ~20% of inputs on this AVX-512 host), so these arrays can only
    // match to a few ulp. Everything else must be bit-exact.
    const bool rescaled = cfg.rescale_betas_zero_snr;
    std::int64_t worst = 0;
    int bad = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const float want = from_hex(ref[i]);
      const float got = sched.alphas_cumprod[i];
      // sigmoid: torch's float32 exp is Sleef's (1 ulp); every other schedule must be bit-exact.
      const std::int64_t tol = sigmoid ? 4 : rescaled ? 64 : 0;
      worst = std::max(worst, ulp_distance(got, want));
      if (i + 1 == ref.size() && rescaled && (got == 0.0f || got == 0x1p-24f) && got == want) continue;
      if (ulp_distance(got, want) > tol) {
        if (++bad < 5) ADD_FAILURE() << g["class"] << " " << g["config"].dump() << " ac[" << i << "] " << got << " vs " << want;
      }
    }
    EXPECT_EQ(bad, 0);
    if (rescaled) std::printf("zero-SNR alphas_cumprod (%s): max %lld ulp\n", g["class"].get<std::string>().c_str(),
                              static_cast<long long>(worst));
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

TEST(ScheduleFixtures, TimestepsAndSigmasMatchDiffusers) {
  const auto& doc = fixtures();
  Tally t;
  for (const auto& g : doc["groups"]) {
    ++t.groups;
    const auto cls = g["class"].get<std::string>();
    const auto cfg = diffuse::ScheduleConfig::from_json(g["config"]);
    for (const auto& r : g["runs"]) {
      ++t.runs;
      const auto n = r["n"].get<std::int64_t>();
      std::optional<double> mu;
      if (!r["mu"].is_null()) mu = r["mu"].get<double>();
      const std::string what = cls + " n=" + std::to_string(n) + " " + g["config"].dump();
      if (r.contains("nan")) {  // diffusers computes 0/0 here; diffuse refuses
        EXPECT_THROW(diffuse::make_schedule(cls, cfg, n, mu), diffuse::value_error) << what;
        continue;
      }
      const auto s = diffuse::make_schedule(cls, cfg, n, mu);
      const auto& rt = r["timesteps"];
      ASSERT_EQ(s.timesteps.size(), rt.size()) << what;
      EXPECT_EQ(s.integer_timesteps, r["timesteps_dtype"] == "int64") << what;
      // Timesteps from _sigma_to_t go through numpy's float32 SIMD log (not correctly rounded):
      // those (fractional float32) may differ in the last bits; all others must be exact.
      const bool via_log = !s.integer_timesteps && (cfg.use_karras_sigmas || cfg.use_exponential_sigmas ||
                                                    cfg.use_beta_sigmas || cfg.timestep_type == "continuous");
      for (std::size_t i = 0; i < rt.size(); ++i) {
        const double want = rt[i].get<double>();
        const double got = s.timesteps[i];
        if (got == want) {
          ++t.ts_exact;
        } else if (via_log && std::fabs(got - want) <= 1e-3 * std::max(1.0, std::fabs(want))) {
          ++t.ts_close;
          t.max_t_diff = std::max(t.max_t_diff, std::fabs(got - want));
        } else {
          ADD_FAILURE() << what << " timesteps[" << i << "] " << got << " vs " << want;
          break;
        }
      }
      if (r["sigmas"].is_null()) {
        EXPECT_TRUE(s.sigmas.empty()) << what;
        continue;
      }
      const auto& rs = r["sigmas"];
      ASSERT_EQ(s.sigmas.size(), rs.size()) << what;
      for (std::size_t i = 0; i < rs.size(); ++i) {
        const float want = from_hex(rs[i]);
        const float got = s.sigmas[i];
        const auto d = ulp_distance(got, want);
        if (d == 0) {
          ++t.sig_exact;
        } else if (d <= 2 || std::fabs(double(got) - double(want)) <= (cfg.rescale_betas_zero_snr ? 1e-5 : 1e-6) * std::fabs(double(want))) {
          // numpy's float64 exp/log/pow (SVML on AVX-512) and torch's float32 exp are not
          // correctly rounded: a last-bit difference after the float32 cast is expected there.
          ++t.sig_ulp;
          t.max_ulp = std::max(t.max_ulp, d);
        } else {
          ADD_FAILURE() << what << " sigmas[" << i << "] " << got << " vs " << want << " (" << d << " ulp)";
          break;
        }
      }
    }
  }
  std::printf("fixtures: %d groups, %d runs; timesteps exact %d, within tolerance %d (max diff %.3g); sigmas exact %d, "
              "off by <= 2 ulp or 1e-6 rel %d (max %lld ulp)\n",
              t.groups, t.runs, t.ts_exact, t.ts_close, t.max_t_diff, t.sig_exact, t.sig_ulp,
              static_cast<long long>(t.max_ulp));
  EXPECT_GT(t.runs, 1000);
  // Last-bit differences (torch's float32 sqrt, numpy's SVML exp/log/pow) must stay the exception.
  EXPECT_GT(t.sig_exact, 4 * t.sig_ulp);
}

TEST(ScheduleFixtures, CalculateShift) {
  for (const auto& [k, v] : fixtures()["calculate_shift"].items())
    EXPECT_EQ(diffuse::calculate_shift(std::stod(k)), v.get<double>()) << k;
}

// ---------------------------------------------------------------- closed-form checks

TEST(ScheduleClosedForm, ReferenceValuesOfSchedulersMd) {
  const auto ac = diffuse::alphas_cumprod(diffuse::make_betas(diffuse::BetaSchedule::linear, 1000));
  EXPECT_EQ(ac[0], 0.99989998f);
  EXPECT_NEAR(ac[999], 4.0358307e-05f, 1e-11);
  const auto sig = diffuse::train_sigmas(ac);
  EXPECT_NEAR(sig.back(), 157.407257f, 1e-4);
  const auto sd = diffuse::train_sigmas(
      diffuse::alphas_cumprod(diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012)));
  EXPECT_NEAR(sd.back(), 14.6146f, 1e-4);
  EXPECT_NEAR(sd.front(), 0.029168f, 1e-6);
  EXPECT_EQ(diffuse::ddpm_timesteps(diffuse::TimestepSpacing::leading, 1000, 5, 1),
            (std::vector<std::int64_t>{801, 601, 401, 201, 1}));
  EXPECT_EQ(diffuse::dpm_timesteps(diffuse::TimestepSpacing::linspace, 1000, 10),
            (std::vector<std::int64_t>{999, 899, 799, 699, 599, 500, 400, 300, 200, 100}));
  EXPECT_EQ(diffuse::lcm_timesteps(1000, 10), (std::vector<std::int64_t>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  const auto e = diffuse::euler_timesteps(diffuse::TimestepSpacing::linspace, 1100, 10);
  EXPECT_EQ(e[1], 976.8889f);
}

TEST(ScheduleClosedForm, KarrasEndpointsMonotoneLength) {
  const auto s = diffuse::get_sigmas_karras(25, 0.0292, 14.6146);
  ASSERT_EQ(s.size(), 26u);
  EXPECT_NEAR(s.front(), 14.6146f, 1e-5);
  EXPECT_NEAR(s[24], 0.0292f, 1e-8);
  EXPECT_EQ(s.back(), 0.0f);
  for (std::size_t i = 1; i < s.size(); ++i) EXPECT_LT(s[i], s[i - 1]);
  EXPECT_EQ(diffuse::get_sigmas_karras(1, 0.1, 10.0).size(), 2u);
  const auto e = diffuse::get_sigmas_exponential<double>(10, 0.1, 10.0, false);
  EXPECT_NEAR(e.front(), 10.0, 1e-12);
  EXPECT_NEAR(e.back(), 0.1, 1e-14);
  EXPECT_NEAR(e[1] / e[0], e[9] / e[8], 1e-12);
  const auto p = diffuse::get_sigmas_polyexponential<double>(10, 0.1, 10.0, 1.0, false);
  for (std::size_t i = 0; i < e.size(); ++i) EXPECT_NEAR(p[i], e[i], 1e-12);  // rho=1 is exponential
  const auto b = diffuse::get_sigmas_beta<double>(7, 0.1, 10.0, 0.6, 0.6, false);
  EXPECT_NEAR(b.front(), 10.0, 1e-12);
  EXPECT_EQ(b.back(), 0.1);
  EXPECT_NEAR(b[3], 0.1 + 0.5 * 9.9, 1e-12);  // symmetric beta: the median is the midpoint
  for (std::size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i], b[i - 1]);
}

TEST(ScheduleClosedForm, ComfySimpleAndSgmUniform) {
  const auto train = diffuse::train_sigmas(
      diffuse::alphas_cumprod(diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012)));
  const auto simple = diffuse::get_sigmas_simple(train, 4);
  ASSERT_EQ(simple.size(), 5u);
  EXPECT_EQ(simple[0], train[999]);
  EXPECT_EQ(simple[1], train[749]);
  EXPECT_EQ(simple[3], train[249]);
  EXPECT_EQ(simple[4], 0.0f);
  const auto sgm = diffuse::get_sigmas_sgm_uniform(train, 4);
  ASSERT_EQ(sgm.size(), 5u);
  EXPECT_NEAR(sgm[0], train[999], 1e-5 * train[999]);
  EXPECT_NEAR(sgm[2], train[499] * std::sqrt(train[500] / train[499]), 1e-4);  // t = 499.5
  EXPECT_EQ(sgm[4], 0.0f);
  const auto normal = diffuse::get_sigmas_normal(train, 4);
  ASSERT_EQ(normal.size(), 5u);
  EXPECT_NEAR(normal[3], train[0], 1e-6);
}

TEST(ScheduleClosedForm, SigmaToTRoundTrips) {
  const auto train = diffuse::train_sigmas(
      diffuse::alphas_cumprod(diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012)));
  const auto logs = diffuse::log_sigmas(train);
  // log_sigmas are float32 while log(sigma) is double: a knot maps to within 1e-4 of itself.
  EXPECT_NEAR(diffuse::sigma_to_t<double>(train[500], logs), 500.0, 1e-4);
  EXPECT_EQ(diffuse::sigma_to_t<double>(1e6, logs), 999.0);  // clamped
  EXPECT_EQ(diffuse::sigma_to_t<double>(0.0, logs), 0.0);
  for (double tt : {3.25, 250.5, 998.75})
    EXPECT_NEAR(diffuse::sigma_to_t<double>(diffuse::t_to_sigma(tt, logs), logs), tt, 1e-4);
  EXPECT_NEAR(diffuse::sigma_to_t<float>(train[42], logs), 42.0, 1e-6);
}

TEST(ScheduleClosedForm, ZeroTerminalSnr) {
  const auto betas = diffuse::rescale_zero_terminal_snr(
      diffuse::make_betas(diffuse::BetaSchedule::scaled_linear, 1000, 0.00085, 0.012));
  EXPECT_EQ(betas.back(), 1.0f);
  const auto ac = diffuse::alphas_cumprod(betas);
  EXPECT_EQ(ac.back(), 0.0f);
  EXPECT_TRUE(std::isinf(diffuse::train_sigmas(ac).back()));
  // Euler patches it to 2^-24 so sigma_max stays finite; DDIM keeps 0.
  diffuse::ScheduleConfig c;
  c.beta_schedule = diffuse::BetaSchedule::scaled_linear;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.rescale_betas_zero_snr = true;
  c.timestep_spacing = diffuse::TimestepSpacing::trailing;
  const auto euler = diffuse::make_schedule("EulerDiscreteScheduler", c, 10);
  EXPECT_EQ(euler.alphas_cumprod.back(), 0x1p-24f);
  EXPECT_NEAR(euler.sigmas.front(), 4096.0f, 1.0f);
  EXPECT_TRUE(std::isfinite(euler.init_noise_sigma));
  EXPECT_EQ(diffuse::make_schedule("DDIMScheduler", c, 10).alphas_cumprod.back(), 0.0f);
}

TEST(ScheduleClosedForm, FlowShiftAndDoubleShift) {
  EXPECT_DOUBLE_EQ(diffuse::calculate_shift(256), 0.5);
  EXPECT_DOUBLE_EQ(diffuse::calculate_shift(4096), 1.15);
  EXPECT_DOUBLE_EQ(diffuse::shift_sigma(0.5, 3.0), 0.75);
  diffuse::FlowMatchOptions o;
  o.shift = 3.0;
  const auto f = diffuse::flow_match_sigmas(o, 10);
  ASSERT_EQ(f.sigmas.size(), 11u);
  EXPECT_EQ(f.sigmas.front(), 1.0f);
  EXPECT_NEAR(f.sigmas[9], 0.0089286f, 1e-6);  // huggingface/diffusers#13243: shifted twice
  EXPECT_EQ(f.timesteps[9], f.sigmas[9] * 1000.0f);
  o.invert_sigmas = true;
  const auto inv = diffuse::flow_match_sigmas(o, 10);
  EXPECT_EQ(inv.sigmas.back(), 1.0f);
  EXPECT_EQ(inv.sigmas.front(), 0.0f);
  const auto h = diffuse::flow_match_heun_sigmas(1000, 1.0, 3);
  EXPECT_EQ(h.sigmas.size(), 6u);
  EXPECT_EQ(h.timesteps.size(), 5u);
}

// ---------------------------------------------------------------- errors

TEST(ScheduleErrors, NamesAndArguments) {
  expect_raises_value([] { diffuse::beta_schedule_from_name("cosine"); }, "beta_schedule");
  expect_raises_value([] { diffuse::timestep_spacing_from_name("uniform"); }, "timestep_spacing");
  expect_raises_value([] { diffuse::final_sigmas_from_name("one"); }, "final_sigmas_type");
  expect_raises_value([] { diffuse::time_shift_from_name("log"); }, "time_shift_type");
  expect_raises_value([] { diffuse::alpha_transform_from_name("sqrt"); }, "alpha_transform_type");
  expect_raises_value([] { diffuse::scheduler_class_from_name("KarrasVeScheduler"); }, "KarrasVeScheduler");
  // PNDMScheduler (PLMS): the leading timesteps with the second one twice; refused without
  // skip_prk_steps (the Runge-Kutta warm-up is not implemented).
  auto pndm = diffuse::ScheduleConfig::from_json({{"steps_offset", 1}, {"skip_prk_steps", true}});
  EXPECT_EQ(diffuse::make_schedule("PNDMScheduler", pndm, 4).timesteps, (std::vector<double>{751, 501, 501, 251, 1}));
  EXPECT_EQ(diffuse::make_schedule("PNDMScheduler", pndm, 1).timesteps, (std::vector<double>{1}));
  EXPECT_EQ(diffuse::pndm_sigmas(pndm, 4).size(), 5u);
  pndm.skip_prk_steps = false;
  expect_raises_value([&] { (void)diffuse::make_schedule("PNDMScheduler", pndm, 4); }, "skip_prk_steps");
  expect_raises_value([] { diffuse::make_betas(diffuse::BetaSchedule::linear, 1000, 0.02, 0.0001); }, "beta_start");
  expect_raises_value([] { diffuse::make_betas(diffuse::BetaSchedule::linear, 1); }, "num_train_timesteps");
  expect_raises_value([] { diffuse::make_betas(diffuse::BetaSchedule::linear, 10, -1.0, 0.5); }, "beta_start");
  expect_raises_value([] { diffuse::make_betas(diffuse::BetaSchedule::linear, 10, 0.1, 2.0); }, "beta_end");
  expect_raises_value([] { diffuse::betas_for_alpha_bar(0); }, "num_diffusion_timesteps");
  expect_raises_value([] { diffuse::betas_for_alpha_bar(10, 1.5); }, "max_beta");
  const std::vector<double> bad_betas{0.1, std::nan("")};
  expect_raises_value([&] { diffuse::make_trained_betas<double>(bad_betas); }, "trained_betas[1]");
  expect_raises_value([] { diffuse::rescale_zero_terminal_snr(std::vector<float>{0.1f}); }, "betas");
  expect_raises_value([] { diffuse::ddpm_timesteps(diffuse::TimestepSpacing::leading, 1000, 0); }, "num_inference_steps");
  expect_raises_value([] { diffuse::ddpm_timesteps(diffuse::TimestepSpacing::leading, 10, 11); }, "num_inference_steps");
  expect_raises_value([] { diffuse::euler_timesteps(diffuse::TimestepSpacing::linspace, 0, 1); }, "num_train_timesteps");
  expect_raises_value([] { diffuse::dpm_timesteps(diffuse::TimestepSpacing::linspace, 100, 5, 0, 101); }, "last_timestep");
  expect_raises_value([] { diffuse::dpm_singlestep_timesteps(100, 5, -1); }, "clipped_index");
  expect_raises_value([] { diffuse::lcm_timesteps(1000, 51); }, "num_inference_steps");
  expect_raises_value([] { diffuse::lcm_timesteps(1000, 4, 0); }, "original_inference_steps");
  expect_raises_value([] { diffuse::lcm_timesteps(1000, 4, 50, 0.0); }, "strength");
  expect_raises_value([] { diffuse::get_sigmas_karras(0, 0.1, 10.0); }, "n must be");
  expect_raises_value([] { diffuse::get_sigmas_karras(5, 10.0, 0.1); }, "sigma_max");
  expect_raises_value([] { diffuse::get_sigmas_karras(5, 0.1, 10.0, 0.0); }, "rho");
  expect_raises_value([] { diffuse::get_sigmas_exponential(5, 0.0, 10.0); }, "sigma_min");
  expect_raises_value([] { diffuse::get_sigmas_polyexponential(5, 0.1, INFINITY); }, "sigma_max");
  expect_raises_value([] { diffuse::get_sigmas_beta(5, 0.1, 10.0, -1.0); }, "alpha");
  expect_raises_value([] { diffuse::get_sigmas_beta(5, 0.1, 10.0, 0.6, 0.0); }, "beta");
  expect_raises_value([] { diffuse::get_sigmas_simple(std::vector<float>{}, 3); }, "train");
  expect_raises_value([] { diffuse::get_sigmas_sgm_uniform(std::vector<float>{1.0f, 2.0f}, 0); }, "n must be");
  expect_raises_value([] { diffuse::beta_ppf(1.5, 0.6, 0.6); }, "p must be");
  expect_raises_value([] { diffuse::regularized_incomplete_beta(0.5, 0.0, 1.0); }, "a must be");
  expect_raises_value([] { diffuse::sigma_to_t<double>(1.0, std::vector<float>{0.0f}); }, "log_sigmas");
  expect_raises_value([] { diffuse::t_to_sigma(NAN, std::vector<float>{0.0f, 1.0f}); }, "NaN");
  expect_raises_value([] { diffuse::calculate_shift(-1.0); }, "image_seq_len");
  expect_raises_value([] { diffuse::calculate_shift(10, 256, 256); }, "max_seq_len");
  std::vector<double> sv{1.0};
  expect_raises_value([&] { std::vector<double> v{5.0, 2.0, 3.0}; diffuse::validate_sigmas<double>(v); }, "sigmas[2]");
  expect_raises_value([&] { std::vector<double> v{5.0, -1.0}; diffuse::validate_sigmas<double>(v); }, "sigmas[1]");
  expect_raises_value([&] { std::vector<double> v{INFINITY, 1.0}; diffuse::validate_sigmas<double>(v); }, "sigmas[0]");
  expect_raises_value([&] { std::vector<double> v; diffuse::validate_sigmas<double>(v); }, "empty");
  diffuse::validate_sigmas<double>(sv);  // a single sigma is fine
}

TEST(ScheduleErrors, FlowArguments) {
  diffuse::FlowMatchOptions o;
  expect_raises_value([&] { diffuse::flow_match_sigmas(o, 0); }, "num_inference_steps");
  o.use_dynamic_shifting = true;
  expect_raises_value([&] { diffuse::flow_match_sigmas(o, 4); }, "mu");
  o.use_dynamic_shifting = false;
  o.shift = -1.0;
  expect_raises_value([&] { diffuse::flow_match_sigmas(o, 4); }, "shift");
  o.shift = 1.0;
  o.use_karras_sigmas = o.use_beta_sigmas = true;
  expect_raises_value([&] { diffuse::flow_match_sigmas(o, 4); }, "only one");
  std::vector<double> s{0.9, 0.5};
  expect_raises_value([&] { diffuse::stretch_shift_to_terminal(s, 1.0); }, "shift_terminal");
}

TEST(ScheduleErrors, ConfigParsing) {
  auto fmt = [](const json& j, const std::string& key) {
    try {
      diffuse::ScheduleConfig::from_json(j);
      ADD_FAILURE() << "no format_error for " << j.dump();
    } catch (const diffuse::format_error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  fmt(json::array(), "object");
  fmt(json{{"num_train_timesteps", "1000"}}, "num_train_timesteps");
  fmt(json{{"num_train_timesteps", 10.5}}, "num_train_timesteps");
  fmt(json{{"use_karras_sigmas", 1}}, "use_karras_sigmas");
  fmt(json{{"beta_start", true}}, "beta_start");
  fmt(json{{"beta_schedule", 3}}, "beta_schedule");
  fmt(json{{"trained_betas", json{{"a", 1}}}}, "trained_betas");
  fmt(json{{"trained_betas", json::array({0.1, "x"})}}, "trained_betas");
  fmt(json{{"prediction_type", 1}}, "prediction_type");
  expect_raises_value([] { diffuse::ScheduleConfig::from_json(json{{"beta_schedule", "cosine"}}); }, "beta_schedule");
  expect_raises_value([] { diffuse::ScheduleConfig::from_json(json{{"timestep_spacing", "x"}}); }, "timestep_spacing");
  expect_raises_value([] { diffuse::ScheduleConfig::from_json(json{{"final_sigmas_type", "x"}}); }, "final_sigmas_type");
  expect_raises_value([] { diffuse::ScheduleConfig::from_json(json{{"interpolation_type", "x"}}); }, "interpolation_type");
  // Unknown keys are ignored; null means "not set"; -inf may be quoted; integral floats are integers.
  const auto c = diffuse::ScheduleConfig::from_json(
      json{{"some_future_key", json::array()}, {"sigma_min", nullptr}, {"lambda_min_clipped", "-inf"},
           {"num_train_timesteps", 1000.0}, {"_class_name", "EulerDiscreteScheduler"}});
  EXPECT_FALSE(c.sigma_min.has_value());
  EXPECT_TRUE(std::isinf(c.lambda_min_clipped));
  EXPECT_EQ(c.num_train_timesteps, 1000);
  EXPECT_EQ(diffuse::make_schedule(c, 10).sigmas.size(), 11u);
  diffuse::ScheduleConfig bad;
  expect_raises_value([&] { diffuse::make_schedule(bad, 10); }, "_class_name");
  expect_raises_value([&] { diffuse::make_schedule("EulerDiscreteScheduler", bad, 0); }, "num_inference_steps");
  bad.beta_schedule = diffuse::BetaSchedule::sigmoid;
  expect_raises_value([&] { diffuse::make_schedule("EulerDiscreteScheduler", bad, 10); }, "sigmoid");
  bad.beta_schedule.reset();
  bad.use_karras_sigmas = bad.use_exponential_sigmas = true;
  expect_raises_value([&] { diffuse::make_schedule("EulerDiscreteScheduler", bad, 10); }, "only one");
  bad.use_exponential_sigmas = false;
  bad.algorithm_type = "sde-dpmsolver";
  expect_raises_value([&] { diffuse::make_schedule("DPMSolverMultistepScheduler", bad, 10); }, "final_sigmas_type");
  diffuse::ScheduleConfig u;
  u.use_flow_sigmas = u.use_dynamic_shifting = true;
  expect_raises_value([&] { diffuse::make_schedule("UniPCMultistepScheduler", u, 10); }, "mu");
  diffuse::ScheduleConfig d;
  expect_raises_value([&] { diffuse::make_schedule("DPMSolverMultistepScheduler", d, 10, 1.0); }, "mu");
}

}  // namespace
