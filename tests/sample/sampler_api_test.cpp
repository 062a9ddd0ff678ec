// SPDX-License-Identifier: MIT
// Step-wise vs whole-loop equality, state copies, the closed-form denoisers, the parameterisation,
// classifier-free guidance, the registry and every error path.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "diffuse/denoise/analytic.hpp"
#include "diffuse/denoise/guidance.hpp"
#include "diffuse/denoise/parameterization.hpp"
#include "diffuse/sample/registry.hpp"
#include "sample/sample_test_util.hpp"

namespace {

using diffuse::BasicTensor;
using Tn = BasicTensor<double>;
using Tf = BasicTensor<float>;

const std::vector<double> kMu = {0.3, -1.0, 0.5};
const std::vector<double> kVar = {0.5, 1.5, 3.0};

// ---------------------------------------------------------------------------------------------
// Step-wise object == whole-loop function, and copies of the state reproduce the rest.

class EverySampler : public ::testing::TestWithParam<std::string> {};

std::vector<double> schedule_for(const std::string& name) {
  if (name.rfind("flow", 0) == 0) return diffuse_test::flow_linear(12, 0.0);
  return diffuse_test::karras(12, 0.01, 20.0, true);
}

diffuse::SamplerParams<double> params_for(const std::string& name) {
  diffuse::SamplerParams<double> p;
  if (name == "ddim" || name == "dpm_fast" || name == "dpm_adaptive") p.eta = 0.5;  // exercise their noise
  if (name == "euler" || name == "heun" || name == "dpm_2") p.s_churn = 5.0;
  return p;
}

TEST_P(EverySampler, StepwiseEqualsWholeLoopAndCopiesResume) {
  const std::string name = GetParam();
  const bool flow = name.rfind("flow", 0) == 0;
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar, flow ? diffuse::NoiseSpace::flow : diffuse::NoiseSpace::ve);
  const Tn x0 = diffuse_test::gaussian_start(kMu, kVar, 5, flow ? 1.0 : 20.0, 3);
  const auto sigmas = schedule_for(name);
  const auto params = params_for(name);

  auto n1 = diffuse::gaussian_noise<double>(9);
  std::size_t callbacks = 0;
  const Tn whole = diffuse::sample<double>(name, gd, x0, sigmas, n1, [&](const diffuse::StepInfo<double>& info) {
    EXPECT_EQ(info.step, callbacks);
    EXPECT_FALSE(info.denoised.empty());
    ++callbacks;
  }, params);
  EXPECT_GT(callbacks, 0u);

  auto s = diffuse::make_sampler<double>(name, sigmas, params);
  EXPECT_EQ(s->name().substr(0, 3), name.substr(0, 3));
  const diffuse::AnyDenoiser<double> d(gd);
  auto n2 = diffuse::gaussian_noise<double>(9);
  Tn x = x0;
  std::unique_ptr<diffuse::Sampler<double>> copy;
  diffuse::NoiseSource<double> noise_copy;
  Tn x_copy;
  std::size_t steps = 0;
  while (!s->done()) {
    if (steps == 3) {  // snapshot mid-run: sampler state, noise state, sample
      copy = s->clone();
      noise_copy = n2;
      x_copy = x;
    }
    s->step(d, x, n2);
    ++steps;
  }
  EXPECT_EQ(steps, callbacks);
  EXPECT_EQ(s->step_index(), steps);
  ASSERT_TRUE(x.same_shape(whole));
  EXPECT_EQ(diffuse_test::max_abs_diff(x, whole), 0.0) << name;
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->step_index(), 3u);
  copy->run(d, x_copy, noise_copy);
  EXPECT_EQ(diffuse_test::max_abs_diff(x_copy, whole), 0.0) << name << ": resumed copy differs";
  EXPECT_THROW(s->step(d, x, n2), diffuse::value_error);  // done
}

INSTANTIATE_TEST_SUITE_P(Registry, EverySampler, ::testing::ValuesIn(diffuse::list_samplers()),
                         [](const auto& pinfo) { return pinfo.param; });

TEST(SamplerApi, FloatAndDoubleAgree) {
  std::vector<float> muf(kMu.begin(), kMu.end()), varf(kVar.begin(), kVar.end());
  const diffuse::GaussianDenoiser<float> gf(muf, varf);
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const Tn xd = diffuse_test::gaussian_start(kMu, kVar, 4, 20.0, 3);
  Tf xf(xd.shape());
  for (std::size_t i = 0; i < xd.size(); ++i) xf[i] = float(xd[i]);
  const auto sd = diffuse_test::karras(10, 0.01, 20.0, true);
  const std::vector<float> sf(sd.begin(), sd.end());
  auto nd = diffuse::gaussian_noise<double>(1);
  auto nf = diffuse::gaussian_noise<float>(1);
  const Tn rd = diffuse::sample_dpmpp_2m(gd, xd, sd, nd);
  const Tf rf = diffuse::sample_dpmpp_2m(gf, xf, sf, nf);
  for (std::size_t i = 0; i < rd.size(); ++i) EXPECT_NEAR(rf[i], rd[i], 1e-4);
}

TEST(SamplerApi, DuplicateSigmaIsIdentityStep) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const Tn x0 = diffuse_test::gaussian_start(kMu, kVar, 2, 10.0, 3);
  std::vector<double> s = {10.0, 3.0, 1.0, 0.1, 0.1};
  auto n = diffuse::gaussian_noise<double>(1);
  std::size_t calls = 0;
  auto counting = [&](const Tn& x, double sigma) {
    ++calls;
    return gd(x, sigma);
  };
  const Tn a = diffuse::sample_dpmpp_2m(counting, x0, s, n);
  EXPECT_EQ(calls, 3u);
  const Tn b = diffuse::sample_dpmpp_2m(gd, x0, std::vector<double>{10.0, 3.0, 1.0, 0.1}, n);
  EXPECT_EQ(diffuse_test::max_abs_diff(a, b), 0.0);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(std::isfinite(a[i]));
}

// ---------------------------------------------------------------------------------------------
// Closed-form denoisers.

TEST(Analytic, GaussianDiagonalEqualsFormula) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 3, 2.0, 4);
  const Tn out = gd(x, 2.0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t j = i % 3;
    EXPECT_NEAR(out[i], kMu[j] + kVar[j] / (kVar[j] + 4.0) * (x[i] - kMu[j]), 1e-14);
  }
  EXPECT_THROW(gd(Tn({2, 4}), 1.0), diffuse::shape_error);
  EXPECT_THROW(diffuse::GaussianDenoiser<double>({0.0}, {-1.0}), diffuse::value_error);
  EXPECT_THROW(diffuse::GaussianDenoiser<double>({0.0, 1.0}, {1.0}), diffuse::value_error);
}

TEST(Analytic, GaussianFullCovarianceEqualsFormula) {
  const std::vector<double> mu = {0.5, -0.2, 1.0};
  const std::vector<double> cov = {2.0, 0.6, 0.3,   //
                                   0.6, 1.0, -0.2,  //
                                   0.3, -0.2, 0.5};
  const diffuse::GaussianFullDenoiser<double> gf(mu, cov);
  const Tn x = diffuse_test::gaussian_start(mu, {1, 1, 1}, 4, 1.5, 8);
  const double s = 1.3;
  const Tn out = gf(x, s);
  Eigen::Matrix3d c;
  c << 2.0, 0.6, 0.3, 0.6, 1.0, -0.2, 0.3, -0.2, 0.5;
  const Eigen::Matrix3d k = c * (c + s * s * Eigen::Matrix3d::Identity()).inverse();
  for (std::size_t r = 0; r < 4; ++r) {
    Eigen::Vector3d v(x[r * 3] - mu[0], x[r * 3 + 1] - mu[1], x[r * 3 + 2] - mu[2]);
    const Eigen::Vector3d e = k * v;
    for (std::size_t j = 0; j < 3; ++j) EXPECT_NEAR(out[r * 3 + j], mu[j] + e[Eigen::Index(j)], 1e-12);
  }
  // The closed-form ODE solution satisfies dx/dsigma = (x - D)/sigma (finite difference).
  const double h = 1e-5;
  const Tn xp = gf.ode_solution(x, 2.0, s + h), xm = gf.ode_solution(x, 2.0, s - h), x1 = gf.ode_solution(x, 2.0, s);
  const Tn d1 = gf(x1, s);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR((xp[i] - xm[i]) / (2 * h), (x1[i] - d1[i]) / s, 1e-6);
  EXPECT_THROW(diffuse::GaussianFullDenoiser<double>(mu, {1, 0, 0, 0, 1, 0, 0, 0, -1}), diffuse::value_error);
  EXPECT_THROW(diffuse::GaussianFullDenoiser<double>(mu, {1, 2, 3}), diffuse::value_error);
}

TEST(Analytic, FullCovarianceWithDiagonalMatchesDiagonal) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const diffuse::GaussianFullDenoiser<double> gf(kMu, {kVar[0], 0, 0, 0, kVar[1], 0, 0, 0, kVar[2]});
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 3, 1.0, 5);
  EXPECT_LT(diffuse_test::max_abs_diff(gd(x, 0.7), gf(x, 0.7)), 1e-12);
  EXPECT_LT(diffuse_test::max_abs_diff(gd.ode_solution(x, 5.0, 0.3), gf.ode_solution(x, 5.0, 0.3)), 1e-12);
}

TEST(Analytic, MixtureOfOneIsGaussianAndPosteriorWeights) {
  const diffuse::GaussianMixtureDenoiser<double> one({2.0}, kMu, kVar, 3);
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 3, 1.0, 5);
  EXPECT_LT(diffuse_test::max_abs_diff(one(x, 0.9), gd(x, 0.9)), 1e-12);
  // Two well-separated 1-D components: a point near one returns (almost) that component's denoiser.
  const diffuse::GaussianMixtureDenoiser<double> two({0.5, 0.5}, {-10.0, 10.0}, {0.1, 0.1}, 1);
  Tn p({1}, 9.5);
  EXPECT_NEAR(two(p, 0.1)[0], 10.0 + 0.1 / 0.11 * (9.5 - 10.0), 1e-9);
  // Far from both at large sigma: the prior mean (0) by symmetry.
  Tn z({1}, 0.0);
  EXPECT_NEAR(two(z, 100.0)[0], 0.0, 1e-12);
}

TEST(Analytic, EmpiricalAtTinySigmaReturnsNearestPoint) {
  const std::vector<double> data = {0, 0, 1, 0, 0, 1, 1, 1, -2, 3};
  const diffuse::EmpiricalDenoiser<double> ed(data, 2);
  EXPECT_EQ(ed.size(), 5u);
  Tn x = Tn::from_values({3, 2}, std::vector<double>{0.9, 0.2, -1.7, 2.6, 0.4, 0.45});
  for (double s : {0.0, 1e-3}) {
    const Tn out = ed(x, s);
    EXPECT_EQ(out[0], 1.0);
    EXPECT_EQ(out[1], 0.0);
    EXPECT_EQ(out[2], -2.0);
    EXPECT_EQ(out[3], 3.0);
    EXPECT_EQ(out[4], 0.0);  // (0.4, 0.45) is nearest to (0, 0)
    EXPECT_EQ(out[5], 0.0);
  }
  // Huge sigma: the dataset mean; no overflow although |x - y|^2 / (2 s^2) spans a wide range.
  const Tn far = ed(x, 1e6);
  EXPECT_NEAR(far[0], 0.0, 1e-6);
  EXPECT_NEAR(far[1], 1.0, 1e-6);
  // A training-free generator: sampling reproduces data points.
  Tn start({4, 2});
  auto noise = diffuse::gaussian_noise<double>(2);
  noise.fill(0, 0, 0, start);
  for (std::size_t i = 0; i < start.size(); ++i) start[i] *= 20.0;
  const Tn gen = diffuse::sample_heun(ed, start, diffuse_test::karras(30, 0.002, 20.0, true), noise);
  for (std::size_t r = 0; r < 4; ++r) {
    double best = 1e9;
    for (std::size_t i = 0; i < 5; ++i)
      best = std::min(best, std::hypot(gen[2 * r] - data[2 * i], gen[2 * r + 1] - data[2 * i + 1]));
    EXPECT_LT(best, 1e-3);
  }
  EXPECT_THROW(diffuse::EmpiricalDenoiser<double>({1, 2, 3}, 2), diffuse::value_error);
}

TEST(Analytic, FlowSpaceGaussianMatchesVeThroughTheMap) {
  const diffuse::GaussianDenoiser<double> flow(kMu, kVar, diffuse::NoiseSpace::flow);
  const diffuse::GaussianDenoiser<double> ve(kMu, kVar);
  const diffuse::GaussianFullDenoiser<double> flow_full(kMu, {kVar[0], 0, 0, 0, kVar[1], 0, 0, 0, kVar[2]},
                                                        diffuse::NoiseSpace::flow);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 2, 0.5, 6);
  const double s = 0.4;
  Tn y = x;
  for (auto& v : y) v /= (1 - s);
  EXPECT_LT(diffuse_test::max_abs_diff(flow(x, s), ve(y, s / (1 - s))), 1e-12);
  EXPECT_LT(diffuse_test::max_abs_diff(flow(x, s), flow_full(x, s)), 1e-12);
  const diffuse::AnyDenoiser<double> adapted = diffuse::flow_to_ve(diffuse::AnyDenoiser<double>(flow));
  EXPECT_EQ(adapted.space(), diffuse::NoiseSpace::ve);
  EXPECT_LT(diffuse_test::max_abs_diff(adapted(y, s / (1 - s)), ve(y, s / (1 - s))), 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Parameterisation: a fake network that answers with the exact eps / v / x0 / flow velocity of
// Gaussian data must give back the exact denoiser.

std::vector<double> train_sigmas() {  // linear betas 1e-4..0.02, N = 1000
  std::vector<double> s;
  double ac = 1.0;
  for (int i = 0; i < 1000; ++i) {
    ac *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / 999.0);
    s.push_back(std::sqrt((1 - ac) / ac));
  }
  return s;
}

double t_to_sigma(double t, const std::vector<double>& table) {  // k-diffusion DiscreteSchedule.t_to_sigma
  const auto lo = std::size_t(std::floor(t)), hi = std::min(lo + 1, table.size() - 1);
  const double w = t - double(lo);
  return std::exp((1 - w) * std::log(table[lo]) + w * std::log(table[hi]));
}

TEST(Parameterization, VpPredictionsGiveTheExactDenoiser) {
  const auto table = train_sigmas();
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  for (auto p : {diffuse::Prediction::epsilon, diffuse::Prediction::v_prediction, diffuse::Prediction::sample}) {
    auto net = [&, p](const Tn& x_in, double t) {
      const double sigma = t_to_sigma(t, table);
      const double alpha = 1 / std::sqrt(sigma * sigma + 1), sigma_vp = sigma * alpha;
      Tn x = x_in;
      for (auto& v : x) v /= alpha;  // back to the VE sample
      const Tn x0 = gd(x, sigma);
      Tn out(x.shape());
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double eps = (x[i] - x0[i]) / sigma;
        out[i] = p == diffuse::Prediction::epsilon ? eps
                 : p == diffuse::Prediction::sample ? x0[i]
                                                    : alpha * eps - sigma_vp * x0[i];
      }
      return out;
    };
    const auto d = diffuse::make_denoiser<double>(net, p, table);
    static_assert(diffuse::Denoiser<decltype(d), double>);
    const Tn x = diffuse_test::gaussian_start(kMu, kVar, 3, 5.0, 7);
    for (double sigma : {0.05, 1.0, 5.0, 100.0}) {
      EXPECT_NEAR(t_to_sigma(d.timestep(sigma), table), sigma, 1e-9 * sigma);
      EXPECT_LT(diffuse_test::max_abs_diff(d(x, sigma), gd(x, sigma)), 1e-9) << int(p) << " sigma " << sigma;
    }
  }
  EXPECT_NEAR(diffuse::make_denoiser<double>([](const Tn& x, double) { return x; }, diffuse::Prediction::epsilon, table)
                  .timestep(table[500]),
              500.0, 1e-9);
}

TEST(Parameterization, FlowPredictionGivesTheExactDenoiser) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar, diffuse::NoiseSpace::flow);
  double seen_t = -1;
  auto net = [&](const Tn& x, double t) {
    seen_t = t;
    const double s = t / 1000.0;
    const Tn x0 = gd(x, s);
    Tn v(x.shape());
    for (std::size_t i = 0; i < x.size(); ++i) v[i] = (x[i] - x0[i]) / s;  // eps - x0
    return v;
  };
  const auto d = diffuse::make_denoiser<double>(net, diffuse::Prediction::flow);
  EXPECT_EQ(d.space(), diffuse::NoiseSpace::flow);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 3, 1.0, 7);
  EXPECT_LT(diffuse_test::max_abs_diff(d(x, 0.3), gd(x, 0.3)), 1e-12);
  EXPECT_DOUBLE_EQ(seen_t, 300.0);
  EXPECT_THROW(d(x, 1.5), diffuse::value_error);
}

TEST(Parameterization, ClipAndDynamicThresholding) {
  const auto table = train_sigmas();
  auto net = [](const Tn& x, double) {  // x0-prediction that returns 4 * input
    Tn o = x;
    for (auto& v : o) v *= 4;
    return o;
  };
  diffuse::ParameterizationOptions<double> o;
  o.clip_sample = true;
  o.clip_sample_range = 1.5;
  const auto clip = diffuse::make_denoiser<double>(net, diffuse::Prediction::sample, table, o);
  Tn x = Tn::from_values({1, 4}, std::vector<double>{-3, -0.1, 0.2, 3});
  const Tn c = clip(x, 0.0);
  EXPECT_EQ(c[0], -1.5);
  EXPECT_NEAR(c[1], -0.4, 1e-12);
  EXPECT_EQ(c[3], 1.5);
  // Dynamic thresholding: per item s = quantile(|x0|, ratio) clamped to [1, max]; x0 = clamp/s.
  Tn t = Tn::from_values({2, 5}, std::vector<double>{0.5, -1, 2, -4, 3, 0.1, 0.2, -0.3, 0.4, 0.5});
  diffuse::dynamic_threshold(t, 0.75, 2.5);
  // item 0: |x| sorted 0.5 1 2 3 4, quantile at 3.0 -> 3, clamped to 2.5.
  EXPECT_NEAR(t[2], 2.0 / 2.5, 1e-12);
  EXPECT_NEAR(t[3], -1.0, 1e-12);
  EXPECT_NEAR(t[4], 1.0, 1e-12);
  // item 1: quantile 0.4 < 1 -> s = 1: values unchanged.
  EXPECT_NEAR(t[8], 0.4, 1e-12);
  EXPECT_NEAR(t[7], -0.3, 1e-12);
}

TEST(Parameterization, Errors) {
  auto id = [](const Tn& x, double) { return x; };
  EXPECT_THROW(diffuse::make_denoiser<double>(id, diffuse::Prediction::epsilon), diffuse::value_error);
  EXPECT_THROW(diffuse::make_denoiser<double>(id, diffuse::Prediction::epsilon, std::vector<double>{2.0, 1.0}),
               diffuse::value_error);
  EXPECT_THROW(diffuse::parse_prediction("noise"), diffuse::value_error);
  EXPECT_EQ(diffuse::parse_prediction("flow_prediction"), diffuse::Prediction::flow);
  auto bad_shape = [](const Tn&, double) { return Tn({7}); };
  const auto d = diffuse::make_denoiser<double>(bad_shape, diffuse::Prediction::flow);
  EXPECT_THROW(d(Tn({2, 3}), 0.5), diffuse::shape_error);
}

// ---------------------------------------------------------------------------------------------
// Classifier-free guidance.

struct TwoBranchModel {
  // uncond: 0.5 x; cond: x + 1; counts calls.
  mutable int calls = 0;
  Tn operator()(const Tn& x, double, diffuse::Branch b) const {
    ++calls;
    Tn o = x;
    if (b == diffuse::Branch::uncond) {
      for (auto& v : o) v *= 0.5;
    } else if (b == diffuse::Branch::cond) {
      for (auto& v : o) v += 1.0;
    } else {
      const std::size_t half = x.size() / 2;
      for (std::size_t i = 0; i < half; ++i) o[i] *= 0.5;
      for (std::size_t i = half; i < x.size(); ++i) o[i] += 1.0;
    }
    return o;
  }
};
struct BatchedModel : TwoBranchModel {
  static constexpr bool batched_cfg = true;
};

TEST(Guidance, ScaleOneIsTheCondPass) {
  TwoBranchModel m;
  diffuse::GuidanceOptions<double> o;
  o.scale = 1.0;
  const auto g = diffuse::make_guided<double>(std::ref(m), o);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 2, 1.0, 1);
  const Tn out = g(x, 1.0);
  const Tn cond = m(x, 1.0, diffuse::Branch::cond);
  EXPECT_EQ(diffuse_test::max_abs_diff(out, cond), 0.0);
  EXPECT_EQ(m.calls, 2);  // one for g, one for the reference
}

// guidance_rescale in v space (a v_prediction network's output, as diffusers rescales noise_pred):
// v = alpha eps - s D with alpha = 1/sqrt(1 + sigma^2), s = sigma alpha, eps = (x - D)/sigma;
// rescaled per item as on eps; back to D = alpha (alpha x - sigma alpha v) = alpha^2 x - s v.
TEST(Guidance, RescaleInVSpace) {
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 2, 1.0, 1);
  const double sigma = 2.0, phi = 0.7, scale = 5.0;
  diffuse::GuidanceOptions<double> o;
  o.scale = scale;
  o.guidance_rescale = phi;
  o.rescale_space = diffuse::RescaleSpace::v_prediction;
  TwoBranchModel tm;
  const Tn a = diffuse::make_guided<double>(std::ref(tm), o)(x, sigma);
  const double alpha = 1.0 / std::sqrt(1.0 + sigma * sigma), sa = sigma * alpha;
  const std::size_t per = x.size() / 2;
  auto sd = [](const std::vector<double>& v) {
    double m = 0, s = 0;
    for (double e : v) m += e / double(v.size());
    for (double e : v) s += (e - m) * (e - m);
    return std::sqrt(s / double(v.size() - 1));
  };
  for (std::size_t b = 0; b < 2; ++b) {
    std::vector<double> vc(per), vg(per);
    for (std::size_t i = 0; i < per; ++i) {
      const double xi = x[b * per + i], u = 0.5 * xi, c = xi + 1, g = u + scale * (c - u);
      vc[i] = alpha * (xi - c) / sigma - sa * c;
      vg[i] = alpha * (xi - g) / sigma - sa * g;
    }
    const double f = phi * sd(vc) / sd(vg) + (1 - phi);
    for (std::size_t i = 0; i < per; ++i)
      EXPECT_NEAR(a[b * per + i], alpha * alpha * x[b * per + i] - sa * vg[i] * f, 1e-12);
  }
  // Not the eps-space result (the spaces differ by the D term in v).
  o.rescale_space = diffuse::RescaleSpace::epsilon;
  const Tn e = diffuse::make_guided<double>(std::ref(tm), o)(x, sigma);
  EXPECT_GT(diffuse_test::max_abs_diff(a, e), 1e-3);
}

TEST(Guidance, FormulaAndBatchedEqualsUnbatched) {
  static_assert(diffuse::cfg_batchable_v<BatchedModel>);
  static_assert(!diffuse::cfg_batchable_v<TwoBranchModel>);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 2, 1.0, 1);
  for (double phi : {0.0, 0.7}) {
    diffuse::GuidanceOptions<double> o;
    o.scale = 5.0;
    o.guidance_rescale = phi;
    BatchedModel bm;
    const auto gb = diffuse::make_guided<double>(std::ref(bm), o);
    const Tn a = gb(x, 2.0);
    EXPECT_EQ(bm.calls, 1);
    o.allow_batching = false;
    BatchedModel bm2;
    const auto gu = diffuse::make_guided<double>(std::ref(bm2), o);
    const Tn b = gu(x, 2.0);
    EXPECT_EQ(bm2.calls, 2);
    EXPECT_EQ(diffuse_test::max_abs_diff(a, b), 0.0);
    TwoBranchModel tm;
    const Tn c = diffuse::make_guided<double>(std::ref(tm), o)(x, 2.0);
    EXPECT_EQ(diffuse_test::max_abs_diff(a, c), 0.0);
    if (phi == 0.0) {
      for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(a[i], 0.5 * x[i] + 5.0 * (x[i] + 1 - 0.5 * x[i]), 1e-12);
    } else {
      // Lin et al. 2023 on eps: per item, eps_cfg * (phi std(eps_c)/std(eps_cfg) + 1 - phi).
      const std::size_t per = x.size() / 2;
      for (std::size_t b2 = 0; b2 < 2; ++b2) {
        std::vector<double> ec(per), eg(per);
        for (std::size_t i = 0; i < per; ++i) {
          const double xi = x[b2 * per + i], u = 0.5 * xi, c2 = xi + 1, g2 = u + 5.0 * (c2 - u);
          ec[i] = (xi - c2) / 2.0;
          eg[i] = (xi - g2) / 2.0;
        }
        auto sd = [](const std::vector<double>& v) {
          double m = 0, s = 0;
          for (double e : v) m += e / double(v.size());
          for (double e : v) s += (e - m) * (e - m);
          return std::sqrt(s / double(v.size() - 1));
        };
        const double f = phi * sd(ec) / sd(eg) + (1 - phi);
        for (std::size_t i = 0; i < per; ++i)
          EXPECT_NEAR(a[b2 * per + i], x[b2 * per + i] - 2.0 * eg[i] * f, 1e-12);
      }
    }
  }
  diffuse::GuidanceOptions<double> bad;
  bad.guidance_rescale = 2.0;
  EXPECT_THROW(diffuse::make_guided<double>(TwoBranchModel{}, bad), diffuse::value_error);
}

// ---------------------------------------------------------------------------------------------
// Registry and error paths.

TEST(Registry, NamesAliasesAndDiffusers) {
  const auto names = diffuse::list_samplers();
  for (const char* n : {"euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "lms", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                        "dpmpp_3m_sde", "dpmpp_2s_a", "dpmpp_sde", "unipc", "deis", "lcm", "ddim", "ddpm",
                        "flow_euler", "flow_heun", "dpm_fast", "dpm_adaptive", "pndm"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  const auto s = diffuse_test::karras(5, 0.1, 10.0, true);
  EXPECT_EQ(diffuse::make_sampler<double>("euler_ancestral", s)->name(), "euler_a");
  EXPECT_EQ(diffuse::make_sampler<double>("adaptive", s)->name(), "dpm_adaptive");
  try {
    diffuse::make_sampler<double>("eulr", s);
    FAIL() << "no exception";
  } catch (const diffuse::value_error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown sampler 'eulr' (known: euler, euler_a"), std::string::npos) << e.what();
  }
  diffuse::SamplerParams<double> p;
  diffuse::DiffusersSamplerChoice cfg;
  cfg.class_name = "DPMSolverMultistepScheduler";
  EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), "dpmpp_2m");
  cfg.solver_order = 3;
  EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), "dpmpp_3m");
  cfg.algorithm_type = "sde-dpmsolver++";
  cfg.solver_order = 2;
  cfg.solver_type = "heun";
  EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), "dpmpp_2m_sde");
  EXPECT_EQ(p.solver_type, diffuse::SolverType::heun);
  cfg.algorithm_type = "dpmsolver";
  EXPECT_THROW(diffuse::sampler_for_diffusers(cfg, p), diffuse::value_error);
  cfg = {};
  cfg.class_name = "UniPCMultistepScheduler";
  cfg.solver_order = 3;
  cfg.solver_type = "bh1";
  EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), "unipc");
  EXPECT_EQ(p.order, 3u);
  EXPECT_EQ(p.unipc_variant, diffuse::UniPcVariant::bh1);
  for (auto [cls, name] : std::vector<std::pair<std::string, std::string>>{
           {"EulerDiscreteScheduler", "euler"}, {"EulerAncestralDiscreteScheduler", "euler_a"},
           {"HeunDiscreteScheduler", "heun"}, {"KDPM2DiscreteScheduler", "dpm_2"},
           {"KDPM2AncestralDiscreteScheduler", "dpm_2_a"}, {"LMSDiscreteScheduler", "lms"},
           {"DDIMScheduler", "ddim"}, {"DDPMScheduler", "ddpm"}, {"LCMScheduler", "lcm"},
           {"DEISMultistepScheduler", "deis"}, {"DPMSolverSDEScheduler", "dpmpp_sde"},
           {"FlowMatchEulerDiscreteScheduler", "flow_euler"}, {"FlowMatchHeunDiscreteScheduler", "flow_heun"}}) {
    cfg = {};
    cfg.class_name = cls;
    EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), name);
  }
  cfg.class_name = "PNDMScheduler";
  EXPECT_EQ(diffuse::sampler_for_diffusers(cfg, p), "pndm");
  EXPECT_EQ(diffuse::make_sampler<double>("plms", s)->name(), "pndm");  // A1111's name
  cfg.class_name = "KarrasVeScheduler";
  EXPECT_THROW(diffuse::sampler_for_diffusers(cfg, p), diffuse::value_error);
}

// PLMS (pndm): the warm-up step makes two evaluations and is diffusers' pseudo improved Euler;
// later steps are Adams-Bashforth on the kept eps (the warm-up's second eps is not kept).
TEST(Pndm, EvaluationsAndWarmUp) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const auto sig = diffuse_test::karras(6, 0.1, 10.0, true);  // 6 steps, last to 0
  const Tn x0 = diffuse_test::gaussian_start(kMu, kVar, 2, 10.0, 5);
  diffuse::PndmSampler<double> s(sig);
  diffuse::NoiseSource<double> none;
  const diffuse::AnyDenoiser<double> d = diffuse::denoiser_ref<double>(gd);
  Tn x = x0;
  s.step(d, x, none);
  EXPECT_EQ(s.nfe(), 2u);
  // By hand: e0 at sigma0, the DDIM (Euler) step, e1 there, the step again with the mean.
  auto eps = [&](const Tn& y, double sg) {
    Tn e = gd(y, sg);
    for (std::size_t k = 0; k < e.size(); ++k) e[k] = (y[k] - e[k]) / sg;
    return e;
  };
  const double h0 = sig[1] - sig[0];
  const Tn e0 = eps(x0, sig[0]);
  Tn mid = x0;
  for (std::size_t k = 0; k < mid.size(); ++k) mid[k] += h0 * e0[k];
  const Tn e1 = eps(mid, sig[1]);
  Tn want = x0;
  for (std::size_t k = 0; k < want.size(); ++k) want[k] += h0 * (e0[k] + e1[k]) / 2;
  EXPECT_LE(diffuse_test::max_abs_diff(x, want), 1e-14);
  // Step 1: AB2 of e0 (not e1) and the new eps at sigma1.
  const Tn x1 = x;
  s.step(d, x, none);
  EXPECT_EQ(s.nfe(), 3u);
  const Tn e2 = eps(x1, sig[1]);
  for (std::size_t k = 0; k < want.size(); ++k) want[k] = x1[k] + (sig[2] - sig[1]) * (3 * e2[k] - e0[k]) / 2;
  EXPECT_LE(diffuse_test::max_abs_diff(x, want), 1e-14);
  s.run(d, x, none);
  EXPECT_EQ(s.nfe(), 7u);  // steps + 1
  // One step: a single DDIM step, one evaluation (diffusers with one inference step).
  diffuse::PndmSampler<double> one(std::vector<double>{10.0, 0.0});
  Tn y = x0;
  one.step(d, y, none);
  EXPECT_EQ(one.nfe(), 1u);
  EXPECT_LE(diffuse_test::max_abs_diff(y, gd(x0, 10.0)), 1e-14);
  // Started part-way (img2img), the first step taken is the warm-up.
  diffuse::PndmSampler<double> late(sig);
  late.begin_at(3);
  y = x0;
  late.step(d, y, none);
  EXPECT_EQ(late.nfe(), 2u);
  late.run(d, y, none);
  EXPECT_EQ(late.nfe(), 4u);
  // A constant denoiser makes eps constant: PLMS is then exact, x = D + sigma (x0 - D) / sigma0.
  const Tn c = gd(x0, 10.0);
  const diffuse::AnyDenoiser<double> constant([&c](const Tn&, double) { return c; });
  const auto sig2 = diffuse_test::karras(8, 0.1, 10.0, false);
  diffuse::PndmSampler<double> ex(sig2);
  y = x0;
  ex.run(constant, y, none);
  for (std::size_t k = 0; k < y.size(); ++k) want[k] = c[k] + sig2.back() * (x0[k] - c[k]) / sig2.front();
  EXPECT_LE(diffuse_test::max_abs_diff(y, want), 1e-13);
}

TEST(Errors, Schedules) {
  for (const auto& bad : std::vector<std::vector<double>>{{}, {1.0}, {1.0, 2.0}, {3.0, 1.0, 2.0, 0.0},
                                                          {std::numeric_limits<double>::quiet_NaN(), 0.0},
                                                          {1.0, -0.5}, {std::numeric_limits<double>::infinity(), 0.0}})
    for (const auto& name : diffuse::list_samplers())
      EXPECT_THROW(diffuse::make_sampler<double>(name, bad), diffuse::value_error) << name;
}

TEST(Errors, NoiseSpaceMismatch) {
  const diffuse::GaussianDenoiser<double> ve(kMu, kVar);
  const diffuse::GaussianDenoiser<double> flow(kMu, kVar, diffuse::NoiseSpace::flow);
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 1, 1.0, 1);
  auto n = diffuse::gaussian_noise<double>(1);
  const auto fs = diffuse_test::flow_linear(4, 0.0);
  EXPECT_THROW(diffuse::sample_flow_euler(ve, x, fs, n), diffuse::value_error);  // eps/VE model on a flow sampler
  EXPECT_THROW(diffuse::sample_flow_heun(ve, x, fs, n), diffuse::value_error);
  for (const char* name : {"dpmpp_2m", "euler_a", "ddim", "ddpm", "unipc", "deis", "dpm_adaptive"})
    EXPECT_THROW(diffuse::sample<double>(name, flow, x, fs, n), diffuse::value_error) << name;
  // A flow denoiser with sigmas above 1.
  EXPECT_THROW(diffuse::sample_euler(flow, x, std::vector<double>{2.0, 1.0, 0.0}, n), diffuse::value_error);
  EXPECT_NO_THROW(diffuse::sample_euler(flow, x, fs, n));
}

TEST(Errors, NonFiniteAndShapes) {
  const Tn x = diffuse_test::gaussian_start(kMu, kVar, 1, 1.0, 1);
  auto n = diffuse::gaussian_noise<double>(1);
  const auto s = diffuse_test::karras(4, 0.1, 10.0, true);
  auto nan_at_low_sigma = [](const Tn& xx, double sigma) {
    Tn o = xx;
    if (sigma < 1.0) o[0] = std::numeric_limits<double>::quiet_NaN();
    return o;
  };
  try {
    diffuse::sample_heun(nan_at_low_sigma, x, s, n);
    FAIL() << "no exception";
  } catch (const diffuse::value_error& e) {
    EXPECT_NE(std::string(e.what()).find("[sample_heun] denoised holds a non-finite value"), std::string::npos) << e.what();
  }
  auto wrong_shape = [](const Tn&, double) { return Tn({2, 2}); };
  EXPECT_THROW(diffuse::sample_euler(wrong_shape, x, s, n), diffuse::shape_error);
  // A sampler that needs noise with an empty source.
  diffuse::NoiseSource<double> empty;
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  EXPECT_THROW(diffuse::sample_euler_ancestral(gd, x, s, empty), diffuse::value_error);
  EXPECT_NO_THROW(diffuse::sample_dpmpp_2m(gd, x, s, empty));  // an ODE sampler never asks
  EXPECT_THROW(diffuse::AnyDenoiser<double>()(x, 1.0), diffuse::value_error);
}

TEST(Errors, Options) {
  const auto s = diffuse_test::karras(4, 0.1, 10.0, true);
  diffuse::SamplerParams<double> p;
  p.order = 9;
  EXPECT_THROW(diffuse::make_sampler<double>("lms", s, p), diffuse::value_error);
  p.order = 4;
  EXPECT_THROW(diffuse::make_sampler<double>("unipc", s, p), diffuse::value_error);
  EXPECT_THROW(diffuse::make_sampler<double>("deis", s, p), diffuse::value_error);
  p.order = 1;
  EXPECT_THROW(diffuse::make_sampler<double>("dpm_adaptive", s, p), diffuse::value_error);
  p = {};
  p.alphas_cumprod = {0.5};
  EXPECT_THROW(diffuse::make_sampler<double>("ddpm", s, p), diffuse::value_error);
  p = {};
  p.eta = -1.0;
  EXPECT_THROW(diffuse::make_sampler<double>("ddim", s, p), diffuse::value_error);
  EXPECT_THROW(diffuse::make_sampler<double>("dpm_fast", std::vector<double>{0.0, 0.0}), diffuse::value_error);
}

}  // namespace
