// SPDX-License-Identifier: MIT
// GEMM throughput against the machine's own FMA peak.
//
// 1. peak/<isa>: a register-only loop of independent FMA chains (16 accumulators: more than
//    latency x throughput = 4 x 2 on current cores), the single-core ceiling in GFLOP/s. It is
//    measured once at start-up (best of 5), printed, and used as the denominator of `of_peak`.
// 2. gemm/<variant>/<shape>/threads:<t>: every GEMM variant of kernels.inc the CPU can run, on
//    square sizes and on shapes of real networks, at 1 and 2 threads. Counters: GFLOPS
//    (2 M N K per call) and of_peak = GFLOPS / (threads x single-core peak of the variant's ISA).
//    One thread: timed in the caller's CPU time (robust when the machine is shared, and equal to
//    wall-clock time on an idle machine). Two threads: wall-clock time (UseRealTime), since the
//    worker's CPU time is not the caller's; on a busy machine this undercounts.
// 3. gemm/<small-M variant>/<shape>/threads:<t>: the small-M kernels on adaLN-like shapes (M 1..8,
//    B^T), next to the blocked variants on the same shapes; extra counter B_GBps = bytes of B
//    (in its stored dtype) per second, since these calls stream B once and are memory-bound.
// 4. .../<shape>_packed/...: B packed once by pack_b (GemmArgs::packed_b), next to the unpacked
//    shape: the difference is the per-call packing of B.
// On a shared machine: pin with taskset, use --benchmark_repetitions and read the best.
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

namespace {

namespace dk = diffuse::kernels;

constexpr int kChains = 16;

// Each function is compiled for its ISA only (target attribute) and called after a CPUID check.
__attribute__((target("avx512f,fma"), noipa)) float fma_loop_avx512(std::int64_t iters) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float lanes[16];  // (not _mm512_reduce_add_ps: GCC 12 warns inside it, bug 105593)
  _mm512_store_ps(lanes, s);
  return lanes[0] + lanes[15];
}

__attribute__((target("avx2,fma"), noipa)) float fma_loop_avx2(std::int64_t iters) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (std::int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  return lanes[0] + lanes[7];
}

/// Flops of one call of the loop.
double loop_flops(diffuse::IsaLevel isa, std::int64_t iters) {
  const int lanes = isa == diffuse::IsaLevel::avx512 ? 16 : 8;
  return 2.0 * lanes * kChains * static_cast<double>(iters);
}

float fma_loop(diffuse::IsaLevel isa, std::int64_t iters) {
  return isa == diffuse::IsaLevel::avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
}

bool isa_supported(diffuse::IsaLevel isa) {
  const auto& f = diffuse::cpu_features();
  if (isa == diffuse::IsaLevel::avx512) return f.avx512f && f.fma;
  if (isa == diffuse::IsaLevel::avx2) return f.avx2 && f.fma;
  return false;
}

double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Best of 20 runs of a few ms, timed in this thread's CPU time (the machine may be shared), in
/// GFLOP/s.
double measure_peak(diffuse::IsaLevel isa) {
  constexpr std::int64_t iters = 1'000'000;
  double best = 0;
  for (int rep = 0; rep < 20; ++rep) {
    const double t0 = thread_seconds();
    benchmark::DoNotOptimize(fma_loop(isa, iters));
    best = std::max(best, loop_flops(isa, iters) / (thread_seconds() - t0) * 1e-9);
  }
  return best;
}

double g_peak[3] = {0, 0, 0};  // GFLOP/s per IsaLevel, single core

void bm_peak(benchmark::State& state, diffuse::IsaLevel isa) {
  constexpr std::int64_t iters = 1'000'000;
  for (auto _ : state) benchmark::DoNotOptimize(fma_loop(isa, iters));
  state.counters["GFLOPS"] = benchmark::Counter(loop_flops(isa, iters) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

struct Shape {
  const char* name;
  std::size_t M, N, K;
  bool trans;  // B stored [N, K] (nn.Linear / conv weights)
  diffuse::DType type;
  bool packed = false;  // B packed once with pack_b before timing
};

void bm_gemm(benchmark::State& state, const dk::GemmKernel* k, Shape s, std::size_t threads) {
  std::vector<float> A(s.M * s.K), C(s.M * s.N), bias(s.N);
  std::vector<float> B(s.K * s.N);
  std::uint32_t x = 1;
  auto next = [&x] {
    x = x * 1664525u + 1013904223u;
    return static_cast<float>(x >> 8) / 16777216.0f - 0.5f;
  };
  for (auto& v : A) v = next();
  for (auto& v : B) v = next();  // reinterpreted as 16-bit codes for F16/BF16: bytes are all that matter
  for (auto& v : bias) v = next();
  dk::ThreadPool pool(threads);
  std::vector<float> ws(dk::gemm_workspace_floats(*k, threads) + 16);
  float* base = ws.data();
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
  if (s.type != diffuse::DType::F32) {  // finite 16-bit codes: small positive/negative values
    auto* h = reinterpret_cast<std::uint16_t*>(B.data());
    for (std::size_t i = 0; i < s.K * s.N; ++i) h[i] = static_cast<std::uint16_t>(0x3000u + (i * 7919u) % 0x0C00u);
  }
  dk::GemmArgs g;
  g.M = s.M, g.N = s.N, g.K = s.K;
  g.A = A.data(), g.lda = s.K;
  g.B = B.data(), g.ldb = s.trans ? s.K : s.N, g.b_type = s.type, g.b_transposed = s.trans;
  g.C = C.data(), g.ldc = s.N, g.bias = bias.data();
  dk::PackedMatrix packed;
  if (s.packed) {
    packed = dk::pack_b(*k, g.B, g.ldb, g.b_type, g.b_transposed, g.K, g.N);
    g.packed_b = &packed;
  }
  for (auto _ : state) {
    dk::gemm(*k, g, &pool, {base, ws.size() - 16});
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double b_bytes = static_cast<double>(s.N * s.K) * (s.type == diffuse::DType::F32 ? 4.0 : 2.0);
  state.counters["B_GBps"] = benchmark::Counter(b_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double peak = g_peak[static_cast<int>(k->isa)];
  if (peak > 0)
    state.counters["of_peak"] =
        benchmark::Counter(flops * 1e-9 / (peak * static_cast<double>(threads)), benchmark::Counter::kIsIterationInvariantRate);
}

bool register_all() {
  for (diffuse::IsaLevel isa : {diffuse::IsaLevel::avx2, diffuse::IsaLevel::avx512}) {
    if (!isa_supported(isa)) continue;
    g_peak[static_cast<int>(isa)] = measure_peak(isa);
    std::printf("measured single-core FMA peak (%s, %d chains): %.1f GFLOP/s\n", diffuse::isa_name(isa).data(),
                kChains, g_peak[static_cast<int>(isa)]);
    benchmark::RegisterBenchmark((std::string("peak/") + diffuse::isa_name(isa).data()).c_str(), bm_peak, isa);
  }
  const Shape shapes[] = {
      {"sq256", 256, 256, 256, false, diffuse::DType::F32},
      {"sq512", 512, 512, 512, false, diffuse::DType::F32},
      {"sq1024", 1024, 1024, 1024, false, diffuse::DType::F32},
      {"sq2048", 2048, 2048, 2048, false, diffuse::DType::F32},
      {"dit_linear_1024x1152x1152_Bt", 1024, 1152, 1152, true, diffuse::DType::F32},
      {"dit_linear_1024x1152x1152_Bt_bf16", 1024, 1152, 1152, true, diffuse::DType::BF16},
      {"dit_linear_1024x1152x1152_Bt_f16", 1024, 1152, 1152, true, diffuse::DType::F16},
      {"dit_mlp_1024x4608x1152_Bt", 1024, 4608, 1152, true, diffuse::DType::F32},
      {"conv_4096x128x1152_Bt", 4096, 128, 1152, true, diffuse::DType::F32},
      {"conv_4096x128x1152", 4096, 128, 1152, false, diffuse::DType::F32},
      {"dit_linear_1024x1152x1152_Bt_packed", 1024, 1152, 1152, true, diffuse::DType::F32, true},
      {"dit_linear_1024x1152x1152_Bt_bf16_packed", 1024, 1152, 1152, true, diffuse::DType::BF16, true},
      {"dit_mlp_1024x4608x1152_Bt_packed", 1024, 4608, 1152, true, diffuse::DType::F32, true},
      {"ditb_qkv_512x768x768_Bt", 512, 768, 768, true, diffuse::DType::F32},
      {"ditb_qkv_512x768x768_Bt_packed", 512, 768, 768, true, diffuse::DType::F32, true},
      {"ditb_ff2_512x768x3072_Bt", 512, 768, 3072, true, diffuse::DType::F32},
      {"ditb_ff2_512x768x3072_Bt_packed", 512, 768, 3072, true, diffuse::DType::F32, true},
  };
  // adaLN-like: M = batch rows, N = 6 D, K = D (DiT-B/2: D = 768), B^T; M 16 for the threshold.
  const Shape small_shapes[] = {
      {"ada_1x4608x768_Bt", 1, 4608, 768, true, diffuse::DType::F32},
      {"ada_2x4608x768_Bt", 2, 4608, 768, true, diffuse::DType::F32},
      {"ada_2x4608x768_Bt_bf16", 2, 4608, 768, true, diffuse::DType::BF16},
      {"ada_2x4608x768_Bt_f16", 2, 4608, 768, true, diffuse::DType::F16},
      {"ada_4x4608x768_Bt", 4, 4608, 768, true, diffuse::DType::F32},
      {"ada_8x4608x768_Bt", 8, 4608, 768, true, diffuse::DType::F32},
      {"ada_2x2304x384_Bt", 2, 2304, 384, true, diffuse::DType::F32},
      {"ada_16x4608x768_Bt", 16, 4608, 768, true, diffuse::DType::F32},
  };
  for (const dk::GemmKernel& k : dk::gemm_small_m_kernels()) {
    if (!dk::kernel_supported(k)) continue;
    for (const Shape& s : small_shapes) {
      if (s.M > k.mr) continue;
      for (std::size_t threads : {1u, 2u}) {
        const std::string name = std::string("gemm/") + k.name + "/" + s.name + "/threads:" + std::to_string(threads);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_gemm, &k, s, threads)->Unit(benchmark::kMicrosecond);
        if (threads > 1) b->UseRealTime();
      }
    }
  }
  for (const dk::GemmKernel& k : dk::gemm_kernels()) {
    if (!dk::kernel_supported(k)) continue;
    for (const Shape& s : small_shapes) {  // the blocked variant on the same shapes (packing B each call)
      if (k.isa == diffuse::IsaLevel::scalar) continue;
      const std::string name = std::string("gemm/") + k.name + "/" + s.name + "/threads:1";
      benchmark::RegisterBenchmark(name.c_str(), bm_gemm, &k, s, std::size_t{1})->Unit(benchmark::kMicrosecond);
    }
    for (const Shape& s : shapes) {
      if (k.isa == diffuse::IsaLevel::scalar && s.M * s.N * s.K > (1u << 24)) continue;  // minutes per call
      for (std::size_t threads : {1u, 2u}) {
        const std::string name = std::string("gemm/") + k.name + "/" + s.name + "/threads:" + std::to_string(threads);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_gemm, &k, s, threads)->Unit(benchmark::kMillisecond);
        if (threads > 1) b->UseRealTime();
      }
    }
  }
  return true;
}

const bool registered = register_all();

}  // namespace
