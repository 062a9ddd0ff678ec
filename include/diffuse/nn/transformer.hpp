// SPDX-License-Identifier: MIT
/** @file transformer.hpp
 *  The transformer modules of the text-conditioned U-Nets (diffusers models/attention.py,
 *  models/attention_processor.py, models/activations.py and models/transformers/transformer_2d.py
 *  are the map), one module each, bound by prefix from a WeightStore and run on the context's arena:
 *
 *  | module | diffusers | keys under the prefix |
 *  |---|---|---|
 *  | Attention | Attention + AttnProcessor2_0 (no mask, no norms) | `to_q`, `to_k`, `to_v` (bias when `bias`), `to_out.0` (bias when `out_bias`) |
 *  | FeedForward | FeedForward(activation_fn "geglu") | `net.0.proj` [2 * inner, dim] (value rows, then gate rows), `net.2` [dim_out, inner] |
 *  | BasicTransformerBlock | BasicTransformerBlock (norm_type "layer_norm") | `norm1`, `attn1`, `norm2`, `attn2` (cross-attention), `norm3`, `ff` |
 *  | Transformer2DModel | Transformer2DModel, continuous input (the U-Nets' spatial transformer) | `norm`, `proj_in`, `transformer_blocks.N`, `proj_out` |
 *
 *  Token sequences are [batch, tokens, dim] row-major, as in torch. Every forward uses the arena
 *  with mark/release (nothing is kept) and says how many floats it needs at most (`arena_floats`),
 *  which the networks add up for their memory estimate.
 *
 *  **Example**
 *  @code
 *  auto t = diffuse::nn::Transformer2DModel::bind(w, "down_blocks.0.attentions.0", 320,
 *                                                 {.heads = 8, .context_dim = 768, .groups = 32});
 *  t({h, 320 * 64 * 64}, batch, 64, 64, text, 77, ctx);  // h += transformer(h), in place
 *  @endcode */
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/blocks.hpp"
#include "diffuse/nn/layers.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

/** diffusers Attention with AttnProcessor2_0: q = to_q(x), k = to_k(c), v = to_v(c) with c = x
 *  (self-attention) or the context (cross-attention, of another width), `heads` heads of
 *  `head_dim`, softmax(q k^T / sqrt(head_dim)) v, then to_out.0. No mask (the text states are
 *  attended whole, pad tokens included, as diffusers' pipelines do). */
struct DIFFUSE_API Attention {
  Linear to_q, to_k, to_v, to_out;
  std::size_t query_dim = 0, context_dim = 0, heads = 1, head_dim = 0, inner = 0;

  struct Options {
    std::size_t heads = 1;
    std::size_t head_dim = 0;
    std::size_t context_dim = 0;  ///< 0: self-attention (context_dim = query_dim)
    bool bias = false;            ///< to_q/to_k/to_v bias (attention_bias; false in every SD U-Net)
    bool out_bias = true;         ///< to_out.0 bias
  };
  static Attention bind(WeightStore& w, std::string_view prefix, std::size_t query_dim, const Options& options);
  /** y (+)= to_out(attention(x, context)) with x [batch, tokens, query_dim], context [batch,
   *  context_tokens, context_dim] (null: x itself), y [batch, tokens, query_dim] (accumulated when
   *  `accumulate`: the residual add). y must not overlap x or context unless `accumulate` and y == x. */
  void operator()(const float* x, std::size_t batch, std::size_t tokens, const float* context,
                  std::size_t context_tokens, float* y, kernels::Context& ctx, bool accumulate = false) const;
  double arena_floats(std::size_t batch, std::size_t tokens, std::size_t context_tokens) const;
};

/** diffusers FeedForward with GEGLU: [value | gate] = net.0.proj(x) (the first `inner` outputs
 *  are the value, the next `inner` the gate: torch's chunk(2, dim=-1)), h = value * gelu(gate)
 *  (exact erf GELU), y = net.2(h). */
struct DIFFUSE_API FeedForward {
  Linear value, gate, out;  ///< the two row halves of net.0.proj, and net.2
  std::size_t dim = 0, inner = 0, dim_out = 0;

  /// inner = 4 * dim by default (FeedForward's mult 4).
  static FeedForward bind(WeightStore& w, std::string_view prefix, std::size_t dim, std::size_t inner,
                          std::size_t dim_out);
  /// y (+)= ff(x), x [rows, dim], y [rows, dim_out]; y must not overlap x unless accumulate and y == x.
  void operator()(const float* x, std::size_t rows, float* y, kernels::Context& ctx, bool accumulate = false) const;
  double arena_floats(std::size_t rows) const;
};

/** diffusers BasicTransformerBlock (norm_type "layer_norm", the SD / SDXL U-Nets):
 *
 *      x = x + attn1(norm1(x))                  (self-attention)
 *      x = x + attn2(norm2(x), context)         (cross-attention; absent without a context width)
 *      x = x + ff(norm3(x))                     (GEGLU)
 *
 *  LayerNorms with affine weights, eps `norm_eps` (1e-5). */
struct DIFFUSE_API BasicTransformerBlock {
  LayerNorm norm1, norm2, norm3;
  Attention attn1, attn2;
  bool has_cross = false;
  FeedForward ff;
  std::size_t dim = 0;

  struct Options {
    std::size_t heads = 1;
    std::size_t head_dim = 0;
    std::size_t context_dim = 0;  ///< cross_attention_dim; 0: no attn2
    float norm_eps = 1e-5f;
    bool attention_bias = false;
  };
  static BasicTransformerBlock bind(WeightStore& w, std::string_view prefix, std::size_t dim, const Options& options);
  /// x [batch, tokens, dim] updated in place; context [batch, context_tokens, context_dim].
  void operator()(float* x, std::size_t batch, std::size_t tokens, const float* context, std::size_t context_tokens,
                  kernels::Context& ctx) const;
  double arena_floats(std::size_t batch, std::size_t tokens, std::size_t context_tokens) const;
};

/** diffusers Transformer2DModel on a continuous (image) input, the spatial transformer of the
 *  SD U-Nets:
 *
 *      r = x;  h = GroupNorm(groups, C, eps 1e-6)(x)
 *      tokens = proj_in(h) as [batch, h * w, inner]   (1x1 conv, or Linear with use_linear_projection:
 *                                                      the same product, so both run as one GEMM)
 *      tokens = transformer_blocks.N(tokens, context) for each N
 *      x = proj_out(tokens) as [batch, C, h, w] + r
 *
 *  inner = heads * head_dim. The conv variant stores [inner, C, 1, 1] weights, the linear one
 *  [inner, C]; both are accepted whichever `linear_projection` says (the flag only sets the error
 *  message's expectation). */
struct DIFFUSE_API Transformer2DModel {
  GroupNorm norm;
  Linear proj_in, proj_out;
  std::vector<BasicTransformerBlock> blocks;
  std::size_t channels = 0, inner = 0, heads = 1, head_dim = 0, context_dim = 0;

  struct Options {
    std::size_t heads = 1;        ///< num_attention_heads
    std::size_t head_dim = 0;     ///< attention_head_dim; 0: channels / heads
    std::size_t context_dim = 0;  ///< cross_attention_dim (0: no cross-attention)
    std::size_t groups = 32;      ///< norm_num_groups
    std::size_t layers = 1;       ///< num_layers (transformer_layers_per_block)
    bool linear_projection = false;
    float norm_eps = 1e-5f;  ///< the blocks' LayerNorms (the GroupNorm's eps is 1e-6)
  };
  static Transformer2DModel bind(WeightStore& w, std::string_view prefix, std::size_t channels,
                                 const Options& options);
  /// x [batch, channels, h * w] (items `x.batch_stride` apart) updated in place.
  void operator()(Dest x, std::size_t batch, std::size_t h, std::size_t w, const float* context,
                  std::size_t context_tokens, kernels::Context& ctx) const;
  double arena_floats(std::size_t batch, std::size_t hw, std::size_t context_tokens) const;
};

}  // namespace nn
DIFFUSE_END_NAMESPACE
