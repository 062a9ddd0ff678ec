// SPDX-License-Identifier: MIT
// The transformer modules of the text-conditioned U-Nets (see nn/transformer.hpp).
#include "diffuse/nn/transformer.hpp"

#include <algorithm>
#include <string>

#include "diffuse/core/dtype.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/ops.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

namespace {

double d(std::size_t v) { return static_cast<double>(v); }

// A Linear over a 1x1 conv's [out, in, 1, 1] weight or a Linear's [out, in] one, with bias.
Linear bind_projection(WeightStore& w, const std::string& prefix, std::size_t in, std::size_t out) {
  const std::string wn = join(prefix, "weight");
  if (w.contains(wn) && w.shape_of(wn).size() == 4) {
    Linear l;
    l.in = in;
    l.out = out;
    l.weight = w.matrix(wn, {out, in, 1, 1});
    l.bias = w.f32(join(prefix, "bias"), {out});
    return l;
  }
  return Linear::bind(w, prefix, in, out);
}

// Rows [row0, row0 + rows) of a Linear's weight (and bias) as a Linear of its own.
Linear row_block(const MatrixRef& m, const float* bias, std::size_t row0, std::size_t rows) {
  Linear l;
  l.in = m.cols;
  l.out = rows;
  const std::size_t bytes = dtype_bits(m.dtype) / 8 * row0 * m.cols;
  l.weight = MatrixRef{static_cast<const std::byte*>(m.data) + bytes, m.dtype, rows, m.cols};
  l.bias = bias ? bias + row0 : nullptr;
  return l;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Attention

Attention Attention::bind(WeightStore& w, std::string_view prefix, std::size_t query_dim, const Options& o) {
  if (o.heads == 0 || o.head_dim == 0)
    raise<format_error>(w.model(), w.dir().path().string() + ": " + std::string(prefix) + ": " +
                                       std::to_string(o.heads) + " heads of " + std::to_string(o.head_dim) +
                                       " (both must be positive)");
  Attention a;
  a.query_dim = query_dim;
  a.context_dim = o.context_dim ? o.context_dim : query_dim;
  a.heads = o.heads;
  a.head_dim = o.head_dim;
  a.inner = o.heads * o.head_dim;
  a.to_q = Linear::bind(w, join(prefix, "to_q"), query_dim, a.inner, o.bias);
  a.to_k = Linear::bind(w, join(prefix, "to_k"), a.context_dim, a.inner, o.bias);
  a.to_v = Linear::bind(w, join(prefix, "to_v"), a.context_dim, a.inner, o.bias);
  a.to_out = Linear::bind(w, join(prefix, "to_out.0"), a.inner, query_dim, o.out_bias);
  return a;
}

double Attention::arena_floats(std::size_t batch, std::size_t tokens, std::size_t context_tokens) const {
  const double rows = d(batch) * d(tokens);
  return rows * 2.0 * d(inner) + 2.0 * d(batch) * d(context_tokens ? context_tokens : tokens) * d(inner);
}

void Attention::operator()(const float* x, std::size_t batch, std::size_t tokens, const float* context,
                           std::size_t context_tokens, float* y, kernels::Context& ctx, bool accumulate) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t rows = batch * tokens, n = inner;
  kernels::AttentionArgs at;
  at.batch = batch;
  at.heads = heads;
  at.head_dim = head_dim;
  at.q_len = tokens;
  at.q_head_stride = at.k_head_stride = at.v_head_stride = at.o_head_stride = head_dim;
  if (!context) {
    // q | k | v side by side per token: one buffer [rows, 3 * inner].
    float* qkv = arena.alloc(rows * 3 * n);
    to_q(x, rows, qkv, ctx, 0.0f, 3 * n);
    to_k(x, rows, qkv + n, ctx, 0.0f, 3 * n);
    to_v(x, rows, qkv + 2 * n, ctx, 0.0f, 3 * n);
    at.q = qkv, at.k = qkv + n, at.v = qkv + 2 * n;
    at.kv_len = tokens;
    at.q_batch_stride = at.k_batch_stride = at.v_batch_stride = tokens * 3 * n;
    at.q_row_stride = at.k_row_stride = at.v_row_stride = 3 * n;
  } else {
    const std::size_t crows = batch * context_tokens;
    float* q = arena.alloc(rows * n);
    float* kv = arena.alloc(crows * 2 * n);
    to_q(x, rows, q, ctx);
    to_k(context, crows, kv, ctx, 0.0f, 2 * n);
    to_v(context, crows, kv + n, ctx, 0.0f, 2 * n);
    at.q = q, at.k = kv, at.v = kv + n;
    at.kv_len = context_tokens;
    at.q_batch_stride = tokens * n;
    at.q_row_stride = n;
    at.k_batch_stride = at.v_batch_stride = context_tokens * 2 * n;
    at.k_row_stride = at.v_row_stride = 2 * n;
  }
  float* o = arena.alloc(rows * n);
  at.o = o;
  at.o_batch_stride = tokens * n;
  at.o_row_stride = n;
  kernels::attention(at, ctx);
  to_out(o, rows, y, ctx, accumulate ? 1.0f : 0.0f);
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// FeedForward (GEGLU)

FeedForward FeedForward::bind(WeightStore& w, std::string_view prefix, std::size_t dim, std::size_t inner,
                              std::size_t dim_out) {
  FeedForward f;
  f.dim = dim;
  f.inner = inner;
  f.dim_out = dim_out;
  const std::string proj = join(prefix, "net.0.proj");
  const MatrixRef m = w.matrix(join(proj, "weight"), {2 * inner, dim});
  const float* b = w.f32(join(proj, "bias"), {2 * inner});
  f.value = row_block(m, b, 0, inner);      // hidden_states, gate = proj(x).chunk(2, dim=-1)
  f.gate = row_block(m, b, inner, inner);
  f.out = Linear::bind(w, join(prefix, "net.2"), inner, dim_out);
  return f;
}

double FeedForward::arena_floats(std::size_t rows) const { return 2.0 * d(rows) * d(inner); }

void FeedForward::operator()(const float* x, std::size_t rows, float* y, kernels::Context& ctx,
                             bool accumulate) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t n = rows * inner;
  float* v = arena.alloc(n);
  float* g = arena.alloc(n);
  value(x, rows, v, ctx);
  gate(x, rows, g, ctx);
  kernels::activation(kernels::Activation::gelu_erf, g, g, n, ctx);
  constexpr std::size_t kBlock = 4096;
  ctx.pool().parallel_for((n + kBlock - 1) / kBlock, [&](std::size_t begin, std::size_t end, std::size_t) {
    const std::size_t i1 = std::min(n, end * kBlock);
    for (std::size_t i = begin * kBlock; i < i1; ++i) v[i] *= g[i];
  });
  out(v, rows, y, ctx, accumulate ? 1.0f : 0.0f);
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// BasicTransformerBlock

BasicTransformerBlock BasicTransformerBlock::bind(WeightStore& w, std::string_view prefix, std::size_t dim,
                                                  const Options& o) {
  BasicTransformerBlock b;
  b.dim = dim;
  Attention::Options ao;
  ao.heads = o.heads;
  ao.head_dim = o.head_dim;
  ao.bias = o.attention_bias;
  b.norm1 = LayerNorm::bind(w, join(prefix, "norm1"), dim, o.norm_eps);
  b.attn1 = Attention::bind(w, join(prefix, "attn1"), dim, ao);
  if (o.context_dim) {
    b.has_cross = true;
    ao.context_dim = o.context_dim;
    b.norm2 = LayerNorm::bind(w, join(prefix, "norm2"), dim, o.norm_eps);
    b.attn2 = Attention::bind(w, join(prefix, "attn2"), dim, ao);
  }
  b.norm3 = LayerNorm::bind(w, join(prefix, "norm3"), dim, o.norm_eps);
  b.ff = FeedForward::bind(w, join(prefix, "ff"), dim, 4 * dim, dim);
  return b;
}

double BasicTransformerBlock::arena_floats(std::size_t batch, std::size_t tokens, std::size_t context_tokens) const {
  const double rows = d(batch) * d(tokens);
  double t = attn1.arena_floats(batch, tokens, 0);
  if (has_cross) t = std::max(t, attn2.arena_floats(batch, tokens, context_tokens));
  return rows * d(dim) + std::max(t, ff.arena_floats(batch * tokens));
}

void BasicTransformerBlock::operator()(float* x, std::size_t batch, std::size_t tokens, const float* context,
                                       std::size_t context_tokens, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t rows = batch * tokens;
  float* n = arena.alloc(rows * dim);
  norm1(x, n, rows, ctx);
  attn1(n, batch, tokens, nullptr, 0, x, ctx, true);
  if (has_cross) {
    norm2(x, n, rows, ctx);
    attn2(n, batch, tokens, context, context_tokens, x, ctx, true);
  }
  norm3(x, n, rows, ctx);
  ff(n, rows, x, ctx, true);
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// Transformer2DModel

Transformer2DModel Transformer2DModel::bind(WeightStore& w, std::string_view prefix, std::size_t channels,
                                            const Options& o) {
  Transformer2DModel t;
  t.channels = channels;
  t.heads = o.heads;
  t.head_dim = o.head_dim ? o.head_dim : (o.heads ? channels / o.heads : 0);
  if (t.heads == 0 || t.head_dim == 0)
    raise<format_error>(w.model(), w.dir().path().string() + ": " + std::string(prefix) + ": " +
                                       std::to_string(o.heads) + " attention heads on " + std::to_string(channels) +
                                       " channels give an empty head (config.json attention_head_dim)");
  t.inner = t.heads * t.head_dim;
  t.context_dim = o.context_dim;
  if (o.groups == 0 || channels % o.groups != 0)
    raise<format_error>(w.model(), w.dir().path().string() + ": " + join(prefix, "norm") + " has " +
                                       std::to_string(channels) + " channels, not divisible into " +
                                       std::to_string(o.groups) + " groups (config.json norm_num_groups)");
  t.norm = GroupNorm::bind(w, join(prefix, "norm"), o.groups, channels, 1e-6f);
  t.proj_in = bind_projection(w, join(prefix, "proj_in"), channels, t.inner);
  BasicTransformerBlock::Options bo;
  bo.heads = t.heads;
  bo.head_dim = t.head_dim;
  bo.context_dim = o.context_dim;
  bo.norm_eps = o.norm_eps;
  for (std::size_t i = 0; i < o.layers; ++i)
    t.blocks.push_back(BasicTransformerBlock::bind(w, join(prefix, "transformer_blocks." + std::to_string(i)), t.inner, bo));
  t.proj_out = bind_projection(w, join(prefix, "proj_out"), t.inner, channels);
  return t;
}

double Transformer2DModel::arena_floats(std::size_t batch, std::size_t hw, std::size_t context_tokens) const {
  const double rows = d(batch) * d(hw);
  double b = rows * d(channels);  // the normalised tokens, then proj_out's output
  for (const BasicTransformerBlock& blk : blocks) b = std::max(b, blk.arena_floats(batch, hw, context_tokens));
  return rows * d(inner) + b;
}

void Transformer2DModel::operator()(Dest x, std::size_t batch, std::size_t h, std::size_t w, const float* context,
                                    std::size_t context_tokens, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t hw = h * w, rows = batch * hw, C = channels;
  float* tok = arena.alloc(rows * inner);
  {
    const std::size_t m1 = arena.mark();
    float* normed = arena.alloc(rows * C);  // GroupNorm(x) as tokens [B, HW, C]
    for (std::size_t b = 0; b < batch; ++b) {
      kernels::GroupNormArgs g;
      g.x = x.p + b * x.batch_stride;
      g.y = normed + b * hw * C;
      g.batch = 1;
      g.channels = C;
      g.spatial = hw;
      g.groups = norm.groups;
      g.eps = norm.eps;
      g.gamma = norm.gamma;
      g.beta = norm.beta;
      g.transpose_out = true;
      kernels::group_norm(g, ctx);
    }
    proj_in(normed, rows, tok, ctx);
    arena.release(m1);
  }
  for (const BasicTransformerBlock& blk : blocks) blk(tok, batch, hw, context, context_tokens, ctx);
  float* proj = arena.alloc(rows * C);
  proj_out(tok, rows, proj, ctx);
  // x[b, c, s] += proj[b, s, c], in tiles of 16 channels by 64 pixels.
  constexpr std::size_t kTile = 16;
  const std::size_t tiles = (C + kTile - 1) / kTile;
  ctx.pool().parallel_for(batch * tiles, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t b = item / tiles, c0 = (item % tiles) * kTile, c1 = std::min(C, c0 + kTile);
      float* xb = x.p + b * x.batch_stride;
      const float* pb = proj + b * hw * C;
      for (std::size_t s0 = 0; s0 < hw; s0 += 64) {
        const std::size_t s1 = std::min(hw, s0 + 64);
        for (std::size_t c = c0; c < c1; ++c) {
          float* xc = xb + c * hw;
          for (std::size_t s = s0; s < s1; ++s) xc[s] = pb[s * C + c] + xc[s];
        }
      }
    }
  });
  arena.release(m);
}

}  // namespace nn
DIFFUSE_END_NAMESPACE
