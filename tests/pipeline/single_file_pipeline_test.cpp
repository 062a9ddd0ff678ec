// SPDX-License-Identifier: MIT
// Single-file checkpoints as a pipeline: tests/data/pipelines/sd_tiny_single.safetensors is the
// tiny SD pipeline of tests/data/pipelines/sd_tiny written in the original layout (U-Net, VAE and
// CLIP text encoder under model.diffusion_model. / first_stage_model. / cond_stage_model.), its
// naming checked against diffusers' own from_single_file (tools/make_sd_single_file_fixture.py).
// Loaded with the folder's configs (a single file of the real families takes its configs from
// models::detect_checkpoint; tests/models/checkpoint_test.cpp covers that), the file must generate
// exactly the bits the folder does: the same weights bound from other names.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "pipeline/pipeline_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::expect_error;
using diffuse_test::read_json;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR);
const fs::path kFolder = kData / "pipelines" / "sd_tiny";
const fs::path kFile = kData / "pipelines" / "sd_tiny_single.safetensors";

/// The SD 1.x family's layout with the tiny folder's configs and tokenizer.
pl::SingleFileOptions tiny_options() {
  auto info = diffuse::models::checkpoint_configs(diffuse::models::CheckpointFamily::sd1);
  info.unet_config = read_json(kFolder / "unet" / "config.json");
  info.vae_config = diffuse::models::AutoencoderKLConfig::from_json(read_json(kFolder / "vae" / "config.json"), "vae");
  info.text_encoders.at(0).config = read_json(kFolder / "text_encoder" / "config.json");
  info.scheduler_config = read_json(kFolder / "scheduler" / "scheduler_config.json");
  pl::SingleFileOptions o;
  o.checkpoint = info;
  o.tokenizer = kFolder / "tokenizer";
  return o;
}

pl::GenerateOptions options() {
  pl::GenerateOptions o;
  o.prompts = {"a red apple on a wooden table"};
  o.negative_prompts = {"blurry"};
  o.steps = 3;
  o.seed = 9;
  return o;
}

}  // namespace

TEST(SingleFilePipeline, GeneratesTheFoldersBits) {
  const auto file = pl::Model::load_single_file(kFile, tiny_options());
  const auto folder = pl::Model::load(kFolder);
  EXPECT_EQ(file.pipeline_class(), "StableDiffusionPipeline");
  EXPECT_EQ(file.name(), "sd_tiny_single");
  EXPECT_TRUE(file.text_conditional());
  EXPECT_EQ(file.info().parameters, folder.info().parameters);
  EXPECT_EQ(file.defaults().sampler, "pndm");
  diffuse::kernels::Context ctx(2);
  const Tensor a = pl::generate(file, options(), ctx);
  const Tensor b = pl::generate(folder, options(), ctx);
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "the file and the folder differ";
  // The pipeline folder as the tokenizer: its tokenizer/ for the one text encoder, the same bits.
  auto from_folder = tiny_options();
  from_folder.tokenizer = kFolder;
  const Tensor c = pl::generate(pl::Model::load_single_file(kFile, from_folder), options(), ctx);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)), 0) << "tokenizer/ of the folder differs";
}

TEST(SingleFilePipeline, RefusesWhatItCannotRead) {
  diffuse_test::TempDir tmp;
  // Of the SD 1.x layout, but not of SD 1.5's size: detection names what does not fit.
  expect_error<diffuse::format_error>([&] { (void)pl::Model::load(kFile); }, {"sd_tiny_single.safetensors"});
  // Pickle files are not read at all.
  const fs::path ckpt = tmp.path() / "model.ckpt";
  std::ofstream(ckpt) << "not read";
  expect_error<diffuse::value_error>([&] { (void)pl::Model::load(ckpt); }, {"pickle checkpoint", "safetensors"});
  expect_error<diffuse::io_error>([&] { (void)pl::Model::load(tmp.path() / "none.safetensors"); },
                                  {"no such model folder or file"});
  // Not a checkpoint of a known family: a VAE file alone.
  expect_error<diffuse::format_error>(
      [&] { (void)pl::Model::load(kFolder / "vae" / "diffusion_pytorch_model.safetensors"); },
      {"diffusion_pytorch_model.safetensors"});
  // An inpainting configuration (9 input channels) over a text-to-image U-Net: the first conv's
  // shape disagrees, named.
  auto inpaint = tiny_options();
  inpaint.checkpoint->family = diffuse::models::CheckpointFamily::sd1_inpaint;
  inpaint.checkpoint->unet_config["in_channels"] = 9;
  expect_error<diffuse::error>([&] { (void)pl::Model::load_single_file(kFile, inpaint); },
                               {"model.diffusion_model.input_blocks.0.0.weight"});
  // The built-in CLIP vocabulary has ids the tiny encoder (1,000 tokens) cannot embed: refused at encode.
  auto builtin = tiny_options();
  builtin.tokenizer.clear();
  const auto m = pl::Model::load_single_file(kFile, builtin);
  EXPECT_EQ(m.text_encoders()[0].tokenizer->vocab_size(), 49408u);
  diffuse::kernels::Context ctx(1);
  pl::Generation g(m, options());
  expect_error<diffuse::value_error>([&] { g.step(ctx); }, {"encoding the prompts"});
}
