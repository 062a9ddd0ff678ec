// SPDX-License-Identifier: MIT
// Latent pipelines: a diffusers DiTPipeline folder (model_index.json + transformer/ + vae/ +
// scheduler/) loaded by pipeline::Model::load, sampled and decoded by its VAE, against diffusers'
// own DiTPipeline on the same weights (tools/make_pipeline_fixtures.py ->
// tests/data/pipelines/dit_tiny: DiT-XL/2's structure in small, 8x VAE, 64x64 images).
//
// What diffusers' DiTPipeline does, and how the pipeline matches it:
// - noise torch.randn((B, 4, 8, 8), generator=torch.Generator().manual_seed(0)); the pipeline's is
//   the same draw;
// - guidance on the eps half of the output (the learned-sigma half is dropped), [cond; null 1000],
//   scale 4 (its default, also the pipeline's default for a DiTPipeline folder);
// - "ddim": the folder's DDIMScheduler (leading spacing, timesteps 750 500 250 0, eta 0) is the
//   pipeline's ddim sampler on the default schedule; "dpmpp_2m": DPMSolverMultistepScheduler
//   .from_config of the same config (linspace spacing 999 749 500 250, integer timesteps, no x0
//   clipping) is the pipeline's dpmpp_2m on the default schedule by the rule per sampler
//   (pipeline::SamplerRule);
// - decode: vae.decode(latents / scaling_factor), then (x / 2 + 0.5).clamp(0, 1), stored [B, H, W, 3].
//
// Bound: max |ours - diffusers| <= 20 x torch's own f32-vs-f64 difference on the same case
// (summary.json), floored at 2e-5, for the [0, 1] images and for the latents. The chain is 4 steps of
// a random-weight DiT and a random-weight VAE; ours and torch's are two f32 runs that round
// differently (the pipeline also guides x0, not eps, and steps in VE form). A wrong coefficient, a
// wrong timestep or a missing scaling moves the images by 1e-2 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "diffuse/pipeline/preview.hpp"
#include "models/model_fixture.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::expect_error;
using diffuse_test::read_json;
using diffuse_test::write_json;
using diffuse_test::as_np_images;
using diffuse_test::max_abs_diff;
using diffuse_test::max_abs;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kTiny = kData / "pipelines" / "dit_tiny";

/// A copy of the tiny pipeline folder to edit.
fs::path copy_tiny(const diffuse_test::TempDir& tmp) {
  const fs::path dst = tmp.path() / "dit_tiny";
  fs::copy(kTiny, dst, fs::copy_options::recursive);
  return dst;
}

pl::GenerateOptions dit_options(const std::string& sampler) {
  pl::GenerateOptions o;
  o.sampler = sampler;
  o.schedule = "default";
  o.steps = 4;
  o.cfg_scale = 4.0f;
  o.seed = 0;
  o.batch = 2;
  o.labels = {3, 7};
  return o;
}

}  // namespace

TEST(LatentPipeline, LoadsEveryComponentOfADitPipelineFolder) {
  const auto m = pl::Model::load(kTiny);
  EXPECT_TRUE(m.latent());
  ASSERT_TRUE(m.vae());
  EXPECT_EQ(m.pipeline_class(), "DiTPipeline");
  EXPECT_EQ(m.latent_scale(), 8u);
  EXPECT_EQ(m.image_size(), 64u);
  EXPECT_EQ(m.image_channels(), 3u);
  EXPECT_EQ(m.info().sample_size, 8u);
  EXPECT_EQ(m.defaults().cfg_scale, 4.0f);  // DiTPipeline's guidance_scale
  EXPECT_EQ(m.name(), "dit_tiny");
  const auto o = pl::resolve_options(m, dit_options("ddim"));
  EXPECT_EQ(*o.width, 64u);
  EXPECT_EQ(*o.height, 64u);
  // The transformer/ subfolder loads the whole pipeline: a latent model never comes without its decoder.
  const auto sub = pl::Model::load(kTiny / "transformer");
  EXPECT_TRUE(sub.latent());
  EXPECT_EQ(sub.name(), "dit_tiny");
}

TEST(LatentPipeline, ClassNamesAndNumbers) {
  const auto m = pl::Model::load(kTiny);
  ASSERT_EQ(m.class_names().size(), 10u);
  EXPECT_EQ(m.class_label("golden retriever"), 3);
  EXPECT_EQ(m.class_label("Golden Retriever "), 3);  // case and surrounding spaces do not matter
  EXPECT_EQ(m.class_label("Tinca tinca"), 0);       // any synonym of a label
  EXPECT_EQ(m.class_label("derrick"), 7);
  EXPECT_EQ(m.class_label("5"), 5);
  EXPECT_EQ(m.class_label("1000"), 1000);  // the null class, accepted as a number
  EXPECT_EQ(m.class_names().label(7), "crane, derrick");
  // "crane" is a synonym of two classes (as ImageNet's 134 and 517): refused, naming both.
  expect_error<diffuse::value_error>([&] { (void)m.class_label("crane"); }, {"'crane' names 2 classes", "4 (crane)", "7 (crane, derrick)"});
  // A misspelling: refused with the nearest names.
  expect_error<diffuse::value_error>([&] { (void)m.class_label("golden retreiver"); },
                                     {"no class is called 'golden retreiver'", "'golden retriever'"});
  expect_error<diffuse::value_error>([&] { (void)m.class_label("1001"); }, {"out of range"});
  const auto near = m.class_names().nearest("espreso");
  ASSERT_FALSE(near.empty());
  EXPECT_EQ(near.front(), "espresso");
}

TEST(LatentPipeline, DitGenerationsMatchDiffusersDitPipeline) {
  const auto m = pl::Model::load(kTiny);
  const auto ref = diffuse::io::SafetensorsFile::open(kTiny / "generations.safetensors");
  const auto summary = read_json(kData / "pipelines" / "summary.json").at("dit_tiny").at("samplers");
  for (const std::string sampler : {"ddim", "dpmpp_2m"}) {
    const auto& s = summary.at(sampler);
    const double bound_images = std::max(20 * s.at("torch_f32_vs_f64_images").get<double>(), 2e-5);
    const double bound_latents = std::max(20 * s.at("torch_f32_vs_f64_latents").get<double>(), 2e-5);
    Tensor first;
    for (std::size_t threads : {1u, 2u}) {
      diffuse::kernels::Context ctx(threads);
      pl::Generation g(m, dit_options(sampler));
      while (g.stage() == pl::Generation::Stage::denoise) g.step(ctx);
      EXPECT_FALSE(g.done());  // the decode is the last stage
      expect_error<diffuse::value_error>([&] { (void)g.result(); }, {"not decoded yet"});
      const Tensor latents = g.latents();
      g.step(ctx);
      ASSERT_TRUE(g.done());
      const Tensor images = g.result();
      ASSERT_EQ(images.shape(), (diffuse::Shape{2, 3, 64, 64}));
      const Tensor ref_latents = ref.to_f32(sampler + ".latents");
      const double e_lat = diffuse_test::rel_error(latents, ref_latents);
      const double e_img = max_abs_diff(as_np_images(images), ref.to_f32(sampler + ".images"));
      std::printf("[latent] dit_tiny %s, %zu thread(s): latents %.3g x max|ref| (bound %.3g), images %.3g (bound %.3g)\n",
                  sampler.c_str(), threads, e_lat, bound_latents, e_img, bound_images);
      EXPECT_LE(e_lat, bound_latents) << sampler;
      EXPECT_LE(e_img, bound_images) << sampler;
      if (threads == 1) {
        first = images;
      } else {
        EXPECT_EQ(max_abs_diff(first, images), 0.0) << "thread count changed the bits";
        // generate() is the same loop, the decode included.
        EXPECT_EQ(max_abs_diff(pl::generate(m, dit_options(sampler), ctx), images), 0.0);
      }
    }
  }
}

TEST(LatentPipeline, PreviewIsTheLatentProjectionOfTheEstimate) {
  const auto m = pl::Model::load(kTiny);
  diffuse::kernels::Context ctx(1);
  pl::Generation g(m, dit_options("ddim"));
  expect_error<diffuse::value_error>([&] { (void)g.preview_image(ctx); }, {"before the first step"});
  g.step(ctx);
  const Tensor p = g.preview_image(ctx);
  ASSERT_EQ(p.shape(), (diffuse::Shape{2, 3, 64, 64}));
  // sd-vae family (4 channels, 0.18215): rgb = latent . F (ComfyUI's SD15 factors), 8x8 per latent pixel.
  const auto proj = pl::latent_rgb_projection(m.vae()->config());
  ASSERT_TRUE(proj);
  EXPECT_EQ(proj->family, "sd");
  const Tensor& x0 = g.preview();
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t k = 0; k < 3; ++k)
      for (std::size_t y = 0; y < 64; ++y)
        for (std::size_t x = 0; x < 64; ++x) {
          double v = proj->bias[k], mag = std::abs(v);
          for (std::size_t c = 0; c < 4; ++c) {
            const double term = static_cast<double>(x0.data()[((b * 4 + c) * 8 + y / 8) * 8 + x / 8]) * proj->factors[c * 3 + k];
            v += term;
            mag += std::abs(term);
          }
          // An f32 sum of four products against the double sum: 1e-6 of the terms' magnitude (the
          // estimate of this random-weight model reaches |x0| ~ 100, and the terms can cancel).
          ASSERT_NEAR(p.data()[((b * 3 + k) * 64 + y) * 64 + x], v, 1e-6 * std::max(1.0, mag))
              << b << " " << k << " " << y << " " << x;
        }
  // The factors are ComfyUI's (comfy/latent_formats.py SD15): spot-check two.
  EXPECT_FLOAT_EQ(proj->factors[0], 0.3512f);
  EXPECT_FLOAT_EQ(proj->factors[11], -0.7177f);
  const auto sdxl = pl::latent_rgb_projection(std::string("sdxl"));
  EXPECT_FLOAT_EQ(sdxl.bias[0], 0.1084f);
  expect_error<diffuse::value_error>([] { (void)pl::latent_rgb_projection(std::string("sd9")); }, {"unknown VAE family"});
  expect_error<diffuse::shape_error>([&] { (void)pl::project_latents(Tensor({1, 3, 2, 2}), *proj); }, {"[B, 4, h, w]"});
}

TEST(LatentPipeline, ATinyVaeDecodesWhenItIsTheOnlyOne) {
  // A pipeline saved with AutoencoderTiny in place of the VAE (what users do for fast decodes):
  // the result is the tiny VAE's decode of the latents, and previews go through it too.
  const diffuse_test::TempDir tmp("tiny_vae");
  const fs::path dir = copy_tiny(tmp);
  fs::remove_all(dir / "vae");
  fs::copy(kData / "models" / "taesd_small", dir / "vae", fs::copy_options::recursive);
  fs::remove(dir / "vae" / "io.safetensors");
  auto index = read_json(dir / "model_index.json");
  index["vae"] = {"diffusers", "AutoencoderTiny"};
  write_json(dir / "model_index.json", index);
  const auto m = pl::Model::load(dir);
  EXPECT_TRUE(m.latent());
  EXPECT_FALSE(m.vae());
  ASSERT_TRUE(m.tiny_vae());
  diffuse::kernels::Context ctx(1);
  pl::Generation g(m, dit_options("ddim"));
  while (!g.done()) g.step(ctx);
  const Tensor want = m.tiny_vae()->decode(m.tiny_vae()->to_vae_latents(g.latents()), ctx);
  EXPECT_EQ(max_abs_diff(g.result(), want), 0.0);

  // The full VAE back with the tiny one beside it: the result uses the VAE, previews the tiny one,
  // tiny_decode the tiny one.
  auto full = pl::Model::load(kTiny);
  full.set_tiny_vae(m.tiny_vae());
  pl::Generation h(full, dit_options("ddim"));
  h.step(ctx);
  const Tensor prev = h.preview_image(ctx);
  EXPECT_EQ(max_abs_diff(prev, full.tiny_vae()->decode(full.tiny_vae()->to_vae_latents(h.preview()), ctx)), 0.0);
  auto o = dit_options("ddim");
  o.tiny_decode = true;
  EXPECT_EQ(max_abs_diff(pl::generate(full, o, ctx), g.result()), 0.0);
  o.tiny_decode = true;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(pl::Model::load(kTiny), o); }, {"no tiny VAE"});
}

TEST(LatentPipeline, BadPipelineFoldersAreRefusedByName) {
  const diffuse_test::TempDir tmp("bad_pipelines");
  {  // the index lists no vae: a DiTPipeline generates latents
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index.erase("vae");
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::io_error>([&] { (void)pl::Model::load(dir); }, {"DiTPipeline generates latents", "no vae"});
    fs::remove_all(dir);
  }
  {  // the index lists a vae, the folder is gone
    const fs::path dir = copy_tiny(tmp);
    fs::remove_all(dir / "vae");
    expect_error<diffuse::io_error>([&] { (void)pl::Model::load(dir); }, {"lists 'vae'", "no vae/ folder"});
    fs::remove_all(dir);
  }
  {  // a component diffuse cannot run, and a text-conditional U-Net
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index["text_encoder"] = {"transformers", "CLIPTextModel"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::io_error>([&] { (void)pl::Model::load(dir); },
                                    {"lists 'text_encoder' (CLIPTextModel) but there is no text_encoder/ folder"});
    index.erase("text_encoder");
    index["vae"] = {"diffusers", "VQModel"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); }, {"'vae' (diffusers VQModel)"});
    index["vae"] = {"diffusers", "AutoencoderKL"};
    index["scheduler"] = {"diffusers", "MadeUpScheduler"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); }, {"'scheduler'", "unknown scheduler class"});
    index["scheduler"] = {"diffusers", "DDIMScheduler"};
    index["text_encoder"] = {"transformers", "T5EncoderModel"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); },
                                       {"'text_encoder' (transformers T5EncoderModel)", "CLIP text encoders"});
    fs::remove_all(dir);
  }
  {  // a VAE whose latents have other channels than the transformer's
    const fs::path dir = copy_tiny(tmp);
    fs::remove_all(dir / "vae");
    fs::copy(kData / "models" / "vae_small_16ch", dir / "vae", fs::copy_options::recursive);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); },
                                       {"VAE's latents have 16 channels", "takes 4", "do not belong together"});
    fs::remove_all(dir);
  }
  {  // hostile index entries
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index["../etc"] = {"diffusers", "AutoencoderKL"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::format_error>([&] { (void)pl::Model::load(dir); }, {"'../etc' is not a plain folder name"});
    index.erase("../etc");
    index["id2label"]["01"] = "x";
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::format_error>([&] { (void)pl::Model::load(dir); }, {"id2label key '01'"});
    index["id2label"].erase("01");
    index["id2label"]["2000"] = "beyond";
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); }, {"names class 2000", "1001 classes"});
    index["id2label"].erase("2000");
    index["vae"] = {"diffusers"};
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::format_error>([&] { (void)pl::Model::load(dir); }, {"component 'vae' must be [library, class]"});
    fs::remove_all(dir);
  }
}

TEST(LatentPipeline, MemoryEstimateCountsTheDecode) {
  const auto m = pl::Model::load(kTiny);
  auto o = pl::resolve_options(m, dit_options("ddim"));
  const std::uint64_t need = pl::estimate_generation_bytes(m, o);
  EXPECT_GE(need, m.vae()->decode_peak_bytes(8, 8));
  o.memory_limit = need - 1;
  expect_error<diffuse::memory_error>([&] { (void)pl::resolve_options(m, o); }, {"memory limit"});
}

TEST(PipelineIndex, ParsesComponentsSettingsAndLabels) {
  const nlohmann::json j = {{"_class_name", "DiTPipeline"},
                            {"_diffusers_version", "0.12.0.dev0"},
                            {"transformer", {"diffusers", "Transformer2DModel"}},
                            {"safety_checker", {nullptr, nullptr}},
                            {"requires_safety_checker", true},
                            {"id2label", {{"0", "tench, Tinca tinca"}, {"2", "great white shark"}}}};
  const auto p = pl::PipelineIndex::parse(j, "test", "model_index.json");
  EXPECT_EQ(p.class_name, "DiTPipeline");
  ASSERT_EQ(p.components.size(), 1u);
  EXPECT_EQ(p.components[0].class_name, "Transformer2DModel");
  ASSERT_EQ(p.absent.size(), 1u);
  EXPECT_EQ(p.absent[0], "safety_checker");
  EXPECT_EQ(p.settings.at("requires_safety_checker"), true);
  ASSERT_EQ(p.id2label.size(), 3u);
  EXPECT_EQ(p.id2label[1], "");
  const pl::ClassNames names(p.id2label);
  EXPECT_EQ(names.find("great white shark"), 2);
  expect_error<diffuse::value_error>([&] { (void)names.find("shark"); }, {"'great white shark'"});
  for (const auto& bad : {nlohmann::json::array(), nlohmann::json{{"_class_name", 3}},
                          nlohmann::json{{"vae", {"diffusers", ""}}}, nlohmann::json{{"id2label", {{"-1", "x"}}}},
                          nlohmann::json{{"id2label", {{"1000000", "x"}}}}, nlohmann::json{{"id2label", {{"3", ""}}}},
                          nlohmann::json{{"id2label", {{"3", 4}}}}, nlohmann::json{{".hidden", {"a", "b"}}}})
    EXPECT_THROW((void)pl::PipelineIndex::parse(bad, "test", "model_index.json"), diffuse::format_error) << bad.dump();
}

// The real DiT-XL/2-256 pipeline configuration (tests/data/pipelines/dit_xl2_recipe): the transformer
// (749,826,464 parameters in the diffusers layout) and the sd-vae-ft-ema VAE (83,653,863) with seeded
// weights regenerated from their recipes, 4 steps of DDIM and of DPM-Solver++ at guidance 4 for the
// batch (207, 360), against diffusers' DiTPipeline on the same weights (the 256x256 images at every
// 4th pixel and in a full-resolution 32x32 patch, and the latents). Same bound as above.
TEST(LatentPipeline, DitXl2At256MatchesDiffusersDitPipeline) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the 750 M-parameter pipeline is skipped under a sanitizer (dit_tiny covers the same code)";
#else
  const fs::path fixture = kData / "pipelines" / "dit_xl2_recipe";
  const diffuse_test::TempDir tmp("dit_xl2");
  const fs::path dir = tmp.path() / "DiT-XL-2-256";
  fs::create_directories(dir / "scheduler");
  fs::copy_file(fixture / "model_index.json", dir / "model_index.json");
  fs::copy_file(fixture / "scheduler" / "scheduler_config.json", dir / "scheduler" / "scheduler_config.json");
  diffuse_test::materialize_recipe(fixture / "transformer", dir / "transformer");
  diffuse_test::materialize_recipe(kData / "models" / "vae_sd_recipe", dir / "vae");
  // The VAE recipe's config is the one the pipeline folder has (sd-vae-ft-ema's).
  auto a = read_json(dir / "vae" / "config.json"), b = read_json(fixture / "vae" / "config.json");
  a.erase("_diffusers_version"), b.erase("_diffusers_version");
  ASSERT_EQ(a, b);

  const auto m = pl::Model::load(dir);
  EXPECT_EQ(m.info().parameters, 749'826'464u);
  EXPECT_EQ(m.vae()->parameters(), 83'653'863u);
  EXPECT_EQ(m.image_size(), 256u);
  EXPECT_EQ(m.class_label("golden retriever"), 207);
  const auto ref = diffuse::io::SafetensorsFile::open(fixture / "generations.safetensors");
  const auto summary = read_json(kData / "pipelines" / "summary.json").at("dit_xl2_recipe").at("samplers");
  diffuse::kernels::Context ctx(2);
  for (const std::string sampler : {"ddim", "dpmpp_2m"}) {
    const auto& s = summary.at(sampler);
    const double bound_images = std::max(20 * s.at("torch_f32_vs_f64_images").get<double>(), 2e-5);
    const double bound_latents = std::max(20 * s.at("torch_f32_vs_f64_latents").get<double>(), 2e-5);
    auto o = dit_options(sampler);
    o.labels = {207, 360};
    pl::Generation g(m, o);
    while (!g.done()) g.step(ctx);
    const Tensor ref_latents = ref.to_f32(sampler + ".latents");
    const double e_lat = diffuse_test::rel_error(g.latents(), ref_latents);
    const Tensor np = as_np_images(g.result());  // [2, 256, 256, 3]
    Tensor stride4({2, 64, 64, 3}), patch({2, 32, 32, 3});
    for (std::size_t i = 0; i < 2; ++i)
      for (std::size_t y = 0; y < 256; ++y)
        for (std::size_t x = 0; x < 256; ++x)
          for (std::size_t c = 0; c < 3; ++c) {
            const float v = np.data()[((i * 256 + y) * 256 + x) * 3 + c];
            if (y % 4 == 0 && x % 4 == 0) stride4.data()[((i * 64 + y / 4) * 64 + x / 4) * 3 + c] = v;
            if (y >= 96 && y < 128 && x >= 112 && x < 144)
              patch.data()[((i * 32 + y - 96) * 32 + x - 112) * 3 + c] = v;
          }
    const double e_img = std::max(max_abs_diff(stride4, ref.to_f32(sampler + ".images_stride4")),
                                  max_abs_diff(patch, ref.to_f32(sampler + ".images_patch")));
    std::printf("[latent] DiT-XL/2-256 %s: latents %.3g x max|ref| (bound %.3g), images %.3g (bound %.3g)\n",
                sampler.c_str(), e_lat, bound_latents, e_img, bound_images);
    EXPECT_LE(e_lat, bound_latents) << sampler;
    EXPECT_LE(e_img, bound_images) << sampler;
  }
#endif
}
