// SPDX-License-Identifier: MIT
// Text-to-image pipelines: a diffusers StableDiffusionPipeline folder (model_index.json + unet/ +
// vae/ + text_encoder/ + tokenizer/ + scheduler/) loaded by pipeline::Model::load, its prompts
// encoded, guided, sampled and decoded, against diffusers' own StableDiffusionPipeline on the same
// weights (tools/make_sd_pipeline_fixtures.py -> tests/data/pipelines/sd_tiny: Stable Diffusion
// 1.5's structure in small, 64x64 images).
//
// What diffusers' StableDiffusionPipeline does, and how the pipeline matches it:
// - prompt_embeds = text_encoder(tokenizer(prompt, padding="max_length", 77, truncation))[0] (the
//   last hidden state after the final layer norm; with clip_skip c, hidden_states[-(c + 1)] through
//   the final layer norm: the pipeline's clip_skip is A1111's, c + 1); the negative prompt (default
//   "") the same; guidance on [negative; prompt] in one batch;
// - noise torch.randn((B, 4, H/8, W/8), generator=manual_seed(seed)) times init_noise_sigma; the
//   folder's PNDMScheduler (SD 1.5's) and the others by `Class.from_config` (the pipeline's rule per
//   sampler, pipeline::SamplerRule; DDIM and PNDM end at alphas_cumprod[0], set_alpha_to_one being
//   false); guidance_rescale on the network's output (eps; v for the v_euler_rescale case, which
//   reads the same weights as a v_prediction model through the scheduler config's prediction_type);
// - decode: vae.decode(latents / 0.18215), then (x / 2 + 0.5).clamp(0, 1), stored [B, H, W, 3].
//
// Bound: max |ours - diffusers| <= 20 x torch's own f32-vs-f64 difference on the same case
// (summary.json), floored at 2e-5 (1e-4 for the stochastic euler_a case, which has no f64 run),
// for the latents (relative to max |ref|) and for the [0, 1] images (absolute). A wrong prompt
// token, a wrong clip-skip layer, guidance on the wrong branch or a missed negative prompt moves the
// latents by 1e-2 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipeline/pipeline.hpp"
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
using diffuse_test::sampler_of;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kTiny = kData / "pipelines" / "sd_tiny";

/// A fixture case's settings as GenerateOptions.
pl::GenerateOptions case_options(const nlohmann::json& c) {
  pl::GenerateOptions o = diffuse_test::case_base_options(c);
  o.height = c.at("height").get<std::size_t>();
  o.width = c.at("width").get<std::size_t>();
  if (c.contains("clip_skip")) o.clip_skip = c.at("clip_skip").get<std::size_t>();
  o.clip_skip_negative = false;  // diffusers encodes the negative prompt at the last layer
  if (c.contains("guidance_rescale")) o.guidance_rescale = c.at("guidance_rescale").get<float>();
  return o;
}

fs::path copy_tiny(const diffuse_test::TempDir& tmp) {
  const fs::path dst = tmp.path() / "sd_tiny";
  fs::copy(kTiny, dst, fs::copy_options::recursive);
  return dst;
}

}  // namespace

TEST(TextPipeline, LoadsEveryComponentOfAStableDiffusionFolder) {
  const auto m = pl::Model::load(kTiny);
  EXPECT_EQ(m.pipeline_class(), "StableDiffusionPipeline");
  EXPECT_TRUE(m.text_conditional());
  EXPECT_TRUE(m.guidable());
  EXPECT_FALSE(m.class_conditional());
  EXPECT_TRUE(m.latent());
  EXPECT_EQ(m.info().architecture, "UNet2DConditionModel");
  EXPECT_EQ(m.info().text_dim, 32u);
  EXPECT_EQ(m.info().pooled_dim, 0u);
  ASSERT_EQ(m.text_encoders().size(), 1u);
  EXPECT_EQ(m.text_encoders()[0].encoder->config().hidden_size, 32u);
  EXPECT_EQ(m.text_encoders()[0].tokenizer->max_length(), 77u);
  EXPECT_EQ(m.image_size(), 64u);
  EXPECT_FALSE(m.force_zeros_for_empty_prompt());
  EXPECT_EQ(m.pipeline_settings().at("requires_safety_checker"), false);
  // The folder's scheduler (SD 1.5's PNDMScheduler) on its own spacing, the SD pipelines' guidance 7.5.
  EXPECT_EQ(m.scheduler_class(), diffuse::SchedulerClass::pndm);
  EXPECT_EQ(m.defaults().sampler, "pndm");
  EXPECT_EQ(m.defaults().steps, 25);
  EXPECT_EQ(m.defaults().schedule, "default");
  EXPECT_EQ(m.defaults().cfg_scale, 7.5f);
  // Loading the unet/ subfolder loads the whole pipeline (the text encoder comes along).
  EXPECT_EQ(pl::Model::load(kTiny / "unet").text_encoders().size(), 1u);
}

TEST(TextPipeline, PromptEmbeddingsMatchDiffusersEncodePrompt) {
  const auto m = pl::Model::load(kTiny);
  const auto ref = diffuse::io::SafetensorsFile::open(kTiny / "generations.safetensors");
  const auto c = read_json(kData / "pipelines" / "summary.json").at("sd_tiny").at("cases").at("euler");
  const auto ids = c.at("prompt_ids").get<std::vector<std::int32_t>>();
  const auto prompt = c.at("prompt").at(0).get<std::string>();
  EXPECT_EQ(m.text_encoders()[0].tokenizer->encode_padded(prompt), ids);
  diffuse::kernels::Context ctx(2);
  const std::vector<std::string> prompts = {"", prompt};
  const pl::TextConditioning tc = pl::encode_text(m, prompts, ctx);
  ASSERT_EQ(tc.hidden.shape(), (diffuse::Shape{2, 77, 32}));
  EXPECT_EQ(tc.pooled.size(), 0u);
  const Tensor neg = ref.to_f32("euler.negative_prompt_embeds"), pos = ref.to_f32("euler.prompt_embeds");
  Tensor ours_neg({1, 77, 32}), ours_pos({1, 77, 32});
  std::copy_n(tc.hidden.data(), 77 * 32, ours_neg.data());
  std::copy_n(tc.hidden.data() + 77 * 32, 77 * 32, ours_pos.data());
  // transformers' encoder in f32 against ours: a 3-layer encoder, bound 1e-5 x max|ref|.
  EXPECT_LE(max_abs_diff(ours_pos, pos), 1e-5 * max_abs(pos));
  EXPECT_LE(max_abs_diff(ours_neg, neg), 1e-5 * max_abs(neg));
}

TEST(TextPipeline, GenerationsMatchDiffusersStableDiffusionPipeline) {
  const auto tiny = pl::Model::load(kTiny);
  const auto ref = diffuse::io::SafetensorsFile::open(kTiny / "generations.safetensors");
  const auto cases = read_json(kData / "pipelines" / "summary.json").at("sd_tiny").at("cases");
  std::size_t checked = 0;
  for (const auto& [name, c] : cases.items()) {
    // A case with scheduler overrides runs on a copy of the folder with them written in.
    const diffuse_test::TempDir tmp("sd-case");
    std::optional<pl::Model> custom;
    if (c.contains("scheduler_overrides")) {
      const fs::path dir = copy_tiny(tmp);
      nlohmann::json sc = read_json(dir / "scheduler" / "scheduler_config.json");
      for (const auto& [k, v] : c.at("scheduler_overrides").items()) sc[k] = v;
      write_json(dir / "scheduler" / "scheduler_config.json", sc);
      custom = pl::Model::load(dir);
    }
    const pl::Model& m = custom ? *custom : tiny;
    const bool f64 = c.contains("torch_f32_vs_f64_latents");
    const double bound_lat = f64 ? std::max(20 * c.at("torch_f32_vs_f64_latents").get<double>(), 2e-5) : 1e-4;
    const double bound_img = f64 ? std::max(20 * c.at("torch_f32_vs_f64_images").get<double>(), 2e-5) : 1e-4;
    const pl::GenerateOptions o = case_options(c);
    Tensor first;
    for (std::size_t threads : {1u, 2u}) {
      diffuse::kernels::Context ctx(threads);
      pl::Generation g(m, o);
      EXPECT_EQ(g.stage(), pl::Generation::Stage::encode);
      g.step(ctx);
      EXPECT_EQ(g.stage(), pl::Generation::Stage::denoise);
      EXPECT_EQ(g.step_index(), 0u);
      while (g.stage() == pl::Generation::Stage::denoise) g.step(ctx);
      const Tensor latents = g.latents();
      g.step(ctx);
      ASSERT_TRUE(g.done());
      const Tensor images = g.result();
      const Tensor ref_lat = ref.to_f32(name + ".latents");
      const double e_lat = diffuse_test::rel_error(latents, ref_lat);
      const double e_img = max_abs_diff(as_np_images(images), ref.to_f32(name + ".images"));
      std::printf("[text] sd_tiny %s, %zu thread(s): latents %.3g x max|ref| (bound %.3g), images %.3g (bound %.3g)\n",
                  name.c_str(), threads, e_lat, bound_lat, e_img, bound_img);
      EXPECT_LE(e_lat, bound_lat) << name;
      EXPECT_LE(e_img, bound_img) << name;
      if (threads == 1) {
        first = images;
      } else {
        EXPECT_EQ(max_abs_diff(first, images), 0.0) << name << ": the thread count changed the bits";
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 7u);
}

TEST(TextPipeline, PromptsChangeTheImageAndAreRecorded) {
  const auto m = pl::Model::load(kTiny);
  diffuse::kernels::Context ctx(2);
  pl::GenerateOptions o;
  o.steps = 2;
  o.seed = 1;
  o.prompts = {"a red apple"};
  const Tensor a = pl::generate(m, o, ctx);
  o.prompts = {"a blue car"};
  const Tensor b = pl::generate(m, o, ctx);
  EXPECT_GT(max_abs_diff(a, b), 1e-3);
  // Emphasis is applied (A1111's syntax): the same words with a weight give another image.
  o.prompts = {"a (red:1.5) apple"};
  EXPECT_GT(max_abs_diff(pl::generate(m, o, ctx), a), 1e-4);
  // A negative prompt steers the guided image.
  o.prompts = {"a red apple"};
  o.negative_prompts = {"green"};
  EXPECT_GT(max_abs_diff(pl::generate(m, o, ctx), a), 1e-4);
  const std::string text = pl::parameters_text(m, pl::resolve_options(m, o));
  EXPECT_EQ(text.rfind("a red apple\nNegative prompt: green\nSteps: 2, Sampler: pndm", 0), 0u) << text;
}

TEST(TextPipeline, OptionsAreCheckedByName) {
  const auto m = pl::Model::load(kTiny);
  pl::GenerateOptions o;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); },
                                     {"generates from text", "give a prompt"});
  o.prompts = {"a", "b"};
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"2 prompts for a batch of 1"});
  o.prompts = {"a"};
  o.negative_prompts = {"x", "y", "z"};
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"3 negative prompts for a batch of 1"});
  o.negative_prompts = {"x"};
  o.cfg_scale = 1.0f;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"negative prompt needs", "guidance"});
  o.negative_prompts.clear();
  o.cfg_scale.reset();
  o.clip_skip = 3;  // the encoder has 3 layers: clip_skip 1..3
  EXPECT_NO_THROW((void)pl::resolve_options(m, o));
  o.clip_skip = 4;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"clip_skip must be in 1..3"});
  o.clip_skip = 0;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"clip_skip must be in 1..3"});
  o.clip_skip = 1;
  o.guidance_rescale = 1.5f;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"guidance_rescale must be in 0..1"});
  o.guidance_rescale = 0;
  o.width = 60;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"width must be a multiple of 16"});
  o.width.reset();
  o.labels = {3};
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"unconditional", "no class label"});
  // A prompt given to a model without text.
  const auto dit = pl::Model::load(kData / "pipelines" / "dit_tiny");
  pl::GenerateOptions d;
  d.labels = {3};
  d.prompts = {"a dog"};
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(dit, d); },
                                     {"not conditioned on text", "takes no prompt"});
  // The network alone refuses class labels.
  diffuse::kernels::Context ctx(1);
  Tensor x({1, 4, 8, 8});
  const float t = 1;
  const std::int64_t label = 0;
  expect_error<diffuse::value_error>(
      [&] {
        (void)m.network().forward(x, {&t, 1}, {&label, 1}, ctx);
      },
      {"needs the text encoder's hidden states"});
}

TEST(TextPipeline, BadFoldersAreRefusedByName) {
  diffuse_test::TempDir tmp;
  {  // a text-conditional U-Net without its text encoder
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index.erase("text_encoder");
    index.erase("tokenizer");
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::io_error>([&] { (void)pl::Model::load(dir); }, {"conditioned on text", "no text_encoder"});
    fs::remove_all(dir);
  }
  {  // a text encoder without its tokenizer
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index.erase("tokenizer");
    write_json(dir / "model_index.json", index);
    expect_error<diffuse::io_error>([&] { (void)pl::Model::load(dir); }, {"lists 'text_encoder' without 'tokenizer'"});
    fs::remove_all(dir);
  }
  {  // a text encoder of another width than the U-Net's cross-attention
    const fs::path dir = copy_tiny(tmp);
    fs::remove_all(dir / "text_encoder");
    fs::copy(kData / "models" / "clip_text_gelu_proj", dir / "text_encoder", fs::copy_options::recursive);
    expect_error<diffuse::value_error>([&] { (void)pl::Model::load(dir); },
                                       {"states of width 40", "attends to text of width 32"});
    fs::remove_all(dir);
  }
  {  // a listed safety checker is not needed: its folder may be missing
    const fs::path dir = copy_tiny(tmp);
    auto index = read_json(dir / "model_index.json");
    index["safety_checker"] = {"stable_diffusion", "StableDiffusionSafetyChecker"};
    index["feature_extractor"] = {"transformers", "CLIPImageProcessor"};
    write_json(dir / "model_index.json", index);
    EXPECT_NO_THROW((void)pl::Model::load(dir));
    fs::remove_all(dir);
  }
}

// LoadOptions::stream_weights (CLI --low-memory): the weights' pages are dropped after each block
// and read again; the image has the same bits.
TEST(TextPipeline, StreamedWeightsGiveTheSameBits) {
  diffuse::nn::LoadOptions streamed;
  streamed.stream_weights = true;
  streamed.winograd = false;
  const auto a = pl::Model::load(kTiny);
  const auto b = pl::Model::load(kTiny, streamed);
  pl::GenerateOptions o;
  o.prompts = {"a red apple"};
  o.negative_prompts = {"blurry"};
  o.steps = 3;
  o.sampler = "euler";
  o.seed = 5;
  diffuse::kernels::Context ctx(2);
  const Tensor x = pl::generate(a, o, ctx), y = pl::generate(b, o, ctx);
  EXPECT_EQ(max_abs_diff(x, y), 0.0);
}
