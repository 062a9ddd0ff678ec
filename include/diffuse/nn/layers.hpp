// SPDX-License-Identifier: MIT
/** @file layers.hpp
 *  The torch.nn modules the reference networks share, bound by name from a WeightStore and run
 *  on the kernels (GEMM, conv2d, norms). Each is a small value type holding pointers into the
 *  store, so a loaded network is immutable and its forward is const.
 *
 *  | module | torch | keys |
 *  |---|---|---|
 *  | Linear | nn.Linear | `P.weight` [out, in], `P.bias` [out] |
 *  | Conv2d | nn.Conv2d (groups 1) | `P.weight` [out, in, kh, kw], `P.bias` [out] |
 *  | GroupNorm | nn.GroupNorm | `P.weight` [C], `P.bias` [C] |
 *  | LayerNorm | nn.LayerNorm (affine or not) | `P.weight` [D], `P.bias` [D] |
 *  | TimestepEmbedding | diffusers TimestepEmbedding | `P.linear_1`, `P.linear_2` |
 *  | TransformerLayer | transformers CLIPEncoderLayer (pre-LN) | `P.layer_norm1`, `P.self_attn.{q,k,v,out}_proj`, `P.layer_norm2`, `P.mlp.fc1`, `P.mlp.fc2` |
 *
 *  **Example**
 *  @code
 *  auto conv_in = diffuse::nn::Conv2d::bind(w, "conv_in", 3, 128, 3, 1, 1);
 *  conv_in(x, batch, 32, 32, y, ctx);
 *  @endcode */
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

/// "prefix.name" (or "name" when prefix is empty).
inline std::string join(std::string_view prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : std::string(prefix) + "." + std::string(name);
}

namespace detail {
struct LinearPacked;  // the weight packed for the active GEMM kernel (src/nn/layers.cpp)
}

/// nn.Linear: y = x W^T + b over rows.
struct DIFFUSE_API Linear {
  MatrixRef weight;  ///< [out, in]
  const float* bias = nullptr;
  std::size_t in = 0, out = 0;
  /// Set by bind when LoadOptions::prepack: on the first call with more than kernels::kGemmSmallM
  /// rows the weight is packed once for the active GEMM kernel (f32, 4 * in * out bytes, rounded
  /// up to whole panels) and every later such call skips the per-call packing (bit-identical
  /// results). Calls with few rows (the small-M kernel) never pack, so linears only used on one
  /// row per sample (adaLN, timestep MLP) cost nothing. Shared by copies; thread-safe. Null: off.
  std::shared_ptr<detail::LinearPacked> packed;
  /// Bytes of the packed copy (0 until the first large call, or when pre-packing is off).
  std::size_t packed_bytes() const;

  static Linear bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out, bool bias = true);
  /// y[rows, out] = x[rows, in] W^T + b, or accumulated into y with `beta` = 1. `ldy` is the row
  /// stride of y (0 = out), e.g. to write q, k and v side by side into one [rows, 3 * out] buffer.
  void operator()(const float* x, std::size_t rows, float* y, kernels::Context& ctx, float beta = 0.0f,
                  std::size_t ldy = 0) const;
};

/// nn.Conv2d with zero padding (pad[0..3] = top, left, bottom, right).
struct DIFFUSE_API Conv2d {
  /// [out, in, kh, kw] as [out, in * kh * kw], in the file's dtype: f32, f16 and bf16 are used in
  /// place from the mapping (an f16/bf16 weight is converted to f32 for each call, into the
  /// context's scratch: kernels::Conv2dArgs::weight_type), unless LoadOptions::matrix_dtype asks
  /// for a conversion at load.
  MatrixRef weight;
  const float* bias = nullptr;
  std::size_t in = 0, out = 0, kh = 1, kw = 1, stride = 1;
  std::array<std::size_t, 4> pad{};
  /// Winograd F(2x2, 3x3) weights (kernels::conv2d_winograd_transform_weights of `weight`),
  /// computed by bind when the conv is eligible (3x3, stride 1, padding <= 1), shared by copies;
  /// conv2d uses them on images large enough to pay. Null otherwise. Reset it when changing `weight`.
  std::shared_ptr<const float[]> winograd;

  /// Square kernel `k`, symmetric `padding`.
  static Conv2d bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t out, std::size_t k,
                     std::size_t stride, std::size_t padding, bool bias = true);
  /// The weight as f32 values [out * in * kh * kw] (a copy).
  std::vector<float> weight_f32() const;
  std::size_t out_height(std::size_t h) const { return (h + pad[0] + pad[2] - kh) / stride + 1; }
  std::size_t out_width(std::size_t w) const { return (w + pad[1] + pad[3] - kw) / stride + 1; }
  /// y = conv(x) + bias (+ residual), x [batch, in, h, w], y [batch, out, out_height, out_width].
  void operator()(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* y, kernels::Context& ctx,
                  const float* residual = nullptr) const;
};

/// nn.GroupNorm, optionally followed by SiLU.
struct DIFFUSE_API GroupNorm {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  std::size_t channels = 0, groups = 1;
  float eps = 1e-5f;

  static GroupNorm bind(WeightStore& w, std::string_view prefix, std::size_t groups, std::size_t channels, float eps);
  /// y = GroupNorm(x) (then SiLU when `silu`); x, y [batch, channels, spatial]; in place allowed.
  void operator()(const float* x, float* y, std::size_t batch, std::size_t spatial, kernels::Context& ctx,
                  bool silu = false) const;
};

/// nn.LayerNorm over the last dimension; `affine` false binds nothing.
struct DIFFUSE_API LayerNorm {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  std::size_t dim = 0;
  float eps = 1e-5f;

  static LayerNorm bind(WeightStore& w, std::string_view prefix, std::size_t dim, float eps, bool affine = true);
  /// y = LN(x) over rows of x [rows, dim]; in place allowed.
  void operator()(const float* x, float* y, std::size_t rows, kernels::Context& ctx) const;
};

/// diffusers TimestepEmbedding: linear_2(act(linear_1(x))).
struct DIFFUSE_API TimestepEmbedding {
  Linear linear_1, linear_2;
  kernels::Activation act = kernels::Activation::silu;

  static TimestepEmbedding bind(WeightStore& w, std::string_view prefix, std::size_t in, std::size_t hidden,
                                std::size_t out, kernels::Activation act = kernels::Activation::silu);
  /// y[batch, out] from x[batch, in]; uses `batch * hidden` floats of the context's arena.
  void operator()(const float* x, std::size_t batch, float* y, kernels::Context& ctx) const;
};

/** A pre-LN transformer encoder layer (CLIP's text and vision towers, and the encoders that
 *  follow their layout):
 *
 *      x = x + out_proj(MHA(layer_norm1(x)))        (q, k, v, out with bias; scale 1/sqrt(head_dim))
 *      x = x + fc2(act(fc1(layer_norm2(x))))
 *
 *  `bind` takes transformers' CLIP names under `prefix`; the fields can also be filled from
 *  other spellings (q, k, v are separate Linears or the row blocks of one fused [3D, D] weight). */
struct DIFFUSE_API TransformerLayer {
  LayerNorm ln1, ln2;
  Linear q, k, v, out, fc1, fc2;
  std::size_t dim = 0, heads = 1;
  kernels::Activation act = kernels::Activation::quick_gelu;

  static TransformerLayer bind(WeightStore& w, std::string_view prefix, std::size_t dim, std::size_t heads,
                               std::size_t inner, float eps, kernels::Activation act);
  /// x [batch, tokens, dim] updated in place; attention causal or not. Uses
  /// `tokens * batch * (4 * dim + inner)` floats of the context's arena (released on return).
  void operator()(float* x, std::size_t batch, std::size_t tokens, bool causal, kernels::Context& ctx) const;
};

}  // namespace nn
DIFFUSE_END_NAMESPACE
