// SPDX-License-Identifier: MIT
// SDXL text-to-image pipelines: a diffusers StableDiffusionXLPipeline folder (model_index.json +
// unet/ + vae/ + text_encoder/ + tokenizer/ + text_encoder_2/ + tokenizer_2/ + scheduler/) loaded
// by pipeline::Model::load, its prompts encoded by both encoders, guided, sampled and decoded,
// against diffusers' own StableDiffusionXLPipeline on the same weights
// (tools/make_sdxl_pipeline_fixtures.py -> tests/data/pipelines/sdxl_tiny: SDXL base's structure in
// small, 32 to 96 pixel images).
//
// What diffusers' StableDiffusionXLPipeline does, and how the pipeline matches it:
// - prompt_embeds = [text_encoder(ids).hidden_states[-2]; text_encoder_2(ids_2).hidden_states[-2]]
//   along the width (no final layer norm; with diffusers' clip_skip c, hidden_states[-(c + 2)]: the
//   pipeline's clip_skip is c + 1), the same prompt for both encoders (prompt_2 = prompt), tokenizer_2
//   padding with "!" (id 0); pooled = text_encoder_2's text_embeds;
// - negative: none given and force_zeros_for_empty_prompt: zero states and a zero pooled embedding;
//   given (even ""): encoded as the prompt, always at hidden_states[-2] (clip_skip_negative false);
// - added_cond_kwargs: text_embeds [negative pooled; pooled], time_ids (original_size, crop top-left,
//   target_size) = (H, W, 0, 0, H, W) for both branches;
// - noise torch.randn((B, 4, H/8, W/8)) times init_noise_sigma (Euler with "leading" spacing:
//   sqrt(sigma_max^2 + 1)); the folder's EulerDiscreteScheduler (SDXL base's) and the others by
//   `Class.from_config`; decode vae.decode(latents / 0.13025), (x / 2 + 0.5).clamp(0, 1).
//
// Bound: max |ours - diffusers| <= 20 x torch's own f32-vs-f64 difference on the same case
// (summary.json), floored at 2e-5 (1e-4 for the stochastic euler_a case, which has no f64 run),
// for the latents (relative to max |ref|) and for the [0, 1] images (absolute). Swapped time ids,
// an encoded instead of a zero negative branch, a wrong clip-skip layer, the final norm on the
// states or the wrong pad id move the latents by 1e-3 or more.
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
using diffuse_test::max_abs_diff;
using diffuse_test::max_abs;
using diffuse_test::sampler_of;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kTiny = kData / "pipelines" / "sdxl_tiny";

nlohmann::json cases() {
  std::ifstream in(kData / "pipelines" / "summary.json");
  return nlohmann::json::parse(in).at("sdxl_tiny").at("cases");
}

/// Rows first .. first + n - 1 of `t` along dim 0.
Tensor rows(const Tensor& t, std::size_t first, std::size_t n) {
  diffuse::Shape shape = t.shape();
  const std::size_t row = t.size() / shape[0];
  shape[0] = n;
  Tensor out(shape);
  std::copy_n(t.data() + first * row, n * row, out.data());
  return out;
}

/// A fixture case's settings as GenerateOptions.
pl::GenerateOptions case_options(const nlohmann::json& c) {
  pl::GenerateOptions o = diffuse_test::case_base_options(c);
  o.height = c.at("height").get<std::size_t>();
  o.width = c.at("width").get<std::size_t>();
  if (c.contains("clip_skip")) o.clip_skip = c.at("clip_skip").get<std::size_t>();
  o.clip_skip_negative = false;  // diffusers encodes the negative prompt at hidden_states[-2]
  return o;
}

}  // namespace

TEST(SdxlPipeline, LoadsBothTextEncodersAndTheAddedConditioning) {
  const auto m = pl::Model::load(kTiny);
  EXPECT_EQ(m.pipeline_class(), "StableDiffusionXLPipeline");
  EXPECT_TRUE(m.text_conditional());
  EXPECT_TRUE(m.guidable());
  EXPECT_TRUE(m.latent());
  EXPECT_EQ(m.info().architecture, "UNet2DConditionModel");
  EXPECT_EQ(m.info().text_dim, 48u);    // 16 + 32: both encoders' widths
  EXPECT_EQ(m.info().pooled_dim, 16u);  // text_encoder_2's projection_dim
  EXPECT_EQ(m.info().time_ids, 6u);
  ASSERT_EQ(m.text_encoders().size(), 2u);
  const auto& first = m.text_encoders()[0];
  const auto& second = m.text_encoders()[1];
  EXPECT_EQ(first.encoder->config().hidden_size, 16u);
  EXPECT_FALSE(first.encoder->config().with_projection);
  EXPECT_EQ(first.encoder->config().hidden_act, "quick_gelu");
  EXPECT_EQ(second.encoder->config().hidden_size, 32u);
  EXPECT_TRUE(second.encoder->config().with_projection);
  EXPECT_EQ(second.encoder->config().projection_dim, 16u);
  EXPECT_EQ(second.encoder->config().hidden_act, "gelu");
  EXPECT_EQ(first.tokenizer->pad_id(), first.tokenizer->eos_id());  // <|endoftext|>
  EXPECT_EQ(second.tokenizer->pad_id(), 0);                         // "!"
  EXPECT_TRUE(m.force_zeros_for_empty_prompt());
  EXPECT_EQ(m.image_size(), 64u);
  // The folder's scheduler (SDXL base's EulerDiscreteScheduler) on its own spacing.
  EXPECT_EQ(m.scheduler_class(), diffuse::SchedulerClass::euler);
  EXPECT_EQ(m.defaults().sampler, "euler");
  EXPECT_EQ(m.defaults().schedule, "default");
  EXPECT_EQ(m.defaults().steps, 25);
  EXPECT_EQ(m.defaults().cfg_scale, 5.0f);  // StableDiffusionXLPipeline's guidance_scale
  // clip_skip: the shorter encoder (3 layers) from its penultimate layer allows 1..2.
  pl::GenerateOptions o;
  o.prompts = {"a"};
  o.clip_skip = 2;
  EXPECT_NO_THROW((void)pl::resolve_options(m, o));
  o.clip_skip = 3;
  expect_error<diffuse::value_error>([&] { (void)pl::resolve_options(m, o); }, {"clip_skip must be in 1..2"});
  // force_zeros_for_empty_prompt false in model_index.json is read.
  diffuse_test::TempDir tmp;
  const fs::path dir = tmp.path() / "sdxl_tiny";
  fs::copy(kTiny, dir, fs::copy_options::recursive);
  nlohmann::json index;
  {
    std::ifstream in(dir / "model_index.json");
    index = nlohmann::json::parse(in);
  }
  index["force_zeros_for_empty_prompt"] = false;
  {
    std::ofstream out(dir / "model_index.json");
    out << index.dump(2);
  }
  EXPECT_FALSE(pl::Model::load(dir).force_zeros_for_empty_prompt());
}

TEST(SdxlPipeline, TokenizersMatchTransformers) {
  const auto m = pl::Model::load(kTiny);
  const auto c = cases().at("dpmpp_2m_negative_batch");
  const auto prompts = c.at("prompt").get<std::vector<std::string>>();
  const auto negatives = c.at("negative").get<std::vector<std::string>>();
  const auto ids = c.at("prompt_ids").get<std::vector<std::vector<std::int32_t>>>();
  const auto ids_2 = c.at("prompt_ids_2").get<std::vector<std::vector<std::int32_t>>>();
  const auto neg_2 = c.at("negative_ids_2").get<std::vector<std::vector<std::int32_t>>>();
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(m.text_encoders()[0].tokenizer->encode_padded(prompts[i]), ids[i]) << prompts[i];
    EXPECT_EQ(m.text_encoders()[1].tokenizer->encode_padded(prompts[i]), ids_2[i]) << prompts[i];
    // "ugly!": the second tokenizer's pad token "!" inside the text is id 0 too.
    EXPECT_EQ(m.text_encoders()[1].tokenizer->encode_padded(negatives[i]), neg_2[i]) << negatives[i];
  }
}

TEST(SdxlPipeline, EncodeTextMatchesDiffusersEncodePrompt) {
  const auto m = pl::Model::load(kTiny);
  const auto ref = diffuse::io::SafetensorsFile::open(kTiny / "generations.safetensors");
  const auto c = cases().at("dpmpp_2m_negative_batch");
  std::vector<std::string> prompts = c.at("negative").get<std::vector<std::string>>();
  for (const auto& p : c.at("prompt").get<std::vector<std::string>>()) prompts.push_back(p);
  diffuse::kernels::Context ctx(2);
  const pl::TextConditioning tc = pl::encode_text(m, prompts, ctx);
  ASSERT_EQ(tc.hidden.shape(), (diffuse::Shape{4, 77, 48}));
  ASSERT_EQ(tc.pooled.shape(), (diffuse::Shape{4, 16}));
  const Tensor pe = ref.to_f32("encode.prompt_embeds"), ne = ref.to_f32("encode.negative_prompt_embeds");
  const Tensor pp = ref.to_f32("encode.pooled_prompt_embeds"), np = ref.to_f32("encode.negative_pooled_prompt_embeds");
  // transformers' encoders in f32 against ours: 3 and 4 layers, bound 1e-5 x max|ref|.
  const double e_pos = diffuse_test::rel_error(rows(tc.hidden, 2, 2), pe);
  const double e_neg = diffuse_test::rel_error(rows(tc.hidden, 0, 2), ne);
  const double e_pooled = diffuse_test::rel_error(rows(tc.pooled, 2, 2), pp);
  const double e_neg_pooled = diffuse_test::rel_error(rows(tc.pooled, 0, 2), np);
  std::printf("[sdxl] encode_prompt: prompt_embeds %.3g, negative %.3g, pooled %.3g, negative pooled %.3g x max|ref|\n",
              e_pos, e_neg, e_pooled, e_neg_pooled);
  EXPECT_LE(e_pos, 1e-5);
  EXPECT_LE(e_neg, 1e-5);
  EXPECT_LE(e_pooled, 1e-5);
  EXPECT_LE(e_neg_pooled, 1e-5);
}

TEST(SdxlPipeline, GenerationsMatchDiffusersStableDiffusionXLPipeline) {
  const auto m = pl::Model::load(kTiny);
  const auto ref = diffuse::io::SafetensorsFile::open(kTiny / "generations.safetensors");
  const nlohmann::json all = cases();
  for (const auto& [name, c] : all.items()) {
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
      while (g.stage() == pl::Generation::Stage::denoise) g.step(ctx);
      const Tensor latents = g.latents();
      g.step(ctx);
      ASSERT_TRUE(g.done());
      const Tensor images = g.result();
      const Tensor ref_lat = ref.to_f32(name + ".latents");
      const double e_lat = diffuse_test::rel_error(latents, ref_lat);
      const double e_img = max_abs_diff(as_np_images(images), ref.to_f32(name + ".images"));
      std::printf(
          "[sdxl] sdxl_tiny %s, %zu thread(s): latents %.3g x max|ref| (bound %.3g), images %.3g (bound %.3g)\n",
          name.c_str(), threads, e_lat, bound_lat, e_img, bound_img);
      EXPECT_LE(e_lat, bound_lat) << name;
      EXPECT_LE(e_img, bound_img) << name;
      if (threads == 1) {
        first = images;
      } else {
        EXPECT_EQ(max_abs_diff(first, images), 0.0) << name << ": the thread count changed the bits";
      }
    }
  }
}

TEST(SdxlPipeline, TheZeroNegativeBranchIsNotTheEmptyPrompt) {
  // force_zeros_for_empty_prompt: no negative prompt gives zero states, a given "" is encoded;
  // the two generations differ (the fixture cases pin each against diffusers).
  const auto m = pl::Model::load(kTiny);
  diffuse::kernels::Context ctx(2);
  pl::GenerateOptions o;
  o.steps = 2;
  o.seed = 1;
  o.height = o.width = 32;
  o.prompts = {"a red apple"};
  const Tensor zeros = pl::generate(m, o, ctx);
  o.negative_prompts = {""};
  const Tensor empty = pl::generate(m, o, ctx);
  EXPECT_GT(max_abs_diff(zeros, empty), 1e-4);
}

TEST(SdxlPipeline, TextEncodersOfTheWrongKindAreRefusedByWidth) {
  auto m = pl::Model::load(kTiny);
  const auto te = m.text_encoders();
  // Swapped: the widths add up (32 + 16 = 48), but the last encoder has no projection.
  expect_error<diffuse::value_error>(
      [&] {
        m.set_text_encoders({te[1], te[0]});
      },
      {"pooled text embedding of width 16", "CLIPTextModelWithProjection", "a CLIPTextModel without projection"});
  // A second encoder of another width (40, projection 24) than the U-Net's 48 - 16.
  pl::TextEncoder other;
  other.encoder = std::make_shared<const diffuse::models::ClipTextModel>(
      diffuse::models::ClipTextModel::load(kData / "models" / "clip_text_gelu_proj"));
  other.tokenizer = te[1].tokenizer;
  expect_error<diffuse::value_error>(
      [&] {
        m.set_text_encoders({te[0], other});
      },
      {"states of width 16 + 40", "attends to text of width 48"});
  // One encoder where the U-Net attends to two.
  expect_error<diffuse::value_error>([&] { m.set_text_encoders({te[0]}); },
                                     {"states of width 16", "attends to text of width 48"});
  // The model is unchanged by the refusals.
  ASSERT_EQ(m.text_encoders().size(), 2u);
  EXPECT_EQ(m.text_encoders()[1].encoder.get(), te[1].encoder.get());
}
