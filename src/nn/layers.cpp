// SPDX-License-Identifier: MIT
// The shared torch.nn modules (see nn/layers.hpp).
#include "diffuse/nn/layers.hpp"

#include <memory>
#include <mutex>
#include <utility>

#include "diffuse/core/convert.hpp"
#include "diffuse/kernels/kernels.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

namespace detail {

struct LinearPacked {
  std::once_flag once;
  kernels::PackedMatrix matrix;
};

}  // namespace detail

Linear Linear::bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out, bool bias) {
  Linear l;
  l.in = in;
  l.out = out;
  l.weight = w.matrix(join(prefix, "weight"), {out, in});
  if (bias) l.bias = w.f32(join(prefix, "bias"), {out});
  if (w.options().prepack) l.packed = std::make_shared<detail::LinearPacked>();
  return l;
}

std::size_t Linear::packed_bytes() const { return packed ? packed->matrix.bytes() : 0; }

void Linear::operator()(const float* x, std::size_t rows, float* y, kernels::Context& ctx, float beta,
                        std::size_t ldy) const {
  kernels::GemmArgs g;
  g.M = rows;
  g.N = out;
  g.K = in;
  g.A = x;
  g.lda = in;
  g.B = weight.data;
  g.ldb = in;
  g.b_type = weight.dtype;
  g.b_transposed = true;
  g.C = y;
  g.ldc = ldy ? ldy : out;
  g.beta = beta;
  g.bias = bias;
  if (packed && rows > kernels::kGemmSmallM) {  // the blocked kernel runs: pack the weight once
    std::call_once(packed->once, [&] {
      packed->matrix = kernels::pack_b(kernels::active_gemm_kernel(), weight.data, in, weight.dtype, true, in, out);
    });
    g.packed_b = &packed->matrix;
  }
  kernels::gemm(g, ctx);
}

Conv2d Conv2d::bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out, std::size_t k,
                    std::size_t stride, std::size_t padding, bool bias) {
  Conv2d c;
  c.in = in;
  c.out = out;
  c.kh = c.kw = k;
  c.stride = stride;
  c.pad = {padding, padding, padding, padding};
  c.weight = w.matrix(join(prefix, "weight"), {out, in, k, k});
  if (bias) c.bias = w.f32(join(prefix, "bias"), {out});
  kernels::Conv2dArgs a;
  a.kh = a.kw = k;
  a.stride = stride;
  a.pad_top = a.pad_left = a.pad_bottom = a.pad_right = padding;
  if (w.options().winograd && kernels::conv2d_winograd_eligible(a) && in >= kernels::kWinogradMinChannels &&
      out >= kernels::kWinogradMinChannels) {  // transformed once here; the network stays immutable
    const std::size_t floats = kernels::conv2d_winograd_weight_floats(out, in);
    w.reserve(std::uint64_t{floats} * sizeof(float), "the Winograd weights of '" + std::string(prefix) + "'");
    std::shared_ptr<float[]> u(new float[floats]);
    const bool as_stored = c.weight.dtype == DType::F32;
    const std::vector<float> f32 = as_stored ? std::vector<float>() : c.weight_f32();  // a passing copy
    kernels::conv2d_winograd_transform_weights(
        as_stored ? static_cast<const float*>(c.weight.data) : f32.data(), out, in, u.get());
    c.winograd = std::move(u);
  }
  return c;
}

std::vector<float> Conv2d::weight_f32() const {
  if (weight.dtype == DType::F32) {
    const auto* p = static_cast<const float*>(weight.data);
    return std::vector<float>(p, p + weight.rows * weight.cols);
  }
  std::vector<float> f(weight.rows * weight.cols);
  to_f32(weight.dtype, weight.data, f.data(), f.size());
  return f;
}

void Conv2d::operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* y,
                        kernels::Context& ctx, const float* residual) const {
  kernels::Conv2dArgs a;
  a.x = x;
  a.batch = batch;
  a.in_channels = in;
  a.height = h;
  a.width = w;
  a.weight = weight.data;
  a.weight_type = weight.dtype;
  a.bias = bias;
  a.out_channels = out;
  a.kh = kh;
  a.kw = kw;
  a.stride = stride;
  a.pad_top = pad[0];
  a.pad_left = pad[1];
  a.pad_bottom = pad[2];
  a.pad_right = pad[3];
  a.residual = residual;
  a.y = y;
  a.winograd_weight = winograd.get();
  kernels::conv2d(a, ctx);
}

GroupNorm GroupNorm::bind(WeightStore& w, std::string_view prefix, std::size_t groups, std::size_t channels,
                          float eps) {
  GroupNorm n;
  n.groups = groups;
  n.channels = channels;
  n.eps = eps;
  n.gamma = w.f32(join(prefix, "weight"), {channels});
  n.beta = w.f32(join(prefix, "bias"), {channels});
  return n;
}

void GroupNorm::operator()(const float* x, float* y, std::size_t batch, std::size_t spatial, kernels::Context& ctx,
                           bool silu) const {
  kernels::GroupNormArgs a;
  a.x = x;
  a.y = y;
  a.batch = batch;
  a.channels = channels;
  a.spatial = spatial;
  a.groups = groups;
  a.eps = eps;
  a.gamma = gamma;
  a.beta = beta;
  a.silu = silu;
  kernels::group_norm(a, ctx);
}

LayerNorm LayerNorm::bind(WeightStore& w, std::string_view prefix, std::size_t dim, float eps, bool affine) {
  LayerNorm n;
  n.dim = dim;
  n.eps = eps;
  if (affine) {
    n.gamma = w.f32(join(prefix, "weight"), {dim});
    n.beta = w.f32(join(prefix, "bias"), {dim});
  }
  return n;
}

void LayerNorm::operator()(const float* x, float* y, std::size_t rows, kernels::Context& ctx) const {
  kernels::LayerNormArgs a;
  a.x = x;
  a.y = y;
  a.rows = rows;
  a.dim = dim;
  a.eps = eps;
  a.gamma = gamma;
  a.beta = beta;
  kernels::layer_norm(a, ctx);
}

TimestepEmbedding TimestepEmbedding::bind(WeightStore& w, std::string_view prefix, std::size_t in,
                                          std::size_t hidden, std::size_t out, kernels::Activation act) {
  TimestepEmbedding e;
  e.linear_1 = Linear::bind(w, join(prefix, "linear_1"), in, hidden);
  e.linear_2 = Linear::bind(w, join(prefix, "linear_2"), hidden, out);
  e.act = act;
  return e;
}

void TimestepEmbedding::operator()(const float* x, std::size_t batch, float* y, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  float* h = arena.alloc(batch * linear_1.out);
  linear_1(x, batch, h, ctx);
  kernels::activation(act, h, h, batch * linear_1.out, ctx);
  linear_2(h, batch, y, ctx);
  arena.release(m);
}

TransformerLayer TransformerLayer::bind(WeightStore& w, std::string_view prefix, std::size_t dim, std::size_t heads,
                                        std::size_t inner, float eps, kernels::Activation act) {
  TransformerLayer l;
  l.dim = dim, l.heads = heads, l.act = act;
  l.ln1 = LayerNorm::bind(w, join(prefix, "layer_norm1"), dim, eps);
  l.q = Linear::bind(w, join(prefix, "self_attn.q_proj"), dim, dim);
  l.k = Linear::bind(w, join(prefix, "self_attn.k_proj"), dim, dim);
  l.v = Linear::bind(w, join(prefix, "self_attn.v_proj"), dim, dim);
  l.out = Linear::bind(w, join(prefix, "self_attn.out_proj"), dim, dim);
  l.ln2 = LayerNorm::bind(w, join(prefix, "layer_norm2"), dim, eps);
  l.fc1 = Linear::bind(w, join(prefix, "mlp.fc1"), dim, inner);
  l.fc2 = Linear::bind(w, join(prefix, "mlp.fc2"), inner, dim);
  return l;
}

void TransformerLayer::operator()(float* x, std::size_t batch, std::size_t tokens, bool causal,
                                  kernels::Context& ctx) const {
  const std::size_t rows = batch * tokens, d = dim;
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  float* norm = arena.alloc(rows * d);
  float* qkv = arena.alloc(rows * 3 * d);  // q | k | v per token
  ln1(x, norm, rows, ctx);
  q(norm, rows, qkv, ctx, 0.0f, 3 * d);
  k(norm, rows, qkv + d, ctx, 0.0f, 3 * d);
  v(norm, rows, qkv + 2 * d, ctx, 0.0f, 3 * d);
  kernels::AttentionArgs a;
  a.q = qkv, a.k = qkv + d, a.v = qkv + 2 * d, a.o = norm;  // the LN output is no longer needed
  a.batch = batch, a.heads = heads, a.q_len = a.kv_len = tokens, a.head_dim = d / heads;
  a.q_batch_stride = a.k_batch_stride = a.v_batch_stride = tokens * 3 * d;
  a.q_head_stride = a.k_head_stride = a.v_head_stride = a.o_head_stride = d / heads;
  a.q_row_stride = a.k_row_stride = a.v_row_stride = 3 * d;
  a.o_batch_stride = tokens * d, a.o_row_stride = d;
  a.causal = causal;
  kernels::attention(a, ctx);
  out(norm, rows, x, ctx, 1.0f);  // x += out_proj(attn)
  arena.release(m);
  norm = arena.alloc(rows * d);
  float* hidden = arena.alloc(rows * fc1.out);
  ln2(x, norm, rows, ctx);
  fc1(norm, rows, hidden, ctx);
  kernels::activation(act, hidden, hidden, rows * fc1.out, ctx);
  fc2(hidden, rows, x, ctx, 1.0f);  // x += fc2(act(fc1(LN(x))))
  arena.release(m);
}

}  // namespace nn
DIFFUSE_END_NAMESPACE
