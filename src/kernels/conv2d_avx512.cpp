// SPDX-License-Identifier: MIT
// conv2d's im2col with AVX-512 copies (compiled with -mavx512f/bw/vl/dq; called only when the
// GEMM row in use is an AVX-512 one, which dispatch has checked the CPU for). Output rows of UNet
// convolutions are 4 to 32 floats: plain loops of that length stay scalar (below the vectorizer's
// trip-count threshold) and memcpy calls cost more than the copy, which made im2col ~40 % of a
// 64-channel 8x8 convolution. One masked load/store per 16 floats does the row instead.
#include "../core/avx512_intrin.hpp"  // <immintrin.h> with the GCC 12 workaround

#include <cstddef>

#include "conv2d_im2col.hpp"
#include "conv2d_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx512 {

namespace {

using std::size_t;

inline __mmask16 lanes(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

struct Avx512Copy {
  static void zero(float* d, size_t n) {
    for (size_t t = 0; t < n; t += 16) _mm512_mask_storeu_ps(d + t, lanes(n - t), _mm512_setzero_ps());
  }
  static void copy(float* d, const float* src, size_t n) {
    for (size_t t = 0; t < n; t += 16) {
      const __mmask16 m = lanes(n - t);
      _mm512_mask_storeu_ps(d + t, m, _mm512_maskz_loadu_ps(m, src + t));
    }
  }
  static void gather(float* d, const float* src, size_t n, size_t s) {
    if (s == 2) {  // the even elements of 32 consecutive floats (masked: never read past src[2n-2])
      const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
      for (size_t t = 0; t < n; t += 16) {
        const size_t span = 2 * (n - t) - 1;  // floats from src + 2t that are needed
        const __m512 lo = _mm512_maskz_loadu_ps(lanes(span), src + 2 * t);
        const __m512 hi = _mm512_maskz_loadu_ps(lanes(span > 16 ? span - 16 : 0), src + 2 * t + 16);
        _mm512_mask_storeu_ps(d + t, lanes(n - t), _mm512_permutex2var_ps(lo, even, hi));
      }
      return;
    }
    for (size_t t = 0; t < n; ++t) d[t] = src[t * s];
  }
};

}  // namespace

void conv2d_im2col(const Conv2dArgs& a, std::size_t w_out, const float* xb, std::size_t c_begin, std::size_t c_end,
                   std::size_t n0, std::size_t n1, float* col, float* pad) {
  im2col_channels<Avx512Copy>(a, w_out, xb, c_begin, c_end, n0, n1, col, pad);
}

}  // namespace kernels::avx512
DIFFUSE_END_NAMESPACE
