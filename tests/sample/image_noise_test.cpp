// SPDX-License-Identifier: MIT
// Tests of diffuse/sample/image_noise.hpp (A1111's per-image generators) and of the pipeline's
// GenerateOptions::rng: image b of a batch is what its own seed, seed + b, gives alone; the first
// noise is each generator's first randn([C, h, w]), the step noise the following ones; ENSD
// re-seeds after the first noise. The generators themselves are proven bit for bit against torch
// and A1111's Philox in tests/core/random_test.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/core/random.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "diffuse/sample/image_noise.hpp"
#include "test_util.hpp"

namespace pl = diffuse::pipeline;
using diffuse::ImageNoise;
using diffuse::NoiseRng;
using diffuse::PhiloxGenerator;
using diffuse::Tensor;
using diffuse::TorchGenerator;
using diffuse_test::expect_error;

namespace {

bool same(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

const std::filesystem::path kSd = std::filesystem::path(DIFFUSE_TEST_DATA_DIR) / "pipelines" / "sd_tiny";

}  // namespace

TEST(ImageNoise, NvIsEachImagesPhiloxGeneratorCallByCall) {
  ImageNoise rng(NoiseRng::a1111_nv, 1000, 3);
  const Tensor first = rng.first({3, 4, 5, 6});
  std::vector<float> next(first.size());
  rng.next(next, first.shape());
  for (std::size_t b = 0; b < 3; ++b) {
    PhiloxGenerator g(1000 + b);
    const Tensor a = g.randn({4, 5, 6});  // offset 0
    const Tensor c = g.randn({4, 5, 6});  // offset 1
    EXPECT_TRUE(same(first.data() + b * 120, a.data(), 120)) << b;
    EXPECT_TRUE(same(next.data() + b * 120, c.data(), 120)) << b;
  }
  EXPECT_EQ(rng.seed(2), 1002u);
}

TEST(ImageNoise, CpuIsEachImagesTorchGenerator) {
  ImageNoise rng(NoiseRng::a1111_cpu, 7, 2);
  const Tensor first = rng.first({2, 4, 8, 8});
  std::vector<float> next(first.size());
  rng.next(next, first.shape());
  for (std::size_t b = 0; b < 2; ++b) {
    TorchGenerator g(7 + b);
    const Tensor a = diffuse::randn(g, {4, 8, 8});
    const Tensor c = diffuse::randn(g, {4, 8, 8});
    EXPECT_TRUE(same(first.data() + b * 256, a.data(), 256)) << b;
    EXPECT_TRUE(same(next.data() + b * 256, c.data(), 256)) << b;
  }
}

TEST(ImageNoise, EnsdReseedsAfterTheFirstNoise) {
  ImageNoise rng(NoiseRng::a1111_nv, 50, 2, 31337);
  const Tensor first = rng.first({2, 4, 4, 4});
  std::vector<float> next(first.size()), later(first.size());
  rng.next(next, first.shape());
  rng.next(later, first.shape());
  for (std::size_t b = 0; b < 2; ++b) {
    PhiloxGenerator g(50 + b), d(50 + b + 31337);
    EXPECT_TRUE(same(first.data() + b * 64, g.randn({4, 4, 4}).data(), 64));
    EXPECT_TRUE(same(next.data() + b * 64, d.randn({4, 4, 4}).data(), 64));
    EXPECT_TRUE(same(later.data() + b * 64, d.randn({4, 4, 4}).data(), 64));
  }
}

TEST(ImageNoise, RefusesWhatItCannotDo) {
  expect_error<diffuse::value_error>([] { ImageNoise(NoiseRng::torch, 1, 1); }, {"one generator"});
  expect_error<diffuse::value_error>([] { ImageNoise(NoiseRng::a1111_nv, 1, 0); }, {"batch"});
  ImageNoise rng(NoiseRng::a1111_nv, 1, 2);
  expect_error<diffuse::value_error>([&] { (void)rng.first({3, 4, 4, 4}); }, {"batch, 2", "[3, 4, 4, 4]"});
  auto src = diffuse::image_noise_source<double>(rng);
  diffuse::BasicTensor<double> out({2, 3});
  src.fill(0, 1.0, 0.5, out);
  PhiloxGenerator g(1);
  const Tensor e = g.randn({3});
  EXPECT_EQ(out[0], static_cast<double>(e[0]));
}

// The pipeline: each image of an A1111 batch is the image of its own seed alone (a stochastic
// sampler, so the step noise is per image too); the first sample is the first noise x sigma_0.
TEST(ImageNoise, PipelineBatchImagesAreTheirOwnSeeds) {
  const auto m = pl::Model::load(kSd);
  for (NoiseRng kind : {NoiseRng::a1111_nv, NoiseRng::a1111_cpu}) {
    pl::GenerateOptions o;
    o.prompts = {"a red apple"};
    o.sampler = "euler_a";
    o.steps = 4;
    o.seed = 77;
    o.rng = kind;
    o.batch = 2;
    diffuse::kernels::Context ctx(1);
    pl::Generation g(m, o);
    // The first sample: image b's first randn x the sampler's start factor.
    ImageNoise ref(kind, 77, 2);
    const Tensor first = ref.first({2, 4, 8, 8});
    const float factor = pl::initial_noise_factor(m, "euler_a", g.sigmas().front());
    for (std::size_t i = 0; i < first.size(); ++i) ASSERT_EQ(g.sample()[i], first[i] * factor) << i;
    while (!g.done()) g.step(ctx);
    const Tensor batch = g.result();
    for (std::size_t b = 0; b < 2; ++b) {
      auto one = o;
      one.batch = 1;
      one.seed = 77 + b;
      const Tensor alone = pl::generate(m, one, ctx);
      double err = 0;
      for (std::size_t i = 0; i < alone.size(); ++i)
        err = std::max(err, static_cast<double>(std::abs(alone[i] - batch[b * alone.size() + i])));
      std::printf("[a1111 rng] %s image %zu: batch vs alone max abs %.3g\n", std::string(diffuse::noise_rng_name(kind)).c_str(), b, err);
      // The same noise; the U-Net's batch of 4 (CFG) and of 2 may differ in the last bits.
      EXPECT_LE(err, 1e-5) << diffuse::noise_rng_name(kind) << " image " << b;
    }
    // The parameters text: the image's own seed, A1111's RNG key.
    const std::string p1 = pl::parameters_text(m, g.options(), 1);
    EXPECT_NE(p1.find("Seed: 78"), std::string::npos) << p1;
    EXPECT_NE(p1.find(kind == NoiseRng::a1111_nv ? "RNG: NV" : "RNG: CPU"), std::string::npos) << p1;
  }
  // The default (diffusers) is one generator for the batch: not the per-image noise.
  pl::GenerateOptions o;
  o.prompts = {"a red apple"};
  o.batch = 2;
  o.seed = 77;
  pl::Generation g(m, o);
  TorchGenerator gen(77);
  const Tensor torch_noise = diffuse::randn(gen, {2, 4, 8, 8});
  const float factor = pl::initial_noise_factor(m, g.options().sampler, g.sigmas().front());
  for (std::size_t i = 0; i < torch_noise.size(); ++i) ASSERT_EQ(g.sample()[i], torch_noise[i] * factor) << i;
  EXPECT_EQ(pl::parameters_text(m, g.options(), 1).find("RNG"), std::string::npos);
  // ENSD needs an A1111 generator; it is recorded.
  o.noise_seed_delta = 31337;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"noise_seed_delta", "a1111"});
  o.rng = NoiseRng::a1111_nv;
  const std::string p = pl::parameters_text(m, pl::resolve_options(m, o), 0);
  EXPECT_NE(p.find("ENSD: 31337"), std::string::npos) << p;
}
