// SPDX-License-Identifier: MIT
// libFuzzer target: a fuzzed model_index.json and vae/config.json in a DiTPipeline folder whose other
// components are the small real ones of tests/data/pipelines/dit_tiny, loaded with
// pipeline::Model::load and, when it loads, run for one sampler step and the VAE decode; the
// index's id2label also drives ClassNames lookups. Every input must either be refused with a
// diffuse::error or run to the end with finite values, without touching memory out of bounds
// (ASan), undefined behaviour (UBSan), any other exception (uncaught: libFuzzer reports it) or more
// than the memory limit below.
//
// Input: byte 0 picks the sampler and the class; the rest is `model_index.json NUL vae/config.json`
// (without a NUL, the rest is the index and the VAE keeps its real config). Seeds:
// tests/data/pipeline_index (the real index and VAE configs, in this format).
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/pipeline.hpp"

namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;

constexpr std::uint64_t kMemoryLimit = std::uint64_t{256} << 20;
const fs::path kTiny = fs::path(DIFFUSE_SOURCE_DIR) / "tests/data/pipelines/dit_tiny";

/// The pipeline folder under a private temporary directory: fuzzed files, the weights linked.
struct Folder {
  fs::path root, dir;
  Folder() {
    std::string tmpl = (fs::temp_directory_path() / "diffuse_pipeline_index_fuzz_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    root = tmpl;
    dir = root / "pipeline";
    fs::create_directories(dir / "vae");
    fs::create_directory_symlink(kTiny / "transformer", dir / "transformer");
    fs::create_directory_symlink(kTiny / "scheduler", dir / "scheduler");
    fs::create_symlink(kTiny / "vae" / "diffusion_pytorch_model.safetensors",
                       dir / "vae" / "diffusion_pytorch_model.safetensors");
  }
  ~Folder() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

void write(const fs::path& p, std::string_view text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void check_finite(const diffuse::Tensor& t) {
  for (float v : t.values())
    if (!std::isfinite(v)) __builtin_trap();  // the pipeline promises a value_error instead
}

void run(const fs::path& dir, std::uint8_t knobs) {
  diffuse::nn::LoadOptions lo;
  lo.memory_limit = kMemoryLimit;
  const pl::Model model = pl::Model::load(dir, lo);
  // Class names: a few lookups (each refused or an id in range).
  for (const char* name : {"golden retriever", "crane", "tench", "x", ""}) {
    try {
      const std::int64_t id = model.class_label(name);
      if (!model.valid_label(id)) __builtin_trap();
    } catch (const diffuse::value_error&) {
    }
  }
  (void)model.class_names().nearest("goldn retriver");
  pl::GenerateOptions o;
  o.memory_limit = kMemoryLimit;
  o.sampler = (knobs & 1) ? "ddim" : "dpmpp_2m";
  o.steps = 1;
  if (model.class_conditional()) o.labels = {static_cast<std::int64_t>(knobs >> 1) % 10};
  static diffuse::kernels::Context ctx(1);
  pl::Generation g(model, o);
  while (!g.done()) g.step(ctx);
  check_finite(g.result());
  if (g.result().dim(1) != model.image_channels()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Folder folder;
  static const std::string real_vae = read(kTiny / "vae" / "config.json");
  if (size < 1) return 0;
  const std::uint8_t knobs = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::size_t nul = rest.find('\0');
  write(folder.dir / "model_index.json", rest.substr(0, nul));
  write(folder.dir / "vae" / "config.json", nul == std::string_view::npos ? std::string_view(real_vae) : rest.substr(nul + 1));
  try {
    run(folder.dir, knobs);
  } catch (const diffuse::error&) {
    // Refused: fine.
  }
  return 0;
}
