// SPDX-License-Identifier: MIT
// The network kernels' entry points (ops.hpp, except conv2d): the variant table expanded from
// ops.inc, the choice of the active row, the argument checks, and the split of each call over
// the thread pool. The split only decides which thread runs an item: every item (a plane, a
// group, a row, a query block, a block of elements) is computed by its body alone, so results
// are bit-identical for any thread count. Also the embeddings, which are not hot (once per step
// or once per model) and have one implementation. Compiled without ISA flags.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>

#include "diffuse/core/cpu.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/ops.hpp"
#include "ops_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

using std::size_t;
using std::to_string;

#define DIFFUSE_OP_VARIANT(isa, q_block)                                                                   \
  OpVariant{#isa,                  IsaLevel::isa,           &isa::upsample_nearest_body, &isa::group_norm_body, \
            &isa::layer_norm_body, &isa::activation_body,   &isa::add_channel_bias_body, &isa::gated_add_body, \
            &isa::softmax_body,    &isa::attention_body,    &isa::attention_workspace_body, q_block},
const OpVariant kOpTable[] = {
#include "ops.inc"
};
#undef DIFFUSE_OP_VARIANT

bool supported(const OpVariant& v) {
  const CpuFeatures& f = cpu_features();
  switch (v.isa) {
    case IsaLevel::avx512:
      return DIFFUSE_KERNELS_X86 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx2 && f.fma && f.f16c;
    case IsaLevel::avx2: return DIFFUSE_KERNELS_X86 && f.avx2 && f.fma && f.f16c;
    default: return true;
  }
}

size_t count_supported() {
  size_t n = 0;
  while (n < std::size(kOpTable) && supported(kOpTable[n])) ++n;  // rows are ordered by ISA
  return n;
}

const OpVariant& pick() {
  const IsaLevel level = isa_level();
  const OpVariant* best = &kOpTable[0];
  for (const OpVariant& v : kOpTable) {
    if (static_cast<int>(v.isa) > static_cast<int>(level) || !supported(v)) continue;
    if (static_cast<int>(v.isa) > static_cast<int>(best->isa)) best = &v;
  }
  return *best;
}

const OpVariant* g_override = nullptr;  // ScopedOpVariant

const OpVariant& row() { return g_override ? *g_override : active_op_variant(); }

void need(const void* p, const char* where, const char* what) {
  if (p == nullptr) raise<value_error>(where, std::string(what) + " is null");
}

void positive(size_t n, const char* where, const char* what) {
  if (n == 0) raise<shape_error>(where, std::string(what) + " is 0");
}

/// parallel_for over `items`, or inline when there is one item or one thread.
template <class F>
void split(Context& ctx, size_t items, F&& f) {
  if (items == 0) return;
  if (items == 1 || ctx.threads() == 1) {
    f(0, items, 0);
    return;
  }
  ctx.pool().parallel_for(items, f);
}

}  // namespace

std::span<const OpVariant> op_variants() {
  static const size_t n = count_supported();
  return {kOpTable, n};
}

const OpVariant& active_op_variant() {
  static const OpVariant& v = pick();
  return v;
}

ScopedOpVariant::ScopedOpVariant(const OpVariant& v) : previous_(g_override) {
  if (!supported(v)) raise<value_error>("kernels::ScopedOpVariant", std::string(v.name) + " needs instructions this CPU does not have");
  g_override = &v;
}

ScopedOpVariant::~ScopedOpVariant() { g_override = previous_; }

// ---------------------------------------------------------------------------------------------

void upsample_nearest(const float* x, size_t planes, size_t height, size_t width, float* y, size_t out_height,
                      size_t out_width, Context& ctx) {
  constexpr const char* kWhere = "kernels::upsample_nearest";
  positive(height, kWhere, "height");
  positive(width, kWhere, "width");
  positive(out_height, kWhere, "out_height");
  positive(out_width, kWhere, "out_width");
  if (planes == 0) return;
  need(x, kWhere, "x");
  need(y, kWhere, "y");
  const OpVariant& v = row();
  split(ctx, planes, [&](size_t b, size_t e, size_t) { v.upsample_nearest(x, height, width, y, out_height, out_width, b, e); });
}

void group_norm(const GroupNormArgs& a, Context& ctx) {
  constexpr const char* kWhere = "kernels::group_norm";
  positive(a.groups, kWhere, "groups");
  positive(a.channels, kWhere, "channels");
  positive(a.spatial, kWhere, "spatial");
  if (a.channels % a.groups != 0)
    raise<shape_error>(kWhere, "groups " + to_string(a.groups) + " do not divide channels " + to_string(a.channels));
  if (!(a.eps >= 0.0f)) raise<value_error>(kWhere, "eps " + std::to_string(a.eps) + " is negative or NaN");
  if (a.batch == 0) return;
  need(a.x, kWhere, "x");
  need(a.y, kWhere, "y");
  if (a.transpose_out && a.x == a.y && a.spatial > 1 && a.channels > 1)
    raise<value_error>(kWhere, "transpose_out cannot run in place (y == x)");
  const OpVariant& v = row();
  split(ctx, a.batch * a.groups, [&](size_t b, size_t e, size_t) { v.group_norm(a, b, e); });
}

void layer_norm(const LayerNormArgs& a, Context& ctx) {
  constexpr const char* kWhere = "kernels::layer_norm";
  positive(a.dim, kWhere, "dim");
  positive(a.rows_per_batch, kWhere, "rows_per_batch");
  if (!(a.eps >= 0.0f)) raise<value_error>(kWhere, "eps " + std::to_string(a.eps) + " is negative or NaN");
  if (a.mod_stride != 0 && a.mod_stride < a.dim && (a.shift || a.scale))
    raise<shape_error>(kWhere, "mod_stride " + to_string(a.mod_stride) + " < dim " + to_string(a.dim));
  if (a.rows == 0) return;
  need(a.x, kWhere, "x");
  need(a.y, kWhere, "y");
  const OpVariant& v = row();
  split(ctx, a.rows, [&](size_t b, size_t e, size_t) { v.layer_norm(a, b, e); });
}

Activation parse_activation(const char* name) {
  constexpr const char* kWhere = "kernels::parse_activation";
  if (name == nullptr) raise<value_error>(kWhere, "name is null");
  struct Entry {
    const char* name;
    Activation act;
  };
  static constexpr Entry kNames[] = {
      {"silu", Activation::silu},         {"swish", Activation::silu},
      {"gelu", Activation::gelu_erf},     {"gelu-approximate", Activation::gelu_tanh},
      {"gelu_tanh", Activation::gelu_tanh}, {"gelu_pytorch_tanh", Activation::gelu_tanh},
      {"quick_gelu", Activation::quick_gelu}, {"identity", Activation::identity},
      {"linear", Activation::identity},   {"relu", Activation::relu},
  };
  for (const Entry& e : kNames)
    if (std::strcmp(e.name, name) == 0) return e.act;
  raise<value_error>(kWhere, std::string("unknown activation '") + name +
                                 "' (silu, swish, gelu, gelu-approximate, gelu_tanh, gelu_pytorch_tanh, quick_gelu, "
                                 "relu, identity, linear)");
}

void activation(Activation act, const float* x, float* y, size_t n, Context& ctx, const float* bias, size_t inner,
                size_t bias_len) {
  constexpr const char* kWhere = "kernels::activation";
  switch (act) {
    case Activation::identity: case Activation::silu: case Activation::gelu_erf: case Activation::gelu_tanh:
    case Activation::quick_gelu: case Activation::relu: break;
    default: raise<value_error>(kWhere, "unknown Activation " + to_string(static_cast<int>(act)));
  }
  if (bias) {
    positive(inner, kWhere, "inner");
    positive(bias_len, kWhere, "bias_len");
  }
  if (n == 0) return;
  need(x, kWhere, "x");
  need(y, kWhere, "y");
  const OpVariant& v = row();
  const size_t blocks = (n + kElementBlock - 1) / kElementBlock;
  split(ctx, blocks, [&](size_t b, size_t e, size_t) {
    v.activation(act, x, y, b * kElementBlock, e * kElementBlock < n ? e * kElementBlock : n, bias, inner, bias_len);
  });
}

void add_channel_bias(float* x, size_t batch, size_t channels, size_t spatial, const float* vec, size_t v_stride,
                      Context& ctx) {
  constexpr const char* kWhere = "kernels::add_channel_bias";
  if (batch == 0 || channels == 0 || spatial == 0) return;
  need(x, kWhere, "x");
  need(vec, kWhere, "v");
  if (batch > 1 && v_stride < channels)
    raise<shape_error>(kWhere, "v_stride " + to_string(v_stride) + " < channels " + to_string(channels));
  const OpVariant& v = row();
  split(ctx, batch * channels, [&](size_t b, size_t e, size_t) { v.add_channel_bias(x, channels, spatial, vec, v_stride, b, e); });
}

void gated_add(float* x, const float* y, size_t batch, size_t tokens, size_t dim, const float* gate, size_t gate_stride,
               Context& ctx) {
  constexpr const char* kWhere = "kernels::gated_add";
  if (batch == 0 || tokens == 0 || dim == 0) return;
  need(x, kWhere, "x");
  need(y, kWhere, "y");
  need(gate, kWhere, "gate");
  if (batch > 1 && gate_stride < dim)
    raise<shape_error>(kWhere, "gate_stride " + to_string(gate_stride) + " < dim " + to_string(dim));
  const OpVariant& v = row();
  split(ctx, batch * tokens, [&](size_t b, size_t e, size_t) { v.gated_add(x, y, tokens, dim, gate, gate_stride, b, e); });
}

void softmax(float* x, size_t rows, size_t cols, Context& ctx) {
  constexpr const char* kWhere = "kernels::softmax";
  positive(cols, kWhere, "cols");
  if (rows == 0) return;
  need(x, kWhere, "x");
  const OpVariant& v = row();
  split(ctx, rows, [&](size_t b, size_t e, size_t) { v.softmax(x, cols, b, e); });
}

void attention(const AttentionArgs& args, Context& ctx) {
  constexpr const char* kWhere = "kernels::attention";
  positive(args.head_dim, kWhere, "head_dim");
  positive(args.heads, kWhere, "heads");
  if (args.batch == 0 || args.q_len == 0) return;
  if (args.kv_len == 0) raise<shape_error>(kWhere, "kv_len is 0 with q_len " + to_string(args.q_len));
  need(args.q, kWhere, "q");
  need(args.k, kWhere, "k");
  need(args.v, kWhere, "v");
  need(args.o, kWhere, "o");
  if (!std::isfinite(args.scale)) raise<value_error>(kWhere, "scale is not finite");
  AttentionArgs a = args;
  if (a.scale == 0.0f) a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.head_dim)));
  const OpVariant& v = row();
  const size_t q_blocks = (a.q_len + v.attention_q_block - 1) / v.attention_q_block;
  const size_t per_thread = (v.attention_workspace(a.head_dim) + 15) / 16 * 16;
  float* ws = ctx.workspace(per_thread * ctx.threads()).data();
  split(ctx, a.batch * a.heads * q_blocks, [&](size_t b, size_t e, size_t t) { v.attention(a, b, e, ws + t * per_thread); });
}

AttentionArgs attention_bnd(const float* q, const float* k, const float* v, float* o, size_t batch, size_t heads,
                            size_t q_len, size_t kv_len, size_t head_dim) {
  AttentionArgs a;
  a.q = q, a.k = k, a.v = v, a.o = o;
  a.batch = batch, a.heads = heads, a.q_len = q_len, a.kv_len = kv_len, a.head_dim = head_dim;
  const size_t row = heads * head_dim;
  a.q_batch_stride = a.o_batch_stride = q_len * row;
  a.k_batch_stride = a.v_batch_stride = kv_len * row;
  a.q_head_stride = a.k_head_stride = a.v_head_stride = a.o_head_stride = head_dim;
  a.q_row_stride = a.k_row_stride = a.v_row_stride = a.o_row_stride = row;
  return a;
}

// ---------------------------------------------------------------------------------------------
// Embeddings: one implementation, following diffusers operation by operation.

void timestep_embedding(const float* t, size_t batch, size_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                        float* out, float scale, float max_period) {
  constexpr const char* kWhere = "kernels::timestep_embedding";
  if (dim < 2) raise<shape_error>(kWhere, "dim " + to_string(dim) + " < 2");
  const size_t half = dim / 2;
  if (static_cast<float>(half) - downscale_freq_shift == 0.0f)
    raise<value_error>(kWhere, "half dim " + to_string(half) + " - downscale_freq_shift is 0");
  if (!(max_period > 0.0f)) raise<value_error>(kWhere, "max_period must be positive");
  if (batch == 0) return;
  need(t, kWhere, "t");
  need(out, kWhere, "out");
  // exponent = -ln(max_period) * arange(half) / (half - shift), each op in f32 as torch does it
  // (python scalars become f32 operands).
  const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
  const float denom = static_cast<float>(static_cast<double>(half) - static_cast<double>(downscale_freq_shift));
  for (size_t b = 0; b < batch; ++b) {
    float* row = out + b * dim;
    for (size_t k = 0; k < half; ++k) {
      const float freq = std::exp(neg_log * static_cast<float>(k) / denom);
      float arg = t[b] * freq;
      if (scale != 1.0f) arg = scale * arg;
      const float s = std::sin(arg), c = std::cos(arg);
      row[k] = flip_sin_to_cos ? c : s;
      row[half + k] = flip_sin_to_cos ? s : c;
    }
    if (dim % 2 == 1) row[dim - 1] = 0.0f;
  }
}

void sincos_pos_embed_2d(size_t dim, size_t grid_h, size_t grid_w, float* out, double base_size,
                         double interpolation_scale) {
  constexpr const char* kWhere = "kernels::sincos_pos_embed_2d";
  if (dim == 0 || dim % 4 != 0) raise<shape_error>(kWhere, "dim " + to_string(dim) + " is not a positive multiple of 4");
  positive(grid_h, kWhere, "grid_h");
  positive(grid_w, kWhere, "grid_w");
  if (!(base_size > 0.0) || !(interpolation_scale > 0.0))
    raise<value_error>(kWhere, "base_size and interpolation_scale must be positive");
  need(out, kWhere, "out");
  // Coordinates as diffusers makes them: arange in f32 divided by two python floats (f32 ops),
  // then the 1-D tables in double: omega_k = 1 / 10000^(k / (D/2)), D = dim / 2 per axis.
  const float div_h = static_cast<float>(static_cast<double>(grid_h) / base_size);
  const float div_w = static_cast<float>(static_cast<double>(grid_w) / base_size);
  const float interp = static_cast<float>(interpolation_scale);
  const size_t half = dim / 2, quarter = dim / 4;
  for (size_t i = 0; i < grid_h; ++i) {
    const double pos_row = static_cast<double>(static_cast<float>(i) / div_h / interp);
    for (size_t j = 0; j < grid_w; ++j) {
      const double pos_col = static_cast<double>(static_cast<float>(j) / div_w / interp);
      float* row = out + (i * grid_w + j) * dim;
      for (size_t k = 0; k < quarter; ++k) {
        const double omega = 1.0 / std::pow(10000.0, static_cast<double>(k) / static_cast<double>(quarter));
        const double ac = pos_col * omega, ar = pos_row * omega;
        row[k] = static_cast<float>(std::sin(ac));
        row[quarter + k] = static_cast<float>(std::cos(ac));
        row[half + k] = static_cast<float>(std::sin(ar));
        row[half + quarter + k] = static_cast<float>(std::cos(ar));
      }
    }
  }
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
