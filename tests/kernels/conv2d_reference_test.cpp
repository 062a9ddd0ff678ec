// SPDX-License-Identifier: MIT
// conv2d_reference, the double-precision direct convolution conv2d_test.cpp measures every GEMM
// variant against, checked on its own against hand-computed answers: the weight layout
// [out, in, kh, kw] (kernel taps weighted 1, 10, 100, 1000 so each digit of the result shows which
// tap met which pixel), zero padding on each of the four sides alone and on all sides, stride 2
// (with the asymmetric right/bottom padding of Downsample2D and a size that leaves a column
// unused), several input and output channels, a batch of 2, bias, residual (separate and in place,
// residual == y), and the single final rounding of a double accumulation. The operator has no
// dilation or groups (Conv2dArgs has neither), so there is nothing of those to test.
//
// The same small cases (exact in f32: small integers and halves) also run through conv2d, whose
// result must equal the hand-computed answer exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "diffuse/kernels/ops.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "kernels/conv2d_impl.hpp"

namespace {

namespace dk = diffuse::kernels;
using Vec = std::vector<float>;

struct Case {
  std::string name;
  std::size_t batch = 1, cin = 1, h = 1, w = 1, cout = 1, kh = 1, kw = 1, stride = 1;
  std::size_t pt = 0, pl = 0, pb = 0, pr = 0;
  Vec x{}, weight{}, bias{}, residual{};  // (default initializers: the cases name only what differs)
  bool residual_in_place = false;
  std::size_t ho = 0, wo = 0;  ///< expected output size
  Vec want{};                  ///< expected output [batch, cout, ho, wo]
  bool exact_in_f32 = true;    ///< conv2d (f32 GEMM) must give `want` exactly too
};

/// Runs `a` with y prefilled (NaN, or the residual when in place) through the reference or conv2d.
Vec run(const Case& c, bool reference) {
  dk::Conv2dArgs a;
  a.x = c.x.data(), a.batch = c.batch, a.in_channels = c.cin, a.height = c.h, a.width = c.w;
  a.weight = c.weight.data(), a.bias = c.bias.empty() ? nullptr : c.bias.data();
  a.out_channels = c.cout, a.kh = c.kh, a.kw = c.kw, a.stride = c.stride;
  a.pad_top = c.pt, a.pad_left = c.pl, a.pad_bottom = c.pb, a.pad_right = c.pr;
  EXPECT_EQ(dk::conv2d_out_height(a), c.ho) << c.name;
  EXPECT_EQ(dk::conv2d_out_width(a), c.wo) << c.name;
  Vec y(c.batch * c.cout * c.ho * c.wo, std::nanf(""));
  if (!c.residual.empty()) {
    if (c.residual_in_place) y = c.residual;
    a.residual = c.residual_in_place ? y.data() : c.residual.data();
  }
  a.y = y.data();
  if (reference) {
    dk::conv2d_reference(a);
  } else {
    dk::Context ctx(1);
    dk::conv2d(a, ctx);
  }
  return y;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  const Vec x2x2 = {1, 2,   //
                    3, 4};
  const Vec taps = {1, 10,  //
                    100, 1000};
  const Vec x1to16 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  const Vec ones3x3(9, 1.0f);

  // 2x2 kernel on a 2x2 image: 1*1 + 10*2 + 100*3 + 1000*4.
  v.push_back({.name = "taps, no padding", .h = 2, .w = 2, .kh = 2, .kw = 2, .x = x2x2, .weight = taps,
               .ho = 1, .wo = 1, .want = {4321}});
  // One padded side at a time: the padded row / column contributes zero.
  v.push_back({.name = "pad top", .h = 2, .w = 2, .kh = 2, .kw = 2, .pt = 1, .x = x2x2, .weight = taps,
               .ho = 2, .wo = 1, .want = {100 * 1 + 1000 * 2, 4321}});
  v.push_back({.name = "pad left", .h = 2, .w = 2, .kh = 2, .kw = 2, .pl = 1, .x = x2x2, .weight = taps,
               .ho = 1, .wo = 2, .want = {10 * 1 + 1000 * 3, 4321}});
  v.push_back({.name = "pad bottom", .h = 2, .w = 2, .kh = 2, .kw = 2, .pb = 1, .x = x2x2, .weight = taps,
               .ho = 2, .wo = 1, .want = {4321, 1 * 3 + 10 * 4}});
  v.push_back({.name = "pad right", .h = 2, .w = 2, .kh = 2, .kw = 2, .pr = 1, .x = x2x2, .weight = taps,
               .ho = 1, .wo = 2, .want = {4321, 1 * 2 + 100 * 4}});
  // 3x3 box sum, pad 1 on every side, of 1..9: the clipped neighbourhood sums.
  v.push_back({.name = "3x3 ones, pad 1", .h = 3, .w = 3, .kh = 3, .kw = 3, .pt = 1, .pl = 1, .pb = 1, .pr = 1,
               .x = {1, 2, 3, 4, 5, 6, 7, 8, 9}, .weight = ones3x3, .ho = 3, .wo = 3,
               .want = {12, 21, 16,  //
                        27, 45, 33,  //
                        24, 39, 28}});
  // Stride 2: 2x2 box sums of 1..16 (4x4).
  v.push_back({.name = "2x2 ones, stride 2", .h = 4, .w = 4, .kh = 2, .kw = 2, .stride = 2, .x = x1to16,
               .weight = Vec(4, 1.0f), .ho = 2, .wo = 2, .want = {14, 22, 46, 54}});
  // Stride 2, pad 1 on every side (Downsample2D, padding 1).
  v.push_back({.name = "3x3 ones, stride 2, pad 1", .h = 4, .w = 4, .kh = 3, .kw = 3, .stride = 2, .pt = 1,
               .pl = 1, .pb = 1, .pr = 1, .x = x1to16, .weight = ones3x3, .ho = 2, .wo = 2,
               .want = {1 + 2 + 5 + 6, 2 + 3 + 4 + 6 + 7 + 8, 5 + 6 + 9 + 10 + 13 + 14,
                        6 + 7 + 8 + 10 + 11 + 12 + 14 + 15 + 16}});
  // Stride 2, zero pad right and bottom only (Downsample2D, padding 0).
  v.push_back({.name = "3x3 ones, stride 2, pad bottom/right", .h = 4, .w = 4, .kh = 3, .kw = 3, .stride = 2,
               .pb = 1, .pr = 1, .x = x1to16, .weight = ones3x3, .ho = 2, .wo = 2,
               .want = {1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11, 3 + 4 + 7 + 8 + 11 + 12, 9 + 10 + 11 + 13 + 14 + 15,
                        11 + 12 + 15 + 16}});
  // Stride 2 over 5 columns with a 1x2 kernel: two outputs, the last column is never read.
  v.push_back({.name = "1x2 taps, stride 2, width 5", .h = 1, .w = 5, .kh = 1, .kw = 2, .stride = 2,
               .x = {1, 2, 3, 4, 5}, .weight = {1, 10}, .ho = 1, .wo = 2, .want = {21, 43}});
  // Channel index of the weight [out, in, kh, kw]: in-channel 0 meets taps 1, 10; in-channel 1 taps 100, 1000.
  v.push_back({.name = "two in-channels", .cin = 2, .h = 1, .w = 2, .kh = 1, .kw = 2, .x = {1, 2, 3, 4},
               .weight = taps, .ho = 1, .wo = 1, .want = {4321}});
  // 1x1, 2 -> 2 channels, batch 2, without and with bias and residual.
  const Vec xb = {1, 2, 3, 4,   // batch 0: channel 0 = (1, 2), channel 1 = (3, 4)
                  5, 6, 7, 8};  // batch 1
  const Vec wb = {1, 2,         // out 0 = 1 x0 + 2 x1
                  -1, 0.5f};    // out 1 = -x0 + x1 / 2
  const Vec res = {100, 200, 300, 400, 500, 600, 700, 800};
  v.push_back({.name = "1x1 2->2, batch 2", .batch = 2, .cin = 2, .h = 1, .w = 2, .cout = 2, .x = xb, .weight = wb,
               .ho = 1, .wo = 2, .want = {7, 10, 0.5f, 0, 19, 22, -1.5f, -2}});
  v.push_back({.name = "1x1 2->2, batch 2, bias", .batch = 2, .cin = 2, .h = 1, .w = 2, .cout = 2, .x = xb,
               .weight = wb, .bias = {10, 20}, .ho = 1, .wo = 2, .want = {17, 20, 20.5f, 20, 29, 32, 18.5f, 18}});
  v.push_back({.name = "1x1 2->2, batch 2, bias, residual", .batch = 2, .cin = 2, .h = 1, .w = 2, .cout = 2,
               .x = xb, .weight = wb, .bias = {10, 20}, .residual = res, .ho = 1, .wo = 2,
               .want = {117, 220, 320.5f, 420, 529, 632, 718.5f, 818}});
  v.push_back({.name = "1x1 2->2, batch 2, residual == y", .batch = 2, .cin = 2, .h = 1, .w = 2, .cout = 2,
               .x = xb, .weight = wb, .residual = res, .residual_in_place = true, .ho = 1, .wo = 2,
               .want = {107, 210, 300.5f, 400, 519, 622, 698.5f, 798}});
  // One rounding at the end of a double sum: 2^24 + 1 - 2^24 is 1 (a float sum in this order gives 0), and
  // 1 + 2^-24 + 2^-24 is 1 + 2^-23 (a float sum gives 1: each 2^-24 alone rounds away).
  const float big = 16777216.0f, half_ulp = std::ldexp(1.0f, -24);
  v.push_back({.name = "double accumulation (cancellation)", .cin = 3, .x = {big, 1, -big}, .weight = {1, 1, 1},
               .ho = 1, .wo = 1, .want = {1}, .exact_in_f32 = false});
  v.push_back({.name = "double accumulation (one rounding)", .cin = 3, .x = {1, half_ulp, half_ulp},
               .weight = {1, 1, 1}, .ho = 1, .wo = 1, .want = {1 + 2 * half_ulp}, .exact_in_f32 = false});
  return v;
}

TEST(Conv2dReference, HandComputedAnswers) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(c.x.size(), c.batch * c.cin * c.h * c.w);
    ASSERT_EQ(c.weight.size(), c.cout * c.cin * c.kh * c.kw);
    ASSERT_EQ(c.want.size(), c.batch * c.cout * c.ho * c.wo);
    const Vec y = run(c, true);
    ASSERT_EQ(y.size(), c.want.size());
    for (std::size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], c.want[i]) << "reference, element " << i;
    if (!c.exact_in_f32) continue;
    const Vec z = run(c, false);
    for (std::size_t i = 0; i < z.size(); ++i) EXPECT_EQ(z[i], c.want[i]) << "conv2d, element " << i;
  }
}

}  // namespace
