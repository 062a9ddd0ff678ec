// SPDX-License-Identifier: MIT
#include "diffuse/io/model_dir.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "diffuse/core/error.hpp"

namespace fs = std::filesystem;
using diffuse::DType;
using diffuse::Tensor;
using diffuse::io::ModelDir;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / ("diffuse_md_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path / "unet");
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path unet() const { return path / "unet"; }
};

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// Writes a safetensors file whose tensors are [n] filled with `value`.
void write_weights(const fs::path& p, const std::vector<std::string>& names, float value, DType storage = DType::F32) {
  std::map<std::string, Tensor> m;
  for (const auto& n : names) m.emplace(n, Tensor({2}, value));
  diffuse::io::save_safetensors(p, m, {{"format", "pt"}}, storage);
}

using diffuse_test::expect_error;

const std::string kConfig = R"({"_class_name": "UNet2DModel", "in_channels": 3, "block_out_channels": [32, 64]})";

// An index over two shards: a,b in shard 1, c in shard 2 (unless `map` says otherwise).
void write_sharded(const fs::path& dir, const std::string& index_name, const std::string& map_json) {
  write_weights(dir / "s-00001-of-00002.safetensors", {"a", "b"}, 1.0f);
  write_weights(dir / "s-00002-of-00002.safetensors", {"c"}, 2.0f);
  write_text(dir / index_name, R"({"metadata": {"total_size": 24}, "weight_map": )" + map_json + "}");
}

const std::string kGoodMap =
    R"({"a": "s-00001-of-00002.safetensors", "b": "s-00001-of-00002.safetensors", "c": "s-00002-of-00002.safetensors"})";

}  // namespace

TEST(ModelDir, SingleFileFolder) {
  TempDir t;
  write_text(t.unet() / "config.json", kConfig);
  write_weights(t.unet() / "diffusion_pytorch_model.safetensors", {"conv_in.weight", "conv_in.bias"}, 0.5f);
  const auto m = ModelDir::open(t.unet());
  EXPECT_TRUE(m.has_config());
  EXPECT_EQ(m.config().at("in_channels").get<int>(), 3);
  EXPECT_EQ(m.config().at("_class_name"), "UNet2DModel");
  EXPECT_FALSE(m.sharded());
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.names(), (std::vector<std::string>{"conv_in.bias", "conv_in.weight"}));
  ASSERT_EQ(m.weight_files().size(), 1u);
  EXPECT_EQ(m.weight_files()[0].filename(), "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(m.tensor("conv_in.weight").dtype, DType::F32);
  EXPECT_EQ(m.to_f32("conv_in.bias")[1], 0.5f);
  EXPECT_FALSE(m.contains("nope"));
  expect_error<diffuse::format_error>([&] { (void)m.tensor("nope"); }, {"[ModelDir]", t.unet().string(), "no tensor 'nope'"});
}

TEST(ModelDir, VariantsAndTransformersName) {
  TempDir t;
  write_text(t.unet() / "config.json", kConfig);
  write_weights(t.unet() / "diffusion_pytorch_model.safetensors", {"w"}, 1.0f);
  write_weights(t.unet() / "diffusion_pytorch_model.fp16.safetensors", {"w"}, 0.25f, DType::F16);
  const auto full = ModelDir::open(t.unet());
  EXPECT_EQ(full.tensor("w").dtype, DType::F32);
  const auto half = ModelDir::open(t.unet(), "fp16");
  EXPECT_EQ(half.tensor("w").dtype, DType::F16);
  EXPECT_EQ(half.to_f32("w")[0], 0.25f);
  EXPECT_EQ(half.weight_files()[0].filename(), "diffusion_pytorch_model.fp16.safetensors");
  // A variant that does not exist is an error, not a silent fallback.
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.unet(), "bf16"); },
                                  {"[ModelDir]", "no weights of variant 'bf16' found",
                                   "diffusion_pytorch_model.bf16.safetensors",
                                   "diffusion_pytorch_model.safetensors.index.bf16.json", "model.bf16.safetensors"});
  // transformers' file name.
  TempDir t2;
  write_text(t2.unet() / "config.json", "{}");
  write_weights(t2.unet() / "model.safetensors", {"text_model.embeddings.position_ids"}, 3.0f);
  EXPECT_EQ(ModelDir::open(t2.unet()).to_f32("text_model.embeddings.position_ids")[0], 3.0f);
}

TEST(ModelDir, ShardedIndex) {
  TempDir t;
  write_text(t.unet() / "config.json", kConfig);
  write_sharded(t.unet(), "diffusion_pytorch_model.safetensors.index.json", kGoodMap);
  const auto m = ModelDir::open(t.unet());
  EXPECT_TRUE(m.sharded());
  EXPECT_EQ(m.index_metadata().at("total_size"), 24);
  EXPECT_EQ(m.files().size(), 2u);
  EXPECT_EQ(m.size(), 3u);
  EXPECT_EQ(m.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(m.to_f32("a")[0], 1.0f);
  EXPECT_EQ(m.to_f32("c")[1], 2.0f);
  EXPECT_EQ(fs::path(m.file_of("c").label()).filename(), "s-00002-of-00002.safetensors");
  EXPECT_EQ(fs::path(m.file_of("b").label()).filename(), "s-00001-of-00002.safetensors");
  // The index file itself can be opened, too.
  EXPECT_EQ(ModelDir::open(t.unet() / "diffusion_pytorch_model.safetensors.index.json").size(), 3u);
}

TEST(ModelDir, ShardedVariantIndex) {
  TempDir t;
  write_text(t.unet() / "config.json", kConfig);
  write_sharded(t.unet(), "diffusion_pytorch_model.safetensors.index.fp16.json", kGoodMap);
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.unet()); }, {"no weights found"});
  EXPECT_EQ(ModelDir::open(t.unet(), "fp16").size(), 3u);
}

TEST(ModelDir, SingleFilePath) {
  TempDir t;
  write_weights(t.path / "x.safetensors", {"k"}, 4.0f);
  const auto m = ModelDir::open(t.path / "x.safetensors");
  EXPECT_FALSE(m.has_config());
  EXPECT_EQ(m.to_f32("k")[0], 4.0f);
}

TEST(ModelDir, BadIndexes) {
  const std::string s1 = "s-00001-of-00002.safetensors", s2 = "s-00002-of-00002.safetensors";
  struct Case {
    const char* what;
    std::string map;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases{
      {"key in the wrong shard", R"({"a": ")" + s2 + R"(", "b": ")" + s1 + R"(", "c": ")" + s2 + R"("})",
       {"tensor 'a' is in shard '" + s1 + "' but weight_map says '" + s2 + "'"}},
      {"key missing from shards", R"({"a": ")" + s1 + R"(", "b": ")" + s1 + R"(", "c": ")" + s2 + R"(", "d": ")" + s2 + R"("})",
       {"weight_map puts tensor 'd' in shard '" + s2 + "', which does not hold it"}},
      {"shard tensor not listed", R"({"a": ")" + s1 + R"(", "c": ")" + s2 + R"("})",
       {"tensor 'b' of shard '" + s1 + "' is not in weight_map"}},
      {"duplicate key", R"({"a": ")" + s1 + R"(", "a": ")" + s2 + R"(", "b": ")" + s1 + R"(", "c": ")" + s2 + R"("})",
       {"index: duplicate key 'a'"}},
      {"escape with ..", R"({"a": "../s-00001-of-00002.safetensors"})", {"shard '../s-00001-of-00002.safetensors' leaves the model folder"}},
      {"absolute path", R"({"a": "/etc/passwd"})", {"shard '/etc/passwd' is an absolute path"}},
      {"not a string", R"({"a": 1})", {"weight_map entry for tensor 'a' is a JSON number"}},
      {"weight_map not object", R"([])", {"\"weight_map\" is a JSON array"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    TempDir t;
    write_text(t.unet() / "config.json", kConfig);
    write_sharded(t.unet(), "diffusion_pytorch_model.safetensors.index.json", c.map);
    const std::string index = (t.unet() / "diffusion_pytorch_model.safetensors.index.json").string();
    try {
      (void)ModelDir::open(t.unet());
      ADD_FAILURE() << "accepted";
    } catch (const diffuse::format_error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("[ModelDir] " + index + ": ", 0), 0u) << msg;
      for (const auto& p : c.parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
  }
}

TEST(ModelDir, TensorInTwoShardsAndSymlinkEscape) {
  TempDir t;
  write_text(t.unet() / "config.json", kConfig);
  write_weights(t.unet() / "one.safetensors", {"a", "b"}, 1.0f);
  write_weights(t.unet() / "two.safetensors", {"b", "c"}, 2.0f);
  write_text(t.unet() / "diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map": {"a": "one.safetensors", "b": "one.safetensors", "c": "two.safetensors"}})");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); },
                                      {"tensor 'b' is in two shards, 'one.safetensors' and 'two.safetensors'"});

  // A symlink inside the folder pointing outside it.
  write_weights(t.path / "outside.safetensors", {"a"}, 1.0f);
  fs::create_symlink(t.path / "outside.safetensors", t.unet() / "link.safetensors");
  write_text(t.unet() / "diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"a": "link.safetensors"}})");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); },
                                      {"shard 'link.safetensors' resolves outside the model folder"});
}

TEST(ModelDir, MissingAndMalformedFiles) {
  TempDir t;
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.path / "nothing"); }, {"no such file or folder"});
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.unet()); }, {t.unet().string(), "no config.json"});
  write_text(t.unet() / "config.json", R"({"in_channels": 3,})");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); },
                                      {"[ModelDir] " + (t.unet() / "config.json").string(), "config is not valid JSON"});
  write_text(t.unet() / "config.json", R"({"in_channels": 3, "in_channels": 4})");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); }, {"config: duplicate key 'in_channels'"});
  write_text(t.unet() / "config.json", "[1]");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); }, {"config is a JSON array, expected an object"});
  write_text(t.unet() / "config.json", kConfig);
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.unet()); }, {"no weights found"});
  write_text(t.unet() / "diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"a": "gone.safetensors"}})");
  expect_error<diffuse::io_error>([&] { (void)ModelDir::open(t.unet()); }, {"shard 'gone.safetensors' does not exist"});
  write_text(t.unet() / "diffusion_pytorch_model.safetensors.index.json", "{\"metadata\": {}}");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); }, {"no \"weight_map\""});
  // A malformed weights file surfaces the safetensors error, naming that file.
  write_text(t.unet() / "diffusion_pytorch_model.safetensors", "garbage");
  expect_error<diffuse::format_error>([&] { (void)ModelDir::open(t.unet()); },
                                      {"[safetensors] " + (t.unet() / "diffusion_pytorch_model.safetensors").string(),
                                       "file is 7 bytes"});
}
