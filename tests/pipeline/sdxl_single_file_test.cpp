// SPDX-License-Identifier: MIT
// An SDXL single-file checkpoint as a pipeline: tests/data/pipelines/sdxl_tiny_single.safetensors is the
// tiny SDXL pipeline of tests/data/pipelines/sdxl_tiny written in the original SGM layout of
// sd_xl_base_1.0.safetensors (U-Net model.diffusion_model., VAE first_stage_model., CLIP ViT-L/14
// conditioner.embedders.0.transformer.text_model. with transformers' names and its position_ids, OpenCLIP
// ViT-bigG/14 conditioner.embedders.1.model. with OpenCLIP's names: fused attn.in_proj_weight, ln_1, mlp.c_fc,
// token_embedding, positional_embedding, ln_final, text_projection [width, proj], logit_scale), its naming
// checked against diffusers' own StableDiffusionXLPipeline.from_single_file (tools/make_sdxl_single_file_fixture.py).
// Loaded with the folder's configs and tokenizers, the file must generate exactly the bits the folder does
// (the same weights bound from other names), with and without a negative prompt, at 1 and 2 threads; the
// folder itself is checked against diffusers in sdxl_pipeline_test.cpp, and the file's generations are
// held to the same bounds here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/checkpoint.hpp"
#include "diffuse/models/clip_text.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse::models::CheckpointFamily;
using diffuse_test::expect_error;
using diffuse_test::read_json;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kFolder = kData / "pipelines" / "sdxl_tiny";
const fs::path kFile = kData / "pipelines" / "sdxl_tiny_single.safetensors";
constexpr const char* kClipL = "conditioner.embedders.0.transformer.";
constexpr const char* kBigG = "conditioner.embedders.1.model.";

/// The SDXL family's layout with the tiny folder's configs; the folder itself as the tokenizer
/// (a pipeline folder: tokenizer/ for the first encoder, tokenizer_2/ for the second).
pl::SingleFileOptions tiny_options() {
  auto info = diffuse::models::checkpoint_configs(CheckpointFamily::sdxl);
  info.unet_config = read_json(kFolder / "unet" / "config.json");
  info.vae_config = diffuse::models::AutoencoderKLConfig::from_json(read_json(kFolder / "vae" / "config.json"), "vae");
  info.text_encoders.at(0).config = read_json(kFolder / "text_encoder" / "config.json");
  info.text_encoders.at(1).config = read_json(kFolder / "text_encoder_2" / "config.json");
  info.scheduler_config = read_json(kFolder / "scheduler" / "scheduler_config.json");
  pl::SingleFileOptions o;
  o.checkpoint = info;
  o.tokenizer = kFolder;
  return o;
}

/// A fixture case of tools/make_sdxl_pipeline_fixtures.py as GenerateOptions (as sdxl_pipeline_test.cpp).
pl::GenerateOptions case_options(const nlohmann::json& c) {
  pl::GenerateOptions o = diffuse_test::case_base_options(c);
  o.height = c.at("height").get<std::size_t>();
  o.width = c.at("width").get<std::size_t>();
  o.clip_skip_negative = false;  // diffusers encodes the negative prompt at hidden_states[-2]
  return o;
}

/// The file's tensors, one left out (`drop`) or given another shape (`reshape` -> `shape`), written to `path`.
fs::path rewritten(const fs::path& path, const std::string& drop, const std::string& reshape = {},
                   const diffuse::Shape& shape = {}) {
  const auto file = diffuse::io::SafetensorsFile::open(kFile);
  std::vector<diffuse::io::TensorData> out;
  for (const auto& t : file.tensors()) {
    if (t.name == drop) continue;
    out.push_back({t.name, t.dtype, t.name == reshape ? shape : t.shape, t.bytes()});
  }
  diffuse::io::save_safetensors(path, out, file.metadata());
  return path;
}

}  // namespace

TEST(SdxlSingleFile, DetectsTheSdxlLayoutAndBothEncoders) {
  const auto file = diffuse::io::ModelDir::open(kFile);
  // Both encoders under their SGM prefixes, in the layouts load_original reads (transformers names for
  // CLIP-L, OpenCLIP's fused names for bigG).
  EXPECT_TRUE(diffuse::models::ClipTextModel::has_original_names(file, kClipL));
  EXPECT_TRUE(diffuse::models::ClipTextModel::has_original_names(file, kBigG));
  EXPECT_TRUE(file.contains(std::string(kBigG) + "transformer.resblocks.0.attn.in_proj_weight"));
  EXPECT_TRUE(file.contains(std::string(kBigG) + "text_projection"));
  EXPECT_TRUE(file.contains(std::string(kBigG) + "logit_scale"));
  // The keys say SDXL, but this SDXL is not SDXL base's size (cross-attention 48, one layer per block):
  // detection names the family and the tensor that does not fit, so the tiny file needs its configs given.
  expect_error<diffuse::format_error>([&] { (void)diffuse::models::detect_checkpoint(file); },
                                      {"sdxl_tiny_single.safetensors", "the text encoder keys say sdxl",
                                       "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", "[*, 2048]"});
  // The same encoder tensors beside a U-Net stand-in of SDXL base's shapes: detected as sdxl with
  // both encoders, the second one OpenCLIP's with its projection.
  diffuse_test::TempDir tmp("sdxl_detect");
  const auto src = diffuse::io::SafetensorsFile::open(kFile);
  std::vector<diffuse::io::TensorData> keep;
  for (const auto& t : src.tensors())
    if (t.name.starts_with("conditioner.")) keep.push_back({t.name, t.dtype, t.shape, t.bytes()});
  const std::vector<std::byte> zeros(320 * 4 * 3 * 3 * 2);
  keep.push_back({"model.diffusion_model.input_blocks.0.0.weight", diffuse::DType::F16, {320, 4, 3, 3}, zeros});
  keep.push_back({"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
                  diffuse::DType::F16,
                  {1, 2048},
                  std::span<const std::byte>(zeros).first(2 * 2048)});
  const fs::path stand_in = tmp.path() / "sdxl.safetensors";
  diffuse::io::save_safetensors(stand_in, keep);
  const auto info = diffuse::models::detect_checkpoint(diffuse::io::ModelDir::open(stand_in));
  EXPECT_EQ(info.family, CheckpointFamily::sdxl);
  ASSERT_EQ(info.text_encoders.size(), 2u);
  EXPECT_EQ(info.text_encoders[0].prefix, kClipL);
  EXPECT_EQ(info.text_encoders[0].folder, "text_encoder");
  EXPECT_EQ(info.text_encoders[1].prefix, kBigG);
  EXPECT_EQ(info.text_encoders[1].folder, "text_encoder_2");
  EXPECT_EQ(info.text_encoders[1].pad_token, "!");
}

TEST(SdxlSingleFile, LoadsAsTheFolder) {
  const auto file = pl::Model::load_single_file(kFile, tiny_options());
  const auto folder = pl::Model::load(kFolder);
  EXPECT_EQ(file.pipeline_class(), "StableDiffusionXLPipeline");
  EXPECT_EQ(file.name(), "sdxl_tiny_single");
  EXPECT_EQ(file.info().parameters, folder.info().parameters);
  EXPECT_EQ(file.info().text_dim, 48u);
  EXPECT_EQ(file.info().pooled_dim, 16u);
  EXPECT_EQ(file.info().time_ids, 6u);
  ASSERT_EQ(file.text_encoders().size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& a = file.text_encoders()[i];
    const auto& b = folder.text_encoders()[i];
    EXPECT_EQ(a.encoder->parameters(), b.encoder->parameters()) << i;
    EXPECT_EQ(a.encoder->config().with_projection, b.encoder->config().with_projection) << i;
    EXPECT_EQ(a.tokenizer->pad_id(), b.tokenizer->pad_id()) << i;
    EXPECT_EQ(a.tokenizer->vocab_size(), b.tokenizer->vocab_size()) << i;
  }
  EXPECT_EQ(file.text_encoders()[1].tokenizer->pad_id(), 0);  // tokenizer_2/'s "!"
  EXPECT_EQ(file.vae()->config().scaling_factor, folder.vae()->config().scaling_factor);
  EXPECT_TRUE(file.force_zeros_for_empty_prompt());
  EXPECT_EQ(file.scheduler_class(), folder.scheduler_class());
  EXPECT_EQ(file.defaults().sampler, folder.defaults().sampler);
  EXPECT_EQ(file.defaults().cfg_scale, 5.0f);
}

// "dpmpp_2m_negative_batch": two prompts, two negative prompts, guidance 5; "euler": no negative prompt with
// guidance 5, so the unconditional branch is SDXL's zero states and zero pooled embedding.
TEST(SdxlSingleFile, GeneratesTheFoldersBits) {
  const auto file = pl::Model::load_single_file(kFile, tiny_options());
  const auto folder = pl::Model::load(kFolder);
  const auto ref = diffuse::io::SafetensorsFile::open(kFolder / "generations.safetensors");
  const nlohmann::json cases = read_json(kData / "pipelines" / "summary.json").at("sdxl_tiny").at("cases");
  for (const char* name : {"dpmpp_2m_negative_batch", "euler"}) {
    const nlohmann::json& c = cases.at(name);
    const pl::GenerateOptions o = case_options(c);
    EXPECT_EQ(o.negative_prompts.empty(), std::string(name) == "euler");
    const double bound = std::max(20 * c.at("torch_f32_vs_f64_images").get<double>(), 2e-5);
    for (std::size_t threads : {1u, 2u}) {
      diffuse::kernels::Context ctx(threads);
      const Tensor a = pl::generate(file, o, ctx);
      const Tensor b = pl::generate(folder, o, ctx);
      ASSERT_EQ(a.shape(), b.shape());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
          << name << ", " << threads << " thread(s): the file and the folder differ";
      const double e =
          diffuse_test::max_abs_diff(diffuse_test::as_np_images(a), ref.to_f32(std::string(name) + ".images"));
      std::printf("[sdxl single file] %s, %zu thread(s): the folder's bits; images %.3g from diffusers (bound %.3g)\n",
                  name, threads, e, bound);
      EXPECT_LE(e, bound) << name;
    }
  }
}

TEST(SdxlSingleFile, RefusesWhatItCannotRead) {
  diffuse_test::TempDir tmp("sdxl_single");
  const std::string proj = std::string(kBigG) + "text_projection";
  // No pooled projection: the missing tensor is named.
  const fs::path no_proj = rewritten(tmp.path() / "no_projection.safetensors", proj);
  expect_error<diffuse::format_error>([&] { (void)pl::Model::load_single_file(no_proj, tiny_options()); },
                                      {"missing parameter", "'" + proj + "'", "no_projection.safetensors"});
  // The projection in transformers' orientation [proj, width] instead of OpenCLIP's [width, proj].
  const fs::path flipped = rewritten(tmp.path() / "flipped.safetensors", "", proj, {16, 32});
  expect_error<diffuse::shape_error>([&] { (void)pl::Model::load_single_file(flipped, tiny_options()); },
                                     {"'" + proj + "'", "[16, 32]", "[32, 16]"});
  // A fused attention missing in a later layer.
  const std::string qkv = std::string(kBigG) + "transformer.resblocks.3.attn.in_proj_weight";
  const fs::path no_qkv = rewritten(tmp.path() / "no_qkv.safetensors", qkv);
  expect_error<diffuse::format_error>([&] { (void)pl::Model::load_single_file(no_qkv, tiny_options()); },
                                      {"missing parameter", "'" + qkv + "'"});
  // A tokenizer pipeline folder without tokenizer_2/: refused, naming it.
  const fs::path half = tmp.path() / "half";
  fs::create_directories(half);
  fs::copy(kFolder / "tokenizer", half / "tokenizer", fs::copy_options::recursive);
  auto o = tiny_options();
  o.tokenizer = half;
  expect_error<diffuse::io_error>([&] { (void)pl::Model::load_single_file(kFile, o); },
                                  {"tokenizer_2/vocab.json", "text_encoder_2", "SingleFileOptions::tokenizer"});
  // One tokenizer folder serves both encoders as it is (documented): its pad token for the second too.
  o.tokenizer = kFolder / "tokenizer";
  const auto one = pl::Model::load_single_file(kFile, o);
  EXPECT_EQ(one.text_encoders()[1].tokenizer->pad_id(), one.text_encoders()[1].tokenizer->eos_id());
}
