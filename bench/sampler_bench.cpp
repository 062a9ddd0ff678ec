// SPDX-License-Identifier: MIT
// Per-step overhead of every registered sampler on a 1x4x64x64 float latent with a trivial
// denoiser (D(x) = 0.9 x), one core. The noise source copies a precomputed normal table, so the
// figures are the sampler's own arithmetic, bookkeeping and the denoiser's output allocation;
// BM_noise_gaussian times the default Box–Muller source separately, BM_denoiser_only the denoiser.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/sample/registry.hpp"

namespace {

using diffuse::Tensor;

const diffuse::Shape kShape = {1, 4, 64, 64};

std::vector<float> schedule(const std::string& name, std::size_t n) {
  std::vector<float> s(n + 1);
  const bool flow = name.rfind("flow", 0) == 0;
  const double smax = flow ? 1.0 : 80.0, smin = flow ? 0.01 : 0.002, rho = flow ? 1.0 : 7.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = std::pow(smax, 1 / rho), b = std::pow(smin, 1 / rho);
    s[i] = float(std::pow(a + (b - a) * double(i) / double(n - 1), rho));
  }
  s[n] = 0.0f;
  return s;
}

diffuse::NoiseSource<float> table_noise() {
  auto table = std::make_shared<std::vector<float>>(diffuse::shape_numel(kShape));
  auto g = diffuse::gaussian_noise<float>(1);
  Tensor t(kShape);
  g.fill(0, 0, 0, t);
  std::copy(t.begin(), t.end(), table->begin());
  return diffuse::NoiseSource<float>([table](std::size_t, float, float, diffuse::BasicTensor<float>& out) {
    std::copy(table->begin(), table->begin() + static_cast<std::ptrdiff_t>(out.size()), out.begin());
  });
}

struct Trivial {
  diffuse::NoiseSpace space_;
  Tensor operator()(const Tensor& x, float) const {
    Tensor o(x.shape());
    const float* p = x.data();
    float* q = o.data();
    for (std::size_t i = 0; i < x.size(); ++i) q[i] = 0.9f * p[i];
    return o;
  }
  diffuse::NoiseSpace space() const { return space_; }
};

void BM_sampler_step(benchmark::State& state, std::string name) {
  const bool flow = name.rfind("flow", 0) == 0;
  const diffuse::AnyDenoiser<float> d(Trivial{flow ? diffuse::NoiseSpace::flow : diffuse::NoiseSpace::ve});
  auto noise = table_noise();
  const auto sigmas = schedule(name, 200);
  diffuse::SamplerParams<float> p;
  if (name == "dpm_adaptive") p.rtol = 1e-4f;
  Tensor x0(kShape, 1.0f);
  auto fresh = [&] {
    auto smp = diffuse::make_sampler<float>(name, sigmas, p);
    if (std::getenv("NOCHECK")) smp->set_check_finite(false);
    return smp;
  };
  auto s = fresh();
  Tensor x = x0;
  std::size_t steps = 0, nfe0 = 0, nfe = 0;
  for (auto _ : state) {
    if (s->done()) {
      state.PauseTiming();
      nfe += s->nfe() - nfe0;
      nfe0 = 0;
      s = fresh();
      x = x0;
      state.ResumeTiming();
    }
    s->step(d, x, noise);
    benchmark::DoNotOptimize(x.data());
    ++steps;
  }
  nfe += s->nfe() - nfe0;
  state.counters["nfe_per_step"] = double(nfe) / double(std::max<std::size_t>(steps, 1));
  state.counters["elements"] = double(x.size());
}

void BM_denoiser_only(benchmark::State& state) {
  const Trivial d{diffuse::NoiseSpace::ve};
  Tensor x(kShape, 1.0f);
  for (auto _ : state) {
    Tensor o = d(x, 1.0f);
    benchmark::DoNotOptimize(o.data());
  }
}
BENCHMARK(BM_denoiser_only)->Unit(benchmark::kMicrosecond);

void BM_noise_gaussian(benchmark::State& state) {
  auto g = diffuse::gaussian_noise<float>(1);
  Tensor x(kShape);
  for (auto _ : state) {
    g.fill(0, 1.0f, 0.5f, x);
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_noise_gaussian)->Unit(benchmark::kMicrosecond);

const int kRegistered = [] {
  for (const auto& name : diffuse::list_samplers())
    benchmark::RegisterBenchmark(("BM_sampler_step/" + name).c_str(), BM_sampler_step, name)
        ->Unit(benchmark::kMicrosecond);
  return 0;
}();

}  // namespace
