// SPDX-License-Identifier: MIT
// Network kernels (ops.hpp, except conv2d):
//   1. the scalar row against naive double-precision formulas (GroupNorm, LayerNorm + adaLN,
//      activations via std::erf / std::tanh in double, softmax, attention as an explicit
//      softmax(Q K^T) V in double);
//   2. every variant of op_variants() against the scalar row on awkward shapes, at 1 and 2
//      threads, which must agree bit for bit (memcmp) for the same variant;
//   3. the embeddings against values computed by diffusers (tests/data/kernels/embeddings.json,
//      made by tools/make_embedding_fixture.py);
//   4. bad arguments.
// Tolerances are stated where they are checked, relative to max|ref| of the compared output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/kernels/ops.hpp"
#include "test_util.hpp"

namespace {

namespace dk = diffuse::kernels;
using diffuse::shape_error;
using diffuse::value_error;
using diffuse_test::expect_error;
using Vec = std::vector<float>;

struct Rng {
  std::uint64_t s;
  float next() {  // uniform in [-1, 1), 24-bit grid
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
};

Vec random(std::size_t n, std::uint64_t seed, float scale = 1.0f, float offset = 0.0f) {
  Rng r{seed};
  Vec v(n);
  for (auto& x : v) x = offset + scale * r.next();
  return v;
}

/// max |a - b| / max(max|b|, tiny); fails on size mismatch or NaN.
double rel_diff(const Vec& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0, d = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::fabs(b[i]));
    const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(e <= d)) d = std::isnan(e) ? INFINITY : e;
  }
  return d / std::max(m, 1e-30);
}

double rel_diff(const Vec& a, const Vec& b) { return rel_diff(a, std::vector<double>(b.begin(), b.end())); }

const dk::OpVariant& scalar_row() { return dk::op_variants()[0]; }

/// `diff`, printed when DIFFUSE_OPS_VERBOSE is set (to read the measured error next to a bound).
double logged(const char* what, double diff) {
  if (std::getenv("DIFFUSE_OPS_VERBOSE")) std::printf("%-28s scalar  max|diff|/max|ref| = %.3g (vs double)\n", what, diff);
  return diff;
}

/// Runs `run(ctx)` (which returns the op's output) with the scalar row on one thread, then with
/// every variant on 1 and 2 threads: the two thread counts must agree bit for bit, and each
/// variant must be within `tol` * max|ref| of the scalar output.
void check_variants(const std::string& what, const std::function<Vec(dk::Context&)>& run, double tol) {
  dk::Context c1(1), c2(2);
  Vec ref;
  {
    dk::ScopedOpVariant s(scalar_row());
    ref = run(c1);
  }
  for (const dk::OpVariant& v : dk::op_variants()) {
    dk::ScopedOpVariant s(v);
    const Vec a = run(c1), b = run(c2);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what << " " << v.name << ": 1 vs 2 threads";
    const double diff = rel_diff(a, ref);
    EXPECT_LE(diff, tol) << what << " " << v.name << " vs scalar";
    if (std::getenv("DIFFUSE_OPS_VERBOSE")) std::printf("%-28s %-7s max|diff|/max|ref| = %.3g\n", what.c_str(), v.name, diff);
  }
}

// ---------------------------------------------------------------------------------------------
// Naive double references

std::vector<double> group_norm_ref(const Vec& x, std::size_t B, std::size_t C, std::size_t S, std::size_t G, double eps,
                                   const Vec& gamma, const Vec& beta, bool silu, bool transpose) {
  std::vector<double> y(x.size());
  const std::size_t cpg = C / G;
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t g = 0; g < G; ++g) {
      double s = 0, s2 = 0;
      const std::size_t n = cpg * S;
      for (std::size_t i = 0; i < n; ++i) s += x[(b * C + g * cpg) * S + i];
      const double mean = s / static_cast<double>(n);
      for (std::size_t i = 0; i < n; ++i) s2 += std::pow(x[(b * C + g * cpg) * S + i] - mean, 2);
      const double rstd = 1.0 / std::sqrt(s2 / static_cast<double>(n) + eps);
      for (std::size_t c = g * cpg; c < (g + 1) * cpg; ++c)
        for (std::size_t p = 0; p < S; ++p) {
          double v = (x[(b * C + c) * S + p] - mean) * rstd * (gamma.empty() ? 1.0 : gamma[c]) + (beta.empty() ? 0.0 : beta[c]);
          if (silu) v = v / (1.0 + std::exp(-v));
          y[transpose ? (b * S + p) * C + c : (b * C + c) * S + p] = v;
        }
    }
  return y;
}

double act_ref(dk::Activation a, double x) {
  switch (a) {
    case dk::Activation::silu: return x / (1 + std::exp(-x));
    case dk::Activation::quick_gelu: return x / (1 + std::exp(-1.702 * x));
    case dk::Activation::gelu_erf: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case dk::Activation::gelu_tanh: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case dk::Activation::relu: return x < 0 ? 0.0 : x;
    default: return x;
  }
}

constexpr dk::Activation kActs[] = {dk::Activation::identity, dk::Activation::silu, dk::Activation::gelu_erf,
                                    dk::Activation::gelu_tanh, dk::Activation::quick_gelu, dk::Activation::relu};

struct AttnShape {
  std::size_t batch, heads, q_len, kv_len, head_dim;
};

/// q, k, v as [B, N, H*d]; o likewise.
struct AttnProblem {
  AttnShape s;
  Vec q, k, v;
  bool causal = false;
  AttnProblem(AttnShape sh, std::uint64_t seed, float amp = 1.0f) : s(sh) {
    q = random(s.batch * s.q_len * s.heads * s.head_dim, seed, amp);
    k = random(s.batch * s.kv_len * s.heads * s.head_dim, seed + 1, amp);
    v = random(s.batch * s.kv_len * s.heads * s.head_dim, seed + 2);
  }
  Vec run(dk::Context& ctx) const {
    Vec o(q.size(), NAN);
    dk::AttentionArgs a = dk::attention_bnd(q.data(), k.data(), v.data(), o.data(), s.batch, s.heads, s.q_len, s.kv_len, s.head_dim);
    a.causal = causal;
    dk::attention(a, ctx);
    return o;
  }
  std::vector<double> ref() const {
    const std::size_t H = s.heads, d = s.head_dim, row = H * d;
    std::vector<double> o(q.size()), p(s.kv_len);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (std::size_t b = 0; b < s.batch; ++b)
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t i = 0; i < s.q_len; ++i) {
          double m = -INFINITY, sum = 0;
          for (std::size_t j = 0; j < s.kv_len; ++j) {
            if (causal && j > i) {  // masked: weight 0
              p[j] = -INFINITY;
              continue;
            }
            double dot = 0;
            for (std::size_t t = 0; t < d; ++t)
              dot += static_cast<double>(q[(b * s.q_len + i) * row + h * d + t]) * k[(b * s.kv_len + j) * row + h * d + t];
            p[j] = dot * scale;
            m = std::max(m, p[j]);
          }
          for (auto& x : p) sum += x = std::exp(x - m);
          for (std::size_t t = 0; t < d; ++t) {
            double acc = 0;
            for (std::size_t j = 0; j < s.kv_len; ++j) acc += p[j] * v[(b * s.kv_len + j) * row + h * d + t];
            o[(b * s.q_len + i) * row + h * d + t] = acc / sum;
          }
        }
    return o;
  }
};

// ---------------------------------------------------------------------------------------------

TEST(Ops, VariantTable) {
  const auto rows = dk::op_variants();
  ASSERT_FALSE(rows.empty());
  EXPECT_STREQ(rows[0].name, "scalar");
  bool active_listed = false;
  for (const auto& r : rows) active_listed |= &r == &dk::active_op_variant();
  EXPECT_TRUE(active_listed);
  for (const auto& r : rows) {
    EXPECT_NE(r.attention, nullptr);
    EXPECT_GT(r.attention_q_block, 0u);
  }
}

// GroupNorm, scalar vs double: the statistics are double, so the error is the f32 rounding of
// mean / rstd and of the final fma: <= 5e-7 * max|y| on these data (measured 1.6e-7).
TEST(Ops, GroupNormScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(1);
  struct Case {
    std::size_t B, C, S, G;
    bool silu, transpose, affine;
  };
  for (const Case& c : {Case{2, 6, 17, 3, false, false, true}, Case{1, 32, 1, 32, true, false, true},
                        Case{1, 1, 1, 1, false, false, false}, Case{3, 8, 9, 2, true, true, true},
                        Case{1, 64, 100, 32, true, false, true}}) {
    const Vec x = random(c.B * c.C * c.S, 7, 3.0f, 0.5f);
    const Vec gamma = c.affine ? random(c.C, 8, 1.0f, 1.0f) : Vec{}, beta = c.affine ? random(c.C, 9) : Vec{};
    Vec y(x.size());
    dk::group_norm({.x = x.data(), .y = y.data(), .batch = c.B, .channels = c.C, .spatial = c.S, .groups = c.G,
                    .eps = 1e-5f, .gamma = c.affine ? gamma.data() : nullptr, .beta = c.affine ? beta.data() : nullptr,
                    .silu = c.silu, .transpose_out = c.transpose},
                   ctx);
    EXPECT_LE(logged("group_norm", rel_diff(y, group_norm_ref(x, c.B, c.C, c.S, c.G, 1e-5, gamma, beta, c.silu, c.transpose))), 5e-7)
        << c.B << "x" << c.C << "x" << c.S << " G" << c.G;
  }
}

// LayerNorm + adaLN, scalar vs double: <= 5e-7 * max|y| (f32 rounding of a few products;
// measured 8.8e-8).
TEST(Ops, LayerNormScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(1);
  const std::size_t rows = 6, dim = 37, rpb = 3, ms = 3 * dim;
  const Vec x = random(rows * dim, 11, 2.0f, -0.3f), gamma = random(dim, 12, 1.0f, 1.0f), beta = random(dim, 13);
  const Vec mod = random(2 * ms, 14, 0.5f);
  for (int mode = 0; mode < 3; ++mode) {  // plain, affine, affine + adaLN (shift/scale inside a chunked tensor)
    Vec y = x;                            // in place
    dk::LayerNormArgs a{.x = y.data(), .y = y.data(), .rows = rows, .dim = dim, .eps = 1e-6f};
    if (mode >= 1) a.gamma = gamma.data(), a.beta = beta.data();
    if (mode == 2) a.shift = mod.data(), a.scale = mod.data() + dim, a.rows_per_batch = rpb, a.mod_stride = ms;
    dk::layer_norm(a, ctx);
    std::vector<double> ref(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
      double s = 0, s2 = 0;
      for (std::size_t i = 0; i < dim; ++i) s += x[r * dim + i];
      const double mean = s / dim;
      for (std::size_t i = 0; i < dim; ++i) s2 += std::pow(x[r * dim + i] - mean, 2);
      const double rstd = 1 / std::sqrt(s2 / dim + 1e-6);
      for (std::size_t i = 0; i < dim; ++i) {
        double v = (x[r * dim + i] - mean) * rstd;
        if (mode >= 1) v = v * gamma[i] + beta[i];
        if (mode == 2) v = v * (1 + mod[(r / rpb) * ms + dim + i]) + mod[(r / rpb) * ms + i];
        ref[r * dim + i] = v;
      }
    }
    EXPECT_LE(logged("layer_norm", rel_diff(y, ref)), 5e-7) << "mode " << mode;
  }
}

// Activations, scalar vs double formulas: <= 4e-7 * max|y| (std::exp/erf/tanh in f32 are
// within 1-2 ulp; measured 7.8e-8).
TEST(Ops, ActivationScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(1);
  const Vec x = random(1000, 21, 8.0f);
  for (dk::Activation act : kActs) {
    Vec y(x.size());
    dk::activation(act, x.data(), y.data(), x.size(), ctx);
    std::vector<double> ref(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) ref[i] = act_ref(act, x[i]);
    EXPECT_LE(logged("activation", rel_diff(y, ref)), 4e-7) << static_cast<int>(act);
  }
  // bias per channel of NCHW (inner = H*W) and per column (inner = 1)
  const Vec bias = random(5, 22);
  for (std::size_t inner : {std::size_t{1}, std::size_t{7}}) {
    Vec y = x;
    dk::activation(dk::Activation::silu, y.data(), y.data(), 35 * 7, ctx, bias.data(), inner, 5);
    for (std::size_t i = 0; i < 35 * 7; ++i) {
      const float in = x[i] + bias[(i / inner) % 5];
      EXPECT_NEAR(y[i], act_ref(dk::Activation::silu, in), 4e-7 * 8) << i;
    }
    EXPECT_EQ(y[35 * 7], x[35 * 7]);  // past n: untouched
  }
  EXPECT_EQ(dk::parse_activation("silu"), dk::Activation::silu);
  EXPECT_EQ(dk::parse_activation("swish"), dk::Activation::silu);
  EXPECT_EQ(dk::parse_activation("gelu"), dk::Activation::gelu_erf);
  EXPECT_EQ(dk::parse_activation("gelu-approximate"), dk::Activation::gelu_tanh);
  EXPECT_EQ(dk::parse_activation("gelu_pytorch_tanh"), dk::Activation::gelu_tanh);
  EXPECT_EQ(dk::parse_activation("quick_gelu"), dk::Activation::quick_gelu);
  EXPECT_EQ(dk::parse_activation("linear"), dk::Activation::identity);
  EXPECT_EQ(dk::parse_activation("relu"), dk::Activation::relu);
}

// Softmax, scalar vs double: <= 1e-6 * max|y| (f32 exp within 1 ulp, f32 sum of <= 300 terms;
// measured 3.6e-7).
TEST(Ops, SoftmaxScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(1);
  for (std::size_t cols : {std::size_t{1}, std::size_t{17}, std::size_t{300}}) {
    const std::size_t rows = 5;
    const Vec x = random(rows * cols, 31 + cols, 10.0f);
    Vec y = x;
    dk::softmax(y.data(), rows, cols, ctx);
    std::vector<double> ref(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
      double m = -INFINITY, s = 0;
      for (std::size_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(x[r * cols + j]));
      for (std::size_t j = 0; j < cols; ++j) s += std::exp(x[r * cols + j] - m);
      for (std::size_t j = 0; j < cols; ++j) ref[r * cols + j] = std::exp(x[r * cols + j] - m) / s;
    }
    EXPECT_LE(logged("softmax", rel_diff(y, ref)), 1e-6) << cols;
  }
}

// Attention, scalar vs softmax(QK^T/sqrt(d))V in double: <= 1.5e-6 * max|o| (f32 dot products
// of <= 256 terms with |q|,|k| <= 2 and f32 online-softmax sums; measured 6.1e-7).
TEST(Ops, AttentionScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(2);
  for (AttnShape s : {AttnShape{1, 1, 1, 1, 1}, AttnShape{2, 3, 17, 70, 7}, AttnShape{1, 2, 64, 64, 32},
                      AttnShape{1, 1, 20, 130, 256}, AttnShape{2, 1, 33, 5, 72}}) {
    const AttnProblem p(s, 41 + s.head_dim, 2.0f);
    EXPECT_LE(logged("attention", rel_diff(p.run(ctx), p.ref())), 1.5e-6)
        << s.batch << "x" << s.heads << " q" << s.q_len << " kv" << s.kv_len << " d" << s.head_dim;
  }
}

// Causal attention (CLIP's text encoder), scalar vs the masked double reference, with query
// blocks and key blocks both straddling the diagonal and q_len != kv_len: same bound.
TEST(Ops, AttentionCausalScalarVsDouble) {
  dk::ScopedOpVariant sv(scalar_row());
  dk::Context ctx(2);
  for (AttnShape s : {AttnShape{1, 1, 1, 1, 1}, AttnShape{2, 3, 77, 77, 64}, AttnShape{1, 2, 130, 130, 16},
                      AttnShape{1, 1, 20, 90, 8}, AttnShape{2, 1, 40, 5, 72}}) {
    AttnProblem p(s, 51 + s.head_dim, 2.0f);
    p.causal = true;
    EXPECT_LE(logged("attention causal", rel_diff(p.run(ctx), p.ref())), 1.5e-6)
        << s.batch << "x" << s.heads << " q" << s.q_len << " kv" << s.kv_len << " d" << s.head_dim;
  }
  // Row 0 sees only key 0: its output is v[0] exactly.
  AttnProblem p(AttnShape{1, 1, 5, 5, 4}, 7);
  p.causal = true;
  const Vec o = p.run(ctx);
  for (std::size_t t = 0; t < 4; ++t) EXPECT_EQ(o[t], p.v[t]);
}

// ---------------------------------------------------------------------------------------------
// Every variant vs the scalar row, 1 vs 2 threads bit-identical.

// GroupNorm(+SiLU): statistics in double in every variant (same up to summation order), so the
// only difference is exp in SiLU (polynomial, <= 2 ulp): <= 5e-7 * max|y| (measured 1.2e-7).
TEST(Ops, GroupNormVariants) {
  struct Case {
    std::size_t B, C, S, G;
    bool silu, transpose, in_place;
  };
  for (const Case& c : {Case{2, 6, 17, 3, true, false, false}, Case{1, 32, 1, 32, true, false, true},
                        Case{1, 1, 1, 1, false, false, false}, Case{3, 8, 9, 2, true, true, false},
                        Case{2, 64, 100, 32, true, false, true}, Case{1, 128, 33, 32, false, true, false},
                        Case{4, 96, 64, 32, true, false, false}}) {
    const Vec x = random(c.B * c.C * c.S, 51, 3.0f, 0.5f), gamma = random(c.C, 52, 1.0f, 1.0f), beta = random(c.C, 53);
    check_variants("group_norm", [&](dk::Context& ctx) {
      Vec y = c.in_place ? x : Vec(x.size(), NAN);
      dk::group_norm({.x = c.in_place ? y.data() : x.data(), .y = y.data(), .batch = c.B, .channels = c.C,
                      .spatial = c.S, .groups = c.G, .eps = 1e-6f, .gamma = gamma.data(), .beta = beta.data(),
                      .silu = c.silu, .transpose_out = c.transpose}, ctx);
      return y;
    }, 5e-7);
  }
}

// LayerNorm (+adaLN): as GroupNorm, no transcendental: <= 5e-7 * max|y| (measured 1.4e-7: the
// scalar row's compiler contracts some products into FMAs).
TEST(Ops, LayerNormVariants) {
  for (std::size_t dim : {1, 7, 16, 37, 384, 1152}) {
    const std::size_t rows = 2 * 17, rpb = 17;
    const Vec x = random(rows * dim, 61 + dim, 2.0f, 0.7f), gamma = random(dim, 62, 1.0f, 1.0f), beta = random(dim, 63);
    const Vec mod = random(2 * 6 * dim, 64, 0.5f);
    for (int mode = 0; mode < 3; ++mode)
      check_variants("layer_norm dim " + std::to_string(dim), [&](dk::Context& ctx) {
        Vec y = x;
        dk::LayerNormArgs a{.x = y.data(), .y = y.data(), .rows = rows, .dim = dim, .eps = 1e-6f};
        if (mode >= 1) a.gamma = gamma.data(), a.beta = beta.data();
        if (mode == 2) a.shift = mod.data() + dim, a.scale = mod.data() + 2 * dim, a.rows_per_batch = rpb, a.mod_stride = 6 * dim;
        dk::layer_norm(a, ctx);
        return y;
      }, 5e-7);
  }
}

// Activations: polynomial exp, A&S erf (|err| <= 1.5e-7, as PyTorch's vectorised erf), tanh
// as x sigmoid(2u) in the SIMD rows: <= 2e-7 * max|y| over [-12, 12] (measured 4e-8).
TEST(Ops, ActivationVariants) {
  for (std::size_t n : {1, 15, 17, 4096 + 33, 3 * 4096 + 5}) {
    const Vec x = random(n, 71 + n, 12.0f), bias = random(13, 72);
    for (dk::Activation act : kActs) {
      check_variants("activation " + std::to_string(static_cast<int>(act)), [&](dk::Context& ctx) {
        Vec y(n);
        dk::activation(act, x.data(), y.data(), n, ctx);
        return y;
      }, 2e-7);
      check_variants("activation+bias", [&](dk::Context& ctx) {
        Vec y = x;  // in place, bias per channel with inner 3
        dk::activation(act, y.data(), y.data(), n, ctx, bias.data(), 3, 13);
        return y;
      }, 2e-7);
    }
  }
}

// Special values, in every variant at 1 and 2 threads, element by element against the double formula
// (a bound relative to max|y| means nothing next to 1e30):
//   - large and tiny |x| saturate to the right value with no NaN: |y - ref| <= 4e-7 |ref| + 1e-36 (the
//     absolute term admits a result below 1e-36 flushed to zero or saturated, e.g. silu(-100) = -3.7e-42
//     and silu(-88.8) = -2.4e-37, which f32 computes as x / inf = -0);
//   - NaN propagates: a NaN input gives NaN at its own position, at the start, the end and the middle of
//     a SIMD block and in the tail, with and without the bias path, and leaves its neighbours finite.
TEST(Ops, ActivationSpecialValues) {
  const Vec special = {0.0f, -0.0f, 100.0f, -100.0f, 1e30f, -1e30f, 88.8f, -88.8f, 1e-30f, -1e-30f, 3e38f, -3e38f};
  const std::vector<std::size_t> nan_at = {0, 7, 15, 16, 31, 33, 36};
  Vec with_nan = random(37, 131, 4.0f);
  for (std::size_t i : nan_at) with_nan[i] = std::nanf("");
  const Vec bias = random(3, 132);
  for (const dk::OpVariant& v : dk::op_variants()) {
    dk::ScopedOpVariant sv(v);
    for (std::size_t threads : {1, 2}) {
      dk::Context ctx(threads);
      for (dk::Activation act : kActs) {
        const std::string what = std::string(v.name) + " act " + std::to_string(static_cast<int>(act)) + " threads " +
                                 std::to_string(threads);
        Vec y(special.size(), 123.0f);
        dk::activation(act, special.data(), y.data(), special.size(), ctx);
        for (std::size_t i = 0; i < special.size(); ++i) {
          const double ref = act_ref(act, special[i]);
          ASSERT_FALSE(std::isnan(ref)) << special[i];
          EXPECT_FALSE(std::isnan(y[i])) << what << " x = " << special[i];
          EXPECT_LE(std::fabs(y[i] - ref), 4e-7 * std::fabs(ref) + 1e-36) << what << " x = " << special[i] << ": " << y[i]
                                                                           << " vs " << ref;
        }
        for (bool with_bias : {false, true}) {
          Vec z(with_nan.size(), 123.0f);
          if (with_bias)
            dk::activation(act, with_nan.data(), z.data(), z.size(), ctx, bias.data(), 1, bias.size());
          else
            dk::activation(act, with_nan.data(), z.data(), z.size(), ctx);
          for (std::size_t i = 0; i < z.size(); ++i) {
            const bool is_nan_in = std::find(nan_at.begin(), nan_at.end(), i) != nan_at.end();
            EXPECT_EQ(std::isnan(z[i]), is_nan_in) << what << (with_bias ? " bias" : "") << " at " << i << ": " << z[i];
          }
        }
      }
    }
  }
}

// Softmax: polynomial exp, vector partial sums: <= 1e-6 * max|y| (measured 2.6e-7).
TEST(Ops, SoftmaxVariants) {
  for (std::size_t cols : {1, 7, 16, 17, 256, 300}) {
    const Vec x = random(9 * cols, 81 + cols, 20.0f);
    check_variants("softmax", [&](dk::Context& ctx) {
      Vec y = x;
      dk::softmax(y.data(), 9, cols, ctx);
      return y;
    }, 1e-6);
  }
}

// add_channel_bias and gated_add: one add / one fma per element, the same in every row: exact.
TEST(Ops, BiasAndGateVariants) {
  for (std::size_t spatial : {1, 5, 16, 33, 256}) {
    const std::size_t B = 3, C = 19;
    const Vec x = random(B * C * spatial, 91), vec = random(B * 40, 92);
    check_variants("add_channel_bias", [&](dk::Context& ctx) {
      Vec y = x;
      dk::add_channel_bias(y.data(), B, C, spatial, vec.data() + 3, 40, ctx);
      return y;
    }, 0.0);
    const std::size_t tokens = 7, dim = spatial + 3;
    const Vec gx = random(B * tokens * dim, 93), gy = random(B * tokens * dim, 94), gate = random(B * 6 * dim, 95);
    check_variants("gated_add", [&](dk::Context& ctx) {
      Vec y = gx;
      dk::gated_add(y.data(), gy.data(), B, tokens, dim, gate.data() + 2 * dim, 6 * dim, ctx);
      return y;
    }, 0.0);
  }
}

// Upsample: a copy: exact; includes non-integer factors and a 1x1 image.
TEST(Ops, UpsampleVariants) {
  struct Case {
    std::size_t P, H, W, OH, OW;
  };
  for (const Case& c : {Case{3, 1, 1, 2, 2}, Case{4, 5, 7, 10, 14}, Case{2, 16, 16, 32, 32}, Case{1, 3, 5, 7, 4}}) {
    const Vec x = random(c.P * c.H * c.W, 101);
    check_variants("upsample", [&](dk::Context& ctx) {
      Vec y(c.P * c.OH * c.OW, NAN);
      dk::upsample_nearest(x.data(), c.P, c.H, c.W, y.data(), c.OH, c.OW, ctx);
      return y;
    }, 0.0);
    dk::Context ctx(1);
    Vec y(c.P * c.OH * c.OW);
    dk::upsample_nearest(x.data(), c.P, c.H, c.W, y.data(), c.OH, c.OW, ctx);
    for (std::size_t p = 0; p < c.P; ++p)
      for (std::size_t i = 0; i < c.OH; ++i)
        for (std::size_t j = 0; j < c.OW; ++j)
          ASSERT_EQ(y[(p * c.OH + i) * c.OW + j], x[(p * c.H + i * c.H / c.OH) * c.W + j * c.W / c.OW]);
  }
}

// Attention: SIMD rows reassociate nothing in the dot products (one FMA chain over d per
// score, as the scalar row) but use exp2 of pre-scaled scores (polynomial) and vector sums:
// <= 1.5e-6 * max|o| (measured 6.4e-7).
TEST(Ops, AttentionVariants) {
  for (AttnShape s : {AttnShape{1, 1, 1, 1, 1}, AttnShape{2, 3, 17, 70, 7}, AttnShape{2, 2, 64, 64, 32},
                      AttnShape{1, 1, 20, 130, 256}, AttnShape{2, 1, 33, 5, 72}, AttnShape{2, 6, 256, 256, 64},
                      AttnShape{1, 1, 300, 17, 64}, AttnShape{1, 2, 1, 300, 16}}) {
    const AttnProblem p(s, 111 + s.head_dim, 2.0f);
    check_variants("attention d" + std::to_string(s.head_dim) + " q" + std::to_string(s.q_len),
                   [&](dk::Context& ctx) { return p.run(ctx); }, 1.5e-6);
  }
  // Causal: same bound (diagonal inside and across SIMD query blocks and key blocks).
  for (AttnShape s : {AttnShape{2, 12, 77, 77, 64}, AttnShape{1, 2, 130, 130, 16}, AttnShape{1, 1, 20, 90, 8},
                      AttnShape{2, 1, 40, 5, 72}, AttnShape{1, 1, 1, 1, 1}}) {
    AttnProblem p(s, 131 + s.head_dim, 2.0f);
    p.causal = true;
    check_variants("attention causal d" + std::to_string(s.head_dim) + " q" + std::to_string(s.q_len),
                   [&](dk::Context& ctx) { return p.run(ctx); }, 1.5e-6);
  }
  // Strided layout ([B, H, N, d] q with padding between rows) and an explicit scale.
  const std::size_t B = 2, H = 2, N = 19, M = 23, d = 9, pad = 3;
  const Vec q = random(B * H * N * (d + pad), 121), k = random(B * M * H * d, 122), v = random(B * M * H * d, 123);
  check_variants("attention strided", [&](dk::Context& ctx) {
    Vec o(B * H * N * d, NAN);
    dk::AttentionArgs a = dk::attention_bnd(nullptr, k.data(), v.data(), o.data(), B, H, N, M, d);
    a.q = q.data(), a.q_batch_stride = H * N * (d + pad), a.q_head_stride = N * (d + pad), a.q_row_stride = d + pad;
    a.o_batch_stride = H * N * d, a.o_head_stride = N * d, a.o_row_stride = d;
    a.scale = 0.3f;
    dk::attention(a, ctx);
    return o;
  }, 1.5e-6);
}

// ---------------------------------------------------------------------------------------------
// Bad arguments

TEST(Ops, Errors) {
  dk::Context ctx(1);
  Vec buf(64);
  float* p = buf.data();
  expect_error<shape_error>([&] { dk::group_norm({.x = p, .y = p, .batch = 1, .channels = 6, .spatial = 2, .groups = 4}, ctx); },
                            {"kernels::group_norm", "groups 4", "channels 6"});
  expect_error<shape_error>([&] { dk::group_norm({.x = p, .y = p, .batch = 1, .channels = 6, .spatial = 2, .groups = 0}, ctx); },
                            {"kernels::group_norm", "groups is 0"});
  expect_error<value_error>([&] { dk::group_norm({.x = nullptr, .y = p, .batch = 1, .channels = 6, .spatial = 2, .groups = 3}, ctx); },
                            {"kernels::group_norm", "x is null"});
  expect_error<value_error>([&] {
    dk::group_norm({.x = p, .y = p, .batch = 1, .channels = 4, .spatial = 4, .groups = 2, .transpose_out = true}, ctx);
  }, {"kernels::group_norm", "in place"});
  expect_error<shape_error>([&] { dk::layer_norm({.x = p, .y = p, .rows = 2, .dim = 0}, ctx); }, {"kernels::layer_norm", "dim is 0"});
  expect_error<value_error>([&] { dk::layer_norm({.x = p, .y = nullptr, .rows = 2, .dim = 4}, ctx); }, {"kernels::layer_norm", "y is null"});
  expect_error<shape_error>([&] {
    dk::layer_norm({.x = p, .y = p, .rows = 2, .dim = 8, .shift = p, .mod_stride = 4}, ctx);
  }, {"kernels::layer_norm", "mod_stride 4", "dim 8"});
  expect_error<value_error>([&] { dk::parse_activation("relu6"); }, {"kernels::parse_activation", "relu6"});
  expect_error<value_error>([&] { dk::activation(dk::Activation::silu, nullptr, p, 4, ctx); }, {"kernels::activation", "x is null"});
  expect_error<shape_error>([&] { dk::activation(dk::Activation::silu, p, p, 4, ctx, p, 1, 0); }, {"kernels::activation", "bias_len is 0"});
  expect_error<value_error>([&] { dk::softmax(nullptr, 2, 3, ctx); }, {"kernels::softmax", "x is null"});
  expect_error<shape_error>([&] { dk::softmax(p, 2, 0, ctx); }, {"kernels::softmax", "cols is 0"});
  expect_error<value_error>([&] { dk::gated_add(p, p, 1, 2, 3, nullptr, 3, ctx); }, {"kernels::gated_add", "gate is null"});
  expect_error<shape_error>([&] { dk::gated_add(p, p, 2, 2, 3, p, 2, ctx); }, {"kernels::gated_add", "gate_stride 2", "dim 3"});
  expect_error<shape_error>([&] { dk::add_channel_bias(p, 2, 4, 2, p, 3, ctx); }, {"kernels::add_channel_bias", "v_stride 3", "channels 4"});
  expect_error<shape_error>([&] { dk::upsample_nearest(p, 1, 0, 2, p, 2, 2, ctx); }, {"kernels::upsample_nearest", "height is 0"});
  expect_error<shape_error>([&] { dk::attention(dk::attention_bnd(p, p, p, p, 1, 1, 2, 2, 0), ctx); }, {"kernels::attention", "head_dim is 0"});
  expect_error<shape_error>([&] { dk::attention(dk::attention_bnd(p, p, p, p, 1, 0, 2, 2, 4), ctx); }, {"kernels::attention", "heads is 0"});
  expect_error<shape_error>([&] { dk::attention(dk::attention_bnd(p, p, p, p, 1, 1, 2, 0, 4), ctx); }, {"kernels::attention", "kv_len is 0"});
  expect_error<value_error>([&] { dk::attention(dk::attention_bnd(p, nullptr, p, p, 1, 1, 2, 2, 4), ctx); }, {"kernels::attention", "k is null"});
  expect_error<shape_error>([&] { dk::timestep_embedding(p, 1, 1, false, 1.0f, p); }, {"kernels::timestep_embedding", "dim 1"});
  expect_error<value_error>([&] { dk::timestep_embedding(p, 1, 4, false, 2.0f, p); }, {"kernels::timestep_embedding", "downscale_freq_shift"});
  expect_error<shape_error>([&] { dk::sincos_pos_embed_2d(6, 2, 2, p, 16.0); }, {"kernels::sincos_pos_embed_2d", "dim 6"});
  expect_error<value_error>([&] { dk::sincos_pos_embed_2d(8, 2, 2, nullptr, 16.0); }, {"kernels::sincos_pos_embed_2d", "out is null"});
  // Empty calls are no-ops (nothing read or written, null pointers allowed).
  dk::softmax(nullptr, 0, 3, ctx);
  dk::activation(dk::Activation::gelu_erf, nullptr, nullptr, 0, ctx);
  dk::attention(dk::attention_bnd(nullptr, nullptr, nullptr, nullptr, 0, 1, 2, 2, 4), ctx);
}

// ---------------------------------------------------------------------------------------------
// Embeddings against diffusers (tests/data/kernels/embeddings.json).

Vec decode_f32(const std::string& b64) {
  auto val = [](char c) -> std::uint32_t {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : 63;
  };
  std::vector<unsigned char> bytes;
  for (std::size_t i = 0; i + 3 < b64.size(); i += 4) {
    const std::uint32_t n = val(b64[i]) << 18 | val(b64[i + 1]) << 12 | (b64[i + 2] == '=' ? 0 : val(b64[i + 2]) << 6) |
                            (b64[i + 3] == '=' ? 0 : val(b64[i + 3]));
    bytes.push_back(static_cast<unsigned char>(n >> 16));
    if (b64[i + 2] != '=') bytes.push_back(static_cast<unsigned char>(n >> 8));
    if (b64[i + 3] != '=') bytes.push_back(static_cast<unsigned char>(n));
  }
  Vec out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);  // little-endian host (x86, arm64)
  return out;
}

nlohmann::json load_fixture() {
  std::ifstream f(std::string(DIFFUSE_TEST_DATA_DIR) + "/kernels/embeddings.json");
  EXPECT_TRUE(f.good()) << "missing tests/data/kernels/embeddings.json";
  return nlohmann::json::parse(f);
}

/// Distance in units in the last place (f32, same sign assumed for nonzero values).
std::int64_t ulps(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = INT32_MIN - ia;
  if (ib < 0) ib = INT32_MIN - ib;
  return std::abs(static_cast<std::int64_t>(ia) - ib);
}

// timestep_embedding: torch computes exp / sin / cos with SLEEF (1.0-ulp functions), we with
// glibc (correctly rounded here). A 1-ulp difference of a frequency moves the argument
// t * freq by up to |t| * 2^-24, so each value must be within |scale t| * 2^-23 + 2^-23 of
// diffusers' (for t = 999 that is 1.2e-4: one frequency of the 256-wide DiT table differs);
// at least 80 % of the values must be bit-identical (measured: 924 of 967).
TEST(Ops, TimestepEmbeddingMatchesDiffusers) {
  const nlohmann::json fx = load_fixture();
  std::size_t exact = 0, total = 0;
  for (const auto& c : fx["timestep_embedding"]) {
    const std::vector<float> t = c["timesteps"].get<std::vector<float>>();
    const std::size_t dim = c["dim"];
    const Vec want = decode_f32(c["out"]);
    ASSERT_EQ(want.size(), t.size() * dim);
    Vec got(want.size(), NAN);
    dk::timestep_embedding(t.data(), t.size(), dim, c["flip_sin_to_cos"], c["downscale_freq_shift"].get<float>(), got.data(),
                           c["scale"].get<float>(), c["max_period"].get<float>());
    for (std::size_t i = 0; i < want.size(); ++i) {
      ++total;
      exact += got[i] == want[i];
      const double tol = (std::fabs(t[i / dim] * c["scale"].get<double>()) + 1.0) * 0x1p-23;
      EXPECT_LE(std::fabs(got[i] - want[i]), tol) << "dim " << dim << " i " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  EXPECT_GE(exact * 10, total * 8) << exact << " of " << total << " bit-identical";
  std::printf("timestep_embedding: %zu of %zu values bit-identical to diffusers\n", exact, total);
}

// sincos_pos_embed_2d: computed in double and rounded once, as diffusers does: bit-identical
// except where the double sin/cos of the two libraries straddle an f32 rounding boundary
// (<= 1 ulp, allowed for at most 1 % of the values).
TEST(Ops, SincosPosEmbedMatchesDiffusers) {
  const nlohmann::json fx = load_fixture();
  std::size_t exact = 0, total = 0;
  for (const auto& c : fx["sincos_pos_embed_2d"]) {
    const std::size_t dim = c["dim"], gh = c["grid_h"], gw = c["grid_w"];
    const Vec want = decode_f32(c["out"]);
    ASSERT_EQ(want.size(), gh * gw * dim);
    Vec got(want.size(), NAN);
    dk::sincos_pos_embed_2d(dim, gh, gw, got.data(), c["base_size"].get<double>(), c["interpolation_scale"].get<double>());
    for (std::size_t i = 0; i < want.size(); ++i) {
      ++total;
      exact += got[i] == want[i];
      EXPECT_LE(ulps(got[i], want[i]), 1) << "dim " << dim << " grid " << gh << "x" << gw << " i " << i << ": " << got[i]
                                          << " vs " << want[i];
    }
  }
  EXPECT_GE(exact * 100, total * 99) << exact << " of " << total << " bit-identical";
  std::printf("sincos_pos_embed_2d: %zu of %zu values bit-identical to diffusers\n", exact, total);
}

}  // namespace
