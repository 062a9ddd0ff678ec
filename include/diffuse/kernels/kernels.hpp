// SPDX-License-Identifier: MIT
/** @file kernels.hpp
 *  The dispatch API of the compute kernels. Every kernel has a scalar reference and, on x86,
 *  AVX2+FMA and AVX-512 variants; one table (src/kernels/kernels.inc) lists them all, and the
 *  entry used is picked once from `isa_level()` (so `DIFFUSE_ISA=avx2` caps it for a run).
 *  Arguments are checked here, once; the kernels behind the table never throw or allocate.
 *
 *  **GEMM (f32 accumulation)**
 *
 *      C[M,N] = alpha * A[M,K] * op(B) + beta * C[M,N] + bias[N]   (bias broadcast over rows)
 *
 *  All matrices are row-major with leading dimensions (elements between rows). `op(B)` is
 *  `B[K,N]`, or with `b_transposed` the transpose of `B[N,K]`: the layout of nn.Linear weights
 *  `[out, in]`, so `y = x W^T + b` is `{M=tokens, N=out, K=in, A=x, B=W, b_transposed=true,
 *  bias=b}`. B may be stored as f32, f16 or bf16 (converted exactly to f32 while it is packed;
 *  A and C are always f32). `beta == 0` writes C without reading it (NaNs in C do not
 *  propagate); `beta == 1` accumulates. With K == 0, C = beta * C + bias.
 *
 *  **Determinism.** Every output element is reduced over K in the same order whatever the thread
 *  count or its position in the matrix (K is cut into fixed blocks, each reduced with one FMA
 *  chain), so results are bit-identical for 1, 2 or N threads. They differ between ISAs (the
 *  order of the K reduction differs) within the documented tolerance: |C - C_exact| <= about
 *  K * 2^-24 * sum_k |A_ik B_kj|, i.e. below 1e-5 * K * max|A| * max|B| for K < 10^5.
 *
 *  **Workspace.** Packing needs `gemm_workspace_floats(kernel, threads)` floats of scratch: pass
 *  a span, or use the `Context` overload, whose arena grows once and is then reused.
 *
 *  **Example**
 *  @code
 *  diffuse::kernels::Context ctx(2);  // 2 threads, owned here
 *  diffuse::kernels::GemmArgs g;
 *  g.M = tokens; g.N = out; g.K = in;
 *  g.A = x; g.lda = in;
 *  g.B = w; g.ldb = in; g.b_type = diffuse::DType::BF16; g.b_transposed = true;
 *  g.C = y; g.ldc = out; g.bias = b;
 *  diffuse::kernels::gemm(g, ctx);
 *  @endcode */
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

#include "diffuse/config.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// Arguments of one GEMM call (see the file comment for the formula).
struct GemmArgs {
  std::size_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  ///< [M, K], row stride lda >= K
  std::size_t lda = 0;
  const void* B = nullptr;  ///< [K, N] (ldb >= N), or [N, K] with b_transposed (ldb >= K)
  std::size_t ldb = 0;
  DType b_type = DType::F32;  ///< F32, F16 or BF16
  bool b_transposed = false;
  float* C = nullptr;  ///< [M, N], row stride ldc >= N
  std::size_t ldc = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
  const float* bias = nullptr;  ///< [N] or null
};

/// A kernel body: computes the rows `[m_begin, m_end)` and columns `[n_begin, n_end)` of C for
/// arguments already checked (K > 0), using `workspace` (gemm_workspace_floats / threads floats,
/// 64-byte aligned). Never throws, allocates or starts threads.
using GemmFn = void (*)(const GemmArgs& args, std::size_t m_begin, std::size_t m_end, std::size_t n_begin,
                        std::size_t n_end, float* workspace);

/// One entry of the GEMM table.
struct GemmKernel {
  const char* name;        ///< e.g. "gemm_f32__avx512_12x32"
  IsaLevel isa;            ///< instruction set it needs
  GemmFn fn;
  std::size_t mr, nr;      ///< register tile: threads split M in multiples of mr, N of nr
  std::size_t workspace;   ///< floats of scratch per thread
};

/// Every GEMM variant compiled into this build, in table order (scalar first).
DIFFUSE_API std::span<const GemmKernel> gemm_kernels();

/// True when the CPU can run `k` (ignores the DIFFUSE_ISA cap).
DIFFUSE_API bool kernel_supported(const GemmKernel& k);

/// The variant `gemm` uses: the preferred one of the highest level within `isa_level()`.
DIFFUSE_API const GemmKernel& active_gemm_kernel();

/// Floats of workspace a call with kernel `k` on `threads` threads needs.
DIFFUSE_API std::size_t gemm_workspace_floats(const GemmKernel& k, std::size_t threads);

/// Checks `args` (throws shape_error for inconsistent sizes or strides, value_error for null
/// pointers or an unsupported b_type) and runs the active kernel on `pool` (null = inline).
/// `workspace` must hold gemm_workspace_floats(active_gemm_kernel(), pool threads) floats.
DIFFUSE_API void gemm(const GemmArgs& args, ThreadPool* pool, std::span<float> workspace);

/// As above, with the pool and scratch arena of `ctx`.
DIFFUSE_API void gemm(const GemmArgs& args, Context& ctx);

/// As above with an explicit variant (tests and benchmarks); throws value_error when the CPU
/// cannot run it.
DIFFUSE_API void gemm(const GemmKernel& kernel, const GemmArgs& args, ThreadPool* pool, std::span<float> workspace);

}  // namespace kernels
DIFFUSE_END_NAMESPACE
