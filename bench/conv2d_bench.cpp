// SPDX-License-Identifier: MIT
// conv2d throughput on the convolutions of real networks, against the machine's FMA peak.
//
// 1. conv2d/<shape>/threads:<t>: the public conv2d (active GEMM row, default im2col blocks) with
//    bias, at 1 and 2 threads. Counters: GFLOPS (2 C_out C_in kh kw H_out W_out batch per call)
//    and of_peak = GFLOPS / (threads x measured single-core FMA peak).
// 2. gemm_only/<shape>/threads:1: the bare GEMM of the same sizes on a prebuilt column matrix,
//    i.e. conv2d minus im2col and the bias pass: the gap between 1 and 2 is what the convolution
//    adds on top of the GEMM (the GEMM's own A packing is inside both).
// 3. blocks/<shape>/<floats>: conv2d with other im2col block budgets (1 thread).
// 4. winograd/<shape>/threads:<t>: the Winograd F(2x2, 3x3) path forced (conv2d_winograd, any
//    image size) on the eligible shapes (3x3 stride 1), weights transformed once outside the loop;
//    GFLOPS counts the direct convolution's flops, so it compares with conv2d/ as a speed-up.
//    winograd_blocks/<shape>/<floats>: its tile-block budget (1 thread).
// One thread: timed in the caller's CPU time (robust on a shared machine); two threads: wall
// clock (UseRealTime). Pin with taskset and use --benchmark_repetitions on a shared machine.
#include <benchmark/benchmark.h>

#include <immintrin.h>

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "diffuse/core/cpu.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"
#include "kernels/conv2d_impl.hpp"
#include "kernels/conv2d_winograd.hpp"

namespace {

namespace dk = diffuse::kernels;

// Single-core FMA peak: 16 independent zmm FMA chains (more than latency x throughput), compiled
// for AVX-512 only here and called after a CPUID check.
__attribute__((target("avx512f,fma"), noipa)) float fma_loop_avx512(std::int64_t iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  for (int i = 1; i < 16; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc[0]);
  return lanes[0] + lanes[15];
}

double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Best of 20 runs in this thread's CPU time, GFLOP/s; 0 without AVX-512.
double measure_peak() {
  const auto& f = diffuse::cpu_features();
  if (!f.avx512f || !f.fma) return 0.0;
  constexpr std::int64_t iters = 1'000'000;
  double best = 0;
  for (int rep = 0; rep < 20; ++rep) {
    const double t0 = thread_seconds();
    benchmark::DoNotOptimize(fma_loop_avx512(iters));
    best = std::max(best, 2.0 * 16 * 16 * static_cast<double>(iters) / (thread_seconds() - t0) * 1e-9);
  }
  return best;
}

double g_peak = 0;

struct Shape {
  const char* name;
  std::size_t batch, cin, h, w, cout, k, stride, pt, pl, pb, pr;
};

/// A convolution's data and arguments.
struct Setup {
  std::vector<float> x, w, b, y;
  dk::Conv2dArgs a;
  double flops = 0;

  explicit Setup(const Shape& s) {
    std::uint32_t st = 1;
    auto next = [&st] {
      st = st * 1664525u + 1013904223u;
      return static_cast<float>(st >> 8) / 16777216.0f - 0.5f;
    };
    x.resize(s.batch * s.cin * s.h * s.w), w.resize(s.cout * s.cin * s.k * s.k), b.resize(s.cout);
    for (auto* v : {&x, &w, &b})
      for (float& e : *v) e = next();
    a.x = x.data(), a.batch = s.batch, a.in_channels = s.cin, a.height = s.h, a.width = s.w;
    a.weight = w.data(), a.bias = b.data(), a.out_channels = s.cout, a.kh = s.k, a.kw = s.k, a.stride = s.stride;
    a.pad_top = s.pt, a.pad_left = s.pl, a.pad_bottom = s.pb, a.pad_right = s.pr;
    const std::size_t ho = dk::conv2d_out_height(a), wo = dk::conv2d_out_width(a);
    y.resize(s.batch * s.cout * ho * wo);
    a.y = y.data();
    flops = 2.0 * static_cast<double>(s.cout * s.cin * s.k * s.k * ho * wo * s.batch);
  }
};

void counters(benchmark::State& state, double flops, std::size_t threads) {
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (g_peak > 0)
    state.counters["of_peak"] = benchmark::Counter(flops * 1e-9 / (g_peak * static_cast<double>(threads)),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

void bm_conv(benchmark::State& state, Shape s, std::size_t threads) {
  Setup su(s);
  dk::Context ctx(threads);
  dk::conv2d(su.a, ctx);  // grows the scratch once
  for (auto _ : state) {
    dk::conv2d(su.a, ctx);
    benchmark::ClobberMemory();
  }
  counters(state, su.flops, threads);
}

void bm_blocks(benchmark::State& state, Shape s, std::size_t block_floats) {
  Setup su(s);
  dk::Context ctx(1);
  const dk::GemmKernel& k = dk::active_gemm_kernel();
  dk::conv2d(k, su.a, ctx, block_floats);
  for (auto _ : state) {
    dk::conv2d(k, su.a, ctx, block_floats);
    benchmark::ClobberMemory();
  }
  counters(state, su.flops, 1);
}

void bm_winograd(benchmark::State& state, Shape s, std::size_t threads, std::size_t block_floats) {
  Setup su(s);
  std::vector<float> u(dk::conv2d_winograd_weight_floats(s.cout, s.cin));
  dk::conv2d_winograd_transform_weights(su.w.data(), s.cout, s.cin, u.data());
  su.a.winograd_weight = u.data();
  dk::Context ctx(threads);
  const dk::GemmKernel& k = dk::active_gemm_kernel();
  dk::conv2d_winograd(k, su.a, ctx, block_floats);
  for (auto _ : state) {
    dk::conv2d_winograd(k, su.a, ctx, block_floats);
    benchmark::ClobberMemory();
  }
  counters(state, su.flops, threads);
}

void bm_gemm_only(benchmark::State& state, Shape s) {
  Setup su(s);
  const std::size_t K = s.cin * s.k * s.k, N = su.y.size() / (s.batch * s.cout);
  std::vector<float> col(K * N, 0.25f);
  dk::Context ctx(1);
  dk::GemmArgs g;
  g.M = s.cout, g.N = N, g.K = K, g.A = su.w.data(), g.lda = K, g.B = col.data(), g.ldb = N, g.ldc = N;
  for (auto _ : state) {
    for (std::size_t b = 0; b < s.batch; ++b) {
      g.C = su.y.data() + b * s.cout * N;
      dk::gemm(g, ctx);
    }
    benchmark::ClobberMemory();
  }
  counters(state, su.flops, 1);
}

bool register_all() {
  g_peak = measure_peak();
  std::printf("measured single-core FMA peak (avx512): %.1f GFLOP/s; GEMM row: %s\n", g_peak,
              dk::active_gemm_kernel().name);
  const Shape shapes[] = {
      {"unet32_3x3_128_32x32", 1, 128, 32, 32, 128, 3, 1, 1, 1, 1, 1},
      {"unet32_3x3_256_16x16", 1, 256, 16, 16, 256, 3, 1, 1, 1, 1, 1},
      {"unet32_3x3_256_8x8", 1, 256, 8, 8, 256, 3, 1, 1, 1, 1, 1},
      {"unet32_3x3_256_4x4", 1, 256, 4, 4, 256, 3, 1, 1, 1, 1, 1},
      {"unet32_down_3x3s2_128_32x32", 1, 128, 32, 32, 128, 3, 2, 0, 0, 1, 1},
      {"unet32_1x1_384to256_16x16", 1, 384, 16, 16, 256, 1, 1, 0, 0, 0, 0},
      {"unet32_conv_in_3to128_32x32", 1, 3, 32, 32, 128, 3, 1, 1, 1, 1, 1},
      {"dit_patch_4to384_2x2s2_32x32", 1, 4, 32, 32, 384, 2, 2, 0, 0, 0, 0},
      {"digits_3x3_32_16x16", 1, 32, 16, 16, 32, 3, 1, 1, 1, 1, 1},
      {"digits_3x3_64_8x8", 1, 64, 8, 8, 64, 3, 1, 1, 1, 1, 1},
      {"digits_3x3_64_4x4", 1, 64, 4, 4, 64, 3, 1, 1, 1, 1, 1},
  };
  for (const Shape& s : shapes) {
    for (std::size_t threads : {1u, 2u}) {
      const std::string name = std::string("conv2d/") + s.name + "/threads:" + std::to_string(threads);
      auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_conv, s, threads)->Unit(benchmark::kMicrosecond);
      if (threads > 1) b->UseRealTime();
    }
    benchmark::RegisterBenchmark((std::string("gemm_only/") + s.name + "/threads:1").c_str(), bm_gemm_only, s)
        ->Unit(benchmark::kMicrosecond);
  }
  for (const Shape& s : shapes) {
    if (s.k != 3 || s.stride != 1) continue;
    for (std::size_t threads : {1u, 2u}) {
      const std::string name = std::string("winograd/") + s.name + "/threads:" + std::to_string(threads);
      auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_winograd, s, threads, dk::kConv2dBlockFloats)
                    ->Unit(benchmark::kMicrosecond);
      if (threads > 1) b->UseRealTime();
    }
  }
  const Shape batched[] = {{"unet32_3x3_256_8x8_batch2", 2, 256, 8, 8, 256, 3, 1, 1, 1, 1, 1},
                           {"unet32_3x3_256_4x4_batch2", 2, 256, 4, 4, 256, 3, 1, 1, 1, 1, 1}};
  for (const Shape& s : batched) {
    benchmark::RegisterBenchmark((std::string("conv2d/") + s.name + "/threads:1").c_str(), bm_conv, s, 1)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("winograd/") + s.name + "/threads:1").c_str(), bm_winograd, s, 1,
                                 dk::kConv2dBlockFloats)
        ->Unit(benchmark::kMicrosecond);
  }
  for (std::size_t floats : {std::size_t{1} << 18, std::size_t{1} << 19, std::size_t{1} << 20, std::size_t{1} << 22})
    for (const Shape& s : {shapes[0], shapes[1]}) {
      const std::string name = std::string("winograd_blocks/") + s.name + "/" + std::to_string(floats);
      benchmark::RegisterBenchmark(name.c_str(), bm_winograd, s, 1, floats)->Unit(benchmark::kMicrosecond);
    }
  const Shape big = {"sd_3x3_320_64x64", 1, 320, 64, 64, 320, 3, 1, 1, 1, 1, 1};  // a Stable Diffusion level
  for (std::size_t floats : {std::size_t{1} << 18, std::size_t{1} << 20, std::size_t{1} << 22, std::size_t{1} << 24}) {
    for (const Shape& s : {shapes[0], big}) {
      const std::string name = std::string("blocks/") + s.name + "/" + std::to_string(floats);
      benchmark::RegisterBenchmark(name.c_str(), bm_blocks, s, floats)->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}

const bool registered = register_all();

}  // namespace
