// SPDX-License-Identifier: MIT
// Distribution checks of the stochastic samplers: 4000 samples (one [4000, 4] batch) for Gaussian
// data N(mu, diag(var)), mu = (1, -0.5, 0.25, 2), var = (0.25, 1, 2.25, 4), started exactly from
// N(mu, var + 80^2). Per dimension the sample mean must lie within 5 standard errors
// (5 sqrt(var/n)) and the sample variance within 5 standard errors of a normal variance
// (5 var sqrt(2/(n-1)), 11%) of the target.
//
// Step counts keep the discretisation bias well inside that bound: first-order stochastic samplers
// (euler_a, ddpm, ddim eta=1, dpmpp_sde with independent normals) under-disperse by ~20% at 50
// Karras steps, ~5% at 200, ~2.5% at 500 (measured with 40000 samples), so they get 500 steps;
// the second-order ones (dpm_2_a, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_2s_a) are within 1-3% at
// 100 steps. LCM is exact at any step count with an exact *consistency* function (the PF-ODE map
// to sigma = 0); with the posterior mean as denoiser it collapses toward the mean (checked too).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "diffuse/denoise/analytic.hpp"
#include "diffuse/sample/registry.hpp"
#include "sample/sample_test_util.hpp"

namespace {

using Tn = diffuse::BasicTensor<double>;

const std::vector<double> kMu = {1.0, -0.5, 0.25, 2.0};
const std::vector<double> kVar = {0.25, 1.0, 2.25, 4.0};
constexpr std::size_t kN = 4000;

struct Moments {
  std::vector<double> mean, var;
};

Moments moments(const Tn& x) {
  const std::size_t d = kMu.size();
  Moments m{std::vector<double>(d, 0.0), std::vector<double>(d, 0.0)};
  for (std::size_t j = 0; j < d; ++j) {
    for (std::size_t r = 0; r < kN; ++r) m.mean[j] += x[r * d + j];
    m.mean[j] /= double(kN);
    for (std::size_t r = 0; r < kN; ++r) m.var[j] += (x[r * d + j] - m.mean[j]) * (x[r * d + j] - m.mean[j]);
    m.var[j] /= double(kN - 1);
  }
  return m;
}

/// True when every dimension's mean and variance are within 5 standard errors; prints the z-scores.
bool matches_target(const std::string& label, const Tn& x) {
  const Moments m = moments(x);
  bool ok = true;
  std::printf("%-22s", label.c_str());
  for (std::size_t j = 0; j < kMu.size(); ++j) {
    const double z_mean = (m.mean[j] - kMu[j]) / std::sqrt(kVar[j] / double(kN));
    const double z_var = (m.var[j] - kVar[j]) / (kVar[j] * std::sqrt(2.0 / double(kN - 1)));
    std::printf(" mean z %+5.2f var z %+5.2f |", z_mean, z_var);
    ok = ok && std::abs(z_mean) < 5.0 && std::abs(z_var) < 5.0;
  }
  std::printf("\n");
  return ok;
}

Tn run(const std::string& name, std::size_t steps, diffuse::SamplerParams<double> params = {}, std::uint64_t seed = 11) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  const Tn x0 = diffuse_test::gaussian_start(kMu, kVar, kN, 80.0, seed);
  auto noise = diffuse::gaussian_noise<double>(seed + 1);
  return diffuse::sample<double>(name, gd, x0, diffuse_test::karras(steps, 0.002, 80.0, true), noise, {}, params);
}

TEST(SamplerStochastic, EulerAncestral) { EXPECT_TRUE(matches_target("euler_a", run("euler_a", 500))); }
TEST(SamplerStochastic, Dpm2Ancestral) { EXPECT_TRUE(matches_target("dpm_2_a", run("dpm_2_a", 100))); }
TEST(SamplerStochastic, Dpmpp2mSde) {
  EXPECT_TRUE(matches_target("dpmpp_2m_sde", run("dpmpp_2m_sde", 100)));
  diffuse::SamplerParams<double> p;
  p.solver_type = diffuse::SolverType::heun;
  EXPECT_TRUE(matches_target("dpmpp_2m_sde(heun)", run("dpmpp_2m_sde", 100, p)));
  p.eta = 0.5;
  EXPECT_TRUE(matches_target("dpmpp_2m_sde(eta=.5)", run("dpmpp_2m_sde", 100, p)));
}
TEST(SamplerStochastic, Dpmpp3mSde) { EXPECT_TRUE(matches_target("dpmpp_3m_sde", run("dpmpp_3m_sde", 100))); }
TEST(SamplerStochastic, Dpmpp2sAncestral) { EXPECT_TRUE(matches_target("dpmpp_2s_a", run("dpmpp_2s_a", 100))); }
TEST(SamplerStochastic, DpmppSde) { EXPECT_TRUE(matches_target("dpmpp_sde", run("dpmpp_sde", 500))); }
TEST(SamplerStochastic, Ddpm) { EXPECT_TRUE(matches_target("ddpm", run("ddpm", 500))); }
TEST(SamplerStochastic, DdimEtaOne) {
  diffuse::SamplerParams<double> p;
  p.eta = 1.0;
  EXPECT_TRUE(matches_target("ddim(eta=1)", run("ddim", 500, p)));
}
TEST(SamplerStochastic, EulerWithChurn) {
  diffuse::SamplerParams<double> p;
  p.s_churn = 40.0;
  EXPECT_TRUE(matches_target("euler(s_churn=40)", run("euler", 500, p)));
}

// DDIM(eta) is Euler ancestral(eta) and DDPM(fixed_small) is DDIM(1), bit for bit up to rounding.
TEST(SamplerStochastic, DdimDdpmEulerAncestralAgree) {
  diffuse::SamplerParams<double> p;
  p.eta = 1.0;
  const Tn a = run("euler_a", 30), b = run("ddim", 30, p), c = run("ddpm", 30);
  EXPECT_LT(diffuse_test::max_abs_diff(a, b), 1e-9);
  EXPECT_LT(diffuse_test::max_abs_diff(a, c), 1e-9);
}

TEST(SamplerStochastic, LcmWithConsistencyFunction) {
  const diffuse::GaussianDenoiser<double> gd(kMu, kVar);
  // The consistency function of Gaussian data: the PF-ODE map from (x, sigma) to sigma = 0.
  auto consistency = [&](const Tn& x, double sigma) { return gd.ode_solution(x, sigma, 0.0); };
  const Tn x0 = diffuse_test::gaussian_start(kMu, kVar, kN, 80.0, 21);
  auto noise = diffuse::gaussian_noise<double>(22);
  const Tn x = diffuse::sample_lcm(consistency, x0, diffuse_test::karras(4, 0.002, 80.0, true), noise);
  EXPECT_TRUE(matches_target("lcm(consistency fn)", x));
  // With the posterior mean instead, the chain loses variance: the check must catch it.
  auto noise2 = diffuse::gaussian_noise<double>(22);
  const Tn y = diffuse::sample_lcm(gd, x0, diffuse_test::karras(4, 0.002, 80.0, true), noise2);
  EXPECT_FALSE(matches_target("lcm(posterior mean)", y));
}

// The statistical check has power: halving the injected noise must be detected.
TEST(SamplerStochastic, NegativeControlDetectsWrongNoiseScale) {
  diffuse::SamplerParams<double> p;
  p.s_noise = 0.5;
  EXPECT_FALSE(matches_target("euler_a(s_noise=.5)", run("euler_a", 500, p)));
}

// The ODE sampler reaches the target distribution too (a deterministic map of exact noise).
TEST(SamplerStochastic, OdeSamplerMatchesTarget) { EXPECT_TRUE(matches_target("dpmpp_2m", run("dpmpp_2m", 50))); }

}  // namespace
