// SPDX-License-Identifier: MIT
// The original LDM names of UNet2DConditionModel parameters (see models/unet2d_condition.hpp,
// load_original): the inverse of diffusers' convert_ldm_unet_checkpoint, computed from the config.
//
// The LDM U-Net keeps its modules in three lists. `input_blocks`: 0 is conv_in, then per level i
// its layers_per_block[i] entries [resnet, (transformer)], then one entry [downsampler `op`] unless
// i is the last level. `middle_block`: resnet, transformer, resnet. `output_blocks`: per up block
// its layers_per_block + 1 entries [resnet, (transformer), (upsampler `conv` in the last entry,
// except in the last block)]. Resnets rename their layers (in_layers.0 = norm1, in_layers.2 =
// conv1, emb_layers.1 = time_emb_proj, out_layers.0 = norm2, out_layers.3 = conv2,
// skip_connection = conv_shortcut); transformers keep diffusers' names below their entry.
#include "unet2d_condition_original.hpp"

#include <charconv>
#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

DIFFUSE_BEGIN_NAMESPACE
namespace models::detail {

namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t b = 0;
  for (std::size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == '.') {
      parts.push_back(s.substr(b, i - b));
      b = i + 1;
    }
  return parts;
}

constexpr std::size_t kBad = std::numeric_limits<std::size_t>::max();

std::size_t to_index(std::string_view s) {
  std::size_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty() ? v : kBad;
}

std::string join(const std::vector<std::string_view>& p, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < p.size(); ++i) {
    if (!out.empty()) out += '.';
    out += p[i];
  }
  return out;
}

// A resnet's layer in LDM spelling.
std::string_view resnet_layer(std::string_view m) {
  if (m == "norm1") return "in_layers.0";
  if (m == "conv1") return "in_layers.2";
  if (m == "time_emb_proj") return "emb_layers.1";
  if (m == "norm2") return "out_layers.0";
  if (m == "conv2") return "out_layers.3";
  if (m == "conv_shortcut") return "skip_connection";
  return {};
}

}  // namespace

std::string unet_original_name(std::string_view name, const UNet2DConditionConfig& c) {
  const std::vector<std::string_view> p = split(name);
  const std::string unchanged(name);
  const std::size_t nb = c.block_out_channels.size();
  if (p.size() < 2 || nb == 0 || c.layers_per_block.size() != nb || c.up_block_types.size() != nb) return unchanged;
  const std::string leaf1 = join(p, 1);  // after the first part

  if (p[0] == "conv_in") return "input_blocks.0.0." + leaf1;
  if (p[0] == "conv_norm_out") return "out.0." + leaf1;
  if (p[0] == "conv_out") return "out.2." + leaf1;
  if ((p[0] == "time_embedding" || p[0] == "add_embedding") && p.size() >= 3) {
    const std::string base = p[0] == "time_embedding" ? "time_embed." : "label_emb.0.";
    if (p[1] == "linear_1") return base + "0." + join(p, 2);
    if (p[1] == "linear_2") return base + "2." + join(p, 2);
    return unchanged;
  }
  // `prefix` + the resnet layer or the transformer's names from p[rest] on.
  const auto entry = [&](std::string out, std::size_t rest, bool resnet) -> std::string {
    if (resnet) {
      const std::string_view m = resnet_layer(p[rest]);
      if (m.empty()) return unchanged;
      out += ".";
      out += m;
      ++rest;
    }
    const std::string tail = join(p, rest);
    return tail.empty() ? unchanged : out + "." + tail;
  };
  const auto at = [](const char* list, std::size_t index, std::size_t slot) {
    return std::string(list) + "." + std::to_string(index) + "." + std::to_string(slot);
  };
  if (p[0] == "mid_block" && p.size() >= 4) {
    const std::size_t j = to_index(p[2]);
    if (p[1] == "resnets" && j < 2) return entry(j == 0 ? "middle_block.0" : "middle_block.2", 3, true);
    if (p[1] == "attentions" && j == 0) return entry("middle_block.1", 3, false);
    return unchanged;
  }
  if ((p[0] != "down_blocks" && p[0] != "up_blocks") || p.size() < 5) return unchanged;
  const std::size_t i = to_index(p[1]), j = to_index(p[3]);
  if (i >= nb || j == kBad) return unchanged;
  const std::string_view kind = p[2];
  if (p[0] == "down_blocks") {
    std::size_t base = 1;
    for (std::size_t k = 0; k < i; ++k) base += c.layers_per_block[k] + 1;
    const std::size_t L = c.layers_per_block[i];
    if (kind == "resnets" && j < L) return entry(at("input_blocks", base + j, 0), 4, true);
    if (kind == "attentions" && j < L) return entry(at("input_blocks", base + j, 1), 4, false);
    if (kind == "downsamplers" && j == 0 && i + 1 < nb && p[4] == "conv" && p.size() >= 6)
      return "input_blocks." + std::to_string(base + L) + ".0.op." + join(p, 5);
    return unchanged;
  }
  std::size_t base = 0;
  for (std::size_t k = 0; k < i; ++k) base += c.layers_per_block[nb - 1 - k] + 1;
  const std::size_t L = c.layers_per_block[nb - 1 - i] + 1;  // resnets of up block i
  if (kind == "resnets" && j < L) return entry(at("output_blocks", base + j, 0), 4, true);
  if (kind == "attentions" && j < L) return entry(at("output_blocks", base + j, 1), 4, false);
  if (kind == "upsamplers" && j == 0 && i + 1 < nb && p[4] == "conv" && p.size() >= 6) {
    const std::size_t slot = c.up_block_types[i] == "CrossAttnUpBlock2D" ? 2 : 1;
    return "output_blocks." + std::to_string(base + L - 1) + "." + std::to_string(slot) + ".conv." + join(p, 5);
  }
  return unchanged;
}

void check_unet_config(const UNet2DConditionConfig& c, const std::string& where) {
  nlohmann::json j;
  if (c.sample_height && c.sample_width) j["sample_size"] = {*c.sample_height, *c.sample_width};
  j["in_channels"] = c.in_channels;
  j["out_channels"] = c.out_channels;
  j["center_input_sample"] = c.center_input_sample;
  j["flip_sin_to_cos"] = c.flip_sin_to_cos;
  j["freq_shift"] = c.freq_shift;
  j["down_block_types"] = c.down_block_types;
  j["mid_block_type"] = c.mid_block_type ? nlohmann::json(*c.mid_block_type) : nlohmann::json(nullptr);
  j["up_block_types"] = c.up_block_types;
  j["block_out_channels"] = c.block_out_channels;
  j["layers_per_block"] = c.layers_per_block;
  j["transformer_layers_per_block"] = c.transformer_layers_per_block;
  j["attention_head_dim"] = c.attention_heads;
  j["cross_attention_dim"] = c.cross_attention_dim;
  j["downsample_padding"] = c.downsample_padding;
  j["mid_block_scale_factor"] = c.mid_block_scale_factor;
  j["act_fn"] = c.act_fn;
  j["norm_num_groups"] = c.norm_num_groups;
  j["norm_eps"] = c.norm_eps;
  j["use_linear_projection"] = c.use_linear_projection;
  j["upcast_attention"] = c.upcast_attention;
  if (c.time_embedding_dim) j["time_embedding_dim"] = *c.time_embedding_dim;
  j["conv_in_kernel"] = c.conv_in_kernel;
  j["conv_out_kernel"] = c.conv_out_kernel;
  if (c.addition_embed_type) j["addition_embed_type"] = *c.addition_embed_type;
  if (c.addition_time_embed_dim) j["addition_time_embed_dim"] = *c.addition_time_embed_dim;
  if (c.projection_class_embeddings_input_dim)
    j["projection_class_embeddings_input_dim"] = *c.projection_class_embeddings_input_dim;
  (void)UNet2DConditionConfig::from_json(j, where);
}

}  // namespace models::detail
DIFFUSE_END_NAMESPACE
