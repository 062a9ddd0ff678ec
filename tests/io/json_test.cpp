// SPDX-License-Identifier: MIT
// The strict JSON reader (core/json.hpp) and every file diffuse opens through it: config.json
// (io::ModelDir), scheduler_config.json (pipeline::Model::load, DiffusersScheduler::from_file).
// Issue 10, 2.3: the scheduler config used to be parsed without a file-type check, a size cap, a
// depth limit or duplicate-key detection.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/pipeline/model.hpp"
#include "diffuse/sample/diffusers_scheduler.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse_test::expect_error;

const fs::path kModels = fs::path(DIFFUSE_SOURCE_DIR) / "models";

/// A fresh temporary folder per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "diffuse_json_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? fs::path(tmpl) : fs::path();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

/// A copy of a shipped model folder whose scheduler_config.json is replaced by `make(path)`.
fs::path model_with_scheduler(const TempDir& d, const char* model, const std::function<void(const fs::path&)>& make) {
  const fs::path dir = d.path() / model;
  fs::create_directories(dir);
  for (const char* f : {"config.json", "diffusion_pytorch_model.safetensors"}) fs::copy_file(kModels / model / f, dir / f);
  make(dir / "scheduler_config.json");
  return dir;
}

std::string nested_arrays(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(StrictJson, ParsesAndRejects) {
  const auto j = diffuse::parse_json_strict(R"({"a": [1, 2, {"b": null}], "c": "d"})", "t", "f.json", "config");
  EXPECT_EQ(j["a"][1], 2);
  expect_error<diffuse::format_error>([] { diffuse::parse_json_strict(R"({"a": 1, "a": 2})", "t", "f.json", "config"); },
                                      {"[t] f.json: config: duplicate key 'a'"});
  expect_error<diffuse::format_error>(
      [] { diffuse::parse_json_strict(R"({"x": {"a": 1, "b": {"a": 3}, "a": 2}})", "t", "f.json", "config"); },
      {"duplicate key 'a'"});
  // The same key in sibling objects is fine.
  EXPECT_NO_THROW(diffuse::parse_json_strict(R"([{"a": 1}, {"a": 2}])", "t", "f.json", "config"));
  EXPECT_NO_THROW(diffuse::parse_json_strict(nested_arrays(128), "t", "f.json", "config"));
  expect_error<diffuse::format_error>([] { diffuse::parse_json_strict(nested_arrays(129), "t", "f.json", "config"); },
                                      {"f.json", "nesting deeper than 128"});
  expect_error<diffuse::format_error>([] { diffuse::parse_json_strict("{\"a\": NaN}", "t", "f.json", "config"); },
                                      {"f.json", "not valid JSON"});
  expect_error<diffuse::format_error>([] { diffuse::parse_json_strict("{} // c", "t", "f.json", "config"); },
                                      {"not valid JSON"});
}

TEST(StrictJson, PythonInfinityLiteralsInFiles) {
  // Python's json writes float("inf") as a bare Infinity: diffusers' DPMSolverMultistepScheduler config
  // has "lambda_min_clipped": -Infinity. Files take Infinity and -Infinity as values (not inside strings,
  // which stay as written); NaN, and both literals in a safetensors header (parse_json_strict), are refused.
  TempDir d;
  const fs::path f = d.path() / "scheduler_config.json";
  write(f, R"({"lambda_min_clipped": -Infinity, "x": [Infinity, 1], "s": "-Infinity \" Infinity", "n": "NaN"})");
  const auto j = diffuse::read_json_file(f, "t", "scheduler config");
  EXPECT_EQ(j["lambda_min_clipped"].get<double>(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(j["x"][0].get<double>(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(j["x"][1], 1);
  EXPECT_EQ(j["s"], "-Infinity \" Infinity");
  EXPECT_EQ(j["n"], "NaN");
  write(f, R"({"a": NaN})");
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(f, "t", "config"); },
                                      {f.string(), "not valid JSON"});
  write(f, R"({"a": Infinityy})");
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(f, "t", "config"); }, {"not valid JSON"});
  write(f, "{\"a\": \"\\u0000diffuse-literal:Infinity\"}");
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(f, "t", "config"); }, {"reserved"});
  expect_error<diffuse::format_error>([] { diffuse::parse_json_strict("{\"a\": -Infinity}", "t", "h", "header"); },
                                      {"not valid JSON"});
  // A DPM-Solver folder as diffusers' save_pretrained writes it loads (the shipped emoji model is one).
  EXPECT_NO_THROW(diffuse::pipeline::Model::load(kModels / "emoji"));
}

TEST(StrictJson, FileTypeAndSize) {
  TempDir d;
  const fs::path ok = d.path() / "ok.json";
  write(ok, R"({"a": 1})");
  EXPECT_EQ(diffuse::read_json_file(ok, "t", "config")["a"], 1);

  // A symlink to /dev/zero is refused without reading (it used to read until memory ran out).
  const fs::path zero = d.path() / "zero.json";
  fs::create_symlink("/dev/zero", zero);
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(zero, "t", "config"); },
                                      {zero.string(), "character device", "not a regular file"});
  // A FIFO without a writer is refused at once (it used to block forever).
  const fs::path fifo = d.path() / "fifo.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto t0 = std::chrono::steady_clock::now();
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(fifo, "t", "config"); }, {fifo.string(), "FIFO"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(d.path(), "t", "config"); }, {"a directory"});
  expect_error<diffuse::io_error>([&] { diffuse::read_json_file(d.path() / "missing.json", "t", "config"); },
                                  {"missing.json", "cannot open"});

  // The size cap: 4 MiB by default, the size and the cap in the message.
  const fs::path big = d.path() / "big.json";
  write(big, "[" + std::string(5u << 20, ' ') + "]");
  expect_error<diffuse::format_error>([&] { diffuse::read_json_file(big, "t", "config"); },
                                      {big.string(), "5242882 bytes", "limit of 4194304 bytes (4 MiB)"});
  diffuse::JsonLimits larger;
  larger.max_bytes = 6u << 20;
  EXPECT_TRUE(diffuse::read_json_file(big, "t", "config", larger).is_array());
}

TEST(StrictJson, SchedulerConfigOfAModelFolder) {
  TempDir d;
  // Duplicate key (accepted before, the last value winning).
  auto dir = model_with_scheduler(d, "digits-dit", [](const fs::path& p) {
    write(p, R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0, "shift": 3.0})");
  });
  expect_error<diffuse::format_error>([&] { diffuse::pipeline::Model::load(dir); },
                                      {(dir / "scheduler_config.json").string(), "duplicate key 'shift'"});
  fs::remove_all(dir);
  // 300 KB of nested arrays (a stack overflow, exit 139, before).
  dir = model_with_scheduler(d, "digits-dit", [](const fs::path& p) { write(p, nested_arrays(150000)); });
  expect_error<diffuse::format_error>([&] { diffuse::pipeline::Model::load(dir); },
                                      {"scheduler_config.json", "nesting deeper than 128"});
  fs::remove_all(dir);
  // A symlink to /dev/zero and a FIFO.
  dir = model_with_scheduler(d, "digits-dit", [](const fs::path& p) { fs::create_symlink("/dev/zero", p); });
  expect_error<diffuse::format_error>([&] { diffuse::pipeline::Model::load(dir); },
                                      {"scheduler_config.json", "character device"});
  fs::remove_all(dir);
  dir = model_with_scheduler(d, "digits-dit", [](const fs::path& p) { ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0); });
  expect_error<diffuse::format_error>([&] { diffuse::pipeline::Model::load(dir); }, {"scheduler_config.json", "FIFO"});
  fs::remove_all(dir);

  // A float key beyond the float range (an undefined double-to-float conversion before).
  dir = model_with_scheduler(d, "digits-dit", [](const fs::path& p) {
    write(p, R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "clip_sample_range": 1e300})");
  });
  expect_error<diffuse::format_error>([&] { diffuse::pipeline::Model::load(dir); }, {"clip_sample_range", "range of a float"});
  fs::remove_all(dir);

  // config.json goes through the same reader.
  dir = model_with_scheduler(d, "digits-unet", [](const fs::path& p) { fs::copy_file(kModels / "digits-unet" / "scheduler_config.json", p); });
  fs::remove(dir / "config.json");
  fs::create_symlink("/dev/zero", dir / "config.json");
  expect_error<diffuse::format_error>([&] { diffuse::io::ModelDir::open(dir); }, {"config.json", "character device"});
}

TEST(StrictJson, DiffusersSchedulerFromFile) {
  TempDir d;
  const fs::path p = d.path() / "scheduler_config.json";
  write(p, R"({"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "num_train_timesteps": 10})");
  expect_error<diffuse::format_error>([&] { diffuse::DiffusersScheduler<float>::from_file(p); },
                                      {p.string(), "duplicate key 'num_train_timesteps'"});
  write(p, nested_arrays(150000));
  expect_error<diffuse::format_error>([&] { diffuse::DiffusersScheduler<float>::from_file(p); }, {"nesting deeper"});
  fs::remove(p);
  fs::create_symlink("/dev/zero", p);
  expect_error<diffuse::format_error>([&] { diffuse::DiffusersScheduler<float>::from_file(p); }, {"character device"});
  fs::remove(p);
  write(p, R"({"_class_name": "EulerDiscreteScheduler"})");
  EXPECT_NO_THROW(diffuse::DiffusersScheduler<float>::from_file(p));
}

}  // namespace
