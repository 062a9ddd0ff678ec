// SPDX-License-Identifier: MIT
/** @file conv2d_im2col.hpp
 *  Internal: the im2col of conv2d, shared by conv2d.cpp (plain C++ copies) and
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

/// Floats of per-thread scratch im2col_channels needs for blocks of up to `block` pixels: the
/// zero-padded input rows one block touches, ((block + w_out - 2) / w_out) * stride + kh of them.
inline std::size_t im2col_scratch_floats(const Conv2dArgs& a, std::size_t w_out, std::size_t block) {
  const std::size_t rows = (block + w_out - 2) / w_out * a.stride + a.kh;
  return (rows * (a.width + a.pad_left + a.pad_right) + 15) / 16 * 16;
}

/** The column matrix rows of channels [c_begin, c_end) of one image, for output pixels [n0, n1):
 *  row r = (c * kh + p) * kw + q at col + r * (n1 - n0) holds, for output pixel n = (i, j),
 *  x[c, i*s + p - pad_top, j*s + q - pad_left], or 0 in the padding.
 *
 *  Per channel, the input rows the block needs are first copied into `pad` with their zero
 *  border (padded width Wp = pad_left + W + pad_right); every (p, q, output row) segment is then
 *  a branch-free strided copy from `pad`. Copying each segment straight from x with its own
 *  zero-fill edges was branchy enough to cost ~20 cycles per 8-float row on 8x8 images.
 *  `Copy` supplies zero(d, n), copy(d, src, n) and gather(d, src, n, s) (d[t] = src[t * s]). */
template <class Copy>
void im2col_channels(const Conv2dArgs& a, std::size_t w_out, const float* xb, std::size_t c_begin, std::size_t c_end,
                     std::size_t n0, std::size_t n1, float* col, float* pad) {
  using std::size_t;
  const size_t s = a.stride, W = a.width, Wp = a.pad_left + W + a.pad_right, cols = n1 - n0;
  const size_t i_first = n0 / w_out, i_last = (n1 - 1) / w_out;
  const size_t pr0 = i_first * s, pr1 = i_last * s + a.kh;  // padded input rows [pr0, pr1)
  for (size_t c = c_begin; c < c_end; ++c) {
    const float* plane = xb + c * a.height * W;
    for (size_t pr = pr0; pr < pr1; ++pr) {
      float* d = pad + (pr - pr0) * Wp;
      if (pr < a.pad_top || pr - a.pad_top >= a.height) {
        Copy::zero(d, Wp);
        continue;
      }
      if (a.pad_left) Copy::zero(d, a.pad_left);
      Copy::copy(d + a.pad_left, plane + (pr - a.pad_top) * W, W);
      if (a.pad_right) Copy::zero(d + a.pad_left + W, a.pad_right);
    }
    for (size_t p = 0; p < a.kh; ++p) {
      for (size_t q = 0; q < a.kw; ++q) {
        float* dst = col + ((c * a.kh + p) * a.kw + q) * cols;
        size_t i = i_first, j0 = n0 % w_out;
        for (size_t n = n0; n < n1; ++i, j0 = 0) {  // one output row (or its part in the block)
          const size_t len = std::min(w_out - j0, n1 - n);
          const float* src = pad + (i * s + p - pr0) * Wp + j0 * s + q;
          if (s == 1) Copy::copy(dst + (n - n0), src, len);
          else Copy::gather(dst + (n - n0), src, len, s);
          n += len;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kernels
DIFFUSE_END_NAMESPACE
