// SPDX-License-Identifier: MIT
// GenerateOptions::initial_noise on the shipped digits-dit: the seed's own noise given explicitly
// reproduces the seeded generation bit for bit (also with a stochastic sampler, whose per-step
// noise must continue the seed's stream), other noise changes the result, bad noise is refused.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>

#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "test_util.hpp"

namespace {

namespace pl = diffuse::pipeline;
using diffuse::Tensor;

const pl::Model& dit() {
  static const pl::Model m = pl::Model::load(std::filesystem::path(DIFFUSE_SOURCE_DIR) / "models" / "digits-dit");
  return m;
}

pl::GenerateOptions options(const char* sampler) {
  pl::GenerateOptions o;
  o.labels = {4, 9};
  o.batch = 2;
  o.seed = 5;
  o.steps = 6;
  o.sampler = sampler;
  return o;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(InitialNoise, SeedNoiseGivenExplicitlyGivesTheSameBits) {
  diffuse::kernels::Context ctx(1);
  for (const char* sampler : {"flow_euler", "euler_a"}) {
    const pl::GenerateOptions seeded = options(sampler);
    pl::GenerateOptions given = seeded;
    diffuse::TorchGenerator gen(seeded.seed);
    given.initial_noise = diffuse::randn(gen, {2, 1, 16, 16});
    EXPECT_TRUE(same_bits(pl::generate(dit(), seeded, ctx), pl::generate(dit(), given, ctx))) << sampler;
  }
}

TEST(InitialNoise, OtherNoiseChangesOnlyWhatItTouches) {
  diffuse::kernels::Context ctx(1);
  const pl::GenerateOptions seeded = options("flow_euler");
  pl::GenerateOptions given = seeded;
  diffuse::TorchGenerator gen(seeded.seed);
  Tensor z = diffuse::randn(gen, {2, 1, 16, 16});
  for (std::size_t i = 256; i < 512; ++i) z[i] = -z[i];  // second image's noise only
  given.initial_noise = z;
  const Tensor a = pl::generate(dit(), seeded, ctx), b = pl::generate(dit(), given, ctx);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 256 * sizeof(float)), 0);  // deterministic sampler: item 0 unchanged
  EXPECT_NE(std::memcmp(a.data() + 256, b.data() + 256, 256 * sizeof(float)), 0);
}

TEST(InitialNoise, WrongShapeOrNonFiniteIsRefused) {
  pl::GenerateOptions o = options("flow_euler");
  o.initial_noise = Tensor({1, 1, 16, 16});
  diffuse_test::expect_error<diffuse::value_error>([&] { pl::Generation g(dit(), o); },
                                                   {"initial_noise", "[1, 1, 16, 16]", "[2, 1, 16, 16]"});
  o.initial_noise = Tensor({2, 1, 16, 16});
  (*o.initial_noise)[7] = std::numeric_limits<float>::quiet_NaN();
  diffuse_test::expect_error<diffuse::value_error>([&] { pl::Generation g(dit(), o); }, {"initial_noise", "non-finite"});
}

}  // namespace
