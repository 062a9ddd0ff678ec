// SPDX-License-Identifier: MIT
// Inpainting (GenerateOptions::mask, docs/inpainting.md) on the tiny SD pipeline folder
// (tests/data/pipelines/sd_tiny, a 4-channel U-Net: the "legacy" blend) and on an inpainting
// pipeline assembled from it with the 9-channel U-Net of tests/data/pipelines/sd_tiny_inpaint_unet,
// against diffusers' own StableDiffusionInpaintPipeline on the same weights
// (tools/make_sd_inpaint_fixtures.py -> tests/data/pipelines/sd_tiny_inpaint.*).
//
// What diffusers does, and how the pipeline matches it (see the script's docstring):
// - the mask is read as grey (PIL convert("L")), / 255, binarized at 0.5; its latent-size copy is
//   F.interpolate's nearest sample (pixel (8i, 8j)); the masked image is init * (mask < 0.5);
// - the generator's draws: the init image's posterior noise (4-channel U-Net, or strength < 1),
//   the noise, the masked image's posterior noise (always), then a sampler's per-step noise;
// - strength 1 starts from noise x init_noise_sigma, else z0 noised to the first level;
// - a 4-channel U-Net's sample is blended after each step: (1 - m) add_noise(z0, noise, t_next) +
//   m x (the clean z0 after the last); a 9-channel U-Net gets [x, mask, masked latents].
//
// The closed-form tests need no fixture: a keep-everything mask ends at z0 exactly, an all-repaint
// mask below strength 1 is image-to-image for a deterministic sampler, bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::expect_error;
using diffuse_test::as_np_images;
using diffuse_test::max_abs;
using diffuse_test::max_abs_diff;
using diffuse_test::sampler_of;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR) / "pipelines";
const fs::path kTiny = kData / "sd_tiny";

const pl::Model& tiny() {
  static const pl::Model m = pl::Model::load(kTiny);
  return m;
}

/// The img2img fixture's init image [1, 3, 64, 64] (what diffusers' image processor made of its PNG).
Tensor init_image() {
  static const auto f = diffuse::io::SafetensorsFile::open(kData / "sd_tiny_img2img.safetensors");
  return f.to_f32("init.image");
}

Tensor filled_mask(float v, std::size_t n = 1) {
  Tensor m({n, 1, 64, 64});
  std::fill(m.values().begin(), m.values().end(), v);
  return m;
}

pl::GenerateOptions base_options(const std::string& sampler, float strength) {
  pl::GenerateOptions o;
  o.prompts = {"a red apple on a wooden table"};
  o.sampler = sampler;
  o.steps = 5;
  o.seed = 3;
  o.init_image = init_image();
  o.strength = strength;
  return o;
}

const diffuse::io::SafetensorsFile& ref() {
  static const auto f = diffuse::io::SafetensorsFile::open(kData / "sd_tiny_inpaint.safetensors");
  return f;
}

nlohmann::json fixture() {
  std::ifstream in(kData / "sd_tiny_inpaint.json");
  return nlohmann::json::parse(in);
}

/// The tiny SD folder with the 9-channel U-Net in place of its own, assembled in a temp folder (the
/// fixture keeps only the U-Net), as StableDiffusionInpaintPipeline.
class InpaintFolder {
 public:
  InpaintFolder() : dir_("inpaint") {
    for (const char* part : {"scheduler", "text_encoder", "tokenizer", "vae"})
      fs::copy(kTiny / part, dir_.path() / part, fs::copy_options::recursive);
    fs::copy(kData / "sd_tiny_inpaint_unet", dir_.path() / "unet", fs::copy_options::recursive);
    nlohmann::json index = diffuse_test::read_json(kTiny / "model_index.json");
    index["_class_name"] = "StableDiffusionInpaintPipeline";
    diffuse_test::write_json(dir_.path() / "model_index.json", index);
  }
  const fs::path& path() const { return dir_.path(); }

 private:
  diffuse_test::TempDir dir_;
};

const pl::Model& inpainting_model() {
  static const InpaintFolder folder;
  static const pl::Model m = pl::Model::load(folder.path());
  return m;
}

/// [n, C, H, W] of `t` [1, C, H, W]: it, then (n = 2) it mirrored left-right.
Tensor with_mirror(const Tensor& t, std::size_t n) {
  if (n == 1) return t;
  const std::size_t C = t.dim(1), H = t.dim(2), W = t.dim(3);
  Tensor out({2, C, H, W});
  std::copy_n(t.data(), t.size(), out.data());
  for (std::size_t r = 0; r < C * H; ++r)
    for (std::size_t x = 0; x < W; ++x) out.data()[t.size() + r * W + x] = t.data()[r * W + (W - 1 - x)];
  return out;
}

Tensor run(const pl::Model& m, const pl::GenerateOptions& o) {
  diffuse::kernels::Context ctx(2);
  pl::Generation g(m, o);
  while (g.stage() != pl::Generation::Stage::decode && !g.done()) g.step(ctx);
  return g.latents();
}

}  // namespace

// A mask that keeps everything: after the last step the sample is the init image's latents, the
// posterior sample drawn first from the seed's generator, exactly.
TEST(Inpaint, KeepEverythingEndsAtTheInitLatents) {
  for (const char* sampler : {"euler", "euler_a", "ddim"}) {
    auto o = base_options(sampler, 0.75f);
    o.mask = filled_mask(0.0f);
    const Tensor got = run(tiny(), o);
    diffuse::TorchGenerator gen(o.seed);
    diffuse::kernels::Context ctx(1);
    const auto& vae = *tiny().vae();
    const Tensor z0 = vae.to_model_latents(
        diffuse::models::AutoencoderKL::posterior_sample(vae.encode_moments(init_image(), ctx), gen));
    EXPECT_EQ(max_abs_diff(got, z0), 0.0) << sampler;
  }
}

// An all-repaint mask (grey 0.5 counts as repaint) below strength 1: image-to-image, bit for bit,
// for a deterministic sampler (the masked image's draw only shifts the per-step noise stream).
TEST(Inpaint, RepaintEverythingBelowStrengthOneIsImageToImage) {
  for (const char* sampler : {"euler", "dpmpp_2m", "ddim"}) {
    auto o = base_options(sampler, 0.6f);
    const Tensor img2img = run(tiny(), o);
    o.mask = filled_mask(0.5f);
    EXPECT_EQ(max_abs_diff(run(tiny(), o), img2img), 0.0) << sampler;
  }
}

// At strength 1 an inpainting generation starts from pure noise (diffusers' is_strength_max), as
// text-to-image does: with a repaint-everything mask and a deterministic sampler, the result is the
// text-to-image result of the same seed... except that the init image's posterior draw comes first,
// so the noise is the seed's second draw. Checked through initial_noise: text-to-image given that
// noise is the same.
TEST(Inpaint, StrengthOneStartsFromNoise) {
  auto o = base_options("euler", 1.0f);
  o.mask = filled_mask(1.0f);
  const Tensor inpainted = run(tiny(), o);
  diffuse::TorchGenerator gen(o.seed);
  (void)diffuse::randn(gen, {1, 4, 8, 8});  // the posterior noise of the init image
  pl::GenerateOptions t2i;
  t2i.prompts = o.prompts;
  t2i.sampler = "euler";
  t2i.steps = 5;
  t2i.seed = o.seed;
  t2i.width = 64;
  t2i.height = 64;
  t2i.initial_noise = diffuse::randn(gen, {1, 4, 8, 8});
  EXPECT_EQ(max_abs_diff(inpainted, run(tiny(), t2i)), 0.0);
}

TEST(Inpaint, DefaultStrengthIsOneWithAMask) {
  auto o = base_options("euler", 1.0f);
  o.strength.reset();
  o.mask = filled_mask(1.0f);
  EXPECT_EQ(pl::resolve_options(tiny(), o).strength.value(), 1.0f);
  o.mask.reset();
  EXPECT_EQ(pl::resolve_options(tiny(), o).strength.value(), 0.8f);
}

TEST(Inpaint, RefusesBadMasks) {
  auto o = base_options("euler", 1.0f);
  o.init_image.reset();
  o.mask = filled_mask(1.0f);
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(tiny(), o); }, {"mask", "init_image"});
  o = base_options("euler", 1.0f);
  o.mask = Tensor({1, 1, 32, 64});
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(tiny(), o); }, {"64x32", "same size"});
  o.mask = Tensor({1, 3, 64, 64});
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(tiny(), o); }, {"mask must be", "one channel"});
  o.mask = filled_mask(1.0f, 3);
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(tiny(), o); }, {"3 masks", "batch of 1"});
  o.mask = filled_mask(1.0f);
  o.mask->data()[17] = std::nanf("");
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(tiny(), o); }, {"mask", "non-finite"});
}

// PIL's convert("L") of colour pixels (ITU-R 601-2 in 16-bit fixed point), grey as is, alpha dropped.
TEST(Inpaint, MaskFromAnImageIsPilsGrey) {
  diffuse::io::Image rgb{3, 1, 3, {255, 0, 0, 0, 255, 0, 10, 20, 30}};
  const Tensor m = diffuse::io::to_mask_tensor(rgb);
  ASSERT_EQ(m.shape(), (diffuse::Shape{1, 1, 1, 3}));
  EXPECT_EQ(m[0], 76.0f / 255.0f);   // (19595 * 255 + 32768) >> 16 = 76
  EXPECT_EQ(m[1], 150.0f / 255.0f);  // (38470 * 255 + 32768) >> 16 = 150
  EXPECT_EQ(m[2], 18.0f / 255.0f);   // (195950 + 769400 + 224130 + 32768) >> 16 = 18
  diffuse::io::Image ga{2, 1, 2, {200, 0, 7, 255}};
  const Tensor g = diffuse::io::to_mask_tensor(ga);
  EXPECT_EQ(g[0], 200.0f / 255.0f);
  EXPECT_EQ(g[1], 7.0f / 255.0f);
}

TEST(Inpaint, TheMaskPngsReadAsDiffusersReadsThem) {
  // Grey mask: PIL's "L" as is; RGB mask: PIL's convert("L") (values at the threshold included).
  const Tensor grey = diffuse::io::to_mask_tensor(diffuse::io::read_image(kData / "sd_tiny_inpaint_mask.png"));
  const Tensor rgb = diffuse::io::to_mask_tensor(diffuse::io::read_image(kData / "sd_tiny_inpaint_mask_rgb.png"));
  EXPECT_EQ(max_abs_diff(rgb, ref().to_f32("mask_rgb.gray")), 0.0);
  // Binarized at 0.5 as the mask processor does.
  for (const auto& [mask, key] : {std::pair{&grey, "mask.condition"}, std::pair{&rgb, "mask_rgb.condition"}}) {
    const Tensor cond = ref().to_f32(key);
    ASSERT_EQ(cond.shape(), mask->shape());
    for (std::size_t i = 0; i < cond.size(); ++i) ASSERT_EQ(cond[i], (*mask)[i] >= 0.5f ? 1.0f : 0.0f) << key << " " << i;
  }
}

TEST(Inpaint, GenerationsMatchDiffusersStableDiffusionInpaintPipeline) {
  const nlohmann::json all = fixture().at("cases");
  const pl::Model& nine = inpainting_model();
  EXPECT_TRUE(nine.inpainting());
  EXPECT_FALSE(tiny().inpainting());
  EXPECT_EQ(nine.sample_channels(), 4u);
  EXPECT_EQ(nine.info().in_channels, 9u);
  const Tensor grey = diffuse::io::to_mask_tensor(diffuse::io::read_image(kData / "sd_tiny_inpaint_mask.png"));
  const Tensor rgb = diffuse::io::to_mask_tensor(diffuse::io::read_image(kData / "sd_tiny_inpaint_mask_rgb.png"));
  std::size_t checked = 0;
  for (const auto& [name, c] : all.items()) {
    const bool legacy = c.at("unet") == "sd_tiny";
    const pl::Model& m = legacy ? tiny() : nine;
    // Bound: 20 x torch's own f32-vs-f64 difference on the case, floored at 2e-5 (latents relative
    // to max |ref|, [0, 1] images absolute), as the img2img test.
    const double bound_lat = std::max(20 * c.at("torch_f32_vs_f64_latents").get<double>(), 2e-5);
    const double bound_img = std::max(20 * c.at("torch_f32_vs_f64_images").get<double>(), 2e-5);
    pl::GenerateOptions o = diffuse_test::case_base_options(c);
    o.init_image = with_mirror(init_image(), c.at("images").get<std::size_t>());
    o.mask = with_mirror(c.at("mask") == "mask_rgb" ? rgb : grey, c.at("masks").get<std::size_t>());
    o.strength = c.at("strength").get<float>();
    Tensor first;
    for (std::size_t threads : {1u, 2u}) {
      diffuse::kernels::Context ctx(threads);
      pl::Generation g(m, o);
      EXPECT_EQ(g.num_steps(), c.at("timesteps").size()) << name;
      g.step(ctx);
      ASSERT_EQ(g.stage(), pl::Generation::Stage::encode_image) << name;
      while (!g.done()) {
        if (g.stage() == pl::Generation::Stage::decode) {
          const double e_lat = diffuse_test::rel_error(g.latents(), ref().to_f32(name + ".latents"));
          std::printf("[inpaint] %s (%s U-Net), %zu thread(s): latents %.3g x max|ref| (bound %.3g)\n", name.c_str(),
                      legacy ? "4-channel, blended" : "9-channel", threads, e_lat, bound_lat);
          EXPECT_LE(e_lat, bound_lat) << name;
        }
        g.step(ctx);
      }
      if (ref().contains(name + ".images")) {
        const double e_img = max_abs_diff(as_np_images(g.result()), ref().to_f32(name + ".images"));
        std::printf("[inpaint] %s: images %.3g (bound %.3g)\n", name.c_str(), e_img, bound_img);
        EXPECT_LE(e_img, bound_img) << name;
      }
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

// An inpainting model without a mask (A1111's conditioning for text-to-image and image-to-image):
// an all-repaint mask and a mid-grey masked image, the same as giving them.
TEST(Inpaint, AnInpaintingModelWithoutAMaskRepaintsEverything) {
  const pl::Model& nine = inpainting_model();
  auto o = base_options("euler", 0.7f);
  const Tensor without = run(nine, o);
  o.mask = filled_mask(1.0f);
  EXPECT_EQ(max_abs_diff(run(nine, o), without), 0.0);
  // Text-to-image with it: runs (the masked image's latents are the posterior mean of grey).
  pl::GenerateOptions t2i;
  t2i.prompts = {"a red apple"};
  t2i.steps = 3;
  t2i.sampler = "euler";
  const Tensor out = run(nine, t2i);
  EXPECT_EQ(out.shape(), (diffuse::Shape{1, 4, 8, 8}));
  EXPECT_GT(max_abs(out), 0.0);
}
