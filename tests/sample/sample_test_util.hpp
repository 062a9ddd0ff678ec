// SPDX-License-Identifier: MIT
// Shared helpers of the sampler tests: schedules and Gaussian test problems.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "diffuse/denoise/analytic.hpp"
#include "diffuse/sample/sampler.hpp"

namespace diffuse_test {

/// Karras et al. 2022 eq. 5 (rho = 7), n values from smax to smin; optionally a trailing 0.
inline std::vector<double> karras(std::size_t n, double smin, double smax, bool zero, double rho = 7.0) {
  std::vector<double> s(n);
  const double a = std::pow(smax, 1.0 / rho), b = std::pow(smin, 1.0 / rho);
  for (std::size_t i = 0; i < n; ++i) s[i] = std::pow(a + (b - a) * double(i) / double(n - 1), rho);
  if (zero) s.push_back(0.0);
  return s;
}

/// n + 1 uniformly spaced flow sigmas from 1 to smin.
inline std::vector<double> flow_linear(std::size_t n, double smin) {
  std::vector<double> s(n + 1);
  for (std::size_t i = 0; i <= n; ++i) s[i] = 1.0 + (smin - 1.0) * double(i) / double(n);
  return s;
}

/// Rows of x drawn from N(mu, var + sigma^2) (VE) with the given noise source.
inline diffuse::BasicTensor<double> gaussian_start(const std::vector<double>& mu, const std::vector<double>& var,
                                                   std::size_t rows, double sigma, std::uint64_t seed) {
  const std::size_t d = mu.size();
  diffuse::BasicTensor<double> x({rows, d});
  auto noise = diffuse::gaussian_noise<double>(seed);
  noise.fill(0, 0, 0, x);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = mu[i % d] + std::sqrt(var[i % d] + sigma * sigma) * x[i];
  return x;
}

inline double max_abs_diff(const diffuse::BasicTensor<double>& a, const diffuse::BasicTensor<double>& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(a[i] - b[i]));
  return e;
}

/// Least-squares slope of log(err) against log(1/n): the observed order of convergence.
inline double fitted_order(const std::vector<std::size_t>& ns, const std::vector<double>& errs) {
  double mx = 0, my = 0;
  const double k = double(ns.size());
  for (std::size_t i = 0; i < ns.size(); ++i) {
    mx += std::log(double(ns[i])) / k;
    my += -std::log(errs[i]) / k;
  }
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < ns.size(); ++i) {
    const double dx = std::log(double(ns[i])) - mx;
    sxy += dx * (-std::log(errs[i]) - my);
    sxx += dx * dx;
  }
  return sxy / sxx;
}

}  // namespace diffuse_test
