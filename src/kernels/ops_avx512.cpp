// SPDX-License-Identifier: MIT
// The network kernels with AVX-512 F/BW/VL/DQ (compiled with those flags; reached only through
// the ops table after the CPUID check in ops_dispatch.cpp): the vector type below, then the
// ISA-independent bodies of ops_simd-inl.hpp instantiated on it in kernels::avx512.
// Only <immintrin.h> and declaration headers are included, and every helper is in an anonymous
// namespace (house style, point 11: no inline function compiled with these flags can be picked
// by the linker for another file).
#include "../core/avx512_intrin.hpp"  // <immintrin.h> with the GCC 12 workaround

#include <cstddef>
#include <cstdint>

#include "ops_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx512 {
namespace {

/// 16 f32 lanes; masks are __mmask16 (masked-off lanes read as 0 and are not written).
struct Simd {
  using V = __m512;
  using M = __mmask16;
  static constexpr std::size_t W = 16;
  static constexpr std::size_t kQueryVectors = 2;  // attention: 32 queries per block (ops.inc)
  static constexpr int kScoreKeys = 8;            // S^T micro-tile: 8 keys x 2 zmm = 16 accumulators
  static constexpr int kOutRows = 4;              // P V micro-tile: 4 rows x up to 4 zmm
  static constexpr int kOutVectors = 4;
  static constexpr int kOutRowsNarrow = 8;       // rows when d <= 2 W (at most 2 vectors per row)

  static M mask(std::size_t n) { return n >= 16 ? static_cast<M>(0xFFFF) : static_cast<M>((1u << n) - 1u); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V loadm(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void storem(float* p, M m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V zero_masked(V v, M m) { return _mm512_maskz_mov_ps(m, v); }  // lanes outside m = 0
  /// (v0, v0, v1, v1, ..., v7, v7) and (v8, v8, ..., v15, v15): lane doubling for upsampling.
  static V dup_lo(V v) {
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), v);
  }
  static V dup_hi(V v) {
    return _mm512_permutexvar_ps(_mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15), v);
  }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static V max(V a, V b) { return _mm512_max_ps(a, b); }              // b when either is NaN
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V copysign(V mag, V sgn) {
    const __m512i s = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag), _mm512_castps_si512(sgn), s, 0xD8));
  }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  /// 2^n for integral n in [-126, 127].
  static V pow2i(V n) {
    const __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(i, 23));
  }
  static float hsum(V v) {
    alignas(64) float a[16];
    _mm512_store_ps(a, v);
    float s = 0.0f;
    for (float x : a) s += x;
    return s;
  }
  static float hmax(V v) {
    alignas(64) float a[16];
    _mm512_store_ps(a, v);
    float m = a[0];
    for (float x : a) m = x > m ? x : m;
    return m;
  }

  /// Double accumulators for the normalisation statistics: 16 lanes as two 8-wide halves.
  struct D {
    __m512d lo, hi;
  };
  static D dzero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  static __m512d lo_pd(V x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
  static __m512d hi_pd(V x) { return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))); }
  static void dadd(D& s, V x) {
    s.lo = _mm512_add_pd(s.lo, lo_pd(x));
    s.hi = _mm512_add_pd(s.hi, hi_pd(x));
  }
  static void dsq(D& s, V x, double mean) {
    const __m512d m = _mm512_set1_pd(mean);
    const __m512d a = _mm512_sub_pd(lo_pd(x), m), b = _mm512_sub_pd(hi_pd(x), m);
    s.lo = _mm512_fmadd_pd(a, a, s.lo);
    s.hi = _mm512_fmadd_pd(b, b, s.hi);
  }
  static double dsum(D s) {
    alignas(64) double a[8];
    _mm512_store_pd(a, _mm512_add_pd(s.lo, s.hi));
    double r = 0.0;
    for (double x : a) r += x;
    return r;
  }
};

}  // namespace
}  // namespace kernels::avx512
DIFFUSE_END_NAMESPACE

#define DIFFUSE_OPS_ISA avx512
#include "ops_simd-inl.hpp"
