// SPDX-License-Identifier: MIT
// torch_noise: per-step sampler noise continues torch's CPU stream exactly.
#include "diffuse/sample/torch_noise.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "diffuse/sample/registry.hpp"

namespace {

using diffuse::BasicTensor;
using diffuse::Tensor;
using diffuse::TorchGenerator;

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(TorchNoise, ContinuesTheGeneratorLikeConsecutiveRandnCalls) {
  TorchGenerator reference(7);
  const Tensor first = diffuse::randn(reference, {2, 3, 5});
  const Tensor second = diffuse::randn(reference, {2, 3, 5});

  TorchGenerator gen(7);
  auto noise = diffuse::torch_noise<float>(gen);
  Tensor a({2, 3, 5}), b({2, 3, 5});
  noise.fill(0, 1.0f, 0.5f, a);
  noise.fill(1, 0.5f, 0.0f, b);
  EXPECT_TRUE(same_bits(a, first));
  EXPECT_TRUE(same_bits(b, second));
  EXPECT_FALSE(same_bits(a, b));
}

TEST(TorchNoise, SeededSourceCopiesItsStateAndWidensToDouble) {
  auto src = diffuse::torch_noise<double>(11);
  BasicTensor<double> a({40}), b({40}), c({40});
  src.fill(0, 1.0, 0.5, a);
  auto copy = src;  // copies the generator state
  src.fill(1, 0.5, 0.0, b);
  copy.fill(1, 0.5, 0.0, c);
  EXPECT_EQ(b.shape(), c.shape());
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i], c[i]);

  TorchGenerator reference(11);
  const Tensor f = diffuse::randn(reference, {40});
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(a[i], static_cast<double>(f[i]));
}

TEST(TorchNoise, StochasticSamplerIsReproducibleFromTheSeed) {
  const std::vector<float> sigmas{10.0f, 5.0f, 2.0f, 1.0f, 0.0f};
  const auto denoiser = [](const Tensor& x, float) {
    Tensor out(x.shape());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = 0.5f * x[i];
    return out;
  };
  const auto run = [&](std::uint64_t seed) {
    TorchGenerator gen(seed);
    Tensor x = diffuse::randn(gen, {1, 2, 4, 4});
    auto noise = diffuse::torch_noise<float>(gen);
    return diffuse::sample<float>("euler_a", denoiser, x, sigmas, noise);
  };
  EXPECT_TRUE(same_bits(run(3), run(3)));
  EXPECT_FALSE(same_bits(run(3), run(4)));
}

}  // namespace
