// SPDX-License-Identifier: MIT
// Single-file checkpoint families (see models/checkpoint.hpp): detection from the header, and the
// configs of the published diffusers folders.
#include "diffuse/models/checkpoint.hpp"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

using nlohmann::json;

constexpr const char* kWhere = "detect_checkpoint";

// unet/config.json of stable-diffusion-v1-5/stable-diffusion-v1-5 (in_channels 9: the
// stable-diffusion-inpainting folder).
json sd1_unet(int in_channels) {
  json j = json::parse(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]})");
  j["in_channels"] = in_channels;
  return j;
}

// unet/config.json of stabilityai/stable-diffusion-2-1 (768-v: sample_size 96, upcast_attention),
// of stable-diffusion-2-1-base (sample_size 64, no upcast) and of stable-diffusion-2-inpainting
// (as -base with in_channels 9).
json sd2_unet(int in_channels, bool v768) {
  json j = json::parse(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": false, "use_linear_projection": true})");
  j["in_channels"] = in_channels;
  if (v768) {
    j["sample_size"] = 96;
    j["upcast_attention"] = true;
  }
  return j;
}

// unet/config.json of stabilityai/stable-diffusion-xl-base-1.0 (in_channels 9:
// diffusers/stable-diffusion-xl-1.0-inpainting-0.1).
json sdxl_unet(int in_channels) {
  json j = json::parse(R"({
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": false, "class_embed_type": null,
    "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
    "cross_attention_norm": null, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null, "encoder_hid_dim_type": null,
    "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
    "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
    "time_embedding_type": "positional", "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": null,
    "use_linear_projection": true})");
  j["in_channels"] = in_channels;
  return j;
}

// text_encoder/config.json: CLIP ViT-L/14 (SD 1.x; SDXL's first encoder is the same network).
json clip_l() {
  return json::parse(R"({
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "vocab_size": 49408})");
}

// OpenCLIP ViT-H/14 as stable-diffusion-2-1/text_encoder keeps it: 23 of the 24 layers (SD 2.x
// takes the penultimate layer's states; diffusers drops the last).
json open_clip_h() {
  return json::parse(R"({
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1,
    "projection_dim": 512, "vocab_size": 49408})");
}

// OpenCLIP ViT-bigG/14 with its projection (stable-diffusion-xl-base-1.0/text_encoder_2).
json open_clip_bigg() {
  return json::parse(R"({
    "architectures": ["CLIPTextModelWithProjection"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1280, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 5120, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 20, "num_hidden_layers": 32, "pad_token_id": 1,
    "projection_dim": 1280, "vocab_size": 49408})");
}

// scheduler/scheduler_config.json. PNDM: stable-diffusion-v1-5 (no prediction_type key: epsilon)
// and, with prediction_type, stable-diffusion-2-1-base; DDIM: stable-diffusion-2-1 (v_prediction);
// Euler: stable-diffusion-xl-base-1.0.
json pndm() {
  return json::parse(R"({
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
    "steps_offset": 1, "trained_betas": null})");
}

json ddim() {
  return json::parse(R"({
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": false,
    "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null})");
}

json euler() {
  return json::parse(R"({
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": null, "use_karras_sigmas": false})");
}

CheckpointTextEncoder encoder(std::string prefix, std::string folder, json config, bool open_clip) {
  CheckpointTextEncoder e;
  e.prefix = std::move(prefix);
  e.folder = std::move(folder);
  e.config = std::move(config);
  e.pad_token = open_clip ? "!" : "<|endoftext|>";
  e.pad_id = open_clip ? 0 : 49407;
  return e;
}

std::size_t context_width(CheckpointFamily f) {
  switch (f) {
    case CheckpointFamily::sd1:
    case CheckpointFamily::sd1_inpaint:
      return 768;
    case CheckpointFamily::sd2:
    case CheckpointFamily::sd2_inpaint:
      return 1024;
    default:
      return 2048;
  }
}

}  // namespace

std::string_view family_name(CheckpointFamily family) noexcept {
  switch (family) {
    case CheckpointFamily::sd1:
      return "sd1";
    case CheckpointFamily::sd1_inpaint:
      return "sd1_inpaint";
    case CheckpointFamily::sd2:
      return "sd2";
    case CheckpointFamily::sd2_inpaint:
      return "sd2_inpaint";
    case CheckpointFamily::sdxl:
      return "sdxl";
    case CheckpointFamily::sdxl_inpaint:
      return "sdxl_inpaint";
    case CheckpointFamily::unknown:
      break;
  }
  return "unknown";
}

CheckpointInfo checkpoint_configs(CheckpointFamily family, std::string_view prediction_type) {
  if (!prediction_type.empty() && prediction_type != "epsilon" && prediction_type != "v_prediction")
    raise<value_error>("checkpoint_configs",
                       "prediction type \"" + std::string(prediction_type) + "\" is not one of epsilon, v_prediction");
  CheckpointInfo info;
  info.family = family;
  const bool sd2 = family == CheckpointFamily::sd2;
  info.prediction_type = prediction_type.empty() ? (sd2 ? "v_prediction" : "epsilon") : std::string(prediction_type);
  const bool v = info.prediction_type == "v_prediction";
  switch (family) {
    case CheckpointFamily::sd1:
    case CheckpointFamily::sd1_inpaint: {
      const bool inpaint = family == CheckpointFamily::sd1_inpaint;
      info.source =
          inpaint ? "stable-diffusion-v1-5/stable-diffusion-inpainting" : "stable-diffusion-v1-5/stable-diffusion-v1-5";
      info.unet_config = sd1_unet(inpaint ? 9 : 4);
      info.vae_family = "sd";
      info.text_encoders.push_back(encoder("cond_stage_model.transformer.", "text_encoder", clip_l(), false));
      info.scheduler_config = inpaint ? ddim() : pndm();
      if (inpaint) info.scheduler_config.erase("prediction_type");
      break;
    }
    case CheckpointFamily::sd2:
    case CheckpointFamily::sd2_inpaint: {
      const bool inpaint = family == CheckpointFamily::sd2_inpaint;
      info.source = inpaint ? "stabilityai/stable-diffusion-2-inpainting"
                    : v     ? "stabilityai/stable-diffusion-2-1"
                            : "stabilityai/stable-diffusion-2-1-base";
      info.unet_config = sd2_unet(inpaint ? 9 : 4, !inpaint && v);
      info.vae_family = "sd";
      info.text_encoders.push_back(encoder("cond_stage_model.model.", "text_encoder", open_clip_h(), true));
      info.scheduler_config = !inpaint && v ? ddim() : pndm();
      break;
    }
    case CheckpointFamily::sdxl:
    case CheckpointFamily::sdxl_inpaint: {
      const bool inpaint = family == CheckpointFamily::sdxl_inpaint;
      info.source =
          inpaint ? "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" : "stabilityai/stable-diffusion-xl-base-1.0";
      info.unet_config = sdxl_unet(inpaint ? 9 : 4);
      info.vae_family = "sdxl";
      info.text_encoders.push_back(encoder("conditioner.embedders.0.transformer.", "text_encoder", clip_l(), false));
      info.text_encoders.push_back(encoder("conditioner.embedders.1.model.", "text_encoder_2", open_clip_bigg(), true));
      info.scheduler_config = euler();
      break;
    }
    case CheckpointFamily::unknown:
      raise<value_error>("checkpoint_configs", "the unknown family has no configs");
  }
  // The family's published prediction type is kept as the folder writes it (SD 1.5's PNDM config
  // has no key: epsilon); another one asked for is written in.
  const std::string published = info.scheduler_config.value("prediction_type", std::string("epsilon"));
  if (published != info.prediction_type) info.scheduler_config["prediction_type"] = info.prediction_type;
  info.vae_config = AutoencoderKLConfig::family(info.vae_family);
  return info;
}

CheckpointInfo detect_checkpoint(const io::ModelDir& file, const CheckpointOptions& options) {
  const std::string where = file.path().string();
  const std::vector<std::string> names = file.names();  // sorted
  const auto has_prefix = [&](std::string_view prefix) {
    const auto it = std::lower_bound(names.begin(), names.end(), prefix,
                                     [](const std::string& a, std::string_view b) { return a < b; });
    return it != names.end() && it->starts_with(prefix);
  };
  static constexpr const char* kLooked =
      "looked for the U-Net model.diffusion_model.input_blocks.0.0.weight and a text encoder under "
      "cond_stage_model.transformer. (SD 1.x), cond_stage_model.model. (SD 2.x) or "
      "conditioner.embedders.0.transformer. "
      "+ conditioner.embedders.1.model. (SDXL)";
  const io::TensorView* in = file.find("model.diffusion_model.input_blocks.0.0.weight");
  if (!in)
    raise<format_error>(kWhere,
                        where + ": not a Stable Diffusion 1.x / 2.x / XL single file (no U-Net; " + kLooked + ")");
  if (in->shape.size() != 4)
    raise<format_error>(kWhere, where + ": model.diffusion_model.input_blocks.0.0.weight has shape " +
                                    shape_string(in->shape) + ", expected [channels, in_channels, 3, 3]");
  const std::size_t in_channels = in->shape[1];
  if (in_channels != 4 && in_channels != 9)
    raise<format_error>(kWhere, where + ": the U-Net takes " + std::to_string(in_channels) +
                                    " input channels (model.diffusion_model.input_blocks.0.0.weight " +
                                    shape_string(in->shape) + "); known: 4 (text-to-image), 9 (inpainting)");
  for (const char* k : {"edm_mean", "edm_std", "edm_vpred.sigma_max"})
    if (file.contains(k))
      raise<format_error>(kWhere,
                          where + ": has \"" + k + "\", an EDM-trained model (Playground v2.5 style), not supported");
  const bool inpaint = in_channels == 9;
  CheckpointFamily f = CheckpointFamily::unknown;
  std::string width_key;
  if (has_prefix("conditioner.embedders.1.model.") && has_prefix("conditioner.embedders.0.transformer.")) {
    f = inpaint ? CheckpointFamily::sdxl_inpaint : CheckpointFamily::sdxl;
    width_key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
  } else if (has_prefix("cond_stage_model.model.")) {
    f = inpaint ? CheckpointFamily::sd2_inpaint : CheckpointFamily::sd2;
    width_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
  } else if (has_prefix("cond_stage_model.transformer.")) {
    f = inpaint ? CheckpointFamily::sd1_inpaint : CheckpointFamily::sd1;
    width_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
  } else {
    const char* what = has_prefix("conditioner.embedders.0.model.")
                           ? " (conditioner.embedders.0.model. alone: the SDXL "
                             "refiner, not supported)"
                           : "";
    raise<format_error>(kWhere, where + ": no known text encoder" + what + "; " + kLooked);
  }
  const io::TensorView* k = file.find(width_key);
  const std::size_t want = context_width(f);
  if (!k || k->shape.size() != 2 || k->shape[1] != want)
    raise<format_error>(kWhere, where + ": the text encoder keys say " + std::string(family_name(f)) +
                                    ", whose U-Net " + width_key + " is [*, " + std::to_string(want) +
                                    "], but the file has " +
                                    (k ? shape_string(k->shape) : std::string("no such tensor")));
  std::string prediction = options.prediction_type;
  if (prediction.empty() && file.contains("v_pred")) prediction = "v_prediction";
  if (prediction.empty() && f == CheckpointFamily::sd2_inpaint) prediction = "epsilon";
  return checkpoint_configs(f, prediction);
}

}  // namespace models
DIFFUSE_END_NAMESPACE
