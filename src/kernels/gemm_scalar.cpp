// SPDX-License-Identifier: MIT
// The scalar reference GEMM: the definition every vector path is tested against, written to be
// obviously right rather than fast (three loops, f32 accumulation in k order, B converted
// element by element through the exact scalar conversions). Its own test compares it with a
// double-precision product. Compiled without ISA flags.
#include <cstddef>
#include <cstdint>

#include "diffuse/core/convert.hpp"
#include "gemm_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::scalar {

namespace {

/// op(B)[k, j] as f32 (from packed_b when given: one K block, columns of K floats).
float b_at(const GemmArgs& g, std::size_t k, std::size_t j) {
  if (g.packed_b != nullptr) return g.packed_b->data[j * g.K + k];
  const std::size_t idx = g.b_transposed ? j * g.ldb + k : k * g.ldb + j;
  switch (g.b_type) {
    case DType::F16: return f16_to_f32_scalar(static_cast<const std::uint16_t*>(g.B)[idx]);
    case DType::BF16: return bf16_to_f32_scalar(static_cast<const std::uint16_t*>(g.B)[idx]);
    default: return static_cast<const float*>(g.B)[idx];
  }
}

}  // namespace

void gemm_f32__scalar_1x1(const GemmArgs& g, std::size_t m_begin, std::size_t m_end, std::size_t n_begin,
                          std::size_t n_end, float* /*workspace*/) {
  for (std::size_t i = m_begin; i < m_end; ++i) {
    const float* a = g.A + i * g.lda;
    float* c = g.C + i * g.ldc;
    for (std::size_t j = n_begin; j < n_end; ++j) {
      float acc = 0.0f;
      for (std::size_t k = 0; k < g.K; ++k) acc += a[k] * b_at(g, k, j);
      const float rest = (g.beta == 0.0f ? 0.0f : g.beta * c[j]) + (g.bias ? g.bias[j] : 0.0f);
      c[j] = g.alpha * acc + rest;
    }
  }
}

void gemm_f32__scalar_1x1_pack(const GemmArgs& g, float* dst) {
  GemmArgs src = g;
  src.packed_b = nullptr;
  for (std::size_t j = 0; j < g.N; ++j)
    for (std::size_t k = 0; k < g.K; ++k) dst[j * g.K + k] = b_at(src, k, j);
}

// Small M: the same dot products in k order, with B's rows (columns of op(B)) outermost so that
// B is read once. Bit-identical to gemm_f32__scalar_1x1 (same f32 chain per element).
void gemm_f32_bt__scalar_small_m(const GemmArgs& g, std::size_t m_begin, std::size_t m_end, std::size_t n_begin,
                                 std::size_t n_end, float* /*workspace*/) {
  GemmArgs src = g;
  src.packed_b = nullptr;  // small-M kernels read B in place
  for (std::size_t j = n_begin; j < n_end; ++j) {
    for (std::size_t i = m_begin; i < m_end; ++i) {
      const float* a = g.A + i * g.lda;
      float* c = g.C + i * g.ldc;
      float acc = 0.0f;
      for (std::size_t k = 0; k < g.K; ++k) acc += a[k] * b_at(src, k, j);
      const float rest = (g.beta == 0.0f ? 0.0f : g.beta * c[j]) + (g.bias ? g.bias[j] : 0.0f);
      c[j] = g.alpha * acc + rest;
    }
  }
}

}  // namespace kernels::scalar
DIFFUSE_END_NAMESPACE
