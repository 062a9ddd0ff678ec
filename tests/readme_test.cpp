// SPDX-License-Identifier: MIT
// The C++ example of README.md, compiled and run, so the README cannot drift from the API.
#include <diffuse/diffuse.hpp>

#include <gtest/gtest.h>

#include <cmath>

namespace {

TEST(Readme, UsageExampleRunsAndDenoises) {
  // A stand-in network: the exact denoiser for data N(0.5, 0.1^2) in every coordinate.
  const auto my_network = [](const diffuse::Tensor& x, float sigma) {
    diffuse::Tensor out(x.shape());
    const float v = 0.01f, k = v / (v + sigma * sigma);
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = 0.5f + k * (x[i] - 0.5f);
    return out;
  };

  // --- README.md "Using diffuse from C++" ---
  auto denoiser = [&](const diffuse::Tensor& x, float sigma) -> diffuse::Tensor { return my_network(x, sigma); };

  diffuse::TorchGenerator gen(42);
  std::vector<float> sigmas = diffuse::get_sigmas_karras<float>(20, 0.0292, 14.6146);
  diffuse::Tensor x = diffuse::randn(gen, {1, 4, 64, 64});
  x.array() *= sigmas.front();
  auto noise = diffuse::torch_noise<float>(gen);
  x = diffuse::sample<float>("dpmpp_2m", denoiser, x, sigmas, noise);
  // --- end of the README example ---

  double mean = 0, var = 0;
  for (float v : x.values()) mean += v;
  mean /= static_cast<double>(x.size());
  for (float v : x.values()) var += (v - mean) * (v - mean);
  var /= static_cast<double>(x.size());
  EXPECT_NEAR(mean, 0.5, 0.01);              // 16384 samples: standard error of the mean ~0.0008
  EXPECT_NEAR(std::sqrt(var), 0.1, 0.01);

  const auto s = diffuse::make_sampler<float>("euler", sigmas);
  EXPECT_EQ(s->num_steps(), 20u);
  EXPECT_EQ(s->step_index(), 0u);
}

}  // namespace
