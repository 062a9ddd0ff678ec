// SPDX-License-Identifier: MIT
// The shipped text-to-image model, models/emoji (tools/emoji/: a Stable Diffusion 1.x pipeline in small,
// trained on the Noto Color Emoji renders): it loads as the StableDiffusionPipeline folder it is, its
// default generation and a batch with negative prompts give diffusers' StableDiffusionPipeline images
// for the same seed (tools/emoji/make_emoji_fixtures.py -> tests/data/pipelines/emoji_generations.
// safetensors), and everything shipped in models/ stays inside its 20 MB budget.
//
// Bound: max |ours - diffusers| <= 20 x torch's own f32-vs-f64 difference on the same case (summary.json),
// floored at 2e-5, for the latents (relative to max |ref|) and for the [0, 1] images (absolute), as the
// other pipeline fixtures. A wrong token id, a wrong scheduler spacing or guidance on the wrong branch moves
// the latents by 1e-2 or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::as_np_images;
using diffuse_test::max_abs_diff;
using diffuse_test::read_json;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kModels = fs::path(DIFFUSE_SOURCE_DIR) / "models";
const fs::path kEmoji = kModels / "emoji";

}  // namespace

TEST(EmojiModel, LoadsAsAStableDiffusionPipelineWithTheRealClipVocabulary) {
  const auto m = pl::Model::load(kEmoji);
  EXPECT_EQ(m.pipeline_class(), "StableDiffusionPipeline");
  EXPECT_EQ(m.name(), "emoji");
  EXPECT_TRUE(m.text_conditional());
  EXPECT_TRUE(m.latent());
  EXPECT_FALSE(m.inpainting());
  EXPECT_EQ(m.info().architecture, "UNet2DConditionModel");
  EXPECT_EQ(m.image_size(), 64u);
  EXPECT_EQ(m.latent_scale(), 4u);  // the f = 4 VAE: 16x16x4 latents
  ASSERT_EQ(m.text_encoders().size(), 1u);
  const auto& tok = *m.text_encoders()[0].tokenizer;
  EXPECT_EQ(tok.vocab_size(), 49408u);
  // OpenAI's ids: "red</w>" 736, "apple</w>" 3055, between <|startoftext|> and <|endoftext|>.
  const std::vector<std::int32_t> ids = tok.encode("Red apple");
  EXPECT_EQ(ids, (std::vector<std::int32_t>{49406, 736, 3055, 49407}));
  // The folder's DPM-Solver++ (2M) on its trailing spacing, 25 steps, StableDiffusionPipeline's guidance.
  EXPECT_EQ(m.defaults().sampler, "dpmpp_2m");
  EXPECT_EQ(m.defaults().schedule, "default");
  EXPECT_EQ(m.defaults().steps, 25);
  EXPECT_EQ(m.defaults().cfg_scale, 7.5f);
}

TEST(EmojiModel, GenerationsMatchDiffusersStableDiffusionPipeline) {
  const auto m = pl::Model::load(kEmoji);
  const auto ref = diffuse::io::SafetensorsFile::open(kData / "pipelines" / "emoji_generations.safetensors");
  const auto cases = read_json(kData / "pipelines" / "summary.json").at("emoji").at("cases");
  std::size_t checked = 0;
  for (const auto& [name, c] : cases.items()) {
    const double bound_lat = std::max(20 * c.at("torch_f32_vs_f64_latents").get<double>(), 2e-5);
    const double bound_img = std::max(20 * c.at("torch_f32_vs_f64_images").get<double>(), 2e-5);
    pl::GenerateOptions o = diffuse_test::case_base_options(c);
    if (name == "default") {  // what `diffuse generate -p "red apple"` runs: nothing but the prompt given
      EXPECT_EQ(o.sampler, "dpmpp_2m");
      o = pl::GenerateOptions{};
      o.prompts = c.at("prompt").get<std::vector<std::string>>();
      o.seed = c.at("seed").get<std::uint64_t>();
    }
    diffuse::kernels::Context ctx(2);
    pl::Generation g(m, o);
    while (g.stage() != pl::Generation::Stage::decode) g.step(ctx);
    EXPECT_EQ(g.num_steps(), c.at("steps").get<std::size_t>()) << name;
    const Tensor latents = g.latents();
    g.step(ctx);
    ASSERT_TRUE(g.done());
    const double e_lat = diffuse_test::rel_error(latents, ref.to_f32(name + ".latents"));
    const double e_img = max_abs_diff(as_np_images(g.result()), ref.to_f32(name + ".images"));
    std::printf("[emoji] %s: latents %.3g x max|ref| (bound %.3g), images %.3g (bound %.3g)\n", name.c_str(), e_lat,
                bound_lat, e_img, bound_img);
    EXPECT_LE(e_lat, bound_lat) << name << " (fixture from other weights? re-run tools/emoji/make_emoji_fixtures.py)";
    EXPECT_LE(e_img, bound_img) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 2u);
}

TEST(EmojiModel, ShippedModelsStayInsideTheirBudget) {
  // Everything in models/ together: at most 20 MB (the repository's promise to keep data files small).
  std::uintmax_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(kModels))
    if (e.is_regular_file()) total += e.file_size();
  std::printf("[emoji] models/ holds %.2f MB\n", static_cast<double>(total) / 1e6);
  EXPECT_LE(total, 20'000'000u);
}
