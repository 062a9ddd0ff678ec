// SPDX-License-Identifier: MIT
// conv2d: every GEMM variant the CPU can run against the double-precision direct reference,
// over the kernel shapes of UNets and DiTs (3x3 stride 1/2, the asymmetric Downsample2D padding,
// 1x1, 2x2/4x4 patch embeddings, an odd 5x5 stride 3), awkward sizes (1x1, 5x7, 17x13 images;
// 1, 3, 5, 33, 128 channels; batch 1 and 3), bias and residual (also residual == y); 1 vs 2
// threads and tiny vs default im2col blocks must agree bit for bit; argument errors.
//
// Tolerance, per element, against the reference (exact products and sums, one final rounding):
//   |y - ref| <= (K + 2) * 2^-24 * (sum |w x| + |bias| + |residual|)  with K = C_in * kh * kw,
// the worst-case bound of recursive f32 summation of K + 2 terms (the GEMM's FMA chains are no
// worse); and globally max |y - ref| <= 1e-5 * max(1, max |ref|), which is what callers see.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"
#include "kernels/conv2d_impl.hpp"
#include "test_util.hpp"

namespace {

namespace dk = diffuse::kernels;
using diffuse_test::expect_error;

struct Rng {
  std::uint64_t s;
  float next() {  // uniform in [-1, 1), 24-bit grid
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
};

enum class Residual { none, separate, in_place };

struct Case {
  std::size_t batch, cin, h, w, cout, kh, kw, stride, pt, pl, pb, pr;
  bool bias;
  Residual res;
};

std::string describe(const Case& c) {
  return std::to_string(c.batch) + "x" + std::to_string(c.cin) + "x" + std::to_string(c.h) + "x" +
         std::to_string(c.w) + " -> " + std::to_string(c.cout) + " k" + std::to_string(c.kh) + "x" +
         std::to_string(c.kw) + " s" + std::to_string(c.stride) + " pad " + std::to_string(c.pt) + "," +
         std::to_string(c.pl) + "," + std::to_string(c.pb) + "," + std::to_string(c.pr) +
         (c.bias ? " bias" : "") +
         (c.res == Residual::separate ? " residual" : c.res == Residual::in_place ? " residual==y" : "");
}

/// One problem with its data, the reference output and the per-element error bound.
struct Problem {
  Case c;
  std::vector<float> x, w, b, r;
  std::vector<float> ref, bound;
  std::size_t ho = 0, wo = 0;

  explicit Problem(const Case& cs, std::uint64_t seed) : c(cs) {
    Rng g{seed};
    x.resize(c.batch * c.cin * c.h * c.w);
    w.resize(c.cout * c.cin * c.kh * c.kw);
    b.resize(c.cout);
    for (auto* v : {&x, &w, &b})
      for (float& e : *v) e = g.next();
    const dk::Conv2dArgs a0 = args(nullptr);
    ho = dk::conv2d_out_height(a0), wo = dk::conv2d_out_width(a0);
    r.resize(c.batch * c.cout * ho * wo);
    for (float& e : r) e = g.next();
    // Reference, and the same convolution of absolute values for the bound (both start as the
    // residual, which the in-place case reads from y).
    ref = r;
    dk::conv2d_reference(args(ref.data()));
    Problem abs_p = *this;
    for (auto* v : {&abs_p.x, &abs_p.w, &abs_p.b, &abs_p.r})
      for (float& e : *v) e = std::fabs(e);
    bound = abs_p.r;
    dk::conv2d_reference(abs_p.args(bound.data()));
    const double k = static_cast<double>(c.cin * c.kh * c.kw) + 2.0;
    for (float& e : bound) e = static_cast<float>(k * std::ldexp(static_cast<double>(e), -24));
  }

  /// Arguments writing to y; with Residual::in_place the caller has put r into y first.
  dk::Conv2dArgs args(float* y) const {
    dk::Conv2dArgs a;
    a.x = x.data(), a.batch = c.batch, a.in_channels = c.cin, a.height = c.h, a.width = c.w;
    a.weight = w.data(), a.bias = c.bias ? b.data() : nullptr;
    a.out_channels = c.cout, a.kh = c.kh, a.kw = c.kw, a.stride = c.stride;
    a.pad_top = c.pt, a.pad_left = c.pl, a.pad_bottom = c.pb, a.pad_right = c.pr;
    a.residual = c.res == Residual::separate ? r.data() : c.res == Residual::in_place ? y : nullptr;
    a.y = y;
    return a;
  }

  /// conv2d through `k` on a context of `threads`; y starts as NaN (or the residual, in place).
  std::vector<float> run(const dk::GemmKernel& k, dk::Context& ctx,
                         std::size_t block = dk::kConv2dBlockFloats) const {
    std::vector<float> y(r.size(), std::nanf(""));
    if (c.res == Residual::in_place) y = r;
    dk::conv2d(k, args(y.data()), ctx, block);
    return y;
  }
};

std::vector<Case> cases() {
  using R = Residual;
  std::vector<Case> v = {
      // 3x3, pad 1, stride 1
      {1, 3, 5, 7, 5, 3, 3, 1, 1, 1, 1, 1, true, R::none},
      {3, 33, 17, 13, 33, 3, 3, 1, 1, 1, 1, 1, true, R::separate},
      {1, 128, 8, 8, 128, 3, 3, 1, 1, 1, 1, 1, true, R::in_place},
      {2, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, false, R::none},
      {1, 5, 1, 1, 3, 3, 3, 1, 1, 1, 1, 1, true, R::separate},
      // 3x3, stride 2, pad 1
      {1, 33, 17, 13, 5, 3, 3, 2, 1, 1, 1, 1, false, R::separate},
      {1, 128, 16, 16, 128, 3, 3, 2, 1, 1, 1, 1, true, R::none},
      // 3x3, stride 2, Downsample2D padding (top, left, bottom, right) = (0, 0, 1, 1)
      {3, 5, 5, 7, 3, 3, 3, 2, 0, 0, 1, 1, true, R::none},
      {1, 128, 16, 16, 128, 3, 3, 2, 0, 0, 1, 1, true, R::none},
      {1, 3, 2, 2, 1, 3, 3, 2, 0, 0, 1, 1, false, R::in_place},
      // 1x1 (stride 1 unpadded: the no-copy path), and with padding / stride
      {3, 33, 5, 7, 128, 1, 1, 1, 0, 0, 0, 0, true, R::separate},
      {1, 128, 17, 13, 33, 1, 1, 1, 0, 0, 0, 0, false, R::in_place},
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, true, R::none},
      {1, 5, 5, 7, 3, 1, 1, 1, 1, 0, 2, 1, true, R::none},
      {1, 5, 5, 7, 3, 1, 1, 2, 0, 0, 0, 0, false, R::none},
      // DiT patch embedding: 2x2 stride 2, 4x4 stride 4 (odd sizes floor like torch)
      {1, 4, 16, 16, 33, 2, 2, 2, 0, 0, 0, 0, true, R::none},
      {3, 3, 5, 7, 5, 2, 2, 2, 0, 0, 0, 0, true, R::separate},
      {1, 3, 17, 13, 128, 4, 4, 4, 0, 0, 0, 0, true, R::none},
      // any stride, kernel and padding
      {1, 5, 17, 13, 3, 5, 5, 3, 2, 1, 0, 3, false, R::none},
      {1, 3, 5, 7, 5, 3, 2, 1, 0, 2, 1, 0, true, R::in_place},
  };
  // Every bias x residual combination on one small shape.
  for (bool bias : {false, true})
    for (R res : {R::none, R::separate, R::in_place}) v.push_back({2, 3, 5, 7, 5, 3, 3, 1, 1, 1, 1, 1, bias, res});
  return v;
}

const std::vector<Problem>& problems() {
  static const std::vector<Problem> p = [] {
    std::vector<Problem> out;
    std::uint64_t seed = 1;
    for (const Case& c : cases()) out.emplace_back(c, seed++);
    return out;
  }();
  return p;
}

void expect_close(const Problem& p, const std::vector<float>& y, const std::string& what) {
  double max_ref = 0, max_err = 0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double err = std::fabs(static_cast<double>(y[i]) - static_cast<double>(p.ref[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(p.ref[i])));
    max_err = std::max(max_err, std::isnan(err) ? 1e30 : err);
    if (!(err <= static_cast<double>(p.bound[i])) && bad++ < 3)
      ADD_FAILURE() << what << " " << describe(p.c) << ": element " << i << " = " << y[i] << ", reference "
                    << p.ref[i] << ", bound " << p.bound[i];
  }
  EXPECT_LE(max_err, 1e-5 * std::max(1.0, max_ref)) << what << " " << describe(p.c);
}

TEST(Conv2d, OutputSizes) {
  dk::Conv2dArgs a;
  a.in_channels = 1, a.out_channels = 1, a.height = 32, a.width = 32, a.kh = 3, a.kw = 3, a.stride = 2;
  a.pad_bottom = 1, a.pad_right = 1;  // Downsample2D: F.pad(x, (0, 1, 0, 1)) then 3x3 stride 2
  EXPECT_EQ(dk::conv2d_out_height(a), 16u);
  EXPECT_EQ(dk::conv2d_out_width(a), 16u);
  a.height = 17, a.width = 13, a.pad_top = 1, a.pad_left = 1;
  EXPECT_EQ(dk::conv2d_out_height(a), 9u);  // (17 + 2 - 3) / 2 + 1
  EXPECT_EQ(dk::conv2d_out_width(a), 7u);   // (13 + 2 - 3) / 2 + 1
  a = {};
  a.in_channels = 4, a.out_channels = 8, a.height = 7, a.width = 5, a.kh = 4, a.kw = 4, a.stride = 4;
  EXPECT_EQ(dk::conv2d_out_height(a), 1u);
  EXPECT_EQ(dk::conv2d_out_width(a), 1u);
}

TEST(Conv2d, BlockPixels) {
  EXPECT_EQ(dk::conv2d_block_pixels(1152, 1024, 1u << 22), 1024u);  // fits: one block
  const std::size_t nb = dk::conv2d_block_pixels(1152, 1024, 1u << 19);
  EXPECT_EQ(nb % 64, 0u);
  EXPECT_LE(nb * 1152, (1u << 19) + 64 * 1152);
  EXPECT_EQ(dk::conv2d_block_pixels(9, 100, 1), 1u);
}

// Every GEMM variant against the double reference; 2 threads and tiny blocks bit-identical.
TEST(Conv2d, EveryVariantMatchesReference) {
  dk::Context one(1), two(2);
  for (const dk::GemmKernel& k : dk::gemm_kernels()) {
    if (!dk::kernel_supported(k)) continue;
    SCOPED_TRACE(k.name);
    for (const Problem& p : problems()) {
      const std::vector<float> y1 = p.run(k, one);
      expect_close(p, y1, k.name);
      const std::vector<float> y2 = p.run(k, two);
      EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0)
          << k.name << " " << describe(p.c) << ": 1 and 2 threads differ";
      // Blocks of a few pixels (cut inside output rows) give the same bits as one block.
      const std::size_t tiny = p.c.cin * p.c.kh * p.c.kw * 5;
      const std::vector<float> y3 = p.run(k, two, tiny);
      EXPECT_EQ(std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)), 0)
          << k.name << " " << describe(p.c) << ": tiny im2col blocks differ";
    }
  }
}

// The public entry point is the active GEMM row with the default blocks.
TEST(Conv2d, PublicEntryUsesActiveVariant) {
  dk::Context ctx(2);
  for (const Problem& p : problems()) {
    std::vector<float> y(p.r.size(), 0.0f);
    if (p.c.res == Residual::in_place) y = p.r;
    dk::conv2d(p.args(y.data()), ctx);
    const std::vector<float> expect = p.run(dk::active_gemm_kernel(), ctx);
    EXPECT_EQ(std::memcmp(y.data(), expect.data(), y.size() * sizeof(float)), 0) << describe(p.c);
  }
}

// Downsample2D: the asymmetric padding gives exactly the bits of convolving F.pad(x, (0,1,0,1)).
TEST(Conv2d, AsymmetricPaddingEqualsExplicitPad) {
  const Case c{2, 33, 9, 12, 17, 3, 3, 2, 0, 0, 1, 1, true, Residual::none};
  const Problem p(c, 99);
  Case cp = c;
  cp.h = c.h + 1, cp.w = c.w + 1, cp.pb = 0, cp.pr = 0;
  Problem q = p;
  q.c = cp;
  q.x.assign(c.batch * c.cin * cp.h * cp.w, 0.0f);
  for (std::size_t plane = 0; plane < c.batch * c.cin; ++plane)
    for (std::size_t i = 0; i < c.h; ++i)
      for (std::size_t j = 0; j < c.w; ++j) q.x[(plane * cp.h + i) * cp.w + j] = p.x[(plane * c.h + i) * c.w + j];
  dk::Context ctx(2);
  const std::vector<float> a = p.run(dk::active_gemm_kernel(), ctx), b = q.run(dk::active_gemm_kernel(), ctx);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// f16 / bf16 weights (used as a model file stores them): converted exactly per call, so the result
// has the bits of the f32 weights of the same values, for every kernel row, 1 and 2 threads, and
// the reference reads them the same way.
TEST(Conv2d, HalfAndBfloatWeightsAreTheirF32Values) {
  dk::Context one(1), two(2);
  for (const diffuse::DType dt : {diffuse::DType::F16, diffuse::DType::BF16}) {
    for (const Problem& base : problems()) {
      std::vector<std::uint16_t> bits(base.w.size());
      Problem p = base;  // its weights rounded to the reduced type's values
      for (std::size_t i = 0; i < bits.size(); ++i) {
        bits[i] = dt == diffuse::DType::F16 ? diffuse::f32_to_f16_scalar(base.w[i]) : diffuse::f32_to_bf16_scalar(base.w[i]);
        p.w[i] = dt == diffuse::DType::F16 ? diffuse::f16_to_f32_scalar(bits[i]) : diffuse::bf16_to_f32_scalar(bits[i]);
      }
      for (const dk::GemmKernel& k : dk::gemm_kernels()) {
        if (!dk::kernel_supported(k)) continue;
        const std::vector<float> want = p.run(k, one);
        for (dk::Context* ctx : {&one, &two}) {
          std::vector<float> y(p.r.size(), std::nanf(""));
          if (p.c.res == Residual::in_place) y = p.r;
          dk::Conv2dArgs a = p.args(y.data());
          a.weight = bits.data();
          a.weight_type = dt;
          dk::conv2d(k, a, *ctx, dk::kConv2dBlockFloats);
          ASSERT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0)
              << k.name << " " << describe(p.c) << " " << diffuse::dtype_name(dt);
        }
      }
      std::vector<float> r16 = p.r, r32 = p.r;
      dk::Conv2dArgs a = p.args(r16.data());
      a.weight = bits.data();
      a.weight_type = dt;
      dk::conv2d_reference(a);
      dk::conv2d_reference(p.args(r32.data()));
      EXPECT_EQ(std::memcmp(r16.data(), r32.data(), r16.size() * sizeof(float)), 0) << describe(p.c);
    }
  }
  Problem p = problems().front();
  std::vector<float> y(p.r.size());
  dk::Conv2dArgs a = p.args(y.data());
  a.weight_type = diffuse::DType::I64;
  expect_error<diffuse::value_error>([&] { dk::conv2d(a, one); }, {"weight_type must be F32, F16 or BF16", "I64"});
}

TEST(Conv2d, Errors) {
  std::vector<float> x(64, 1.0f), w(64, 1.0f), y(256, 0.0f);
  auto base = [&] {
    dk::Conv2dArgs a;
    a.x = x.data(), a.batch = 1, a.in_channels = 1, a.height = 2, a.width = 2;
    a.weight = w.data(), a.out_channels = 1, a.kh = 3, a.kw = 3, a.stride = 1;
    a.pad_top = a.pad_left = a.pad_bottom = a.pad_right = 1;
    a.y = y.data();
    return a;
  };
  dk::Context ctx(1);
  using diffuse::shape_error;
  using diffuse::value_error;
  {
    auto a = base();
    a.pad_top = a.pad_left = a.pad_bottom = a.pad_right = 0;  // 3x3 kernel on a 2x2 image
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "kernel 3x3", "padded input 2x2"});
    expect_error<shape_error>([&] { (void)dk::conv2d_out_height(a); }, {"conv2d", "3x3"});
    a.pad_bottom = 1;  // 3x2 padded: still too narrow
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "padded input 3x2"});
  }
  {
    auto a = base();
    a.in_channels = 0;
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "in_channels 0"});
    a = base(), a.out_channels = 0;
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "out_channels 0"});
    a = base(), a.height = 0;
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "empty image 0x2"});
    a = base(), a.kw = 0;
    expect_error<shape_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "empty kernel 3x0"});
  }
  {
    auto a = base();
    a.stride = 0;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "stride 0"});
    a = base(), a.x = nullptr;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "x is null"});
    a = base(), a.weight = nullptr;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "weight is null"});
    a = base(), a.y = nullptr;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "y is null"});
    a = base(), a.y = x.data() + 2;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "x and y overlap"});
    a = base(), a.residual = y.data() + 1;
    expect_error<value_error>([&] { dk::conv2d(a, ctx); }, {"conv2d", "residual overlaps y"});
    expect_error<value_error>([&] { dk::conv2d_reference(a); }, {"conv2d", "residual overlaps y"});
  }
  {
    auto a = base();  // batch 0: checked sizes, nothing read or written
    a.batch = 0, a.x = nullptr, a.y = nullptr;
    EXPECT_NO_THROW(dk::conv2d(a, ctx));
  }
}

}  // namespace
