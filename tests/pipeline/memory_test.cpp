// SPDX-License-Identifier: MIT
// Memory limits (issue 10, 2.5): sizes parsed and printed, the bound on num_train_timesteps, loads
// and generations refused before allocating with the amount, the activation arena's cap, the
// networks' estimates against the measured arena peak, and allocation failures as memory_error.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;
using diffuse::Tensor;
using diffuse_test::expect_error;

const fs::path kModels = fs::path(DIFFUSE_SOURCE_DIR) / "models";
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

TEST(Memory, ParseAndFormatSizes) {
  EXPECT_EQ(diffuse::parse_memory_size("4G"), 4 * kGiB);
  EXPECT_EQ(diffuse::parse_memory_size("512M"), std::uint64_t{512} << 20);
  EXPECT_EQ(diffuse::parse_memory_size("1.5GiB"), 3 * kGiB / 2);
  EXPECT_EQ(diffuse::parse_memory_size("100k"), 102400u);
  EXPECT_EQ(diffuse::parse_memory_size("65536"), 65536u);
  EXPECT_EQ(diffuse::parse_memory_size("2TB"), std::uint64_t{2} << 40);
  for (const char* bad : {"", "G", "4X", "0", "-1", "4 G", "1e9", "99999999999T"})
    expect_error<diffuse::value_error>([&] { diffuse::parse_memory_size(bad); }, {"not a memory size"});
  EXPECT_EQ(diffuse::format_bytes(512), "512 bytes");
  EXPECT_EQ(diffuse::format_bytes(3 * kGiB / 2), "1.5 GiB");
  // The default: 3/4 of the physical memory.
  const std::uint64_t phys = diffuse::physical_memory_bytes();
  ASSERT_GT(phys, 0u);
  EXPECT_EQ(diffuse::default_memory_limit(), phys / 4 * 3);
  EXPECT_EQ(diffuse::resolve_memory_limit(0), phys / 4 * 3);
  EXPECT_EQ(diffuse::resolve_memory_limit(123), 123u);
}

// `num_train_timesteps: 2e9` in a tiny config asked for 16 GB of schedule tables.
TEST(Memory, TrainTimestepsAreBounded) {
  auto net = pl::Model::load(kModels / "digits-dit").shared_network();
  nlohmann::json sched = nlohmann::json::parse(std::ifstream(kModels / "digits-dit" / "scheduler_config.json"));
  sched["num_train_timesteps"] = 2e9;
  const auto t0 = std::chrono::steady_clock::now();
  expect_error<diffuse::format_error>([&] { pl::Model(net, sched); },
                                      {"num_train_timesteps", "2000000000", "1..100000"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  sched["num_train_timesteps"] = 100000;
  EXPECT_NO_THROW(pl::Model(net, sched));
  sched["num_train_timesteps"] = 0;
  EXPECT_THROW(pl::Model(net, sched), diffuse::format_error);
}

// --width 4096 --height 4096 on the shipped DiT (26 GB of activations with guidance) is refused
// before anything is allocated, saying how much and why.
TEST(Memory, GenerationOverTheLimitIsRefusedWithTheAmount) {
  const auto model = pl::Model::load(kModels / "digits-dit");
  pl::GenerateOptions o;
  o.labels = {3};
  o.width = o.height = 4096;
  o.memory_limit = 4 * kGiB;
  const auto t0 = std::chrono::steady_clock::now();
  expect_error<diffuse::memory_error>([&] { pl::Generation(model, o); },
                                      {"4096x4096", "digits-dit", "needs about", "GiB", "with guidance",
                                       "memory limit is 4.0 GiB"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  const std::uint64_t need = pl::estimate_generation_bytes(model, pl::resolve_options(model, [&] {
                                                             auto r = o;
                                                             r.memory_limit = ~std::uint64_t{0};
                                                             return r;
                                                           }()));
  EXPECT_GT(need, 6 * kGiB);
  // The default limit refuses it too on a machine with less than 4/3 of that.
  o.memory_limit = 0;
  if (diffuse::default_memory_limit() < need) {
    EXPECT_THROW(pl::Generation(model, o), diffuse::memory_error);
  }
  // At the native size it fits easily.
  o.width = o.height = 16;
  o.memory_limit = 64 << 20;
  EXPECT_NO_THROW(pl::Generation(model, o));
}

TEST(Memory, LoadOverTheLimitIsRefusedWithTheAmount) {
  diffuse::nn::LoadOptions lo;
  lo.memory_limit = 1000;
  expect_error<diffuse::memory_error>([&] { pl::Model::load(kModels / "digits-dit", lo); },
                                      {"digits-dit", "converted to f32", "memory limit is 1000 bytes"});
  // sample_size 16384 (within the bounds) asks for a 32 GiB position table: refused before it is
  // allocated, with the default limit as with a given one.
  const fs::path dir = fs::temp_directory_path() / ("diffuse_memory_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* f : {"diffusion_pytorch_model.safetensors", "scheduler_config.json"})
    fs::copy_file(kModels / "digits-dit" / f, dir / f, fs::copy_options::overwrite_existing);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(kModels / "digits-dit" / "config.json"));
  cfg["sample_size"] = 16384;
  std::ofstream(dir / "config.json") << cfg.dump();
  lo.memory_limit = 8 * kGiB;
  expect_error<diffuse::memory_error>([&] { pl::Model::load(dir, lo); },
                                      {"position table", "8192 x 8192 tokens x 128 floats", "32.0 GiB",
                                       "memory limit is 8.0 GiB"});
  lo.memory_limit = 0;
  if (diffuse::default_memory_limit() < 32 * kGiB) {
    expect_error<diffuse::memory_error>([&] { pl::Model::load(dir, lo); }, {"position table", "3/4 of the physical memory"});
  }
  fs::remove_all(dir);
  lo.memory_limit = 100000;
  lo.matrix_dtype = diffuse::DType::BF16;  // every matrix converted: 2 + 4 bytes per weight
  expect_error<diffuse::memory_error>([&] { pl::Model::load(kModels / "digits-unet", lo); },
                                      {"digits-unet", "converted to BF16", "memory limit is 97.7 KiB"});
  lo.memory_limit = 0;
  EXPECT_NO_THROW(pl::Model::load(kModels / "digits-unet", lo));
}

// The estimates against what a forward really takes from the arena (its peak), plus the output:
// never below it, and at most 15 % above.
TEST(Memory, NetworkEstimatesCoverTheMeasuredPeak) {
  for (const char* name : {"digits-dit", "digits-unet"}) {
    const auto net = diffuse::models::load_network(kModels / name);
    for (const auto& [batch, side] : {std::pair<std::size_t, std::size_t>{1, 16}, {2, 16}, {2, 32}, {4, 64}}) {
      SCOPED_TRACE(std::string(name) + " batch " + std::to_string(batch) + " side " + std::to_string(side));
      diffuse::kernels::Context ctx(1);
      diffuse::TorchGenerator g(0);
      const Tensor x = diffuse::randn(g, {batch, net->info().in_channels, side, side});
      const float t = 500.0f;
      const std::vector<std::int64_t> labels(batch, 3);
      const Tensor out = net->forward(x, {&t, 1}, labels, ctx);
      const double measured = static_cast<double>(ctx.arena().peak_bytes() + out.size() * sizeof(float));
      const double estimate = static_cast<double>(net->forward_bytes(batch, side, side));
      EXPECT_GE(estimate, measured);
      EXPECT_LE(estimate, 1.15 * measured);
    }
  }
}

/// A stand-in network for the failure paths: its forward asks the arena for `floats` floats, or
/// throws what `fail` says.
class Hungry final : public diffuse::models::Network {
 public:
  enum class Fail { none, bad_alloc, length_error };
  Hungry(std::size_t floats, Fail fail) : floats_(floats), fail_(fail) {
    info_.architecture = "Hungry";
    info_.in_channels = info_.out_channels = 1;
    info_.sample_size = 8;
  }
  const diffuse::models::NetworkInfo& info() const noexcept override { return info_; }
  Tensor forward(const Tensor& x, std::span<const float>, std::span<const std::int64_t>,
                 diffuse::kernels::Context& ctx) const override {
    if (fail_ == Fail::bad_alloc) throw std::bad_alloc();
    if (fail_ == Fail::length_error) std::vector<float>(std::size_t{1} << 62);  // throws std::length_error
    ctx.arena().reset();
    ctx.arena().alloc(floats_);
    return Tensor(x.shape());
  }

 private:
  diffuse::models::NetworkInfo info_;
  std::size_t floats_;
  Fail fail_;
};

pl::Model hungry_model(std::size_t floats, Hungry::Fail fail) {
  return pl::Model(std::make_shared<Hungry>(floats, fail),
                   {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"num_train_timesteps", 1000}}, "hungry");
}

// A network that does not estimate (forward_bytes 0) still cannot take more than the limit: the
// step caps the context's arena, which refuses the chunk before allocating it.
TEST(Memory, StepCapsTheActivationArena) {
  pl::GenerateOptions o;
  o.steps = 2;
  o.memory_limit = 256 << 20;
  diffuse::kernels::Context ctx(1);
  {
    pl::Generation g(hungry_model(std::size_t{1} << 30, Hungry::Fail::none), o);  // 4 GiB asked
    expect_error<diffuse::memory_error>([&] { g.step(ctx); },
                                        {"kernels::Arena", "4.0 GiB more", "memory limit of 256.0 MiB"});
  }
  EXPECT_EQ(ctx.arena().limit(), 0u);  // restored after the step
  pl::Generation ok(hungry_model(std::size_t{1} << 20, Hungry::Fail::none), o);  // 4 MiB
  EXPECT_NO_THROW(ok.step(ctx));

  diffuse::kernels::Arena a;
  a.set_limit(1 << 20);
  EXPECT_NO_THROW(a.alloc(1000));
  EXPECT_THROW(a.alloc(1 << 20), diffuse::memory_error);
  EXPECT_THROW(a.alloc(~std::size_t{0}), diffuse::memory_error);  // no overflow in the size
}

// An allocation failure anywhere in a step is the typed memory_error, never std::bad_alloc.
TEST(Memory, AllocationFailuresAreMemoryErrors) {
  pl::GenerateOptions o;
  o.steps = 1;
  diffuse::kernels::Context ctx(1);
  for (auto fail : {Hungry::Fail::bad_alloc, Hungry::Fail::length_error}) {
    pl::Generation g(hungry_model(16, fail), o);
    expect_error<diffuse::memory_error>([&] { g.step(ctx); }, {"Generation::step", "an allocation failed"});
  }
}

}  // namespace
