// SPDX-License-Identifier: MIT
// The network kernels with AVX2 + FMA (compiled with -mavx2 -mfma -mf16c; reached only through
// the ops table after the CPUID check in ops_dispatch.cpp): the vector type below, then the
// ISA-independent bodies of ops_simd-inl.hpp instantiated on it in kernels::avx2. AVX2 has no
// mask registers: masks are lane vectors for vmaskmovps. Helpers in an anonymous namespace only
// (house style, point 11).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "ops_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx2 {
namespace {

/// 8 f32 lanes.
struct Simd {
  using V = __m256;
  using M = __m256i;
  static constexpr std::size_t W = 8;
  static constexpr std::size_t kQueryVectors = 2;  // attention: 16 queries per block (ops.inc)
  static constexpr int kScoreKeys = 6;            // 6 keys x 2 ymm = 12 accumulators of 16 registers
  static constexpr int kOutRows = 3;              // P V micro-tile: 3 rows x up to 4 ymm
  static constexpr int kOutVectors = 4;
  static constexpr int kOutRowsNarrow = 4;       // rows when d <= 2 W (at most 2 vectors per row)

  static M mask(std::size_t n) {
    const int k = n >= 8 ? 8 : static_cast<int>(n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V loadm(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void storem(float* p, M m, V v) { _mm256_maskstore_ps(p, m, v); }  // slow on AMD: tails only
  static V zero_masked(V v, M m) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }
  /// (v0, v0, v1, v1, v2, v2, v3, v3) and (v4, v4, ..., v7, v7): lane doubling for upsampling.
  static V dup_lo(V v) { return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)); }
  static V dup_hi(V v) { return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }  // b when either is NaN
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V copysign(V mag, V sgn) {
    const V s = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sgn));
  }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2i(V n) {
    const __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(i, 23));
  }
  static float hsum(V v) {
    alignas(32) float a[8];
    _mm256_store_ps(a, v);
    float s = 0.0f;
    for (float x : a) s += x;
    return s;
  }
  static float hmax(V v) {
    alignas(32) float a[8];
    _mm256_store_ps(a, v);
    float m = a[0];
    for (float x : a) m = x > m ? x : m;
    return m;
  }

  struct D {
    __m256d lo, hi;
  };
  static D dzero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static void dadd(D& s, V x) {
    s.lo = _mm256_add_pd(s.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
    s.hi = _mm256_add_pd(s.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
  }
  static void dsq(D& s, V x, double mean) {
    const __m256d m = _mm256_set1_pd(mean);
    const __m256d a = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), m);
    const __m256d b = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), m);
    s.lo = _mm256_fmadd_pd(a, a, s.lo);
    s.hi = _mm256_fmadd_pd(b, b, s.hi);
  }
  static double dsum(D s) {
    alignas(32) double a[4];
    _mm256_store_pd(a, _mm256_add_pd(s.lo, s.hi));
    return (a[0] + a[1]) + (a[2] + a[3]);
  }
};

}  // namespace
}  // namespace kernels::avx2
DIFFUSE_END_NAMESPACE

#define DIFFUSE_OPS_ISA avx2
#include "ops_simd-inl.hpp"
