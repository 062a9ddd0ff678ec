// SPDX-License-Identifier: MIT
/** @file clip_text.hpp
 *  The CLIP text encoders of text-to-image pipelines, as transformers' `CLIPTextModel` (SD 1.x:
 *  OpenAI ViT-L/14; SD 2.x: OpenCLIP ViT-H/14) and `CLIPTextModelWithProjection` (SDXL's second
 *  encoder: OpenCLIP ViT-bigG/14), usable without any diffusion model.
 *
 *  **Forward** (transformers 5.24 `modeling_clip.py`): x = token_embedding[ids] +
 *  position_embedding[0..N-1]; `num_hidden_layers` pre-LN layers (nn::TransformerLayer) with the
 *  causal mask and `hidden_act` (`quick_gelu` x*sigmoid(1.702x), `gelu` erf, `gelu_new` /
 *  `gelu_pytorch_tanh` tanh); final_layer_norm. No attention mask (pad tokens are encoded, as the
 *  diffusers pipelines do).
 *  - `hidden`: with clip_skip = 1 the last hidden state (after final_layer_norm); with clip_skip
 *    = k >= 2 the hidden state after layer `num_hidden_layers - k + 1` (`hidden_states[-k]`),
 *    through final_layer_norm when `final_norm_on_skip` (SD 1.x / A1111 and diffusers' SD
 *    pipeline) or raw (SDXL, SD 2.x in diffusers' XL pipeline). The later layers are not run
 *    unless the pooled output is asked for.
 *  - `pooled`: the final-norm state at the end token of each sequence: the first position of the
 *    largest id (`eos_token_id` 2, configs written before transformers PR #24773, SD 1.x), else the
 *    first position of `eos_token_id` (position 0 if there is none, as torch's argmax of zeros).
 *  - `text_embeds`: text_projection(pooled) [B, projection_dim] (WithProjection only).
 *
 *  **Weights**: transformers names, with or without the `text_model.` prefix (CLIPTextModel
 *  5.x saves none, 4.x and CLIPTextModelWithProjection save it); `text_projection.weight` for the
 *  projection model. `*.position_ids` buffers are ignored. F32, F16 and BF16 storage. The original
 *  checkpoint names (SD 1.x / SD 2.x / SDXL single files, OpenCLIP's fused in_proj): load_original.
 *
 *  **Config** (config.json; transformers' CLIPTextConfig defaults for absent keys): every size
 *  must be positive and at most: vocab 2^24, hidden 2^16, intermediate 2^18, layers 1024,
 *  positions 2^16, projection 2^16; hidden divisible by heads; the table sizes must not overflow.
 *
 *  **Example**
 *  @code
 *  auto enc = diffuse::models::ClipTextModel::load("sd15/text_encoder");
 *  auto tok = diffuse::text::ClipTokenizer::load("sd15");
 *  auto ids = tok.encode_padded("a photo of a cat");
 *  diffuse::kernels::Context ctx(2);
 *  auto out = enc.encode(ids, 1, ctx);        // out.hidden [1, 77, 768]
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// config.json of a CLIPTextModel / CLIPTextModelWithProjection (transformers' defaults).
struct DIFFUSE_API ClipTextConfig {
  std::size_t vocab_size = 49408;
  std::size_t hidden_size = 512;
  std::size_t intermediate_size = 2048;
  std::size_t projection_dim = 512;
  std::size_t num_hidden_layers = 12;
  std::size_t num_attention_heads = 8;
  std::size_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  std::int64_t eos_token_id = 49407;  ///< 2: the legacy argmax-of-ids pooling
  bool with_projection = false;       ///< architectures[0] == "CLIPTextModelWithProjection"

  /// Parses and checks (format_error naming `where` and the key).
  static ClipTextConfig from_json(const nlohmann::json& j, std::string_view where);
};

/// What encode computes.
struct ClipTextOptions {
  std::size_t clip_skip = 1;      ///< 1 = last layer; k >= 2 = hidden_states[-k]
  bool final_norm_on_skip = true; ///< apply final_layer_norm to a skipped hidden state
  bool pooled = true;             ///< compute pooled (and text_embeds); runs every layer
};

struct ClipTextOutput {
  Tensor hidden;       ///< [batch, tokens, hidden_size]
  Tensor pooled;       ///< [batch, hidden_size] (empty when not asked for)
  Tensor text_embeds;  ///< [batch, projection_dim] (projection model, pooled asked for)
};

/// A loaded text encoder (immutable; encode is const and may run concurrently with other contexts).
class DIFFUSE_API ClipTextModel {
 public:
  /// Loads a text_encoder folder (config.json + model.safetensors).
  static ClipTextModel load(const std::filesystem::path& path, const nn::LoadOptions& options = {});
  /// From an opened folder (the model keeps the mapping alive).
  static ClipTextModel load(io::ModelDir dir, const nn::LoadOptions& options = {});
  /** The text encoder inside an original checkpoint (a single file that holds several networks),
   *  under `prefix`, with the config the caller knows (single files carry none). Two layouts,
   *  told apart by the names under the prefix:
   *  - transformers names (with or without `text_model.`) under the prefix: SD 1.x
   *    `cond_stage_model.transformer.`, SDXL's first encoder `conditioner.embedders.0.transformer.`;
   *  - OpenCLIP names: SD 2.x `cond_stage_model.model.`, SDXL's second encoder
   *    `conditioner.embedders.1.model.`: `token_embedding.weight`, `positional_embedding` [N, D],
   *    `transformer.resblocks.i.` {`ln_1`, `attn.in_proj_weight` [3D, D] / `attn.in_proj_bias`
   *    [3D] (rows 0..D-1 are q, then k, then v: used in place, no copy), `attn.out_proj`, `ln_2`,
   *    `mlp.c_fc`, `mlp.c_proj`}, `ln_final`, `text_projection` [D, P] (the transpose of
   *    transformers' [P, D] weight: copied once, transposed, D x P floats). Resblocks beyond
   *    `config.num_hidden_layers` are ignored (diffusers' SD 2.x text encoder keeps 23 of the
   *    file's 24), and so are `logit_scale` and, without projection, `text_projection`.
   *  Any other tensor under the prefix is refused (format_error); tensors outside it are ignored.
   *  Both give the same numbers as the transformers folder with the same weights. */
  static ClipTextModel load_original(io::ModelDir file, std::string prefix, ClipTextConfig config,
                                     const nn::LoadOptions& options = {});
  /// True when `dir` holds a CLIP text encoder under `prefix` in one of load_original's layouts.
  static bool has_original_names(const io::ModelDir& dir, std::string_view prefix);

  ClipTextModel(ClipTextModel&&) noexcept;
  ClipTextModel& operator=(ClipTextModel&&) noexcept;
  ~ClipTextModel();

  /// ids: batch rows of `ids.size() / batch` tokens (1 .. max_position_embeddings each), every id
  /// < vocab_size (value_error / shape_error otherwise).
  ClipTextOutput encode(std::span<const std::int32_t> ids, std::size_t batch, kernels::Context& ctx,
                        const ClipTextOptions& options = {}) const;

  const ClipTextConfig& config() const noexcept;
  /// Parameters bound (scalars; a fused q/k/v counts once).
  std::size_t parameters() const noexcept;

 private:
  struct Impl;
  explicit ClipTextModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace models
DIFFUSE_END_NAMESPACE
