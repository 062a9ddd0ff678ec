// SPDX-License-Identifier: MIT
// The blocks the U-Nets and the VAE share (see nn/blocks.hpp).
#include "diffuse/nn/blocks.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

namespace {

void check_groups(const WeightStore& w, const std::string& name, std::size_t channels, std::size_t groups,
                  std::string_view where) {
  if (groups == 0 || channels % groups != 0)
    raise<format_error>(w.model(), w.dir().path().string() + ": " + name + " has " + std::to_string(channels) +
                                       " channels, not divisible into " + std::to_string(groups) + " groups (config.json " +
                                       std::string(where) + ")");
}

double d(std::size_t v) { return static_cast<double>(v); }

}  // namespace

void conv_into(const Conv2d& c, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
               kernels::Context& ctx, const float* residual) {
  const std::size_t out_plane = c.out_height(h) * c.out_width(w);
  if (y.batch_stride == c.out * out_plane) {
    c(x, batch, h, w, y.p, ctx, residual);
    return;
  }
  for (std::size_t b = 0; b < batch; ++b)
    c(x + b * c.in * h * w, 1, h, w, y.p + b * y.batch_stride, ctx,
      residual ? residual + b * c.out * out_plane : nullptr);
}

// ---------------------------------------------------------------------------------------------
// ResnetBlock2D

ResnetBlock2D ResnetBlock2D::bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out,
                                  const Options& o, std::string_view where_groups) {
  check_groups(w, join(prefix, "norm1"), in, o.groups, where_groups);
  check_groups(w, join(prefix, "norm2"), out, o.groups, where_groups);
  ResnetBlock2D r;
  r.in = in;
  r.out = out;
  r.output_scale_factor = o.output_scale_factor;
  r.act = o.act;
  r.norm1 = GroupNorm::bind(w, join(prefix, "norm1"), o.groups, in, o.eps);
  r.conv1 = Conv2d::bind(w, join(prefix, "conv1"), in, out, 3, 1, 1);
  if (o.temb_channels) {
    r.time_norm = o.scale_shift ? TimeNorm::scale_shift : TimeNorm::add;
    r.time_emb_proj = Linear::bind(w, join(prefix, "time_emb_proj"), o.temb_channels, o.scale_shift ? 2 * out : out);
  }
  r.norm2 = GroupNorm::bind(w, join(prefix, "norm2"), o.groups, out, o.eps);
  r.conv2 = Conv2d::bind(w, join(prefix, "conv2"), out, out, 3, 1, 1);
  if (in != out) {
    r.has_shortcut = true;
    r.shortcut = Conv2d::bind(w, join(prefix, "conv_shortcut"), in, out, 1, 1, 0);
  }
  return r;
}

double ResnetBlock2D::arena_floats(std::size_t batch, std::size_t hw) const {
  const double tp = time_norm == TimeNorm::none ? 0.0 : d(time_emb_proj.out);
  return d(batch) * d(hw) * (d(std::max(in, has_shortcut ? out : 0)) + d(out)) + d(batch) * tp;
}

void ResnetBlock2D::operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                               const float* temb, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t hw = h * w;
  const std::size_t m = arena.mark();
  const bool fused = act == kernels::Activation::silu;  // GroupNorm + SiLU in one pass
  float* a = arena.alloc(batch * std::max(in, has_shortcut ? out : 0) * hw);
  norm1(x, a, batch, hw, ctx, fused);
  if (!fused) kernels::activation(act, a, a, batch * in * hw, ctx);
  float* hbuf = arena.alloc(batch * out * hw);
  conv1(a, batch, h, w, hbuf, ctx);
  if (time_norm == TimeNorm::scale_shift) {
    // norm2(h) * (1 + scale) + shift, scale/shift = chunk(time_emb_proj(temb), 2, dim=1).
    const std::size_t tp = time_emb_proj.out;
    float* t = arena.alloc(batch * tp);
    time_emb_proj(temb, batch, t, ctx);
    norm2(hbuf, hbuf, batch, hw, ctx, false);
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t c = 0; c < out; ++c) {
        const float scale = 1.0f + t[b * tp + c], shift = t[b * tp + out + c];
        float* p = hbuf + (b * out + c) * hw;
        for (std::size_t s = 0; s < hw; ++s) p[s] = p[s] * scale + shift;
      }
    if (act != kernels::Activation::identity) kernels::activation(act, hbuf, hbuf, batch * out * hw, ctx);
  } else {
    if (time_norm == TimeNorm::add) {
      float* t = arena.alloc(batch * out);
      time_emb_proj(temb, batch, t, ctx);
      kernels::add_channel_bias(hbuf, batch, out, hw, t, out, ctx);
    }
    norm2(hbuf, hbuf, batch, hw, ctx, fused);
    if (!fused) kernels::activation(act, hbuf, hbuf, batch * out * hw, ctx);
  }
  const float* residual = x;
  if (has_shortcut) {
    shortcut(x, batch, h, w, a, ctx);  // a (norm1's output) is free again
    residual = a;
  }
  conv_into(conv2, hbuf, batch, h, w, y, ctx, residual);
  if (output_scale_factor != 1.0f) {
    const float s = output_scale_factor;
    for (std::size_t b = 0; b < batch; ++b) {
      float* p = y.p + b * y.batch_stride;
      for (std::size_t i = 0; i < out * hw; ++i) p[i] /= s;
    }
  }
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// SpatialAttention

SpatialAttention SpatialAttention::bind(WeightStore& w, std::string_view prefix, std::size_t channels,
                                        const Options& o) {
  SpatialAttention a;
  a.channels = channels;
  a.head_dim = o.head_dim;
  a.heads = o.head_dim ? channels / o.head_dim : 0;  // heads = C // attention_head_dim, dim_head = attention_head_dim
  if (a.heads == 0)
    raise<format_error>(w.model(), w.dir().path().string() + ": " + std::string(prefix) + ": attention_head_dim " +
                                       std::to_string(o.head_dim) + " exceeds the " + std::to_string(channels) +
                                       " channels (zero heads)");
  a.inner = a.heads * a.head_dim;
  a.rescale_output_factor = o.rescale_output_factor;
  if (o.groups) {
    check_groups(w, join(prefix, "group_norm"), channels, *o.groups, "norm_num_groups / attn_norm_num_groups");
    a.has_norm = true;
    a.norm = GroupNorm::bind(w, join(prefix, "group_norm"), *o.groups, channels, o.eps);
  }
  // Both namings: diffusers >= 0.14 and the legacy deprecated attention block.
  static constexpr const char* kNames[3][2] = {{"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}};
  MatrixRef m[3];
  const float* b[3];
  for (int i = 0; i < 3; ++i) {
    const std::string nw = w.pick({join(prefix, std::string(kNames[i][0]) + ".weight"),
                                   join(prefix, std::string(kNames[i][1]) + ".weight")});
    const std::string nb = w.pick({join(prefix, std::string(kNames[i][0]) + ".bias"),
                                   join(prefix, std::string(kNames[i][1]) + ".bias")});
    const bool conv = w.contains(nw) && w.shape_of(nw).size() == 4;  // LDM: 1x1 conv weights
    m[i] = conv ? w.matrix(nw, {a.inner, channels, 1, 1}) : w.matrix(nw, {a.inner, channels});
    b[i] = w.f32(nb, {a.inner});
  }
  const std::size_t n = a.inner * channels;
  const bool same = m[0].dtype == m[1].dtype && m[1].dtype == m[2].dtype;
  const DType dt = same ? m[0].dtype : DType::F32;
  const std::size_t bytes = dtype_bits(dt) / 8 * n;
  const std::size_t weight_floats = (3 * bytes + sizeof(float) - 1) / sizeof(float);
  w.reserve(std::uint64_t{weight_floats + 3 * a.inner} * sizeof(float),
            "the fused q/k/v weights of '" + std::string(prefix) + "'");
  std::shared_ptr<float[]> buf(new float[weight_floats + 3 * a.inner]);
  auto* dst = reinterpret_cast<std::byte*>(buf.get());
  for (int i = 0; i < 3; ++i) {
    if (same)
      std::memcpy(dst + i * bytes, m[i].data, bytes);
    else
      to_f32(m[i].dtype, m[i].data, reinterpret_cast<float*>(dst + i * bytes), n);
  }
  float* bias = buf.get() + weight_floats;
  for (int i = 0; i < 3; ++i) std::memcpy(bias + i * a.inner, b[i], a.inner * sizeof(float));
  a.qkv.weight = MatrixRef{buf.get(), dt, 3 * a.inner, channels};
  a.qkv.bias = bias;
  a.qkv.in = channels;
  a.qkv.out = 3 * a.inner;
  a.fused = std::move(buf);
  const std::string out = w.contains(join(prefix, "to_out.0.weight")) || !w.contains(join(prefix, "proj_attn.weight"))
                              ? join(prefix, "to_out.0")
                              : join(prefix, "proj_attn");
  const std::string ow = join(out, "weight");
  if (w.contains(ow) && w.shape_of(ow).size() == 4) {
    a.to_out.in = a.inner;
    a.to_out.out = channels;
    a.to_out.weight = w.matrix(ow, {channels, a.inner, 1, 1});
    a.to_out.bias = w.f32(join(out, "bias"), {channels});
  } else {
    a.to_out = Linear::bind(w, out, a.inner, channels);
  }
  return a;
}

double SpatialAttention::arena_floats(std::size_t batch, std::size_t hw) const {
  return d(batch) * d(hw) * (d(channels) + 4.0 * d(inner));
}

void SpatialAttention::operator()(Dest x, std::size_t batch, std::size_t hw, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t C = channels;
  // tokens [B, HW, C] = GroupNorm(x) transposed.
  float* tok = arena.alloc(batch * hw * C);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* xb = x.p + b * x.batch_stride;
    float* tb = tok + b * hw * C;
    if (has_norm) {
      kernels::GroupNormArgs g;
      g.x = xb;
      g.y = tb;
      g.batch = 1;
      g.channels = C;
      g.spatial = hw;
      g.groups = norm.groups;
      g.eps = norm.eps;
      g.gamma = norm.gamma;
      g.beta = norm.beta;
      g.transpose_out = true;
      kernels::group_norm(g, ctx);
    } else {
      for (std::size_t c = 0; c < C; ++c)
        for (std::size_t s = 0; s < hw; ++s) tb[s * C + c] = xb[c * hw + s];
    }
  }
  // q | k | v in one GEMM: [B*HW, 3*inner].
  float* q = arena.alloc(batch * hw * 3 * inner);
  qkv(tok, batch * hw, q, ctx);
  float* o = arena.alloc(batch * hw * inner);
  {
    kernels::AttentionArgs at;
    at.q = q;
    at.k = q + inner;
    at.v = q + 2 * inner;
    at.o = o;
    at.batch = batch;
    at.heads = heads;
    at.q_len = at.kv_len = hw;
    at.head_dim = head_dim;
    at.q_batch_stride = at.k_batch_stride = at.v_batch_stride = hw * 3 * inner;
    at.q_head_stride = at.k_head_stride = at.v_head_stride = head_dim;
    at.q_row_stride = at.k_row_stride = at.v_row_stride = 3 * inner;
    at.o_batch_stride = hw * inner;
    at.o_head_stride = head_dim;
    at.o_row_stride = inner;
    kernels::attention(at, ctx);
  }
  float* proj = tok;  // the tokens are consumed
  to_out(o, batch * hw, proj, ctx);
  // x[b, c, s] = (proj[b, s, c] + x[b, c, s]) / rescale_output_factor, in tiles of 16 channels.
  constexpr std::size_t kTile = 16;
  const std::size_t tiles = (C + kTile - 1) / kTile;
  const float r = rescale_output_factor;
  ctx.pool().parallel_for(batch * tiles, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t b = item / tiles, c0 = (item % tiles) * kTile, c1 = std::min(C, c0 + kTile);
      float* xb = x.p + b * x.batch_stride;
      const float* pb = proj + b * hw * C;
      for (std::size_t s0 = 0; s0 < hw; s0 += 64) {
        const std::size_t s1 = std::min(hw, s0 + 64);
        for (std::size_t c = c0; c < c1; ++c) {
          float* xc = xb + c * hw;
          if (r == 1.0f)
            for (std::size_t s = s0; s < s1; ++s) xc[s] = pb[s * C + c] + xc[s];
          else
            for (std::size_t s = s0; s < s1; ++s) xc[s] = (pb[s * C + c] + xc[s]) / r;
        }
      }
    }
  });
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// Downsample2D / Upsample2D

Downsample2D Downsample2D::bind(WeightStore& w, std::string_view prefix, std::size_t channels, std::size_t padding) {
  Downsample2D s;
  s.conv = Conv2d::bind(w, join(prefix, "conv"), channels, channels, 3, 2, padding);
  if (padding == 0) s.conv.pad = {0, 0, 1, 1};  // F.pad(x, (0, 1, 0, 1)) first
  return s;
}

void Downsample2D::operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                              kernels::Context& ctx) const {
  conv_into(conv, x, batch, h, w, y, ctx);
}

Upsample2D Upsample2D::bind(WeightStore& w, std::string_view prefix, std::size_t channels) {
  return from_conv(w, Conv2d::bind(w, join(prefix, "conv"), channels, channels, 3, 1, 1), prefix);
}

Upsample2D Upsample2D::from_conv(WeightStore& w, const Conv2d& conv, std::string_view what) {
  DIFFUSE_ASSERT(conv.kh == 3 && conv.kw == 3 && conv.stride == 1 && conv.in == conv.out, "a 3x3 stride-1 conv with in == out");
  Upsample2D u;
  u.conv = conv;
  const Conv2d& c = u.conv;
  const std::size_t O = c.out, I = c.in;
  w.reserve(std::uint64_t{16} * O * I * sizeof(float), "the upsampling phases of '" + std::string(what) + "'");
  std::shared_ptr<float[]> buf(new float[16 * O * I]);
  // kTaps[phase][row of the 2x2 kernel]: the 3x3 taps that land on that input row (-1: none).
  static constexpr int kTaps[2][2][2] = {{{0, -1}, {1, 2}}, {{0, 1}, {2, -1}}};
  const std::vector<float> w3 = c.weight_f32();
  for (std::size_t py = 0; py < 2; ++py)
    for (std::size_t px = 0; px < 2; ++px) {
      float* wp = buf.get() + (py * 2 + px) * 4 * O * I;
      for (std::size_t oi = 0; oi < O * I; ++oi) {
        const float* k = w3.data() + oi * 9;
        for (int a = 0; a < 2; ++a)
          for (int bb = 0; bb < 2; ++bb) {
            float sum = 0.0f;
            for (int dy : kTaps[py][a])
              for (int dx : kTaps[px][bb])
                if (dy >= 0 && dx >= 0) sum += k[dy * 3 + dx];
            wp[oi * 4 + static_cast<std::size_t>(a * 2 + bb)] = sum;
          }
      }
      Conv2d& ph = u.phases[py * 2 + px];
      ph = c;
      ph.weight = MatrixRef{wp, DType::F32, O, I * 4};
      ph.kh = ph.kw = 2;
      ph.stride = 1;
      ph.pad = {py == 0 ? 1u : 0u, px == 0 ? 1u : 0u, py == 0 ? 0u : 1u, px == 0 ? 0u : 1u};
      ph.winograd.reset();  // 2x2 phases never run Winograd
    }
  u.conv.winograd.reset();  // the 3x3 conv itself only runs as its four phases
  u.phase_weights = std::move(buf);
  return u;
}

double Upsample2D::arena_floats(std::size_t batch, std::size_t hw) const { return 4.0 * d(batch) * d(conv.out) * d(hw); }

void Upsample2D::operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                            kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t C = conv.out, plane = h * w;
  float* ph = arena.alloc(4 * batch * C * plane);
  for (std::size_t p = 0; p < 4; ++p) phases[p](x, batch, h, w, ph + p * batch * C * plane, ctx);
  // Interleave: y[b, o, 2i + py, 2j + px] = phase[py * 2 + px][b, o, i, j].
  ctx.pool().parallel_for(batch * C, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t b = item / C, o = item % C;
      float* yo = y.p + b * y.batch_stride + o * 4 * plane;
      const float* src[4];
      for (std::size_t p = 0; p < 4; ++p) src[p] = ph + p * batch * C * plane + item * plane;
      for (std::size_t i = 0; i < h; ++i)
        for (std::size_t py = 0; py < 2; ++py) {
          float* row = yo + (2 * i + py) * 2 * w;
          const float* s0 = src[py * 2] + i * w;
          const float* s1 = src[py * 2 + 1] + i * w;
          for (std::size_t j = 0; j < w; ++j) {
            row[2 * j] = s0[j];
            row[2 * j + 1] = s1[j];
          }
        }
    }
  });
  arena.release(m);
}

// ---------------------------------------------------------------------------------------------
// AutoencoderTinyBlock

AutoencoderTinyBlock AutoencoderTinyBlock::bind(WeightStore& w, std::string_view prefix, std::size_t in,
                                                std::size_t out, kernels::Activation act) {
  AutoencoderTinyBlock b;
  b.in = in;
  b.out = out;
  b.act = act;
  b.conv0 = Conv2d::bind(w, join(prefix, "conv.0"), in, out, 3, 1, 1);
  b.conv2 = Conv2d::bind(w, join(prefix, "conv.2"), out, out, 3, 1, 1);
  b.conv4 = Conv2d::bind(w, join(prefix, "conv.4"), out, out, 3, 1, 1);
  if (in != out) {
    b.has_skip = true;
    b.skip = Conv2d::bind(w, join(prefix, "skip"), in, out, 1, 1, 0, false);
  }
  return b;
}

double AutoencoderTinyBlock::arena_floats(std::size_t batch, std::size_t hw) const {
  return d(batch) * d(out) * d(hw);
}

void AutoencoderTinyBlock::operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* y,
                                      kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t n = batch * out * h * w;
  // One temporary: t = act(conv.0(x)); y = act(conv.2(t)); t = conv.4(y) + skip(x); y = relu(t).
  float* t = arena.alloc(n);
  conv0(x, batch, h, w, t, ctx);
  kernels::activation(act, t, t, n, ctx);
  conv2(t, batch, h, w, y, ctx);
  kernels::activation(act, y, y, n, ctx);
  if (has_skip) {
    skip(x, batch, h, w, t, ctx);
    conv4(y, batch, h, w, t, ctx, t);  // the residual may be the output itself
  } else {
    conv4(y, batch, h, w, t, ctx, x);
  }
  kernels::activation(kernels::Activation::relu, t, y, n, ctx);
  arena.release(m);
}

}  // namespace nn
DIFFUSE_END_NAMESPACE
