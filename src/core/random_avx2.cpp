// SPDX-License-Identifier: MIT
// torch's AVX2 Box–Muller block (NormalFill16<float>) with AVX2 + FMA, written from the
// description of torch's avx_mathfun.h (log256_ps, sincos256_ps: Cephes polynomials after
// J. Pommier's sse_mathfun). Compiled with -mavx2 -mfma -mf16c; runs only after the CPUID check in
// random.cpp. Only <immintrin.h> and random_impl.hpp (declarations) are included.
//
// Bit-exactness: torch's wheel was compiled by GCC with contraction on, which fused these
// multiply/add pairs (found by comparing 4M samples against torch 2.15 and reading GCC's code):
// the 8 Horner steps of the log polynomial; y·z + e·q1; y − z·0.5 (exact either way); (x + y) + e·q2; the three
// Cody–Waite steps x + y·DP; the 2 Horner steps of each sin/cos polynomial; (y·z)·z − z·0.5;
// (y2·z)·x + x. Everything else is a separately rounded mul/add. Each fusion is written here as an
// explicit _mm256_fmadd_ps/_mm256_fnmadd_ps/_mm256_fmsub_ps, and no plain multiply feeds a plain
// add, so no compiler contraction setting can change the result.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "random_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx2 {

namespace {

// Constants as torch spells them: double literals rounded to float.
inline __m256 ps(double v) { return _mm256_set1_ps(static_cast<float>(v)); }
inline __m256 ps_bits(std::uint32_t bits) { return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(bits))); }
inline __m256i epi(std::uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }

/// log256_ps: natural log of x > 0 (NaN for x <= 0).
inline __m256 log_cephes(__m256 x) {
  const __m256 one = ps(1.0);
  const __m256 invalid = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LE_OS);
  x = _mm256_max_ps(x, ps_bits(0x00800000u));  // no denormals
  __m256i k = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
  x = _mm256_or_ps(_mm256_and_ps(x, ps_bits(~0x7F800000u)), ps(0.5));  // mantissa in [0.5, 1)
  k = _mm256_sub_epi32(k, epi(0x7F));
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(k), one);
  // if x < sqrt(1/2): e -= 1, x = x + x - 1; else x = x - 1
  const __m256 lt = _mm256_cmp_ps(x, ps(0.707106781186547524), _CMP_LT_OS);
  const __m256 keep = _mm256_and_ps(x, lt);
  x = _mm256_sub_ps(x, one);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, lt));
  x = _mm256_add_ps(x, keep);

  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = ps(7.0376836292E-2);
  y = _mm256_fmadd_ps(y, x, ps(-1.1514610310E-1));
  y = _mm256_fmadd_ps(y, x, ps(1.1676998740E-1));
  y = _mm256_fmadd_ps(y, x, ps(-1.2420140846E-1));
  y = _mm256_fmadd_ps(y, x, ps(1.4249322787E-1));
  y = _mm256_fmadd_ps(y, x, ps(-1.6668057665E-1));
  y = _mm256_fmadd_ps(y, x, ps(2.0000714765E-1));
  y = _mm256_fmadd_ps(y, x, ps(-2.4999993993E-1));
  y = _mm256_fmadd_ps(y, x, ps(3.3333331174E-1));
  y = _mm256_mul_ps(y, x);
  y = _mm256_fmadd_ps(y, z, _mm256_mul_ps(e, ps(-2.12194440e-4)));
  y = _mm256_fnmadd_ps(z, ps(0.5), y);
  x = _mm256_add_ps(x, y);
  x = _mm256_fmadd_ps(e, ps(0.693359375), x);
  return _mm256_or_ps(x, invalid);
}

/// sincos256_ps: sine and cosine of x (accurate for |x| < 8192).
inline void sincos_cephes(__m256 x, __m256* s, __m256* c) {
  __m256 sign_sin = _mm256_and_ps(x, ps_bits(0x80000000u));
  x = _mm256_and_ps(x, ps_bits(0x7FFFFFFFu));
  __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(x, ps(1.27323954473516)));  // |x|·4/π
  j = _mm256_and_si256(_mm256_add_epi32(j, epi(1)), epi(~1u));             // j = (j + 1) & ~1
  const __m256 y = _mm256_cvtepi32_ps(j);
  const __m256 swap_sign_sin = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(j, epi(4)), 29));
  const __m256 poly_mask = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(j, epi(2)), _mm256_setzero_si256()));
  // Extended-precision reduction x = ((x − y·DP1) − y·DP2) − y·DP3.
  x = _mm256_fmadd_ps(y, ps(-0.78515625), x);
  x = _mm256_fmadd_ps(y, ps(-2.4187564849853515625e-4), x);
  x = _mm256_fmadd_ps(y, ps(-3.77489497744594108e-8), x);
  const __m256 sign_cos =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_andnot_si256(_mm256_sub_epi32(j, epi(2)), epi(4)), 29));
  sign_sin = _mm256_xor_ps(sign_sin, swap_sign_sin);

  const __m256 z = _mm256_mul_ps(x, x);
  __m256 yc = _mm256_fmadd_ps(ps(2.443315711809948E-005), z, ps(-1.388731625493765E-003));
  yc = _mm256_fmadd_ps(yc, z, ps(4.166664568298827E-002));
  yc = _mm256_mul_ps(yc, z);
  yc = _mm256_fmsub_ps(yc, z, _mm256_mul_ps(z, ps(0.5)));
  yc = _mm256_add_ps(yc, ps(1.0));

  __m256 ys = _mm256_fmadd_ps(ps(-1.9515295891E-4), z, ps(8.3321608736E-3));
  ys = _mm256_fmadd_ps(ys, z, ps(-1.6666654611E-1));
  ys = _mm256_mul_ps(ys, z);
  ys = _mm256_fmadd_ps(ys, x, x);

  // Pick the polynomial per lane with the same add/sub of masked values as torch (signed zeros).
  const __m256 sin_from_s = _mm256_and_ps(poly_mask, ys);
  const __m256 sin_from_c = _mm256_andnot_ps(poly_mask, yc);
  ys = _mm256_sub_ps(ys, sin_from_s);
  yc = _mm256_sub_ps(yc, sin_from_c);
  *s = _mm256_xor_ps(_mm256_add_ps(sin_from_c, sin_from_s), sign_sin);
  *c = _mm256_xor_ps(_mm256_add_ps(yc, ys), sign_cos);
}

}  // namespace

void torch_box_muller_16(float* data, std::size_t blocks) {
  const __m256 one = ps(1.0);
  const __m256 minus_two = ps(-2.0);
  const __m256 two_pi = _mm256_set1_ps(static_cast<float>(2.0 * 3.14159265358979323846));
  const __m256 stdev = ps(1.0);
  const __m256 mean = _mm256_setzero_ps();
  for (std::size_t b = 0; b < blocks; ++b, data += 16) {
    const __m256 u1 = _mm256_sub_ps(one, _mm256_loadu_ps(data));
    const __m256 u2 = _mm256_loadu_ps(data + 8);
    const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(minus_two, log_cephes(u1)));
    __m256 s, c;
    sincos_cephes(_mm256_mul_ps(two_pi, u2), &s, &c);
    // torch: fmadd(r·cos, std, mean) with std = 1, mean = 0 (turns −0 into +0).
    _mm256_storeu_ps(data, _mm256_fmadd_ps(_mm256_mul_ps(radius, c), stdev, mean));
    _mm256_storeu_ps(data + 8, _mm256_fmadd_ps(_mm256_mul_ps(radius, s), stdev, mean));
  }
}

}  // namespace kernels::avx2
DIFFUSE_END_NAMESPACE
