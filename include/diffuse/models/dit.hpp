// SPDX-License-Identifier: MIT
/** @file dit.hpp
 *  DiT, the class-conditional latent diffusion transformer of Peebles & Xie, "Scalable Diffusion
 *  Models with Transformers" (2023, arXiv:2212.09748), as diffusers' `DiTTransformer2DModel`
 *  (facebook/DiT-XL-2-256 and smaller configs, e.g. the shipped models/digits-dit).
 *
 *  **Forward** (diffusers 0.42 `dit_transformer_2d.py`, `attention.py::BasicTransformerBlock` with
 *  norm_type "ada_norm_zero"): x [B, C, H, W] is cut into p x p patches (Conv2d k = s = p, done
 *  here as one GEMM over the patches) giving tokens [B, N, D], N = (H/p)(W/p), plus the fixed 2-D
 *  sin-cos table (recomputed, never read from the file). Each of the `num_layers` blocks computes
 *  its conditioning `c = TimestepEmbedding(sinusoid(t; 256, cos first, shift 1)) + table[y]` from
 *  its own copy of the embedder weights, `m = Linear(SiLU(c))` split into 6 chunks, then
 *
 *      x += gate_msa * Attn(LN(x; 1e-6) * (1 + scale_msa) + shift_msa)
 *      x += gate_mlp * FF(LN(x; norm_eps) * (1 + scale_mlp) + shift_mlp)      FF = Linear, GELU-tanh, Linear
 *
 *  and the output layer modulates LN(x; 1e-6) with `proj_out_1(SiLU(c of block 0))`, projects with
 *  `proj_out_2` and unpatchifies. With learned sigma (out_channels == 2 in_channels), forward
 *  returns only the first in_channels channels (the prediction; the variance half is dropped, as
 *  the pipeline does).
 *
 *  When the copies of the embedder in all blocks are byte-identical (every converted checkpoint:
 *  diffusers' convert script duplicates the original single embedder), it is computed once per
 *  forward instead of once per block; the result is the same bit for bit.
 *
 *  **Original facebookresearch/DiT names** (`x_embedder.proj`, `pos_embed`, `t_embedder.mlp.{0,2}`,
 *  `y_embedder.embedding_table`, `blocks.i.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2,
 *  adaLN_modulation.1}`, `final_layer.{linear, adaLN_modulation.1}`) are bound as the same model
 *  renamed; the q, k and v weights are the three row blocks of `attn.qkv` (one fused GEMM). The
 *  math is diffusers', not the original repository's: the original DiT computes its timestep
 *  frequencies with `/half` instead of `/(half - 1)` and uses eps 1e-6 (not norm_eps 1e-5) before
 *  the MLP, so outputs of an original-named file differ slightly from facebookresearch/DiT's own
 *  forward and equal diffusers' forward on the converted checkpoint. Without a config.json the
 *  config is inferred from the shapes (`DiTConfig::infer`).
 *
 *  **Example**
 *  @code
 *  auto net = diffuse::models::load_network("models/digits-dit");
 *  diffuse::kernels::Context ctx(2);
 *  diffuse::Tensor x({1, 1, 16, 16});
 *  float t = 500.0f;
 *  std::int64_t label = 7;
 *  diffuse::Tensor v = net->forward(x, {&t, 1}, {&label, 1}, ctx);  // [1, 1, 16, 16]
 *  @endcode */
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/io/model_dir.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/** The config.json of a `DiTTransformer2DModel`, with diffusers' defaults for absent keys
 *  (the defaults are DiT-XL/2 at 256 px). */
struct DIFFUSE_API DiTConfig {
  std::size_t num_attention_heads = 16;
  std::size_t attention_head_dim = 72;
  std::size_t in_channels = 4;
  std::optional<std::size_t> out_channels;  ///< none = in_channels
  std::size_t num_layers = 28;
  double dropout = 0.0;              ///< inference: unused
  std::size_t norm_num_groups = 32;  ///< unused by the model (kept for round trips)
  bool attention_bias = true;        ///< biases of to_q/to_k/to_v (to_out always has one)
  std::size_t sample_size = 32;      ///< latent height = width the pos table is built for
  std::size_t patch_size = 2;
  std::string activation_fn = "gelu-approximate";
  std::optional<std::size_t> num_embeds_ada_norm = 1000;  ///< classes (required by ada_norm_zero)
  bool upcast_attention = false;     ///< no effect: attention runs in f32
  std::string norm_type = "ada_norm_zero";
  bool norm_elementwise_affine = false;  ///< true binds norm3.{weight,bias} of each block
  double norm_eps = 1e-5;                ///< eps of the LayerNorm before the MLP

  /// D = heads * head_dim.
  std::size_t inner_dim() const noexcept { return num_attention_heads * attention_head_dim; }
  /// Channels of proj_out_2's output per pixel.
  std::size_t out_channels_or_in() const noexcept { return out_channels.value_or(in_channels); }
  /// out_channels == 2 * in_channels (DiT's learned variance).
  bool learned_sigma() const noexcept { return out_channels_or_in() == 2 * in_channels; }

  /** Reads a config.json object (`where` names it in errors). Throws format_error for a key of
   *  the wrong type, a zero size, norm_type other than "ada_norm_zero", a missing
   *  num_embeds_ada_norm, or an unsupported activation_fn. */
  static DiTConfig from_json(const nlohmann::json& j, std::string_view where = "config.json");

  /** The config of an original-named checkpoint without config.json, from its shapes: D, patch
   *  and in_channels from `x_embedder.proj.weight`, layers from the `blocks.i` count, classes from
   *  `y_embedder.embedding_table.weight` (rows = classes + the null row, as every published DiT
   *  trained with label dropout), out_channels from `final_layer.linear.weight`, sample_size from
   *  `pos_embed` [1, N, D] (32 when absent) and the heads from the standard DiT table (D 384 -> 6,
   *  768 -> 12, 1024 -> 16, 1152 -> 16). Throws format_error asking for a config.json otherwise. */
  static DiTConfig infer(const io::ModelDir& dir);
};

}  // namespace models
DIFFUSE_END_NAMESPACE
