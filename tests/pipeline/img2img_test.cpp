// SPDX-License-Identifier: MIT
// Image-to-image (GenerateOptions::init_image, docs/img2img.md) on the tiny SD pipeline folder
// (tests/data/pipelines/sd_tiny), against diffusers' own StableDiffusionImg2ImgPipeline on the same
// weights (tools/make_sd_img2img_fixtures.py -> tests/data/pipelines/sd_tiny_img2img.*).
//
// What diffusers does, and how the pipeline matches it:
// - get_timesteps: init_timestep = min(int(n * strength), n), t_start = n - init_timestep; the loop
//   walks the scheduler's timesteps from t_start on (set_begin_index), here the sampler walks the
//   full schedule's noise levels from index t_start on;
// - prepare_latents: vae.encode(image).latent_dist.sample(generator) (the generator's first draw,
//   [images, 4, h, w]) x scaling_factor, repeated per prompt when one image serves a batch, then
//   noise = randn_tensor([batch, 4, h, w], generator) and scheduler.add_noise(init, noise, t_start):
//   x = z0 + sigma * noise in VE form; a stochastic sampler's per-step noise comes after;
// - PNDM: diffusers' cut of PNDMScheduler's timesteps (which repeat the second one) misaligns the
//   steps after the warm-up; the fixture's reference runs diffusers' PNDM step on the consistent
//   list (the distinct timesteps from t_start on), which is what the pipeline does.
//
// Euler-family classes call the U-Net at fractional timesteps (249.75 of 5 linspace steps); the
// pipeline passes the schedule's own timesteps (ParameterizationOptions::timestep_table). Found from
// the sigma by diffusers' _sigma_to_t (log-sigma interpolation) they would be 249.75036, which at
// partial strength moves the result by up to 4.9e-5 x max|ref|: the fixture's CASE.latents_log_t
// (diffusers' run with the U-Net given those timesteps) is printed as that control.
//
// Bound, as tests/pipeline/text_pipeline_test.cpp: max |ours - diffusers| <= 20 x torch's own
// f32-vs-f64 difference on the same case (sd_tiny_img2img.json), floored at 2e-5 (1e-4 for the
// stochastic euler_a case, which has no f64 run), for the latents (relative to max |ref|) and for
// the [0, 1] images (absolute). A posterior mean in place of a sample, the noise added at the wrong
// level or the draws in another order move the latents by 1e-2 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::expect_error;
using diffuse_test::as_np_images;
using diffuse_test::max_abs_diff;
using diffuse_test::max_abs;
using diffuse_test::sampler_of;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR) / "pipelines";
const fs::path kTiny = kData / "sd_tiny";

nlohmann::json cases() {
  std::ifstream in(kData / "sd_tiny_img2img.json");
  return nlohmann::json::parse(in).at("cases");
}

const diffuse::io::SafetensorsFile& ref() {
  static const auto f = diffuse::io::SafetensorsFile::open(kData / "sd_tiny_img2img.safetensors");
  return f;
}

/// The fixture's init image (what diffusers' image processor gave vae.encode), or `n` = 2: it and its mirror.
Tensor init_images(std::size_t n) {
  const Tensor one = ref().to_f32("init.image");
  if (n == 1) return one;
  const Tensor two = ref().to_f32("init.flipped");
  Tensor out({2, one.dim(1), one.dim(2), one.dim(3)});
  std::copy_n(one.data(), one.size(), out.data());
  std::copy_n(two.data(), two.size(), out.data() + one.size());
  return out;
}

pl::GenerateOptions case_options(const nlohmann::json& c) {
  pl::GenerateOptions o = diffuse_test::case_base_options(c);
  o.init_image = init_images(c.at("images").get<std::size_t>());
  o.strength = c.at("strength").get<float>();
  return o;
}

pl::GenerateOptions simple(float strength = 0.6f) {
  pl::GenerateOptions o;
  o.sampler = "euler";
  o.steps = 5;
  o.seed = 4;
  o.prompts = {"a red apple"};
  o.init_image = init_images(1);
  o.strength = strength;
  return o;
}

}  // namespace

TEST(Img2Img, TheInitPngReadsAsDiffusersReadsIt) {
  // The committed PNG through read_image + to_rgb_tensor: the bits diffusers' load_image +
  // VaeImageProcessor gave the VAE (2 v / 255 - 1 in float32).
  const auto img = diffuse::io::read_image(kData / "sd_tiny_img2img_init.png");
  ASSERT_EQ(img.channels, 3);
  const Tensor t = diffuse::io::to_rgb_tensor(img);
  EXPECT_EQ(max_abs_diff(t, ref().to_f32("init.image")), 0.0);
  // Grey + alpha and RGBA as PIL's convert("RGB"): grey replicated, alpha dropped.
  diffuse::io::Image la{2, 1, 2, {10, 200, 255, 0}};
  const Tensor g = diffuse::io::to_rgb_tensor(la);
  ASSERT_EQ(g.shape(), (diffuse::Shape{1, 3, 1, 2}));
  for (std::size_t c = 0; c < 3; ++c) {
    EXPECT_EQ(g.data()[c * 2], 2.0f * (10.0f / 255.0f) - 1.0f);
    EXPECT_EQ(g.data()[c * 2 + 1], 1.0f);
  }
  diffuse::io::Image rgba{1, 1, 4, {0, 51, 255, 7}};
  const Tensor r = diffuse::io::to_rgb_tensor(rgba);
  EXPECT_EQ(r.data()[0], -1.0f);
  EXPECT_EQ(r.data()[1], 2.0f * (51.0f / 255.0f) - 1.0f);
  EXPECT_EQ(r.data()[2], 1.0f);
}

TEST(Img2Img, GenerationsMatchDiffusersStableDiffusionImg2ImgPipeline) {
  const auto m = pl::Model::load(kTiny);
  std::size_t checked = 0;
  const nlohmann::json all = cases();
  for (const auto& [name, c] : all.items()) {
    const bool f64 = c.contains("torch_f32_vs_f64_latents");
    const double bound_lat = f64 ? std::max(20 * c.at("torch_f32_vs_f64_latents").get<double>(), 2e-5) : 1e-4;
    const double bound_img = f64 ? std::max(20 * c.at("torch_f32_vs_f64_images").get<double>(), 2e-5) : 1e-4;
    const pl::GenerateOptions o = case_options(c);
    const int n = *o.steps;
    const auto init_timestep =
        static_cast<std::size_t>(std::min(static_cast<int>(n * c.at("strength").get<double>()), n));
    const std::size_t walked = c.at("timesteps").size();  // PNDM: the warm-up's repeat counted
    EXPECT_EQ(init_timestep, o.sampler == "pndm" ? walked - 1 : walked) << name;
    Tensor first;
    for (std::size_t threads : {1u, 2u}) {
      diffuse::kernels::Context ctx(threads);
      pl::Generation g(m, o);
      EXPECT_EQ(g.num_steps(), init_timestep) << name;
      // The full schedule's noise levels from t_start on.
      const std::vector<float> full = pl::make_sigmas(m, "default", n, o.sampler);
      const std::vector<float> tail(full.end() - static_cast<std::ptrdiff_t>(g.sigmas().size()), full.end());
      EXPECT_EQ(g.sigmas(), tail) << name;
      EXPECT_EQ(g.sigmas().size(), full.size() - (static_cast<std::size_t>(n) - init_timestep)) << name;
      EXPECT_EQ(g.stage(), pl::Generation::Stage::encode);
      g.step(ctx);
      EXPECT_EQ(g.stage(), pl::Generation::Stage::encode_image);
      g.step(ctx);
      EXPECT_EQ(g.stage(), pl::Generation::Stage::denoise);
      EXPECT_EQ(g.step_index(), 0u);
      while (g.stage() == pl::Generation::Stage::denoise) g.step(ctx);
      const Tensor latents = g.latents();
      g.step(ctx);
      ASSERT_TRUE(g.done());
      const Tensor ref_lat = ref().to_f32(name + ".latents");
      const double e_lat = diffuse_test::rel_error(latents, ref_lat);
      double e_img = 0;
      const bool images = ref().contains(name + ".images");
      if (images) e_img = max_abs_diff(as_np_images(g.result()), ref().to_f32(name + ".images"));
      // Euler-family classes: the log-sigma-timestep run is printed as a control (file comment).
      const bool log_t = ref().contains(name + ".latents_log_t");
      double e_log_t = 0;
      if (log_t) {
        const Tensor r = ref().to_f32(name + ".latents_log_t");
        e_log_t = diffuse_test::rel_error(latents, r);
      }
      std::printf("[img2img] sd_tiny %s, %zu thread(s): latents %.3g x max|ref| (bound %.3g)", name.c_str(), threads,
                  e_lat, bound_lat);
      if (log_t) std::printf(", latents vs the log-sigma-timestep control %.3g", e_log_t);
      if (images) std::printf(", images %.3g (bound %.3g)", e_img, bound_img);
      std::printf("\n");
      EXPECT_LE(e_lat, bound_lat) << name;
      EXPECT_LE(e_img, bound_img) << name;
      if (threads == 1) {
        first = g.result();
      } else {
        EXPECT_EQ(max_abs_diff(first, g.result()), 0.0) << name << ": the thread count changed the bits";
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 13u);
}

TEST(Img2Img, TheAddedNoiseIsTheGeneratorsSecondDraw) {
  // initial_noise replaces the added noise: the seed's second draw (after the posterior's
  // [images, 4, 8, 8]) given as initial_noise gives the same bits; its first draw does not.
  const auto m = pl::Model::load(kTiny);
  diffuse::kernels::Context ctx(2);
  pl::GenerateOptions o = simple();
  o.sampler = "euler_a";  // the per-step noise must continue after both draws too
  const Tensor base = pl::generate(m, o, ctx);
  diffuse::TorchGenerator gen(o.seed);
  const Tensor posterior = diffuse::randn(gen, {1, 4, 8, 8});
  const Tensor added = diffuse::randn(gen, {1, 4, 8, 8});
  o.initial_noise = added;
  EXPECT_EQ(max_abs_diff(pl::generate(m, o, ctx), base), 0.0);
  o.initial_noise = posterior;
  EXPECT_GT(max_abs_diff(pl::generate(m, o, ctx), base), 1e-3);
}

TEST(Img2Img, StrengthEdgeCases) {
  const auto m = pl::Model::load(kTiny);
  diffuse::kernels::Context ctx(2);
  const std::vector<float> full = pl::make_sigmas(m, "default", 5, "euler");
  {  // strength 1: the whole schedule, but from the image plus noise, not pure noise
    pl::GenerateOptions o = simple(1.0f);
    pl::Generation g(m, o);
    EXPECT_EQ(g.sigmas(), full);
    EXPECT_EQ(g.num_steps(), 5u);
    const Tensor with_image = pl::generate(m, o, ctx);
    o.init_image.reset();
    o.strength.reset();
    EXPECT_GT(max_abs_diff(pl::generate(m, o, ctx), with_image), 1e-3);
  }
  {  // the default strength is diffusers' 0.8: int(5 x 0.8) = 4 steps
    pl::GenerateOptions o = simple();
    o.strength.reset();
    const pl::GenerateOptions r = pl::resolve_options(m, o);
    ASSERT_TRUE(r.strength);
    EXPECT_EQ(*r.strength, 0.8f);
    EXPECT_EQ(pl::Generation(m, o).num_steps(), 4u);
    EXPECT_NE(pl::parameters_text(m, r).find("Denoising strength: 0.8"), std::string::npos)
        << pl::parameters_text(m, r);
  }
  {  // the smallest strength that runs a step, and the decimal rule: 10 x 0.7 runs 7 steps (0.7f is 0.69999999)
    pl::GenerateOptions o = simple(0.2f);
    EXPECT_EQ(pl::Generation(m, o).num_steps(), 1u);
    o.strength = 0.7f;
    o.steps = 10;
    EXPECT_EQ(pl::Generation(m, o).num_steps(), 7u);
    o.strength = 0.29f;  // int(10 x 0.29) = 2, t_start 8
    pl::Generation g(m, o);
    EXPECT_EQ(g.num_steps(), 2u);
    const std::vector<float> ten = pl::make_sigmas(m, "default", 10, "euler");
    EXPECT_EQ(g.sigmas(), std::vector<float>(ten.begin() + 8, ten.end()));
  }
  {  // a lower strength keeps more of the image: the result is nearer the init image
    pl::GenerateOptions o = simple(0.2f);
    o.steps = 10;
    const Tensor init = init_images(1);
    const double low = max_abs_diff(pl::generate(m, o, ctx), init);
    o.strength = 1.0f;
    const double high = max_abs_diff(pl::generate(m, o, ctx), init);
    EXPECT_LT(low, high);
  }
  for (const float bad : {0.0f, -0.5f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    pl::GenerateOptions o = simple(bad);
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"strength must be in (0, 1]"});
  }
  pl::GenerateOptions o = simple(0.1f);  // int(5 x 0.1) = 0 steps
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                     {"strength 0.1 with 5 steps", "= 0 steps", "at least 0.2"});
}

TEST(Img2Img, OptionsAreRefusedByName) {
  const auto m = pl::Model::load(kTiny);
  {
    pl::GenerateOptions o = simple();
    o.init_image.reset();
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                       {"strength 0.6", "needs an init_image"});
  }
  {  // a pixel model (the same network without its VAE)
    pl::Model pixel = m;
    pixel.set_vae(nullptr);
    const pl::GenerateOptions o = simple();
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(pixel, o); }, {"init_image", "needs a VAE"});
  }
  {
    pl::GenerateOptions o = simple();
    o.init_image = Tensor({1, 4, 64, 64});
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                       {"init_image must be [1 or batch, 3, height, width]", "[1, 4, 64, 64]"});
    o.init_image = Tensor({3, 3, 64, 64});
    o.batch = 2;
    o.prompts = {"a", "b"};
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"3 images for a batch of 2"});
  }
  {
    pl::GenerateOptions o = simple();
    o.width = 48;
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                       {"init_image is 64x64 but width x height is 48x(unset)"});
    o.width = 64;
    o.height = 64;
    EXPECT_NO_THROW((void)pl::resolve_options(m, o));
  }
  {
    pl::GenerateOptions o = simple();
    o.init_image = Tensor({1, 3, 60, 72});
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                       {"init_image is 72x60", "multiples of 16", "e.g. 64x48"});
  }
  {
    pl::GenerateOptions o = simple();
    o.init_image->data()[5] = std::numeric_limits<float>::infinity();
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"init_image contains a non-finite"});
  }
  {
    pl::GenerateOptions o = simple();
    o.sampler = "dpm_adaptive";
    o.schedule = "karras";
    expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"dpm_adaptive", "init_image"});
  }
  {  // the size comes from the image: a 64x32 image gives a 64x32 generation
    pl::GenerateOptions o = simple();
    Tensor wide({1, 3, 32, 64});
    std::copy_n(o.init_image->data(), wide.size(), wide.data());
    o.init_image = wide;
    const pl::GenerateOptions r = pl::resolve_options(m, o);
    EXPECT_EQ(*r.width, 64u);
    EXPECT_EQ(*r.height, 32u);
    diffuse::kernels::Context ctx(1);
    EXPECT_EQ(pl::generate(m, o, ctx).shape(), (diffuse::Shape{1, 3, 32, 64}));
  }
}
