// SPDX-License-Identifier: MIT
// Network kernels (ops.hpp) per variant of op_variants(), at the shapes of the reference
// networks, 1 and 2 threads.
//
//   attention/<variant>/<shape>/threads:<t>   GFLOPS = 4 B H Nq Nk d per call
//   attention/naive_loops/...                 materialised softmax(Q K^T) V with plain loops
//   attention/gemm_softmax/...                materialised, through kernels::gemm + softmax
//                                             (the unfused way: S = Q K^T, softmax, O = P V)
//   <op>/<variant>/<shape>/threads:<t>        GBps = bytes read + written once per call
//                                             (memory-bound ops; the norms read x twice more
//                                             from cache for their statistics)
// One thread: the caller's CPU time; two threads: wall-clock (UseRealTime). On a shared machine,
// use --benchmark_repetitions and read the best.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"

namespace {

namespace dk = diffuse::kernels;

std::vector<float> data(std::size_t n, std::uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(seed >> 8) / 16777216.0f - 0.5f;
  }
  return v;
}

struct AttnShape {
  const char* name;
  std::size_t batch, heads, tokens, head_dim;
};

constexpr AttnShape kAttn[] = {
    {"dit_s2_b2_h6_n256_d64", 2, 6, 256, 64},
    {"dit_b2_b2_h12_n256_d64", 2, 12, 256, 64},
    {"unet_cifar_b2_h1_n256_d256", 2, 1, 256, 256},
    {"digits_b2_h4_n64_d32", 2, 4, 64, 32},
    {"digits_b2_h4_n16_d32", 2, 4, 16, 32},
};

double attn_flops(const AttnShape& s) {
  return 4.0 * static_cast<double>(s.batch * s.heads * s.tokens * s.tokens * s.head_dim);
}

struct AttnData {
  std::vector<float> q, k, v, o;
  explicit AttnData(const AttnShape& s) {
    const std::size_t n = s.batch * s.tokens * s.heads * s.head_dim;
    q = data(n, 1), k = data(n, 2), v = data(n, 3), o.assign(n, 0.0f);
  }
};

void bm_attention(benchmark::State& state, const dk::OpVariant* var, AttnShape s, std::size_t threads) {
  AttnData d(s);
  dk::Context ctx(threads);
  dk::ScopedOpVariant sv(*var);
  const dk::AttentionArgs a =
      dk::attention_bnd(d.q.data(), d.k.data(), d.v.data(), d.o.data(), s.batch, s.heads, s.tokens, s.tokens, s.head_dim);
  for (auto _ : state) {
    dk::attention(a, ctx);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(attn_flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// The textbook version: the full [N, N] score matrix per (batch, head), plain loops.
void bm_attention_naive(benchmark::State& state, AttnShape s) {
  AttnData d(s);
  const std::size_t N = s.tokens, D = s.head_dim, row = s.heads * D;
  std::vector<float> S(N * N);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (auto _ : state) {
    for (std::size_t b = 0; b < s.batch; ++b)
      for (std::size_t h = 0; h < s.heads; ++h) {
        const float* q = d.q.data() + b * N * row + h * D;
        const float* k = d.k.data() + b * N * row + h * D;
        const float* v = d.v.data() + b * N * row + h * D;
        float* o = d.o.data() + b * N * row + h * D;
        for (std::size_t i = 0; i < N; ++i)
          for (std::size_t j = 0; j < N; ++j) {
            float acc = 0;
            for (std::size_t t = 0; t < D; ++t) acc += q[i * row + t] * k[j * row + t];
            S[i * N + j] = acc * scale;
          }
        for (std::size_t i = 0; i < N; ++i) {
          float m = S[i * N], sum = 0;
          for (std::size_t j = 1; j < N; ++j) m = std::max(m, S[i * N + j]);
          for (std::size_t j = 0; j < N; ++j) sum += S[i * N + j] = std::exp(S[i * N + j] - m);
          for (std::size_t j = 0; j < N; ++j) S[i * N + j] /= sum;
        }
        for (std::size_t i = 0; i < N; ++i)
          for (std::size_t t = 0; t < D; ++t) {
            float acc = 0;
            for (std::size_t j = 0; j < N; ++j) acc += S[i * N + j] * v[j * row + t];
            o[i * row + t] = acc;
          }
      }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(attn_flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Unfused with the library's best pieces: S = scale Q K^T (gemm), softmax, O = P V (gemm).
void bm_attention_gemm(benchmark::State& state, AttnShape s, std::size_t threads) {
  AttnData d(s);
  dk::Context ctx(threads);
  const std::size_t N = s.tokens, D = s.head_dim, row = s.heads * D;
  std::vector<float> S(N * N);
  for (auto _ : state) {
    for (std::size_t b = 0; b < s.batch; ++b)
      for (std::size_t h = 0; h < s.heads; ++h) {
        dk::GemmArgs g;
        g.M = N, g.N = N, g.K = D, g.A = d.q.data() + b * N * row + h * D, g.lda = row;
        g.B = d.k.data() + b * N * row + h * D, g.ldb = row, g.b_transposed = true;
        g.C = S.data(), g.ldc = N, g.alpha = 1.0f / std::sqrt(static_cast<float>(D));
        dk::gemm(g, ctx);
        dk::softmax(S.data(), N, N, ctx);
        dk::GemmArgs p;
        p.M = N, p.N = D, p.K = N, p.A = S.data(), p.lda = N;
        p.B = d.v.data() + b * N * row + h * D, p.ldb = row;
        p.C = d.o.data() + b * N * row + h * D, p.ldc = row;
        dk::gemm(p, ctx);
      }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(attn_flops(s) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// A memory-bound op: `run(ctx)` once per iteration, `bytes` moved per call.
void bm_memory(benchmark::State& state, const dk::OpVariant* var, std::size_t threads, double bytes,
               const std::function<void(dk::Context&)>& run) {
  dk::Context ctx(threads);
  dk::ScopedOpVariant sv(*var);
  for (auto _ : state) {
    run(ctx);
    benchmark::ClobberMemory();
  }
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Buffers shared by the memory-bound benchmarks (sized for the largest shape).
std::vector<float> g_x = data(1 << 20, 11), g_y = data(1 << 20, 12), g_w = data(1 << 16, 13);

struct MemCase {
  std::string name;
  double bytes;
  std::function<void(dk::Context&)> run;
};

std::vector<MemCase> memory_cases() {
  float* x = g_x.data();
  float* y = g_y.data();
  const float* w = g_w.data();
  std::vector<MemCase> c;
  auto gn = [&](const char* name, std::size_t B, std::size_t C, std::size_t HW, std::size_t G, bool silu) {
    c.push_back({std::string("group_norm/") + name, 8.0 * static_cast<double>(B * C * HW), [=](dk::Context& ctx) {
                   dk::group_norm({.x = x, .y = y, .batch = B, .channels = C, .spatial = HW, .groups = G, .eps = 1e-6f,
                                   .gamma = w, .beta = w + C, .silu = silu}, ctx);
                 }});
  };
  gn("unet_b2_c128_32x32_g32_silu", 2, 128, 1024, 32, true);
  gn("unet_b2_c256_16x16_g32_silu", 2, 256, 256, 32, true);
  gn("unet_b2_c128_32x32_g32", 2, 128, 1024, 32, false);
  gn("digits_b2_c64_16x16_g8_silu", 2, 64, 256, 8, true);
  auto ln = [&](const char* name, std::size_t rows, std::size_t dim, bool ada) {
    c.push_back({std::string("layer_norm/") + name, 8.0 * static_cast<double>(rows * dim), [=](dk::Context& ctx) {
                   dk::LayerNormArgs a{.x = x, .y = y, .rows = rows, .dim = dim, .eps = 1e-6f};
                   if (ada) a.shift = w, a.scale = w + dim, a.rows_per_batch = rows / 2, a.mod_stride = 6 * dim;
                   dk::layer_norm(a, ctx);
                 }});
  };
  ln("dit_s2_b2_n256_d384_adaln", 512, 384, true);
  ln("dit_b2_b2_n256_d768_adaln", 512, 768, true);
  ln("dit_s2_b2_n256_d384_affine", 512, 384, false);
  auto act = [&](const char* name, dk::Activation a, std::size_t n, std::size_t bias_len) {
    c.push_back({std::string("activation/") + name, 8.0 * static_cast<double>(n), [=](dk::Context& ctx) {
                   dk::activation(a, x, y, n, ctx, bias_len ? w : nullptr, 1, bias_len);
                 }});
  };
  act("gelu_tanh_dit_s2_mlp_512x1536", dk::Activation::gelu_tanh, 512 * 1536, 0);
  act("gelu_erf_512x1536", dk::Activation::gelu_erf, 512 * 1536, 0);
  act("silu_b2_c128_32x32", dk::Activation::silu, 2 * 128 * 1024, 0);
  act("silu_bias_512x1536", dk::Activation::silu, 512 * 1536, 1536);
  c.push_back({"softmax/dit_s2_3072x256", 8.0 * 3072 * 256, [=](dk::Context& ctx) { dk::softmax(y, 3072, 256, ctx); }});
  c.push_back({"gated_add/dit_s2_b2_n256_d384", 12.0 * 512 * 384,
               [=](dk::Context& ctx) { dk::gated_add(y, x, 2, 256, 384, w, 6 * 384, ctx); }});
  c.push_back({"add_channel_bias/unet_b2_c128_32x32", 8.0 * 2 * 128 * 1024,
               [=](dk::Context& ctx) { dk::add_channel_bias(y, 2, 128, 1024, w, 512, ctx); }});
  c.push_back({"upsample_nearest/unet_b2_c256_16x16_to_32x32", 4.0 * 5 * 2 * 256 * 256, [=](dk::Context& ctx) {
                 dk::upsample_nearest(x, 2 * 256, 16, 16, y, 32, 32, ctx);
               }});
  return c;
}

bool register_all() {
  for (const AttnShape& s : kAttn) {
    for (std::size_t threads : {1u, 2u}) {
      const std::string suffix = std::string("/") + s.name + "/threads:" + std::to_string(threads);
      for (const dk::OpVariant& v : dk::op_variants()) {
        auto* b = benchmark::RegisterBenchmark(("attention/" + std::string(v.name) + suffix).c_str(), bm_attention, &v, s, threads);
        if (threads > 1) b->UseRealTime();
      }
      auto* g = benchmark::RegisterBenchmark(("attention/gemm_softmax" + suffix).c_str(), bm_attention_gemm, s, threads);
      if (threads > 1) g->UseRealTime();
    }
    benchmark::RegisterBenchmark((std::string("attention/naive_loops/") + s.name + "/threads:1").c_str(), bm_attention_naive, s);
  }
  static const std::vector<MemCase> cases = memory_cases();
  for (const MemCase& m : cases) {
    const auto slash = m.name.find('/');
    for (std::size_t threads : {1u, 2u})
      for (const dk::OpVariant& v : dk::op_variants()) {
        const std::string name = m.name.substr(0, slash) + "/" + v.name + m.name.substr(slash) + "/threads:" + std::to_string(threads);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_memory, &v, threads, m.bytes, m.run);
        if (threads > 1) b->UseRealTime();
      }
  }
  return true;
}

const bool registered = register_all();

}  // namespace
