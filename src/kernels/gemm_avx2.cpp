// SPDX-License-Identifier: MIT
// GEMM f32 with AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; reached only through the
// table after the CPUID check in dispatch.cpp). Same loop nest, packing and edge policy as
// gemm_avx512.cpp (see the comment there), with MR x (8 NV) tiles of ymm accumulators: 6x16
// uses 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers. packed_b and the
// small-M kernel work as in gemm_avx512.cpp. AVX2 has no masked
// 16-bit loads or scatters, so the edge columns of B go through a small zero-filled buffer.
//
// Only <immintrin.h> and declaration headers are included; everything is in kernels::avx2 or
// an anonymous namespace (house style, point 11).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "gemm_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx2 {

namespace {

using std::size_t;

inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/// Lane mask for lanes [0, n) of 8 (n clamped to 0..8), for maskload / maskstore.
inline __m256i lanes(size_t n) {
  const int k = n >= 8 ? 8 : static_cast<int>(n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// 8 elements of B converted to f32; only the first n (1..8) are read, the others are 0.
template <DType T>
inline __m256 load8(const void* base, size_t idx, size_t n) {
  if constexpr (T == DType::F32) {
    const float* p = static_cast<const float*>(base) + idx;
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
  } else {
    const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + idx;
    __m128i h;
    if (n >= 8) {
      h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    } else {
      std::uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::memcpy(tmp, p, n * sizeof(std::uint16_t));
      h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp));
    }
    if constexpr (T == DType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <int NV, DType T>
void pack_b(const GemmArgs& g, size_t pc, size_t kc, size_t jc, size_t nc, float* dst) {
  constexpr size_t NR = 8 * NV;
  for (size_t jr = 0; jr < nc; jr += NR, dst += kc * NR) {
    const size_t nr = min_sz(NR, nc - jr);
    if (!g.b_transposed) {
      size_t idx = pc * g.ldb + jc + jr;
      for (size_t k = 0; k < kc; ++k, idx += g.ldb) {
        for (int v = 0; v < NV; ++v) {
          const size_t off = 8u * static_cast<size_t>(v);
          const __m256 x = nr > off ? load8<T>(g.B, idx + off, nr - off) : _mm256_setzero_ps();
          _mm256_store_ps(dst + k * NR + off, x);
        }
      }
    } else {  // B^T[j, k]: convert 8 k-values of one row, store them down the panel column
      for (size_t jj = 0; jj < NR; ++jj) {
        if (jj >= nr) {
          for (size_t k = 0; k < kc; ++k) dst[k * NR + jj] = 0.0f;
          continue;
        }
        const size_t row = (jc + jr + jj) * g.ldb + pc;
        for (size_t k = 0; k < kc; k += 8) {
          const size_t n = min_sz(8, kc - k);
          alignas(32) float tmp[8];
          _mm256_store_ps(tmp, load8<T>(g.B, row + k, n));
          for (size_t t = 0; t < n; ++t) dst[(k + t) * NR + jj] = tmp[t];
        }
      }
    }
  }
}

template <int MR>
void pack_a(const float* a, size_t lda, size_t mr, size_t kc, float* dst) {
  for (int i = 0; i < MR; ++i) {
    float* d = dst + i;
    if (static_cast<size_t>(i) < mr) {
      const float* s = a + static_cast<size_t>(i) * lda;
      for (size_t k = 0; k < kc; ++k) d[k * MR] = s[k];
    } else {
      for (size_t k = 0; k < kc; ++k) d[k * MR] = 0.0f;
    }
  }
}

enum class Store { first_overwrite, first_scale, add };

template <int MR, int NV>
__attribute__((always_inline)) inline void micro(size_t kc, const float* __restrict a, const float* __restrict b,
                                                 float* c, size_t ldc, size_t mr, const __m256i* m, Store mode,
                                                 float alpha, float beta, const float* bias) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  }
  for (size_t k = 0; k < kc; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += 8 * NV;
  }
  const __m256 va = _mm256_set1_ps(alpha);
  const __m256 vb = _mm256_set1_ps(beta);
  __m256 add[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) add[v] = bias ? _mm256_maskload_ps(bias + 8 * v, m[v]) : _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (static_cast<size_t>(i) >= mr) break;
    float* ci = c + static_cast<size_t>(i) * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m256 t;
      if (mode == Store::first_overwrite) t = add[v];
      else if (mode == Store::first_scale) t = _mm256_fmadd_ps(vb, _mm256_maskload_ps(ci + 8 * v, m[v]), add[v]);
      else t = _mm256_maskload_ps(ci + 8 * v, m[v]);
      _mm256_maskstore_ps(ci + 8 * v, m[v], _mm256_fmadd_ps(va, acc[i][v], t));
    }
  }
}

template <int MR, int NV, size_t KC, size_t NC>
void gemm(const GemmArgs& g, size_t m0, size_t m1, size_t n0, size_t n1, float* ws) {
  constexpr size_t NR = 8 * NV;
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
          __m256i m[NV];
          for (int v = 0; v < NV; ++v) m[v] = lanes(nr > 8u * v ? nr - 8u * v : 0);
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
  constexpr size_t NR = 8 * NV;
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

/// Sum of the 8 lanes in a fixed order (halves, then pairs).
inline float hsum(__m256 v) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

/// Small M, B [N, K]: as in gemm_avx512.cpp with 8 lanes: each element is 8 lane partial sums
/// over k (k = l mod 8, in k order, the tail last), then hsum, then alpha * s + (beta * C + bias).
template <int MB, int NB, DType T>
void small_m(const GemmArgs& g, size_t m0, size_t n0, size_t n1) {
  const size_t K = g.K, kfull = K / 8 * 8, rem = K - kfull;
  const __m256i tail = lanes(rem);
  const float* a[MB];
  for (int i = 0; i < MB; ++i) a[i] = g.A + (m0 + static_cast<size_t>(i)) * g.lda;
  for (size_t j = n0; j < n1; j += NB) {
    const size_t nb = min_sz(NB, n1 - j);
    size_t row[NB];  // rows past nb repeat the last one (read, computed, not stored)
    for (int v = 0; v < NB; ++v) row[v] = (j + min_sz(static_cast<size_t>(v), nb - 1)) * g.ldb;
    __m256 acc[MB][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MB; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) acc[i][v] = _mm256_setzero_ps();
    }
    for (size_t k = 0; k < kfull; k += 8) {
      __m256 b[NB];
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) b[v] = load8<T>(g.B, row[v] + k, 8);
#pragma GCC unroll 8
      for (int i = 0; i < MB; ++i) {
        const __m256 x = _mm256_loadu_ps(a[i] + k);
#pragma GCC unroll 8
        for (int v = 0; v < NB; ++v) acc[i][v] = _mm256_fmadd_ps(x, b[v], acc[i][v]);
      }
    }
    if (rem != 0) {
      __m256 b[NB];
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) b[v] = load8<T>(g.B, row[v] + kfull, rem);
#pragma GCC unroll 8
      for (int i = 0; i < MB; ++i) {
        const __m256 x = _mm256_maskload_ps(a[i] + kfull, tail);
#pragma GCC unroll 8
        for (int v = 0; v < NB; ++v) acc[i][v] = _mm256_fmadd_ps(x, b[v], acc[i][v]);
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
  // One pass over B for every M <= 8, within the 16 ymm registers where possible.
  switch (m1 - m0) {
    case 1: small_m<1, 4, T>(g, m0, n0, n1); break;
    case 2: small_m<2, 4, T>(g, m0, n0, n1); break;
    case 3: small_m<3, 2, T>(g, m0, n0, n1); break;
    case 4: small_m<4, 2, T>(g, m0, n0, n1); break;
    case 5: small_m<5, 1, T>(g, m0, n0, n1); break;
    case 6: small_m<6, 1, T>(g, m0, n0, n1); break;
    case 7: small_m<7, 1, T>(g, m0, n0, n1); break;
    default: small_m<8, 1, T>(g, m0, n0, n1); break;
  }
}

}  // namespace

#define DIFFUSE_GEMM_DEFINE_scalar(symbol, mr, nr, kc, nc)
#define DIFFUSE_GEMM_DEFINE_avx512(symbol, mr, nr, kc, nc)
#define DIFFUSE_GEMM_DEFINE_avx2(symbol, mr, nr, kc, nc)                                                  \
  void symbol(const GemmArgs& args, size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, float* ws) { \
    static_assert((nr) % 8 == 0, "AVX2 tiles are whole ymm registers wide");                              \
    gemm<(mr), (nr) / 8, (kc), (nc)>(args, m_begin, m_end, n_begin, n_end, ws);                           \
  }                                                                                                       \
  void symbol##_pack(const GemmArgs& args, float* dst) { pack_all<(nr) / 8, (kc)>(args, dst); }
#define DIFFUSE_GEMM_SMALL_DEFINE_scalar(symbol, max_m)
#define DIFFUSE_GEMM_SMALL_DEFINE_avx512(symbol, max_m)
#define DIFFUSE_GEMM_SMALL_DEFINE_avx2(symbol, max_m)                                                     \
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

}  // namespace kernels::avx2
DIFFUSE_END_NAMESPACE
