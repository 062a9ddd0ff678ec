// SPDX-License-Identifier: MIT
/** @file conv2d_im2col.hpp
 *  Internal: the im2col row walk of conv2d, shared by conv2d.cpp (plain C++ copies) and
 *  conv2d_avx512.cpp (masked AVX-512 copies). Everything is in an anonymous namespace, so each
 *  including file gets its own copy compiled with its own flags and the linker cannot swap an
 *  AVX-512 copy into the scalar path (house style, point 11). */
#pragma once

#include <algorithm>
#include <cstddef>

#include "diffuse/config.hpp"
#include "diffuse/kernels/ops.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {
namespace {

/** Rows [r_begin, r_end) of the column matrix of one image, for the output pixels [n0, n1),
 *  into col (row r at col + (r - r_begin) * (n1 - n0)). Row r = (c * kh + p) * kw + q holds, for
 *  output pixel n = (i, j), x[c, i*s + p - pad_top, j*s + q - pad_left], or 0 in the padding.
 *  `Copy` supplies zero(d, n), copy(d, src, n) and gather(d, src, n, s) (d[t] = src[t * s]). */
template <class Copy>
void im2col_rows(const Conv2dArgs& a, std::size_t w_out, const float* xb, std::size_t r_begin, std::size_t r_end,
                 std::size_t n0, std::size_t n1, float* col) {
  using std::size_t;
  const size_t s = a.stride, W = a.width, pl = a.pad_left, cols = n1 - n0;
  for (size_t r = r_begin; r < r_end; ++r) {
    float* dst = col + (r - r_begin) * cols;
    const size_t q = r % a.kw, p = (r / a.kw) % a.kh, c = r / (a.kw * a.kh);
    const float* plane = xb + c * a.height * a.width;
    // Output columns whose tap is inside the image: j*s + q - pl in [0, W), i.e. j in [j_lo, j_hi).
    const size_t j_lo = std::min(w_out, pl > q ? (pl - q + s - 1) / s : 0);
    const size_t j_hi = std::clamp(W + pl > q ? (W - 1 + pl - q) / s + 1 : 0, j_lo, w_out);
    size_t i = n0 / w_out, j0 = n0 % w_out;
    for (size_t n = n0; n < n1; ++i, j0 = 0) {  // one output row (or the part of it in the block)
      const size_t j1 = std::min(w_out, j0 + (n1 - n));
      float* d = dst + (n - n0);  // d[j - j0] for j in [j0, j1)
      n += j1 - j0;
      const size_t ih = i * s + p;  // input row + pad_top
      if (ih < a.pad_top || ih - a.pad_top >= a.height) {
        Copy::zero(d, j1 - j0);
        continue;
      }
      const size_t lo = std::clamp(j_lo, j0, j1), hi = std::clamp(j_hi, lo, j1);
      if (lo > j0) Copy::zero(d, lo - j0);
      if (hi > lo) {
        const float* src = plane + (ih - a.pad_top) * W + (lo * s + q - pl);  // the tap of column lo
        if (s == 1) Copy::copy(d + (lo - j0), src, hi - lo);
        else Copy::gather(d + (lo - j0), src, hi - lo, s);
      }
      if (j1 > hi) Copy::zero(d + (hi - j0), j1 - hi);
    }
  }
}

}  // namespace
}  // namespace kernels
DIFFUSE_END_NAMESPACE
