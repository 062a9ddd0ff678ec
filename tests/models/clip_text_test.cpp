// SPDX-License-Identifier: MIT
// CLIPTextModel / CLIPTextModelWithProjection against transformers on the small seeded fixtures of
// tests/data/models/clip_text_* (tools/make_clip_text_fixtures.py): last hidden state, clip_skip 2
// (raw and through final_layer_norm), pooled (both end-token rules), text_embeds, at 77 and 20
// tokens, batches of 3 (1, 20, 75 content tokens) and 2, 1 and 2 threads; the original checkpoint
// names (SD 1.x single file, OpenCLIP with fused in_proj) bit for bit as the transformers folders.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/clip_text.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using diffuse::Tensor;
using diffuse::models::ClipTextModel;
using diffuse::models::ClipTextOptions;
using diffuse_test::expect_error;

namespace {

fs::path case_dir(const char* name) { return fs::path(DIFFUSE_TEST_DATA_DIR) / "models" / name; }

std::vector<std::int32_t> ids_of(const diffuse::io::SafetensorsFile& f, const char* name) {
  const auto& t = f.tensor(name);
  std::vector<std::int32_t> out(t.numel());
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::int64_t v;
    std::memcpy(&v, t.data + 8 * i, 8);
    out[i] = static_cast<std::int32_t>(v);
  }
  return out;
}

// Measured at most 4.6e-7 x max|ref| (f32 GEMMs, polynomial exp/erf vs PyTorch f32): bound 1e-5.
constexpr double kBound = 1e-5;

void check_case(const char* name, const fs::path& weights, bool projection) {
  SCOPED_TRACE(name);
  const ClipTextModel enc = ClipTextModel::load(weights);
  EXPECT_EQ(enc.config().with_projection, projection);
  const auto io = diffuse::io::SafetensorsFile::open(case_dir(name) / "io.safetensors");
  const auto ids = ids_of(io, "input_ids"), short_ids = ids_of(io, "short_ids");
  for (int threads : {1, 2}) {
    diffuse::kernels::Context ctx(threads);
    const auto out = enc.encode(ids, 3, ctx);
    EXPECT_LE(diffuse_test::rel_error(out.hidden, io.to_f32("last_hidden_state")), kBound) << threads;
    EXPECT_LE(diffuse_test::rel_error(out.pooled, io.to_f32("pooled")), kBound);
    if (projection) {
      EXPECT_LE(diffuse_test::rel_error(out.text_embeds, io.to_f32("text_embeds")), kBound);
    }
    ClipTextOptions skip;
    skip.clip_skip = 2;
    const auto s2 = enc.encode(ids, 3, ctx, skip);
    EXPECT_LE(diffuse_test::rel_error(s2.hidden, io.to_f32("hidden_skip2_norm")), kBound);
    EXPECT_LE(diffuse_test::rel_error(s2.pooled, io.to_f32("pooled")), kBound);  // pooled is the full model's
    skip.final_norm_on_skip = false;
    skip.pooled = false;
    const auto s2raw = enc.encode(ids, 3, ctx, skip);
    EXPECT_LE(diffuse_test::rel_error(s2raw.hidden, io.to_f32("hidden_skip2")), kBound);
    EXPECT_TRUE(s2raw.pooled.empty());
    const auto sh = enc.encode(short_ids, 2, ctx);
    EXPECT_LE(diffuse_test::rel_error(sh.hidden, io.to_f32("short_last_hidden_state")), kBound);
    EXPECT_LE(diffuse_test::rel_error(sh.pooled, io.to_f32("short_pooled")), kBound);
    if (projection) {
      EXPECT_LE(diffuse_test::rel_error(sh.text_embeds, io.to_f32("short_text_embeds")), kBound);
    }
  }
}

}  // namespace

TEST(ClipText, QuickGeluLegacyPooling) { check_case("clip_text_quick", case_dir("clip_text_quick"), false); }
TEST(ClipText, QuickGeluPrefixedNames) {
  check_case("clip_text_quick", case_dir("clip_text_quick") / "model_prefixed", false);
}
TEST(ClipText, GeluWithProjection) { check_case("clip_text_gelu_proj", case_dir("clip_text_gelu_proj"), true); }

TEST(ClipText, BadInputs) {
  const ClipTextModel enc = ClipTextModel::load(case_dir("clip_text_quick"));
  diffuse::kernels::Context ctx(1);
  std::vector<std::int32_t> ids(78, 5);
  expect_error<diffuse::shape_error>([&] { enc.encode(ids, 1, ctx); }, {"ClipTextModel::encode", "78 tokens"});
  expect_error<diffuse::shape_error>([&] { enc.encode(ids, 4, ctx); }, {"78 ids do not make 4"});
  ids.resize(10);
  ids[3] = 1000;
  expect_error<diffuse::value_error>([&] { enc.encode(ids, 1, ctx); }, {"token id 1000 at position 3"});
  ids[3] = -1;
  expect_error<diffuse::value_error>([&] { enc.encode(ids, 1, ctx); }, {"token id -1"});
  ids[3] = 7;
  ClipTextOptions o;
  o.clip_skip = 4;
  expect_error<diffuse::value_error>([&] { enc.encode(ids, 1, ctx, o); }, {"clip_skip 4 is outside [1, 3]"});
  o.clip_skip = 0;
  expect_error<diffuse::value_error>([&] { enc.encode(ids, 1, ctx, o); }, {"clip_skip 0"});
}

TEST(ClipText, ConfigBounds) {
  using diffuse::models::ClipTextConfig;
  const nlohmann::json base = {{"hidden_size", 32}, {"num_attention_heads", 4}};
  EXPECT_EQ(ClipTextConfig::from_json(base, "t").hidden_size, 32u);
  for (const auto& [key, value, msg] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"vocab_size", 1ll << 25, "\"vocab_size\" must be an integer in [1, 16777216]"},
           {"hidden_size", 0, "\"hidden_size\" must be an integer"},
           {"num_hidden_layers", 5000, "\"num_hidden_layers\""},
           {"num_attention_heads", 5, "not divisible"},
           {"max_position_embeddings", -1, "\"max_position_embeddings\""},
           {"intermediate_size", "big", "\"intermediate_size\""},
           {"hidden_act", "relu6", "hidden_act \"relu6\""},
           {"layer_norm_eps", 0, "\"layer_norm_eps\""},
           {"architectures", {"BertModel"}, "not a CLIP text model"}}) {
    nlohmann::json j = base;
    j[key] = value;
    expect_error<diffuse::format_error>([&] { ClipTextConfig::from_json(j, "t"); }, {msg});
  }
}

namespace {

// The original-name file gives the same bits as the transformers folder with the same weights
// (tools/make_clip_text_fixtures.py --original-names).
void check_same(const ClipTextModel& want, const ClipTextModel& got, const char* name) {
  EXPECT_EQ(got.parameters(), want.parameters());
  const auto io = diffuse::io::SafetensorsFile::open(case_dir(name) / "io.safetensors");
  const auto ids = ids_of(io, "input_ids");
  diffuse::kernels::Context ctx(2);
  for (std::size_t skip : {1, 2}) {
    ClipTextOptions o;
    o.clip_skip = skip;
    const auto a = want.encode(ids, 3, ctx, o), b = got.encode(ids, 3, ctx, o);
    const auto same = [](const Tensor& x, const Tensor& y) {
      // (an empty tensor, text_embeds without a projection, has no data pointer: memcmp(NULL) is UB)
      return x.shape() == y.shape() && (x.size() == 0 || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    };
    EXPECT_TRUE(same(a.hidden, b.hidden)) << skip;
    EXPECT_TRUE(same(a.pooled, b.pooled)) << skip;
    EXPECT_TRUE(same(a.text_embeds, b.text_embeds)) << skip;
  }
}

diffuse::models::ClipTextConfig config_of(const char* name) {
  const auto dir = diffuse::io::ModelDir::open(case_dir(name));
  return diffuse::models::ClipTextConfig::from_json(dir.config(), name);
}

}  // namespace

TEST(ClipText, Sd1SingleFileNames) {
  const ClipTextModel want = ClipTextModel::load(case_dir("clip_text_quick"));
  auto file = diffuse::io::ModelDir::open(case_dir("clip_text_quick") / "sd1_single_file.safetensors");
  ASSERT_TRUE(ClipTextModel::has_original_names(file, "cond_stage_model.transformer."));
  EXPECT_FALSE(ClipTextModel::has_original_names(file, "cond_stage_model.model."));
  const ClipTextModel got =
      ClipTextModel::load_original(std::move(file), "cond_stage_model.transformer.", config_of("clip_text_quick"));
  check_same(want, got, "clip_text_quick");
}

TEST(ClipText, OpenClipNamesFusedInProj) {
  const ClipTextModel want = ClipTextModel::load(case_dir("clip_text_gelu_proj"));
  auto file = diffuse::io::ModelDir::open(case_dir("clip_text_gelu_proj") / "open_clip.safetensors");
  ASSERT_TRUE(ClipTextModel::has_original_names(file, "cond_stage_model.model."));
  const ClipTextModel got =
      ClipTextModel::load_original(std::move(file), "cond_stage_model.model.", config_of("clip_text_gelu_proj"));
  check_same(want, got, "clip_text_gelu_proj");
  // SD 2.x: the same file as a CLIPTextModel without projection (text_projection ignored).
  auto cfg = config_of("clip_text_gelu_proj");
  cfg.with_projection = false;
  const ClipTextModel plain = ClipTextModel::load_original(
      diffuse::io::ModelDir::open(case_dir("clip_text_gelu_proj") / "open_clip.safetensors"), "cond_stage_model.model.",
      cfg);
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("clip_text_gelu_proj") / "io.safetensors");
  diffuse::kernels::Context ctx(1);
  const auto out = plain.encode(ids_of(io, "input_ids"), 3, ctx);
  EXPECT_LE(diffuse_test::rel_error(out.hidden, io.to_f32("last_hidden_state")), kBound);
  EXPECT_TRUE(out.text_embeds.empty());
}

TEST(ClipText, OriginalNamesErrors) {
  // More layers than the file has: the missing resblock is named; another hidden size: the
  // shape mismatch names the file's tensor.
  auto cfg = config_of("clip_text_gelu_proj");
  cfg.num_hidden_layers = 5;
  expect_error<diffuse::format_error>(
      [&] {
        ClipTextModel::load_original(
            diffuse::io::ModelDir::open(case_dir("clip_text_gelu_proj") / "open_clip.safetensors"),
            "cond_stage_model.model.", cfg);
      },
      {"missing parameter", "cond_stage_model.model.transformer.resblocks.4."});
  cfg = config_of("clip_text_gelu_proj");
  cfg.hidden_size = 20;
  cfg.num_attention_heads = 5;
  expect_error<diffuse::shape_error>(
      [&] {
        ClipTextModel::load_original(
            diffuse::io::ModelDir::open(case_dir("clip_text_gelu_proj") / "open_clip.safetensors"),
            "cond_stage_model.model.", cfg);
      },
      {"cond_stage_model.model.token_embedding.weight"});
  // A prefix with nothing under it: the first parameter is missing, under its original name.
  expect_error<diffuse::format_error>(
      [&] {
        ClipTextModel::load_original(
            diffuse::io::ModelDir::open(case_dir("clip_text_quick") / "sd1_single_file.safetensors"),
            "conditioner.embedders.0.transformer.", config_of("clip_text_quick"));
      },
      {"missing parameter 'conditioner.embedders.0.transformer.embeddings.token_embedding.weight'"});
}
