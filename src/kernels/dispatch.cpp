// SPDX-License-Identifier: MIT
// The kernel table (expanded from kernels.inc), the choice of the active variant (once, from
// isa_level()), the argument checks of the public entry points, and the split of a call over
// the thread pool. Compiled without ISA flags: nothing here runs an instruction the CPU lacks.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "diffuse/core/cpu.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "gemm_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

#define DIFFUSE_GEMM_KERNEL(symbol, isa, mr, nr, kc, nc)                                              \
  GemmKernel{#symbol, IsaLevel::isa, &isa::symbol, mr, nr, gemm_blocked_workspace(mr, nr, kc, nc), kc, \
             &isa::symbol##_pack, false},
#define DIFFUSE_GEMM_SMALL_M_KERNEL(symbol, isa, max_m)
const GemmKernel kGemmTable[] = {
#include "kernels.inc"
};
#undef DIFFUSE_GEMM_KERNEL
#undef DIFFUSE_GEMM_SMALL_M_KERNEL

// nr = 8: threads split N in groups of 8 rows of B (the column range never changes a result).
#define DIFFUSE_GEMM_KERNEL(symbol, isa, mr, nr, kc, nc)
#define DIFFUSE_GEMM_SMALL_M_KERNEL(symbol, isa, max_m) \
  GemmKernel{#symbol, IsaLevel::isa, &isa::symbol, max_m, 8, 0, 0, nullptr, true},
const GemmKernel kGemmSmallTable[] = {
#include "kernels.inc"
};
#undef DIFFUSE_GEMM_KERNEL
#undef DIFFUSE_GEMM_SMALL_M_KERNEL

template <std::size_t Size>
const GemmKernel& pick(const GemmKernel (&table)[Size]) {
  const IsaLevel level = isa_level();
  const GemmKernel* best = &table[0];
  for (const GemmKernel& k : table) {  // first supported row of the highest level allowed
    if (static_cast<int>(k.isa) > static_cast<int>(level) || !kernel_supported(k)) continue;
    if (static_cast<int>(k.isa) > static_cast<int>(best->isa)) best = &k;
  }
  return *best;
}

constexpr const char* kWhere = "kernels::gemm";

void check(const GemmKernel& k, const GemmArgs& g) {
  using std::to_string;
  if (g.b_type != DType::F32 && g.b_type != DType::F16 && g.b_type != DType::BF16)
    raise<value_error>(kWhere, "B must be F32, F16 or BF16, got " + std::string(dtype_name(g.b_type)));
  if (g.M == 0 || g.N == 0) return;  // nothing is read or written
  if (g.C == nullptr) raise<value_error>(kWhere, "C is null");
  if (g.ldc < g.N) raise<shape_error>(kWhere, "ldc " + to_string(g.ldc) + " < N " + to_string(g.N));
  if (g.K == 0) return;  // C = beta * C + bias: A and B are not read
  if (g.A == nullptr) raise<value_error>(kWhere, "A is null");
  if (g.B == nullptr) raise<value_error>(kWhere, "B is null");
  if (g.lda < g.K) raise<shape_error>(kWhere, "lda " + to_string(g.lda) + " < K " + to_string(g.K));
  const std::size_t min_ldb = g.b_transposed ? g.K : g.N;
  if (g.ldb < min_ldb)
    raise<shape_error>(kWhere, "ldb " + to_string(g.ldb) + " < " + (g.b_transposed ? "K " : "N ") +
                                   to_string(min_ldb) + (g.b_transposed ? " (B is [N, K])" : " (B is [K, N])"));
  if (k.small_m) {
    if (!g.b_transposed) raise<value_error>(kWhere, std::string(k.name) + " needs b_transposed");
    if (g.M > k.mr)
      raise<value_error>(kWhere, std::string(k.name) + " takes M <= " + to_string(k.mr) + ", got " + to_string(g.M));
  } else if (g.packed_b != nullptr) {
    const PackedMatrix& p = *g.packed_b;
    if (p.kernel != &k)
      raise<value_error>(kWhere, std::string("packed_b was packed for ") + (p.kernel ? p.kernel->name : "no kernel") +
                                     ", the call runs " + k.name);
    if (p.K != g.K || p.N != g.N)
      raise<shape_error>(kWhere, "packed_b is K x N " + to_string(p.K) + " x " + to_string(p.N) + ", the call is " +
                                     to_string(g.K) + " x " + to_string(g.N));
  }
}

/// K == 0: the product is empty, C = beta * C + bias (beta == 0 does not read C).
void scale_only(const GemmArgs& g) {
  for (std::size_t i = 0; i < g.M; ++i) {
    float* c = g.C + i * g.ldc;
    for (std::size_t j = 0; j < g.N; ++j) {
      const float b = g.bias ? g.bias[j] : 0.0f;
      c[j] = g.beta == 0.0f ? b : g.beta * c[j] + b;
    }
  }
}

void run(const GemmKernel& k, const GemmArgs& g, ThreadPool* pool, std::span<float> workspace) {
  check(k, g);
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {
    scale_only(g);
    return;
  }
  const std::size_t threads = pool ? pool->size() : 1;
  const std::size_t need = gemm_workspace_floats(k, threads);
  if (workspace.size() < need)
    raise<value_error>(kWhere, "workspace of " + std::to_string(workspace.size()) + " floats, " + k.name +
                                   " on " + std::to_string(threads) + " threads needs " + std::to_string(need));
  float* ws = workspace.data();
  const std::size_t per_thread = k.workspace;
  // Split the larger dimension, in whole register tiles. The tile size never changes the
  // result: each element's K reduction is fixed by kc alone.
  const std::size_t m_tiles = (g.M + k.mr - 1) / k.mr;
  const std::size_t n_tiles = (g.N + k.nr - 1) / k.nr;
  if (threads == 1 || (m_tiles == 1 && n_tiles == 1)) {
    k.fn(g, 0, g.M, 0, g.N, ws);
    return;
  }
  if (m_tiles >= n_tiles && !k.small_m) {  // small-M kernels split N only (their rows are one pass)
    pool->parallel_for(m_tiles, [&](std::size_t b, std::size_t e, std::size_t t) {
      k.fn(g, b * k.mr, std::min(e * k.mr, g.M), 0, g.N, ws + t * per_thread);
    });
  } else {
    pool->parallel_for(n_tiles, [&](std::size_t b, std::size_t e, std::size_t t) {
      k.fn(g, 0, g.M, b * k.nr, std::min(e * k.nr, g.N), ws + t * per_thread);
    });
  }
}

}  // namespace

std::span<const GemmKernel> gemm_kernels() { return kGemmTable; }

bool kernel_supported(const GemmKernel& k) {
  const CpuFeatures& f = cpu_features();
  switch (k.isa) {
    case IsaLevel::avx512:
      return DIFFUSE_KERNELS_X86 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx2 && f.fma && f.f16c;
    case IsaLevel::avx2: return DIFFUSE_KERNELS_X86 && f.avx2 && f.fma && f.f16c;
    default: return true;
  }
}

const GemmKernel& active_gemm_kernel() {
  static const GemmKernel& k = pick(kGemmTable);
  return k;
}

std::span<const GemmKernel> gemm_small_m_kernels() { return kGemmSmallTable; }

const GemmKernel& active_gemm_small_m_kernel() {
  static const GemmKernel& k = pick(kGemmSmallTable);
  return k;
}

std::size_t packed_b_floats(const GemmKernel& k, std::size_t K, std::size_t N) {
  return K * ((N + k.nr - 1) / k.nr * k.nr);
}

PackedMatrix pack_b(const GemmKernel& kernel, const void* B, std::size_t ldb, DType type, bool transposed,
                    std::size_t K, std::size_t N) {
  constexpr const char* where = "kernels::pack_b";
  if (kernel.pack == nullptr || kernel.small_m)
    raise<value_error>(where, std::string(kernel.name) + " reads B in place: nothing to pack");
  if (!kernel_supported(kernel))
    raise<value_error>(where, std::string(kernel.name) + " needs instructions this CPU does not have");
  GemmArgs g;
  g.M = 1, g.N = N, g.K = K;
  g.A = nullptr, g.lda = K;
  g.B = B, g.ldb = ldb, g.b_type = type, g.b_transposed = transposed;
  if (g.b_type != DType::F32 && g.b_type != DType::F16 && g.b_type != DType::BF16)
    raise<value_error>(where, "B must be F32, F16 or BF16, got " + std::string(dtype_name(type)));
  const std::size_t min_ldb = transposed ? K : N;
  if (ldb < min_ldb) raise<shape_error>(where, "ldb " + std::to_string(ldb) + " < " + std::to_string(min_ldb));
  if (K != 0 && N != 0 && B == nullptr) raise<value_error>(where, "B is null");
  PackedMatrix p;
  p.kernel = &kernel;
  p.K = K;
  p.N = N;
  const std::size_t n = packed_b_floats(kernel, K, N);
  p.storage.resize(n + 16);  // + 16: room to align `data` to 64 bytes
  float* d = p.storage.data();
  while (reinterpret_cast<std::uintptr_t>(d) % 64 != 0) ++d;
  if (n != 0) kernel.pack(g, d);
  p.data = d;
  return p;
}



std::size_t gemm_workspace_floats(const GemmKernel& k, std::size_t threads) {
  return k.workspace * std::max<std::size_t>(threads, 1);
}

void gemm(const GemmKernel& kernel, const GemmArgs& args, ThreadPool* pool, std::span<float> workspace) {
  if (!kernel_supported(kernel))
    raise<value_error>(kWhere, std::string(kernel.name) + " needs instructions this CPU does not have");
  run(kernel, args, pool, workspace);
}

namespace {

/// The variant gemm(args, ...) runs: depends on the shape only (never on the thread count).
const GemmKernel& kernel_for(const GemmArgs& args) {
  return args.b_transposed && args.M <= kGemmSmallM ? active_gemm_small_m_kernel() : active_gemm_kernel();
}

}  // namespace

void gemm(const GemmArgs& args, ThreadPool* pool, std::span<float> workspace) {
  run(kernel_for(args), args, pool, workspace);
}

void gemm(const GemmArgs& args, Context& ctx) {
  const GemmKernel& k = kernel_for(args);
  run(k, args, &ctx.pool(), ctx.workspace(gemm_workspace_floats(k, ctx.threads())));
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
