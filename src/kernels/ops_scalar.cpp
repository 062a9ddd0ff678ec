// SPDX-License-Identifier: MIT
// The scalar reference bodies of the network kernels (ops.hpp): plain loops in the order of the
// PyTorch definitions, std::exp / std::erf / std::tanh for the transcendental functions, double
// accumulation for the normalisation statistics. The SIMD variants are tested against these.
#include <cmath>
#include <cstddef>

#include "ops_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::scalar {

namespace {

using std::size_t;

float sigmoid_mul(float x, float k) { return x / (1.0f + std::exp(-k * x)); }

float apply(Activation act, float x) {
  switch (act) {
    case Activation::silu: return sigmoid_mul(x, 1.0f);
    case Activation::quick_gelu: return sigmoid_mul(x, 1.702f);
    case Activation::gelu_erf: return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    case Activation::gelu_tanh: {
      const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + std::tanh(inner));
    }
    case Activation::relu: return x < 0.0f ? 0.0f : x;  // NaN passes through
    case Activation::identity: break;
  }
  return x;
}

/// Mean and 1/sqrt(var + eps) of n values at stride 1 (two passes in double: exact enough that
/// the f32 results are the correctly rounded statistics in practice).
void moments(const float* x, size_t n, float eps, float& mean_out, float& rstd_out) {
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += x[i];
  const double mean = s / static_cast<double>(n);
  double v = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    v += d * d;
  }
  v /= static_cast<double>(n);
  mean_out = static_cast<float>(mean);
  rstd_out = static_cast<float>(1.0 / std::sqrt(v + static_cast<double>(eps)));
}

}  // namespace

void upsample_nearest_body(const float* x, size_t height, size_t width, float* y, size_t out_height,
                           size_t out_width, size_t begin, size_t end) {
  for (size_t p = begin; p < end; ++p) {
    const float* src = x + p * height * width;
    float* dst = y + p * out_height * out_width;
    for (size_t i = 0; i < out_height; ++i) {
      const float* row = src + (i * height / out_height) * width;
      for (size_t j = 0; j < out_width; ++j) dst[i * out_width + j] = row[j * width / out_width];
    }
  }
}

void group_norm_body(const GroupNormArgs& a, size_t begin, size_t end) {
  const size_t cpg = a.channels / a.groups;
  const size_t n = cpg * a.spatial;
  for (size_t item = begin; item < end; ++item) {
    const size_t b = item / a.groups, g = item % a.groups;
    const float* x = a.x + (b * a.channels + g * cpg) * a.spatial;
    float mean, rstd;
    moments(x, n, a.eps, mean, rstd);
    for (size_t cc = 0; cc < cpg; ++cc) {
      const size_t c = g * cpg + cc;
      const float scale = rstd * (a.gamma ? a.gamma[c] : 1.0f);
      const float shift = a.beta ? a.beta[c] : 0.0f;
      const float* xc = x + cc * a.spatial;
      for (size_t s = 0; s < a.spatial; ++s) {
        float v = std::fma(xc[s] - mean, scale, shift);
        if (a.silu) v = sigmoid_mul(v, 1.0f);
        if (a.transpose_out)
          a.y[(b * a.spatial + s) * a.channels + c] = v;
        else
          a.y[(b * a.channels + c) * a.spatial + s] = v;
      }
    }
  }
}

void layer_norm_body(const LayerNormArgs& a, size_t begin, size_t end) {
  const size_t ms = a.mod_stride ? a.mod_stride : a.dim;
  for (size_t r = begin; r < end; ++r) {
    const float* x = a.x + r * a.dim;
    float* y = a.y + r * a.dim;
    float mean, rstd;
    moments(x, a.dim, a.eps, mean, rstd);
    const size_t mb = r / a.rows_per_batch;
    const float* shift = a.shift ? a.shift + mb * ms : nullptr;
    const float* scale = a.scale ? a.scale + mb * ms : nullptr;
    for (size_t i = 0; i < a.dim; ++i) {
      float v = (x[i] - mean) * rstd;
      if (a.gamma) v *= a.gamma[i];
      if (a.beta) v += a.beta[i];
      if (scale) v *= 1.0f + scale[i];
      if (shift) v += shift[i];
      y[i] = v;
    }
  }
}

void activation_body(Activation act, const float* x, float* y, size_t begin, size_t end, const float* bias,
                     size_t inner, size_t bias_len) {
  for (size_t i = begin; i < end; ++i) y[i] = apply(act, bias ? x[i] + bias[(i / inner) % bias_len] : x[i]);
}

void add_channel_bias_body(float* x, size_t channels, size_t spatial, const float* v, size_t v_stride, size_t begin,
                           size_t end) {
  for (size_t p = begin; p < end; ++p) {
    const float add = v[(p / channels) * v_stride + p % channels];
    float* xp = x + p * spatial;
    for (size_t s = 0; s < spatial; ++s) xp[s] += add;
  }
}

void gated_add_body(float* x, const float* y, size_t tokens, size_t dim, const float* gate, size_t gate_stride,
                    size_t begin, size_t end) {
  for (size_t r = begin; r < end; ++r) {
    const float* g = gate + (r / tokens) * gate_stride;
    float* xr = x + r * dim;
    const float* yr = y + r * dim;
    for (size_t d = 0; d < dim; ++d) xr[d] = std::fma(g[d], yr[d], xr[d]);
  }
}

void softmax_body(float* x, size_t cols, size_t begin, size_t end) {
  for (size_t r = begin; r < end; ++r) {
    float* row = x + r * cols;
    float m = row[0];
    for (size_t j = 1; j < cols; ++j) m = row[j] > m ? row[j] : m;
    float s = 0.0f;
    for (size_t j = 0; j < cols; ++j) {
      row[j] = std::exp(row[j] - m);
      s += row[j];
    }
    const float inv = 1.0f / s;
    for (size_t j = 0; j < cols; ++j) row[j] *= inv;
  }
}

size_t attention_workspace_body(size_t head_dim) { return (kAttentionKvBlock + head_dim + 15) / 16 * 16; }

// One query row at a time, keys in blocks of kAttentionKvBlock: scores of the block, running
// max m and sum l, o = o * exp(m_old - m_new) + sum_j exp(s_j - m_new) v_j, o / l at the end
// (FlashAttention-2's recurrence; the score row of a block is the only O(kv) storage).
void attention_body(const AttentionArgs& a, size_t begin, size_t end, float* workspace) {
  const size_t qb = attention_q_block;
  const size_t q_blocks = (a.q_len + qb - 1) / qb;
  const size_t d = a.head_dim;
  const float scale = a.scale;
  float* s = workspace;
  float* acc = workspace + kAttentionKvBlock;
  for (size_t item = begin; item < end; ++item) {
    const size_t bh = item / q_blocks, blk = item % q_blocks;
    const size_t b = bh / a.heads, h = bh % a.heads;
    const float* q0 = a.q + b * a.q_batch_stride + h * a.q_head_stride;
    const float* k0 = a.k + b * a.k_batch_stride + h * a.k_head_stride;
    const float* v0 = a.v + b * a.v_batch_stride + h * a.v_head_stride;
    float* o0 = a.o + b * a.o_batch_stride + h * a.o_head_stride;
    const size_t r_end = (blk + 1) * qb < a.q_len ? (blk + 1) * qb : a.q_len;
    for (size_t r = blk * qb; r < r_end; ++r) {
      const float* q = q0 + r * a.q_row_stride;
      float m = -INFINITY, l = 0.0f;
      for (size_t i = 0; i < d; ++i) acc[i] = 0.0f;
      const size_t kv_end = a.causal && r + 1 < a.kv_len ? r + 1 : a.kv_len;  // causal: keys 0..r
      for (size_t j0 = 0; j0 < kv_end; j0 += kAttentionKvBlock) {
        const size_t nj = kv_end - j0 < kAttentionKvBlock ? kv_end - j0 : kAttentionKvBlock;
        float bm = -INFINITY;
        for (size_t j = 0; j < nj; ++j) {
          const float* k = k0 + (j0 + j) * a.k_row_stride;
          float dot = 0.0f;
          for (size_t i = 0; i < d; ++i) dot = std::fma(q[i], k[i], dot);
          s[j] = dot * scale;
          bm = s[j] > bm ? s[j] : bm;
        }
        const float m_new = bm > m ? bm : m;
        const float alpha = std::exp(m - m_new);  // 0 on the first block (m = -inf)
        l *= alpha;
        for (size_t i = 0; i < d; ++i) acc[i] *= alpha;
        for (size_t j = 0; j < nj; ++j) {
          const float p = std::exp(s[j] - m_new);
          l += p;
          const float* v = v0 + (j0 + j) * a.v_row_stride;
          for (size_t i = 0; i < d; ++i) acc[i] = std::fma(p, v[i], acc[i]);
        }
        m = m_new;
      }
      float* o = o0 + r * a.o_row_stride;
      const float inv = 1.0f / l;
      for (size_t i = 0; i < d; ++i) o[i] = acc[i] * inv;
    }
  }
}

}  // namespace kernels::scalar
DIFFUSE_END_NAMESPACE
