// SPDX-License-Identifier: MIT
// GEMM: the scalar reference against a double-precision product, then every table entry the CPU
// can run against the scalar reference, over awkward shapes, both layouts of B, alpha/beta/bias,
// f16/bf16 weights, strided batches, and 1 vs 2 threads (which must agree bit for bit). Then the
// small-M variants (same checks, M 1..8, B^T) and pre-packed B (bit-identical to unpacked).
//
// Tolerance. Recursive f32 summation of K products has a worst-case error of about
// K * 2^-24 * sum_k |a_ik b_kj|; for the random data here (|a|, |b| <= 1) the observed error is far
// smaller. We require, per element,
//   |C - C_ref| <= 1e-5 * K * max|A| * max|B| * |alpha| + 2^-21 * (|beta C0| + |bias| + |C_ref|)
// i.e. the bound of the brief for the product plus a few ulps for the final scale-and-add (the
// kernels fuse it into FMAs, the reference does not).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"

namespace {

namespace dk = diffuse::kernels;
using diffuse::DType;

struct Rng {
  std::uint64_t s;
  float next() {  // uniform in [-1, 1), 24-bit grid
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int32_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
};

/// One GEMM problem with its own storage; B kept as f32 plus its f16 / bf16 encodings.
struct Problem {
  std::size_t M, N, K;
  bool trans;
  DType type = DType::F32;
  std::size_t lda, ldb, ldc;
  std::vector<float> A, Bf, Bconv, C0, bias;
  std::vector<std::uint16_t> B16;
  float alpha = 1.0f, beta = 0.0f;
  bool use_bias = false;

  Problem(std::size_t m, std::size_t n, std::size_t k, bool t, DType ty, std::uint64_t seed, std::size_t pad = 0)
      : M(m), N(n), K(k), trans(t), type(ty) {
    Rng r{seed};
    lda = K + pad;
    ldb = (trans ? K : N) + pad;
    ldc = N + pad;
    const std::size_t b_rows = trans ? N : K;
    A.resize(M * lda);
    for (auto& x : A) x = r.next();
    Bf.resize(b_rows * ldb);
    for (auto& x : Bf) x = r.next();
    B16.resize(Bf.size());
    Bconv = Bf;  // the f32 values op(B) really has after encoding
    for (std::size_t i = 0; i < Bf.size(); ++i) {
      if (type == DType::F16) {
        B16[i] = diffuse::f32_to_f16_scalar(Bf[i]);
        Bconv[i] = diffuse::f16_to_f32_scalar(B16[i]);
      } else if (type == DType::BF16) {
        B16[i] = diffuse::f32_to_bf16_scalar(Bf[i]);
        Bconv[i] = diffuse::bf16_to_f32_scalar(B16[i]);
      }
    }
    C0.resize(M * ldc);
    for (auto& x : C0) x = r.next();
    bias.resize(N);
    for (auto& x : bias) x = r.next();
  }

  dk::GemmArgs args(float* C) const {
    dk::GemmArgs g;
    g.M = M, g.N = N, g.K = K;
    g.A = A.data(), g.lda = lda;
    g.B = type == DType::F32 ? static_cast<const void*>(Bf.data()) : static_cast<const void*>(B16.data());
    g.ldb = ldb, g.b_type = type, g.b_transposed = trans;
    g.C = C, g.ldc = ldc;
    g.alpha = alpha, g.beta = beta;
    g.bias = use_bias ? bias.data() : nullptr;
    return g;
  }
  float b(std::size_t k, std::size_t j) const { return Bconv[trans ? j * ldb + k : k * ldb + j]; }

  /// Naive double-precision result.
  std::vector<double> exact() const {
    std::vector<double> out(M * ldc);
    for (std::size_t i = 0; i < M; ++i)
      for (std::size_t j = 0; j < N; ++j) {
        double s = 0;
        for (std::size_t k = 0; k < K; ++k) s += static_cast<double>(A[i * lda + k]) * b(k, j);
        out[i * ldc + j] = alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * C0[i * ldc + j]) +
                           (use_bias ? bias[j] : 0.0);
      }
    return out;
  }

  double tol(std::size_t i, std::size_t j, double ref) const {
    const double prod = 1e-5 * static_cast<double>(K) * std::fabs(alpha);  // max|A|, max|B| <= 1
    const double rest = (beta == 0.0f ? 0.0 : std::fabs(beta * C0[i * ldc + j])) +
                        (use_bias ? std::fabs(bias[j]) : 0.0) + std::fabs(ref);
    return prod + std::ldexp(rest, -21);
  }
};

/// Runs `k` on `p` with `threads` threads; C starts as C0 (padding included).
/// The pools and workspace are made once (thread start-up under the sanitizers is slow).
std::vector<float> run(const dk::GemmKernel& k, const Problem& p, std::size_t threads) {
  static dk::ThreadPool pool1(1), pool2(2);
  static dk::Context scratch(1);  // only its 64-byte aligned, growing workspace is used
  std::vector<float> C = p.C0;
  const std::size_t need = dk::gemm_workspace_floats(k, threads);
  dk::gemm(k, p.args(C.data()), threads == 1 ? &pool1 : &pool2, scratch.workspace(need));
  return C;
}

const dk::GemmKernel& scalar_kernel() { return dk::gemm_kernels()[0]; }

/// Compares C with a reference over the M x N block; the row padding must be untouched.
template <class Ref>
void expect_close(const Problem& p, const std::vector<float>& C, const std::vector<Ref>& ref, const std::string& what) {
  int bad = 0;
  for (std::size_t i = 0; i < p.M; ++i)
    for (std::size_t j = 0; j < p.ldc; ++j) {
      const std::size_t at = i * p.ldc + j;
      if (j >= p.N) {
        if (std::memcmp(&C[at], &p.C0[at], sizeof(float)) != 0 && bad++ < 5)
          ADD_FAILURE() << what << ": padding written at (" << i << ", " << j << ")";
        continue;
      }
      const double r = static_cast<double>(ref[at]);
      const double err = std::fabs(static_cast<double>(C[at]) - r);
      if (!(err <= p.tol(i, j, r)) && bad++ < 5)
        ADD_FAILURE() << what << ": C(" << i << ", " << j << ") = " << C[at] << ", reference " << r << ", error "
                      << err << " > " << p.tol(i, j, r);
    }
  EXPECT_EQ(bad, 0) << what;
}

std::string shape_name(const Problem& p) {
  return "M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " K=" + std::to_string(p.K) +
         (p.trans ? " B^T" : " B") + " type=" + std::string(diffuse::dtype_name(p.type)) +
         " alpha=" + std::to_string(p.alpha) + " beta=" + std::to_string(p.beta) + (p.use_bias ? " bias" : "");
}

const std::size_t kSizes[] = {1, 2, 3, 7, 15, 16, 17, 33, 64, 100, 257};

/// The shape sweep: every triple from kSizes up to 32768 products, and 257 against sizes <= 3.
std::vector<Problem> sweep(DType type) {
  std::vector<Problem> out;
  std::uint64_t seed = 1;
  for (std::size_t m : kSizes)
    for (std::size_t n : kSizes)
      for (std::size_t k : kSizes) {
        std::size_t s[3] = {m, n, k};
        std::sort(s, s + 3);
        if (m * n * k > (1u << 15) && !(s[2] == 257 && s[1] <= 3)) continue;
        for (bool trans : {false, true}) {
          Problem p(m, n, k, trans, type, seed, (seed % 3 == 0) ? 5 : 0);
          switch (seed % 4) {  // cycle through the ways of combining with C
            case 0: break;
            case 1: p.beta = 1.0f; break;
            case 2: p.alpha = -0.75f, p.beta = 0.5f, p.use_bias = true; break;
            default: p.alpha = 2.0f, p.use_bias = true; break;
          }
          ++seed;
          out.push_back(std::move(p));
        }
      }
  return out;
}

// ---- the reference itself ---------------------------------------------------------------------

TEST(GemmScalar, MatchesDoublePrecision) {
  for (DType type : {DType::F32, DType::BF16}) {
    for (const Problem& p : sweep(type)) {
      expect_close(p, run(scalar_kernel(), p, 1), p.exact(), "scalar " + shape_name(p));
      if (HasFailure()) return;
    }
  }
}

TEST(GemmScalar, TableStartsWithScalar) {
  ASSERT_FALSE(dk::gemm_kernels().empty());
  EXPECT_EQ(scalar_kernel().isa, diffuse::IsaLevel::scalar);
  EXPECT_EQ(std::string(scalar_kernel().name), "gemm_f32__scalar_1x1");
}

TEST(GemmScalar, KnownSmallProduct) {  // by hand: [1 2; 3 4] [5 6; 7 8] = [19 22; 43 50]
  const float A[] = {1, 2, 3, 4}, B[] = {5, 6, 7, 8}, bias[] = {0.5f, -1};
  float C[4] = {1, 1, 1, 1};
  dk::GemmArgs g;
  g.M = g.N = g.K = 2;
  g.A = A, g.lda = 2, g.B = B, g.ldb = 2, g.C = C, g.ldc = 2, g.beta = 2, g.bias = bias;
  for (const dk::GemmKernel& k : dk::gemm_kernels()) {
    if (!dk::kernel_supported(k)) continue;
    std::vector<float> ws(dk::gemm_workspace_floats(k, 1) + 16);
    float* base = ws.data();
    while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
    std::fill(C, C + 4, 1.0f);
    dk::gemm(k, g, nullptr, {base, ws.size() - 16});
    EXPECT_EQ(C[0], 21.5f) << k.name;
    EXPECT_EQ(C[1], 23.0f) << k.name;
    EXPECT_EQ(C[2], 45.5f) << k.name;
    EXPECT_EQ(C[3], 51.0f) << k.name;
  }
}

// ---- every variant against the reference ------------------------------------------------------

class GemmKernelTest : public ::testing::TestWithParam<std::size_t> {
 protected:
  const dk::GemmKernel& kernel() const { return dk::gemm_kernels()[GetParam()]; }
  void SetUp() override {
    if (!dk::kernel_supported(kernel())) GTEST_SKIP() << kernel().name << " needs instructions this CPU lacks";
  }
  /// kernel() at 1 and 2 threads: bit-identical to each other, close to the scalar reference.
  void check(const Problem& p) {
    const std::vector<float> ref = run(scalar_kernel(), p, 1);
    const std::vector<float> c1 = run(kernel(), p, 1);
    const std::vector<float> c2 = run(kernel(), p, 2);
    const std::string what = std::string(kernel().name) + " " + shape_name(p);
    expect_close(p, c1, ref, what);
    EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)), 0) << what << ": 1 vs 2 threads differ";
  }
};

TEST_P(GemmKernelTest, AwkwardShapesF32) {
  for (const Problem& p : sweep(DType::F32)) {
    check(p);
    if (HasFailure()) return;
  }
}

TEST_P(GemmKernelTest, HalfAndBfloatWeights) {
  for (DType type : {DType::F16, DType::BF16}) {
    std::uint64_t seed = 100;
    for (std::size_t m : {1, 7, 17, 64})
      for (std::size_t n : {1, 15, 33, 100})
        for (std::size_t k : {1, 16, 17, 100})
          for (bool trans : {false, true}) {
            Problem p(m, n, k, trans, type, seed++);
            p.use_bias = (seed % 2) == 0;
            check(p);
            if (HasFailure()) return;
          }
  }
}

TEST_P(GemmKernelTest, SeveralCacheBlocks) {  // K > kc (with a partial block), N > nc
  for (DType type : {DType::F32, DType::F16, DType::BF16})
    for (bool trans : {false, true}) {
      Problem p(13, 530, 800, trans, type, 7, 3);  // 3 K blocks (last partial), 2 N blocks
      p.alpha = 0.5f, p.beta = -1.0f, p.use_bias = true;
      check(p);
    }
}

TEST_P(GemmKernelTest, StridedBatch) {
  // Four heads side by side in one buffer, as in attention: A_h = X[:, h*d:(h+1)*d],
  // B_h = W[h*d:(h+1)*d, :]^T-style slices, C_h = Y[:, h*n:(h+1)*n]; each call must only touch
  // its own slice.
  const std::size_t heads = 4, M = 19, d = 24, n = 21;
  Rng r{42};
  std::vector<float> X(M * heads * d), W(heads * n * d), Y(M * heads * n, 7.0f);
  for (auto& x : X) x = r.next();
  for (auto& x : W) x = r.next();
  std::vector<float> Yref = Y;
  std::vector<float> ws(dk::gemm_workspace_floats(kernel(), 2) + 16);
  float* base = ws.data();
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
  dk::ThreadPool pool(2);
  for (std::size_t h = 0; h < heads; ++h) {
    dk::GemmArgs g;
    g.M = M, g.N = n, g.K = d;
    g.A = X.data() + h * d, g.lda = heads * d;
    g.B = W.data() + h * n * d, g.ldb = d, g.b_transposed = true;
    g.ldc = heads * n;
    g.beta = 1.0f;
    g.C = Y.data() + h * n;
    dk::gemm(kernel(), g, &pool, {base, ws.size() - 16});
    g.C = Yref.data() + h * n;
    dk::gemm(scalar_kernel(), g, nullptr, {});
  }
  for (std::size_t i = 0; i < Y.size(); ++i) EXPECT_NEAR(Y[i], Yref[i], 1e-5 * d) << "element " << i;
}

TEST_P(GemmKernelTest, ZeroKScalesC) {
  Problem p(5, 9, 0, false, DType::F32, 3);
  p.beta = 0.5f, p.use_bias = true;
  std::vector<float> C = p.C0;
  std::vector<float> ws(dk::gemm_workspace_floats(kernel(), 1) + 16);
  float* base = ws.data();
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
  dk::gemm(kernel(), p.args(C.data()), nullptr, {base, ws.size() - 16});
  for (std::size_t i = 0; i < C.size(); ++i) EXPECT_EQ(C[i], 0.5f * p.C0[i] + p.bias[i % 9]);
}

TEST_P(GemmKernelTest, BetaZeroIgnoresNaNInC) {
  Problem p(13, 35, 20, true, DType::F32, 4);
  std::vector<float> C(p.C0.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> ws(dk::gemm_workspace_floats(kernel(), 1) + 16);
  float* base = ws.data();
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
  dk::gemm(kernel(), p.args(C.data()), nullptr, {base, ws.size() - 16});
  for (float x : C) ASSERT_FALSE(std::isnan(x));
}

// ---- pre-packed B ---------------------------------------------------------------------------------

/// `k` on `p` with B packed once by pack_b.
std::vector<float> run_packed(const dk::GemmKernel& k, const Problem& p, std::size_t threads) {
  static dk::ThreadPool pool1(1), pool2(2);
  static dk::Context scratch(1);
  const void* B = p.type == DType::F32 ? static_cast<const void*>(p.Bf.data()) : p.B16.data();
  const dk::PackedMatrix packed = dk::pack_b(k, B, p.ldb, p.type, p.trans, p.K, p.N);
  EXPECT_EQ(packed.bytes() / sizeof(float) >= dk::packed_b_floats(k, p.K, p.N), true);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(packed.data) % 64, 0u);
  std::vector<float> C = p.C0;
  dk::GemmArgs g = p.args(C.data());
  g.packed_b = &packed;
  dk::gemm(k, g, threads == 1 ? &pool1 : &pool2, scratch.workspace(dk::gemm_workspace_floats(k, threads)));
  return C;
}

TEST_P(GemmKernelTest, PackedBIsBitIdentical) {
  std::vector<Problem> problems;
  std::uint64_t seed = 900;
  for (DType type : {DType::F32, DType::F16, DType::BF16})
    for (bool trans : {false, true}) {
      for (std::size_t m : {1, 9, 17, 40})
        for (std::size_t n : {1, 15, 33, 100})
          for (std::size_t k : {1, 17, 100}) {
            problems.emplace_back(m, n, k, trans, type, seed, seed % 2 ? 3 : 0);
            ++seed;
            problems.back().use_bias = seed % 3 == 0;
            problems.back().beta = seed % 4 == 0 ? 0.5f : 0.0f;
          }
      problems.emplace_back(13, 530, 800, trans, type, seed++, 3);  // several K and N blocks
      problems.back().alpha = 0.5f, problems.back().beta = -1.0f, problems.back().use_bias = true;
    }
  for (const Problem& p : problems) {
    const std::string what = std::string(kernel().name) + " " + shape_name(p);
    const std::vector<float> plain = run(kernel(), p, 1);
    for (std::size_t threads : {1, 2}) {
      const std::vector<float> packed = run_packed(kernel(), p, threads);
      EXPECT_EQ(std::memcmp(plain.data(), packed.data(), plain.size() * sizeof(float)), 0)
          << what << ": packed differs on " << threads << " thread(s)";
    }
    if (HasFailure()) return;
  }
}

TEST_P(GemmKernelTest, PackedBMustMatchKernelAndShape) {
  Problem p(20, 33, 17, true, DType::F32, 5);
  const dk::PackedMatrix packed = dk::pack_b(kernel(), p.Bf.data(), p.ldb, p.type, true, p.K, p.N);
  EXPECT_EQ(packed.kernel, &kernel());
  std::vector<float> C = p.C0;
  std::vector<float> ws(dk::gemm_workspace_floats(kernel(), 1) + 16);
  float* base = ws.data();
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
  const std::span<float> w{base, ws.size() - 16};
  Problem wrong_n(20, 32, 17, true, DType::F32, 5), wrong_k(20, 33, 16, true, DType::F32, 5);
  for (Problem* q : {&wrong_n, &wrong_k}) {
    dk::GemmArgs g = q->args(C.data());
    g.packed_b = &packed;
    EXPECT_THROW(dk::gemm(kernel(), g, nullptr, w), diffuse::shape_error) << shape_name(*q);
  }
  for (const dk::GemmKernel& other : dk::gemm_kernels()) {
    if (&other == &kernel() || !dk::kernel_supported(other)) continue;
    dk::GemmArgs g = p.args(C.data());
    g.packed_b = &packed;
    std::vector<float> ws2(dk::gemm_workspace_floats(other, 1));
    EXPECT_THROW(dk::gemm(other, g, nullptr, ws2), diffuse::value_error) << other.name;
  }
  EXPECT_THROW(dk::pack_b(kernel(), p.Bf.data(), 16, DType::F32, true, 17, 33), diffuse::shape_error);
  EXPECT_THROW(dk::pack_b(kernel(), p.Bf.data(), 17, DType::I8, true, 17, 33), diffuse::value_error);
}

std::string kernel_name(const ::testing::TestParamInfo<std::size_t>& info) {
  return dk::gemm_kernels()[info.param].name;
}

std::vector<std::size_t> all_kernels() {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < dk::gemm_kernels().size(); ++i) v.push_back(i);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Table, GemmKernelTest, ::testing::ValuesIn(all_kernels()), kernel_name);

// ---- small M (B^T streamed, no packing) ---------------------------------------------------------

/// Runs the small-M variant `k` like run() does a blocked one.
std::vector<float> run_small(const dk::GemmKernel& k, const Problem& p, std::size_t threads) {
  static dk::ThreadPool pool2(2);
  std::vector<float> C = p.C0;
  dk::gemm(k, p.args(C.data()), threads == 1 ? nullptr : &pool2, {});
  return C;
}

class GemmSmallMTest : public ::testing::TestWithParam<std::size_t> {
 protected:
  const dk::GemmKernel& kernel() const { return dk::gemm_small_m_kernels()[GetParam()]; }
  void SetUp() override {
    if (!dk::kernel_supported(kernel())) GTEST_SKIP() << kernel().name << " needs instructions this CPU lacks";
  }
};

TEST_P(GemmSmallMTest, AwkwardShapesAgainstReferenceAndDouble) {
  ASSERT_TRUE(kernel().small_m);
  ASSERT_GE(kernel().mr, dk::kGemmSmallM);
  std::uint64_t seed = 500;
  for (DType type : {DType::F32, DType::F16, DType::BF16})
    for (std::size_t m = 1; m <= kernel().mr; ++m)
      for (std::size_t n : {1, 7, 15, 17, 33, 100})
        for (std::size_t k : {1, 5, 15, 16, 17, 100, 257}) {
          Problem p(m, n, k, true, type, seed, (seed % 3 == 0) ? 5 : 0);
          switch (seed++ % 4) {
            case 0: break;
            case 1: p.beta = 1.0f; break;
            case 2: p.alpha = -0.75f, p.beta = 0.5f, p.use_bias = true; break;
            default: p.alpha = 2.0f, p.use_bias = true; break;
          }
          const std::string what = std::string(kernel().name) + " " + shape_name(p);
          const std::vector<float> c1 = run_small(kernel(), p, 1), c2 = run_small(kernel(), p, 2);
          expect_close(p, c1, run(scalar_kernel(), p, 1), what + " vs scalar");
          expect_close(p, c1, p.exact(), what + " vs double");
          EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)), 0) << what << ": 1 vs 2 threads";
          if (HasFailure()) return;
        }
}

TEST_P(GemmSmallMTest, IgnoresPackedBAndNaNInCWithBetaZero) {
  Problem p(3, 45, 70, true, DType::BF16, 11);
  const dk::PackedMatrix packed = dk::pack_b(dk::gemm_kernels()[0], p.B16.data(), p.ldb, p.type, true, p.K, p.N);
  std::vector<float> C(p.C0.size(), std::numeric_limits<float>::quiet_NaN());
  dk::GemmArgs g = p.args(C.data());
  g.packed_b = &packed;  // made for another kernel: a small-M variant reads B in place
  dk::gemm(kernel(), g, nullptr, {});
  for (float x : C) ASSERT_FALSE(std::isnan(x));
  EXPECT_EQ(C, run_small(kernel(), p, 1));
}

TEST_P(GemmSmallMTest, RejectsWhatItCannotRun) {
  Problem big(kernel().mr + 1, 9, 8, true, DType::F32, 1), plain(2, 9, 8, false, DType::F32, 1);
  std::vector<float> C(big.C0.size());
  EXPECT_THROW(dk::gemm(kernel(), big.args(C.data()), nullptr, {}), diffuse::value_error);
  EXPECT_THROW(dk::gemm(kernel(), plain.args(C.data()), nullptr, {}), diffuse::value_error);
  EXPECT_THROW(dk::pack_b(kernel(), plain.Bf.data(), plain.ldb, DType::F32, false, 8, 9), diffuse::value_error);
}

std::string small_kernel_name(const ::testing::TestParamInfo<std::size_t>& info) {
  return dk::gemm_small_m_kernels()[info.param].name;
}

std::vector<std::size_t> all_small_kernels() {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < dk::gemm_small_m_kernels().size(); ++i) v.push_back(i);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Table, GemmSmallMTest, ::testing::ValuesIn(all_small_kernels()), small_kernel_name);

TEST(GemmSmallM, ScalarVariantMatchesScalarReferenceBitForBit) {  // same f32 chain per element
  const dk::GemmKernel& k = dk::gemm_small_m_kernels()[0];
  EXPECT_EQ(k.isa, diffuse::IsaLevel::scalar);
  for (DType type : {DType::F32, DType::BF16}) {
    Problem p(5, 37, 91, true, type, 21, 2);
    p.beta = 0.25f, p.use_bias = true;
    EXPECT_EQ(run_small(k, p, 1), run(scalar_kernel(), p, 1));
  }
}

TEST(GemmSmallM, DispatcherChoosesByShapeOnly) {
  dk::Context ctx1(1), ctx2(2);
  for (std::size_t m : {std::size_t{1}, std::size_t{2}, dk::kGemmSmallM, dk::kGemmSmallM + 1}) {
    Problem p(m, 70, 50, true, DType::F32, 9);
    p.use_bias = true;
    std::vector<float> c1 = p.C0, c2 = p.C0;
    dk::gemm(p.args(c1.data()), ctx1);
    dk::gemm(p.args(c2.data()), ctx2);
    EXPECT_EQ(c1, c2) << "M=" << m << ": 1 vs 2 threads";
    const std::vector<float> want = m <= dk::kGemmSmallM ? run_small(dk::active_gemm_small_m_kernel(), p, 1)
                                                          : run(dk::active_gemm_kernel(), p, 1);
    EXPECT_EQ(c1, want) << "M=" << m;
  }
  Problem p(2, 70, 50, false, DType::F32, 9);  // B not transposed: the blocked kernel
  std::vector<float> c = p.C0;
  dk::gemm(p.args(c.data()), ctx1);
  EXPECT_EQ(c, run(dk::active_gemm_kernel(), p, 1));
  EXPECT_EQ(dk::active_gemm_small_m_kernel().isa, dk::active_gemm_kernel().isa);
}


// ---- the public entry points --------------------------------------------------------------------

TEST(Gemm, ContextUsesActiveKernel) {
  Problem p(40, 70, 50, true, DType::BF16, 9);
  p.use_bias = true;
  std::vector<float> C = p.C0;
  dk::Context ctx(2);
  dk::gemm(p.args(C.data()), ctx);
  EXPECT_EQ(C, run(dk::active_gemm_kernel(), p, 1));
  EXPECT_TRUE(dk::kernel_supported(dk::active_gemm_kernel()));
  EXPECT_LE(static_cast<int>(dk::active_gemm_kernel().isa), static_cast<int>(diffuse::isa_level()));
}

TEST(Gemm, RejectsBadArguments) {
  Problem p(4, 6, 5, false, DType::F32, 1);
  std::vector<float> C = p.C0;
  dk::Context ctx(1);
  dk::GemmArgs g = p.args(C.data());
  g.ldc = 5;
  EXPECT_THROW(dk::gemm(g, ctx), diffuse::shape_error);
  g = p.args(C.data());
  g.lda = 4;
  EXPECT_THROW(dk::gemm(g, ctx), diffuse::shape_error);
  g = p.args(C.data());
  g.b_transposed = true;  // B^T would be [6, 5] with ldb >= 5: ldb = 6 is fine; 4 is not
  g.ldb = 4;
  EXPECT_THROW(dk::gemm(g, ctx), diffuse::shape_error);
  g = p.args(C.data());
  g.B = nullptr;
  EXPECT_THROW(dk::gemm(g, ctx), diffuse::value_error);
  g = p.args(C.data());
  g.b_type = DType::I8;
  EXPECT_THROW(dk::gemm(g, ctx), diffuse::value_error);
  g = p.args(C.data());
  if (dk::active_gemm_kernel().workspace > 0) {
    EXPECT_THROW(dk::gemm(g, nullptr, std::span<float>()), diffuse::value_error);
  }
  try {
    g.ldc = 5;
    dk::gemm(g, ctx);
  } catch (const diffuse::shape_error& e) {
    EXPECT_NE(std::string(e.what()).find("[kernels::gemm] ldc 5 < N 6"), std::string::npos) << e.what();
  }
  g = p.args(nullptr);
  g.M = 0;  // empty: nothing is touched, nothing is required
  EXPECT_NO_THROW(dk::gemm(g, ctx));
}

}  // namespace
