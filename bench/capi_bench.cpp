// SPDX-License-Identifier: MIT
// Per-step overhead of the C ABI (diffuse_job_step) against the C++ API it wraps
// (pipeline::Generation::step) on the same model and job. Two models:
// - "zero": a stand-in network that returns zeros, so a step is only the sampler's arithmetic on
//   256 floats and the C layer's own cost (handle lookup, cancel checks, the network wrapper, the
//   exception guard, the progress bookkeeping) shows;
// - "digits-dit", "digits-unet": the shipped models, where the network dominates.
// Each iteration is one step (CFG on, class 3); a job that finishes is replaced outside the timing.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "capi/capi_internal.hpp"
#include "diffuse/diffuse.h"
#include "diffuse/pipeline/pipeline.hpp"

namespace {

namespace pl = diffuse::pipeline;

const std::string kModels = (std::filesystem::path(__FILE__).parent_path().parent_path() / "models").string();
constexpr int kSteps = 1000;

/// A class-conditional flow network whose output is zero: the cheapest possible forward.
class ZeroNetwork final : public diffuse::models::Network {
 public:
  ZeroNetwork() {
    info_.architecture = "ZeroNetwork";
    info_.in_channels = info_.out_channels = 1;
    info_.sample_size = 16;
    info_.num_classes = 11;
    info_.null_class = 10;
  }
  const diffuse::models::NetworkInfo& info() const noexcept override { return info_; }
  diffuse::Tensor forward(const diffuse::Tensor& x, std::span<const float>, std::span<const std::int64_t>,
                          diffuse::kernels::Context&) const override {
    return diffuse::Tensor(x.shape());
  }

 private:
  diffuse::models::NetworkInfo info_;
};

const pl::Model& model(const std::string& name) {
  static const pl::Model zero(std::make_shared<ZeroNetwork>(),
                              nlohmann::json{{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"num_train_timesteps", 1000}},
                              "zero");
  static const pl::Model dit = pl::Model::load(kModels + "/digits-dit");
  static const pl::Model unet = pl::Model::load(kModels + "/digits-unet");
  return name == "zero" ? zero : name == "digits-dit" ? dit : unet;
}

pl::GenerateOptions cxx_options() {
  pl::GenerateOptions o;
  o.steps = kSteps;
  o.labels = {3};
  o.seed = 1;
  return o;
}

void BM_step_cxx(benchmark::State& state, const std::string& name) {
  const pl::Model& m = model(name);
  diffuse::kernels::Context ctx(1);
  std::optional<pl::Generation> g;
  g.emplace(m, cxx_options());
  for (auto _ : state) {
    if (g->done()) {
      state.PauseTiming();
      g.emplace(m, cxx_options());
      state.ResumeTiming();
    }
    g->step(ctx);
    benchmark::DoNotOptimize(g->sample().data());
  }
}

void BM_step_c(benchmark::State& state, const std::string& name) {
  diffuse_context* ctx = nullptr;
  diffuse_context_create(nullptr, &ctx);
  diffuse_model* m = diffuse_capi::wrap_model(model(name));
  diffuse_job_options o;
  diffuse_job_options_init(&o);
  o.steps = kSteps;
  o.class_label = 3;
  o.seed = 1;
  diffuse_job* job = nullptr;
  diffuse_job_create(ctx, m, &o, &job);
  int done = 0;
  for (auto _ : state) {
    if (done) {
      state.PauseTiming();
      diffuse_job_free(job);
      diffuse_job_create(ctx, m, &o, &job);
      done = 0;
      state.ResumeTiming();
    }
    if (diffuse_job_step(job, &done) != DIFFUSE_OK) {
      state.SkipWithError(diffuse_context_last_error(ctx));
      break;
    }
  }
  diffuse_job_free(job);
  diffuse_model_free(m);
  diffuse_context_destroy(ctx);
}

}  // namespace

BENCHMARK_CAPTURE(BM_step_cxx, zero, std::string("zero"))->UseRealTime();
BENCHMARK_CAPTURE(BM_step_c, zero, std::string("zero"))->UseRealTime();
BENCHMARK_CAPTURE(BM_step_cxx, digits_dit, std::string("digits-dit"))->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_step_c, digits_dit, std::string("digits-dit"))->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_step_cxx, digits_unet, std::string("digits-unet"))->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_step_c, digits_unet, std::string("digits-unet"))->UseRealTime()->Unit(benchmark::kMillisecond);
