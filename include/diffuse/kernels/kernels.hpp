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
 *  **Small M.** `gemm(args, ...)` sends calls with `b_transposed` and `M <= kGemmSmallM` (the
 *  adaLN / timestep linears of a DiT: one row per sample) to a separate kernel of the same ISA
 *  (`active_gemm_small_m_kernel()`): it streams each row of B once and takes vectorised dot
 *  products over K, with no packing. Its K reduction order (16 or 8 lane partial sums in k order,
 *  then a fixed tree) differs from the blocked kernel's, so a row computed with M = 2 may differ
 *  in the last bits from the same row computed inside a larger M. The choice depends only on the
 *  shape (M, b_transposed) and the ISA, never on the thread count (threads split N), so the
 *  determinism above still holds: a given call gives the same bits on 1, 2 or N threads.
 *
 *  **Pre-packed B.** A constant B (a weight) can be packed once with `pack_b(kernel, ...)` into
 *  exactly the f32 panels the blocked kernel's micro-kernel reads, and passed as
 *  `GemmArgs::packed_b`: the kernel then skips its per-call packing of B. The result is
 *  bit-identical to the unpacked call (same blocks, same reduction order). `B`, `ldb`, `b_type`
 *  and `b_transposed` must still describe the original (the small-M kernel streams it, and the
 *  checks use it). The packed copy is f32 with N rounded up to the kernel's nr:
 *  `4 * K * round_up(N, nr)` bytes, twice the size of an f16/bf16 weight.
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
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

struct GemmKernel;
struct PackedMatrix;

/// Largest M that `gemm(args, ...)` sends to the small-M kernel (when b_transposed). Measured:
/// docs/kernels.md, "Small M and pre-packed weights".
inline constexpr std::size_t kGemmSmallM = 4;

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
  /// op(B) packed by pack_b for the kernel that runs the call (same K, N), or null. B, ldb,
  /// b_type and b_transposed must still describe the original (see "Pre-packed B").
  const PackedMatrix* packed_b = nullptr;
};

/// A kernel body: computes the rows `[m_begin, m_end)` and columns `[n_begin, n_end)` of C for
/// arguments already checked (K > 0), using `workspace` (gemm_workspace_floats / threads floats,
/// 64-byte aligned). Never throws, allocates or starts threads.
using GemmFn = void (*)(const GemmArgs& args, std::size_t m_begin, std::size_t m_end, std::size_t n_begin,
                        std::size_t n_end, float* workspace);

/// Packs all of op(B) (K x N, from B, ldb, b_type, b_transposed, K, N of `args`) into `dst`
/// (packed_b_floats floats, 64-byte aligned) in the layout the kernel's micro-kernel reads.
using GemmPackFn = void (*)(const GemmArgs& args, float* dst);

/// One entry of the GEMM tables.
struct GemmKernel {
  const char* name;        ///< e.g. "gemm_f32__avx512_12x32"
  IsaLevel isa;            ///< instruction set it needs
  GemmFn fn;
  std::size_t mr, nr;      ///< register tile: threads split M in multiples of mr, N of nr
                           ///< (small-M kernels: mr = the largest M they accept)
  std::size_t workspace;   ///< floats of scratch per thread
  std::size_t kc = 0;      ///< K block of the packed B (0: all of K in one block)
  GemmPackFn pack = nullptr;  ///< packs a constant B for this kernel (null: small-M kernels)
  bool small_m = false;    ///< a small-M kernel: b_transposed and M <= mr only, reads B in place
};

/**
 * op(B) packed once for one blocked kernel: for each K block of `kernel->kc` rows (all of K when
 * 0), the panels of `kernel->nr` columns (the last one zero-padded), each kc x nr floats, in
 * column order. Move-only.
 */
struct PackedMatrix {
  const GemmKernel* kernel = nullptr;  ///< the variant it was packed for
  std::size_t K = 0, N = 0;
  const float* data = nullptr;  ///< 64-byte aligned into `storage`, packed_b_floats(*kernel, K, N) floats
  std::vector<float> storage;   ///< owns `data` (a move keeps the buffer, so `data` stays valid)

  PackedMatrix() = default;
  PackedMatrix(PackedMatrix&&) noexcept = default;
  PackedMatrix& operator=(PackedMatrix&&) noexcept = default;
  PackedMatrix(const PackedMatrix&) = delete;
  PackedMatrix& operator=(const PackedMatrix&) = delete;

  /// Bytes of the packed copy.
  std::size_t bytes() const noexcept { return storage.size() * sizeof(float); }
};

/// Floats of a B of K x N packed for `kernel`: K * round_up(N, nr).
DIFFUSE_API std::size_t packed_b_floats(const GemmKernel& kernel, std::size_t K, std::size_t N);

/**
 * Packs op(B) (B [K, N] with row stride ldb, or [N, K] when `transposed`; F32, F16 or BF16) for
 * the blocked `kernel` (value_error for a small-M kernel or one the CPU cannot run; shape_error
 * for ldb too small). Pass the result as GemmArgs::packed_b to calls run by that kernel.
 *
 * **Example**
 * @code
 * const auto& k = diffuse::kernels::active_gemm_kernel();
 * auto packed = diffuse::kernels::pack_b(k, w, in, diffuse::DType::BF16, true, in, out);
 * g.packed_b = &packed;  // g as in the file comment
 * @endcode
 */
DIFFUSE_API PackedMatrix pack_b(const GemmKernel& kernel, const void* B, std::size_t ldb, DType type,
                                bool transposed, std::size_t K, std::size_t N);

/// Every small-M variant compiled into this build (scalar first).
DIFFUSE_API std::span<const GemmKernel> gemm_small_m_kernels();

/// The small-M variant `gemm` uses for b_transposed calls with M <= kGemmSmallM.
DIFFUSE_API const GemmKernel& active_gemm_small_m_kernel();

/// Every GEMM variant compiled into this build, in table order (scalar first).
DIFFUSE_API std::span<const GemmKernel> gemm_kernels();

/// True when the CPU can run `k` (ignores the DIFFUSE_ISA cap).
DIFFUSE_API bool kernel_supported(const GemmKernel& k);

/// The variant `gemm` uses: the preferred one of the highest level within `isa_level()`.
DIFFUSE_API const GemmKernel& active_gemm_kernel();

/// Floats of workspace a call with kernel `k` on `threads` threads needs.
DIFFUSE_API std::size_t gemm_workspace_floats(const GemmKernel& k, std::size_t threads);

/// Checks `args` (throws shape_error for inconsistent sizes or strides or a packed_b of another
/// K x N, value_error for null pointers, an unsupported b_type or a packed_b made for another
/// kernel) and runs the active kernel on `pool` (null = inline): the small-M one for
/// b_transposed and M <= kGemmSmallM (it ignores packed_b), the blocked one otherwise.
/// `workspace` must hold gemm_workspace_floats(active_gemm_kernel(), pool threads) floats.
DIFFUSE_API void gemm(const GemmArgs& args, ThreadPool* pool, std::span<float> workspace);

/// As above, with the pool and scratch arena of `ctx`.
DIFFUSE_API void gemm(const GemmArgs& args, Context& ctx);

/// As above with an explicit variant, blocked or small-M, used whatever M is (tests and
/// benchmarks); throws value_error when the CPU cannot run it, or for a small-M variant when M >
/// its mr or B is not transposed. A small-M variant ignores packed_b.
DIFFUSE_API void gemm(const GemmKernel& kernel, const GemmArgs& args, ThreadPool* pool, std::span<float> workspace);

}  // namespace kernels
DIFFUSE_END_NAMESPACE
