// SPDX-License-Identifier: MIT
// GEMM f32 with AVX-512 F/BW/VL/DQ (compiled with -mavx512f/bw/vl/dq; reached only through the
// table after the CPUID check in dispatch.cpp). The variants of kernels.inc whose ISA is avx512
// are defined here from one template: MR rows x NV zmm columns (NR = 16 NV).
//
// Loops, outermost first (the BLIS scheme with the roles of A and B swapped, because the vector
// direction is N in row-major C):
//   jc: N in blocks of NC     pc: K in blocks of KC -> pack B[pc:+kc, jc:+nc] into NR-wide
//                                                      panels (kc x NR each, in L2)
//   ic: M in steps of MR -> pack A[ic:+MR, pc:+kc] as kc x MR (in L1, reused by every jr)
//   jr: the NR panels of the block -> micro-kernel: MR x NR accumulators in registers, one FMA
//       chain per element over the kc block, then C = alpha*acc + (beta*C + bias) on the first
//       K block and C = alpha*acc + C on the next ones.
// With GemmArgs::packed_b the pc/jc packing step is skipped: <symbol>_pack laid all of B out
// beforehand, K block after K block, in the panels this loop would have packed.
// Small M (b_transposed, M <= 8): small_m streams rows of B once, MB x NB dot products at a time.
// Edges: packed panels are zero-padded to MR rows / NR columns and C is read and written with
// masks, so edge tiles run the same instructions in the same order as interior ones: the result
// of an element never depends on where the tile boundaries fall (bit-identical across threads).
//
// Only <immintrin.h> (always-inline intrinsics) and declaration headers are included, and
// everything is in kernels::avx512 or an anonymous namespace (house style, point 11).
#include "../core/avx512_intrin.hpp"  // <immintrin.h> with the GCC 12 workaround

#include <cstddef>
#include <cstdint>

#include "gemm_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx512 {

namespace {

using std::size_t;

inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/// Lanes [0, n) of 16 (n clamped to 0..16).
inline __mmask16 lanes(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

/// 16 elements of B (masked lanes read nothing and give 0), converted to f32.
template <DType T>
inline __m512 load16(const void* base, size_t idx, __mmask16 m) {
  if constexpr (T == DType::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(base) + idx));
  } else if constexpr (T == DType::BF16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(base) + idx));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + idx);
  }
}

inline void transpose16(__m512* r);

/// Packs op(B)[pc:+kc, jc:+nc] into panels of NR columns: panel p holds kc rows of NR floats,
/// columns past nc are zero.
template <int NV, DType T>
void pack_b(const GemmArgs& g, size_t pc, size_t kc, size_t jc, size_t nc, float* dst) {
  constexpr size_t NR = 16 * NV;
  for (size_t jr = 0; jr < nc; jr += NR, dst += kc * NR) {
    const size_t nr = min_sz(NR, nc - jr);
    if (!g.b_transposed) {  // B[k, j]: rows of the panel are contiguous in memory
      __mmask16 m[NV];
      for (int v = 0; v < NV; ++v) m[v] = lanes(nr > 16u * v ? nr - 16u * v : 0);
      size_t idx = pc * g.ldb + jc + jr;
      for (size_t k = 0; k < kc; ++k, idx += g.ldb) {
        for (int v = 0; v < NV; ++v) _mm512_store_ps(dst + k * NR + 16 * v, load16<T>(g.B, idx + 16u * v, m[v]));
      }
    } else {  // B^T[j, k]: each column of the panel is a contiguous row of B^T; transpose 16 x 16 blocks
      // (a scatter per column cost ~20% of a DiT forward: Linear weights [out, in] take this path)
      for (size_t j0 = 0; j0 < NR; j0 += 16) {
        const size_t rows = nr > j0 ? min_sz(16, nr - j0) : 0;
        for (size_t k0 = 0; k0 < kc; k0 += 16) {
          const size_t kn = min_sz(16, kc - k0);
          const __mmask16 m = lanes(kn);
          __m512 r[16];
          for (size_t i = 0; i < 16; ++i)
            r[i] = i < rows ? load16<T>(g.B, (jc + jr + j0 + i) * g.ldb + pc + k0, m) : _mm512_setzero_ps();
          transpose16(r);
          for (size_t t = 0; t < kn; ++t) _mm512_store_ps(dst + (k0 + t) * NR + j0, r[t]);
        }
      }
    }
  }
}

/// 16 x 16 transpose: on return r[c] holds column c of the input rows r[0..15].
inline void transpose16(__m512* r) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int j = 0; j < 4; ++j) {  // u[4j + c]: rows 4j..4j+3 of columns c, c+4, c+8, c+12
    const __m512d t0 = _mm512_castps_pd(t[4 * j]), t1 = _mm512_castps_pd(t[4 * j + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * j + 2]), t3 = _mm512_castps_pd(t[4 * j + 3]);
    u[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  for (int c = 0; c < 4; ++c) {  // gather the 128-bit lanes: lane L of u[4j + c] is column c + 4L
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[c + 4] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[c + 12] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

/// Packs A[ic:+mr, pc:+kc] as kc groups of MR floats; rows past mr are zero. For MR <= 16,
/// 16 k at a time through a register transpose (a scalar copy costs ~15% of the run time when N
/// is small, e.g. conv-as-GEMM with N = 128, because A is then reused by few micro-tiles).
template <int MR>
void pack_a(const float* a, size_t lda, size_t mr, size_t kc, float* dst) {
  size_t k0 = 0;
  if constexpr (MR <= 16) {
    const __mmask16 out_mask = lanes(MR);
    for (; k0 + 16 <= kc; k0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = static_cast<size_t>(i) < mr ? _mm512_loadu_ps(a + static_cast<size_t>(i) * lda + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (int t = 0; t < 16; ++t) _mm512_mask_storeu_ps(dst + (k0 + static_cast<size_t>(t)) * MR, out_mask, r[t]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* d = dst + i;
    if (static_cast<size_t>(i) < mr) {
      const float* s = a + static_cast<size_t>(i) * lda;
      for (size_t k = k0; k < kc; ++k) d[k * MR] = s[k];
    } else {
      for (size_t k = k0; k < kc; ++k) d[k * MR] = 0.0f;
    }
  }
}

/// How the micro-kernel combines its product with C.
enum class Store { first_overwrite, first_scale, add };

/// C[0:mr, 0:nr] of the tile at c from packed a (kc x MR) and b (kc x NR).
template <int MR, int NV>
__attribute__((always_inline)) inline void micro(size_t kc, const float* __restrict a, const float* __restrict b,
                                                 float* c, size_t ldc, size_t mr, const __mmask16* m, Store mode,
                                                 float alpha, float beta, const float* bias) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  }
  for (size_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += 16 * NV;
  }
  const __m512 va = _mm512_set1_ps(alpha);
  __m512 add[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) add[v] = bias ? _mm512_maskz_loadu_ps(m[v], bias + 16 * v) : _mm512_setzero_ps();
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (static_cast<size_t>(i) >= mr) break;
    float* ci = c + static_cast<size_t>(i) * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 t;
      if (mode == Store::first_overwrite) t = add[v];
      else if (mode == Store::first_scale) t = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[v], ci + 16 * v), add[v]);
      else t = _mm512_maskz_loadu_ps(m[v], ci + 16 * v);
      _mm512_mask_storeu_ps(ci + 16 * v, m[v], _mm512_fmadd_ps(va, acc[i][v], t));
    }
  }
}

template <int MR, int NV, size_t KC, size_t NC>
void gemm(const GemmArgs& g, size_t m0, size_t m1, size_t n0, size_t n1, float* ws) {
  constexpr size_t NR = 16 * NV;
  static_assert(NC % NR == 0, "blocks of N are whole panels (the packed layout relies on it)");
  float* bpack = ws;
  float* apack = ws + (KC * ((NC + NR - 1) / NR) * NR + 15) / 16 * 16;  // as gemm_blocked_workspace
  const size_t npad = (g.N + NR - 1) / NR * NR;  // columns of a K block of packed_b
  for (size_t jc = n0; jc < n1; jc += NC) {  // n0 is a whole number of tiles, so jc % NR == 0
    const size_t nc = min_sz(NC, n1 - jc);
    for (size_t pc = 0; pc < g.K; pc += KC) {
      const size_t kc = min_sz(KC, g.K - pc);
      const float* bblock = bpack;
      if (g.packed_b != nullptr) {  // packed once, in this very layout: panel jc / NR of K block pc
        bblock = g.packed_b->data + pc * npad + jc * kc;
      } else {
        switch (g.b_type) {
          case DType::F16: pack_b<NV, DType::F16>(g, pc, kc, jc, nc, bpack); break;
          case DType::BF16: pack_b<NV, DType::BF16>(g, pc, kc, jc, nc, bpack); break;
          default: pack_b<NV, DType::F32>(g, pc, kc, jc, nc, bpack); break;
        }
      }
      const Store mode = pc != 0 ? Store::add : g.beta == 0.0f ? Store::first_overwrite : Store::first_scale;
      for (size_t ic = m0; ic < m1; ic += MR) {
        const size_t mr = min_sz(MR, m1 - ic);
        pack_a<MR>(g.A + ic * g.lda + pc, g.lda, mr, kc, apack);
        for (size_t jr = 0; jr < nc; jr += NR) {
          const size_t nr = nc - jr;
          __mmask16 m[NV];
          for (int v = 0; v < NV; ++v) m[v] = lanes(nr > 16u * v ? nr - 16u * v : 0);
          const float* bias = (g.bias && pc == 0) ? g.bias + jc + jr : nullptr;
          micro<MR, NV>(kc, apack, bblock + jr * kc, g.C + ic * g.ldc + jc + jr, g.ldc, mr, m, mode, g.alpha,
                        g.beta, bias);
        }
      }
    }
  }
}

/// All of op(B), K block after K block, each as the panels gemm() packs per call (GemmPackFn).
template <int NV, size_t KC>
void pack_all(const GemmArgs& g, float* dst) {
  constexpr size_t NR = 16 * NV;
  const size_t npad = (g.N + NR - 1) / NR * NR;
  for (size_t pc = 0; pc < g.K; pc += KC) {
    const size_t kc = min_sz(KC, g.K - pc);
    switch (g.b_type) {
      case DType::F16: pack_b<NV, DType::F16>(g, pc, kc, 0, g.N, dst + pc * npad); break;
      case DType::BF16: pack_b<NV, DType::BF16>(g, pc, kc, 0, g.N, dst + pc * npad); break;
      default: pack_b<NV, DType::F32>(g, pc, kc, 0, g.N, dst + pc * npad); break;
    }
  }
}

/// Sum of the 16 lanes in a fixed order (halves, then quarters, then pairs).
inline float hsum(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

/// Small M, B [N, K]: rows [m0, m0 + MB) of C, columns [n0, n1), NB rows of B at a time. Each
/// element: 16 lane partial sums over k (k = l mod 16, in k order, a masked tail last), then
/// hsum, then alpha * s + (beta * C + bias). Neither NB, MB nor the column range change it.
template <int MB, int NB, DType T>
void small_m(const GemmArgs& g, size_t m0, size_t n0, size_t n1) {
  const size_t K = g.K, kfull = K / 16 * 16;
  const __mmask16 all = lanes(16), tail = lanes(K - kfull);
  const float* a[MB];
  for (int i = 0; i < MB; ++i) a[i] = g.A + (m0 + static_cast<size_t>(i)) * g.lda;
  for (size_t j = n0; j < n1; j += NB) {
    const size_t nb = min_sz(NB, n1 - j);
    size_t row[NB];  // rows past nb repeat the last one (read, computed, not stored)
    for (int v = 0; v < NB; ++v) row[v] = (j + min_sz(static_cast<size_t>(v), nb - 1)) * g.ldb;
    __m512 acc[MB][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MB; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) acc[i][v] = _mm512_setzero_ps();
    }
    for (size_t k = 0; k < kfull; k += 16) {
      __m512 b[NB];
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) b[v] = load16<T>(g.B, row[v] + k, all);
#pragma GCC unroll 8
      for (int i = 0; i < MB; ++i) {
        const __m512 x = _mm512_loadu_ps(a[i] + k);
#pragma GCC unroll 8
        for (int v = 0; v < NB; ++v) acc[i][v] = _mm512_fmadd_ps(x, b[v], acc[i][v]);
      }
    }
    if (kfull < K) {  // the same FMA per lane, on zeros past K
      __m512 b[NB];
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) b[v] = load16<T>(g.B, row[v] + kfull, tail);
#pragma GCC unroll 8
      for (int i = 0; i < MB; ++i) {
        const __m512 x = _mm512_maskz_loadu_ps(tail, a[i] + kfull);
#pragma GCC unroll 8
        for (int v = 0; v < NB; ++v) acc[i][v] = _mm512_fmadd_ps(x, b[v], acc[i][v]);
      }
    }
    float sum[MB][NB];  // reduced with constant indices only, so that acc stays in registers
#pragma GCC unroll 8
    for (int i = 0; i < MB; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) sum[i][v] = hsum(acc[i][v]);
    }
    for (int i = 0; i < MB; ++i) {
      float* c = g.C + (m0 + static_cast<size_t>(i)) * g.ldc;
      for (size_t v = 0; v < nb; ++v) {
        const float rest = (g.beta == 0.0f ? 0.0f : g.beta * c[j + v]) + (g.bias ? g.bias[j + v] : 0.0f);
        c[j + v] = g.alpha * sum[i][v] + rest;
      }
    }
  }
}

template <DType T>
void small_m_rows(const GemmArgs& g, size_t m0, size_t m1, size_t n0, size_t n1) {
  // One pass over B for every M <= 8: MB x NB accumulators, NB + MB loads per MB * NB FMAs.
  switch (m1 - m0) {
    case 1: small_m<1, 8, T>(g, m0, n0, n1); break;
    case 2: small_m<2, 8, T>(g, m0, n0, n1); break;
    case 3: small_m<3, 4, T>(g, m0, n0, n1); break;
    case 4: small_m<4, 4, T>(g, m0, n0, n1); break;
    case 5: small_m<5, 2, T>(g, m0, n0, n1); break;
    case 6: small_m<6, 2, T>(g, m0, n0, n1); break;
    case 7: small_m<7, 2, T>(g, m0, n0, n1); break;
    default: small_m<8, 2, T>(g, m0, n0, n1); break;
  }
}

}  // namespace

#define DIFFUSE_GEMM_DEFINE_scalar(symbol, mr, nr, kc, nc)
#define DIFFUSE_GEMM_DEFINE_avx2(symbol, mr, nr, kc, nc)
#define DIFFUSE_GEMM_DEFINE_avx512(symbol, mr, nr, kc, nc)                                                \
  void symbol(const GemmArgs& args, size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, float* ws) { \
    static_assert((nr) % 16 == 0, "AVX-512 tiles are whole zmm registers wide");                          \
    gemm<(mr), (nr) / 16, (kc), (nc)>(args, m_begin, m_end, n_begin, n_end, ws);                          \
  }                                                                                                       \
  void symbol##_pack(const GemmArgs& args, float* dst) { pack_all<(nr) / 16, (kc)>(args, dst); }
#define DIFFUSE_GEMM_SMALL_DEFINE_scalar(symbol, max_m)
#define DIFFUSE_GEMM_SMALL_DEFINE_avx2(symbol, max_m)
#define DIFFUSE_GEMM_SMALL_DEFINE_avx512(symbol, max_m)                                                   \
  void symbol(const GemmArgs& args, size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, float*) {   \
    static_assert((max_m) <= 8, "small_m_rows handles up to 8 rows in one pass");                         \
    switch (args.b_type) {                                                                                \
      case DType::F16: small_m_rows<DType::F16>(args, m_begin, m_end, n_begin, n_end); break;             \
      case DType::BF16: small_m_rows<DType::BF16>(args, m_begin, m_end, n_begin, n_end); break;           \
      default: small_m_rows<DType::F32>(args, m_begin, m_end, n_begin, n_end); break;                     \
    }                                                                                                     \
  }
#define DIFFUSE_GEMM_KERNEL(symbol, isa, mr, nr, kc, nc) DIFFUSE_GEMM_DEFINE_##isa(symbol, mr, nr, kc, nc)
#define DIFFUSE_GEMM_SMALL_M_KERNEL(symbol, isa, max_m) DIFFUSE_GEMM_SMALL_DEFINE_##isa(symbol, max_m)
#include "kernels.inc"
#undef DIFFUSE_GEMM_KERNEL
#undef DIFFUSE_GEMM_SMALL_M_KERNEL

}  // namespace kernels::avx512
DIFFUSE_END_NAMESPACE
