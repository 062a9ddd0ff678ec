// SPDX-License-Identifier: MIT
/** @file checkpoint.hpp
 *  Stable Diffusion single-file checkpoints (the original LDM layout that A1111, ComfyUI and
 *  stable-diffusion.cpp users keep): which family a file is, told from its tensor names and a few
 *  shapes, and the configs the family's published diffusers folders carry (a single file has none).
 *
 *  **Detection** (`detect_checkpoint`; diffusers' `infer_diffusers_model_type` reads the same keys):
 *  - the U-Net must be there: `model.diffusion_model.input_blocks.0.0.weight` [C0, in, 3, 3] with
 *    `in` = 4 (text-to-image) or 9 (inpainting: latents, mask, masked-image latents);
 *  - SDXL: `conditioner.embedders.1.model.` (OpenCLIP ViT-bigG/14) with
 *    `conditioner.embedders.0.transformer.` (CLIP ViT-L/14);
 *  - SD 2.x: `cond_stage_model.model.` (OpenCLIP ViT-H/14, `transformer.resblocks.`);
 *  - SD 1.x: `cond_stage_model.transformer.` (CLIP ViT-L/14, `text_model.` or the older names);
 *  - then the U-Net's cross-attention width (`...attn2.to_k.weight` of its first transformer:
 *    768, 1024, 2048) must be the family's, else format_error (a file mixing families).
 *  Anything else (SDXL refiner, SD 3, Flux, Playground's EDM keys, instruct-pix2pix's 8 input
 *  channels, a U-Net without text encoder) is a format_error naming the file and the keys looked
 *  for. Only the header is read (tensor names and shapes), bounded by io::ModelDir.
 *
 *  **Prediction type**: names cannot tell SD 2.x 768-v (v_prediction, 768 px) from 512-base
 *  (epsilon, 512 px). Rule: a `v_pred` tensor in the file (the marker ComfyUI honours) means
 *  v_prediction; else SD 2.x text-to-image is v_prediction (stable-diffusion-2 / 2-1, the common
 *  case), every other family epsilon. `CheckpointOptions::prediction_type` overrides it; SD 2.x
 *  with epsilon takes the stable-diffusion-2-1-base configs (sample_size 64, no upcast, PNDM).
 *
 *  **Configs** (`checkpoint_configs`): the U-Net config.json, the VAE config
 *  (AutoencoderKLConfig::family "sd" / "sdxl"), each text encoder's config.json with its prefix in
 *  the file and its tokenizer's pad token (`<|endoftext|>` 49407 for CLIP ViT-L/14, `!` 0 for the
 *  OpenCLIP encoders), and scheduler_config.json, as the folders named in `CheckpointInfo::source`
 *  publish them (the fields that define the model; provenance fields such as _diffusers_version
 *  are left out). docs/single_file.md lists them.
 *
 *  **Example**
 *  @code
 *  const char* path = "v1-5-pruned-emaonly.safetensors";
 *  const auto info = diffuse::models::detect_checkpoint(diffuse::io::ModelDir::open(path));
 *  auto unet = diffuse::models::UNet2DConditionModel::load_original(
 *      diffuse::io::ModelDir::open(path), info.unet_prefix,
 *      diffuse::models::UNet2DConditionConfig::from_json(info.unet_config, path));
 *  auto vae = diffuse::models::AutoencoderKL::load_ldm(diffuse::io::ModelDir::open(path), info.vae_prefix,
 *                                                      info.vae_config);
 *  @endcode */
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/models/vae.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// The checkpoint families diffuse can configure.
enum class CheckpointFamily { sd1, sd1_inpaint, sd2, sd2_inpaint, sdxl, sdxl_inpaint, unknown };

/// "sd1", "sd1_inpaint", "sd2", "sd2_inpaint", "sdxl", "sdxl_inpaint", "unknown".
DIFFUSE_API std::string_view family_name(CheckpointFamily family) noexcept;

/// One text encoder of a checkpoint.
struct CheckpointTextEncoder {
  std::string prefix;       ///< in the file, for ClipTextModel::load_original ("cond_stage_model.transformer.")
  std::string folder;       ///< its diffusers folder: "text_encoder" or "text_encoder_2"
  nlohmann::json config;    ///< that folder's config.json (ClipTextConfig::from_json)
  std::string pad_token;    ///< the tokenizer's pad token: "<|endoftext|>" (CLIP) or "!" (OpenCLIP)
  std::int32_t pad_id = 0;  ///< its id: 49407 or 0
};

/// A family and its configs.
struct CheckpointInfo {
  CheckpointFamily family = CheckpointFamily::unknown;
  std::string prediction_type;  ///< "epsilon" or "v_prediction" (also in scheduler_config)
  std::string source;           ///< the diffusers folder the configs are from ("stabilityai/stable-diffusion-2-1")
  std::string unet_prefix = "model.diffusion_model.";
  nlohmann::json unet_config;  ///< unet/config.json (UNet2DConditionConfig::from_json)
  std::string vae_prefix = "first_stage_model.";
  std::string vae_family;                            ///< "sd" or "sdxl"
  AutoencoderKLConfig vae_config;                    ///< AutoencoderKLConfig::family(vae_family)
  std::vector<CheckpointTextEncoder> text_encoders;  ///< in the pipeline's order
  nlohmann::json scheduler_config;                   ///< scheduler/scheduler_config.json
};

struct CheckpointOptions {
  /// "epsilon" or "v_prediction" instead of the detected rule (see the file comment); empty: the rule.
  std::string prediction_type;
};

/** The known configs of `family` (value_error for `unknown`, or a prediction type other than
 *  epsilon / v_prediction). `prediction_type` empty: the family's default (v_prediction for sd2,
 *  epsilon otherwise); for sd2 it chooses between the 2-1 (v) and 2-1-base (epsilon) folders, for
 *  the others it only sets scheduler_config's prediction_type. */
DIFFUSE_API CheckpointInfo checkpoint_configs(CheckpointFamily family, std::string_view prediction_type = {});

/// The family of the single file `file` and its configs (see the file comment); format_error naming
/// the file and the keys looked for when it is none of the known families.
DIFFUSE_API CheckpointInfo detect_checkpoint(const io::ModelDir& file, const CheckpointOptions& options = {});

}  // namespace models
DIFFUSE_END_NAMESPACE
