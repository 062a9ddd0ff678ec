// SPDX-License-Identifier: MIT
// libFuzzer target: a fuzzed config.json and scheduler_config.json in a model folder next to small
// real weights, loaded with pipeline::Model::load and run for one sampler step; the scheduler
// config also drives the DiffusersScheduler facade for two steps. Every input must either be
// refused with a diffuse::error (format, value, shape, memory, io) or run to the end with finite
// values, without touching memory out of bounds (ASan), undefined behaviour (UBSan), any other
// exception (std::bad_alloc, nlohmann's type_error: uncaught, so libFuzzer reports them) or more
// than the memory limit below (-rss_limit_mb).
//
// Input: byte 0 picks the weights (digits-dit, digits-unet, tests/data/models/dit_patch4,
// unet2d_basic) and byte 1 the sampler, steps and batch; the rest is `config.json NUL
// scheduler_config.json` (without a NUL, the rest is the config and the weights' own scheduler
// config is used). Seeds: tests/data/model_config (the real configs).
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "diffuse/sample/diffusers_scheduler.hpp"

namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;

constexpr std::uint64_t kMemoryLimit = std::uint64_t{256} << 20;  // per load and per generation

struct Base {
  fs::path dir;  // config.json, weights and (for the shipped models) scheduler_config.json
  const char* default_scheduler;
};

const Base kBases[] = {
    {fs::path(DIFFUSE_SOURCE_DIR) / "models/digits-dit", nullptr},
    {fs::path(DIFFUSE_SOURCE_DIR) / "models/digits-unet", nullptr},
    {fs::path(DIFFUSE_SOURCE_DIR) / "tests/data/models/dit_patch4",
     R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0})"},
    {fs::path(DIFFUSE_SOURCE_DIR) / "tests/data/models/unet2d_basic",
     R"({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"})"},
};

const char* const kSamplers[] = {"", "euler", "dpmpp_2m", "ddim", "unipc", "heun", "euler_a", "lms",
                                 "dpm_2", "flow_euler", "deis", "lcm", "dpmpp_sde", "ddpm", "dpmpp_3m_sde", "dpm_adaptive"};

/// One folder per base under a private temporary directory: the fuzzed files, the weights linked.
struct Folders {
  fs::path root;
  std::vector<fs::path> dirs;
  Folders() {
    std::string tmpl = (fs::temp_directory_path() / "diffuse_model_config_fuzz_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    root = tmpl;
    for (std::size_t i = 0; i < std::size(kBases); ++i) {
      const fs::path d = root / std::to_string(i);
      fs::create_directories(d);
      fs::create_symlink(kBases[i].dir / "diffusion_pytorch_model.safetensors", d / "diffusion_pytorch_model.safetensors");
      dirs.push_back(d);
    }
  }
  ~Folders() {
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
    if (!std::isfinite(v)) __builtin_trap();  // step() promises a value_error instead
}

void run_pipeline(const fs::path& dir, std::uint8_t knobs) {
  diffuse::nn::LoadOptions lo;
  lo.memory_limit = kMemoryLimit;
  const pl::Model model = pl::Model::load(dir, lo);
  pl::GenerateOptions o;
  o.memory_limit = kMemoryLimit;
  o.sampler = kSamplers[knobs & 15];
  o.steps = 1 + ((knobs >> 4) & 3);
  o.batch = 1 + ((knobs >> 6) & 1);
  if (model.class_conditional()) o.labels = {model.null_class() && (knobs & 0x80) ? *model.null_class() : 0};
  // Small images keep the step fast: the native size up to 32, else the smallest allowed >= 8.
  const std::size_t mult = std::max<std::size_t>(model.info().size_multiple, 1);
  if (mult > 64) return;
  std::size_t side = model.info().sample_size;
  if (side > 32 || side % mult != 0) side = (8 + mult - 1) / mult * mult;
  o.width = o.height = side;
  static diffuse::kernels::Context ctx(1);
  pl::Generation g(model, o);
  g.step(ctx);
  check_finite(g.sample());
  if (g.done()) check_finite(g.result());
}

void run_facade(const std::string& sched_text, std::uint8_t knobs) {
  const nlohmann::json j = diffuse::parse_json_strict(sched_text, "fuzz", "scheduler_config.json", "scheduler config");
  diffuse::DiffusersScheduler<float> s(j);
  s.set_timesteps(1 + (knobs & 7));
  diffuse::TorchGenerator gen(knobs);
  diffuse::Tensor x = diffuse::randn(gen, {1, 1, 4, 4});
  x.array() *= s.init_noise_sigma();
  const std::vector<double> ts = s.timesteps();
  for (std::size_t i = 0; i < ts.size() && i < 2; ++i) {
    const diffuse::Tensor in = s.scale_model_input(x, ts[i]);
    diffuse::Tensor out(in.shape());
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = 0.5f * in[k];
    x = s.step(out, ts[i], x, &gen);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Folders folders;
  if (size < 2) return 0;
  const std::size_t base = data[0] % std::size(kBases);
  const std::uint8_t knobs = data[1];
  const std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
  const std::size_t nul = rest.find('\0');
  const std::string_view config = rest.substr(0, nul);
  std::string sched;
  if (nul != std::string_view::npos)
    sched = std::string(rest.substr(nul + 1));
  else
    sched = kBases[base].default_scheduler ? kBases[base].default_scheduler
                                           : read(kBases[base].dir / "scheduler_config.json");
  const fs::path dir = folders.dirs[base];
  write(dir / "config.json", config);
  write(dir / "scheduler_config.json", sched);
  try {
    run_pipeline(dir, knobs);
  } catch (const diffuse::error&) {
    // Refused: fine.
  }
  try {
    run_facade(sched, knobs);
  } catch (const diffuse::error&) {
  }
  return 0;
}
