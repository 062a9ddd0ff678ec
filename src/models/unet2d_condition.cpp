// SPDX-License-Identifier: MIT
// diffusers UNet2DConditionModel (see models/unet2d_condition.hpp): config parsing, parameter
// binding by the published names, and the forward pass on the nn modules with every activation in
// the context's arena.
//
// Memory plan of a forward (all from ctx.arena(), in the same order on every call), as UNet2DModel's:
//   time embedding | conv_in output and every down-block output (the skip list, kept to the end)
//   | two ping-pong buffers for the mid and up path | per-block temporaries (mark/release).
// A resnet of an up block consumes torch.cat([h, skip], dim=1): the op producing h writes it into
// the first channels of the buffer that holds the concatenation, and only the skip is copied.
#include "diffuse/models/unet2d_condition.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "diffuse/core/dtype.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/nn/blocks.hpp"
#include "diffuse/nn/config.hpp"
#include "diffuse/nn/layers.hpp"
#include "diffuse/nn/transformer.hpp"
#include "unet2d_condition_original.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

using nlohmann::json;

constexpr const char* kModel = "UNet2DConditionModel";
constexpr const char* kForward = "UNet2DConditionModel::forward";
constexpr std::size_t kMaxTokens = std::size_t{1} << 16;  // text states per item
constexpr std::size_t kMaxKernel = 15;                    // conv_in / conv_out kernel

// An int or one value per block.
std::vector<std::size_t> per_block(const nn::ConfigReader& r, const char* key, std::size_t fallback,
                                   nn::SizeRange range, std::size_t blocks) {
  const json* v = r.find(key);
  if (!v) return std::vector<std::size_t>(blocks, fallback);
  if (v->is_array()) {
    std::vector<std::size_t> s = r.sizes(key, {}, range, nn::limits::kMaxBlocks);
    if (s.size() != blocks)
      r.fail(key, "has " + std::to_string(s.size()) + " values, expected an integer or one per block (" +
                      std::to_string(blocks) + ")");
    return s;
  }
  return std::vector<std::size_t>(blocks, r.size(key, fallback, range));
}

// Fields whose only supported value is null/absent.
void require_null(const nn::ConfigReader& r, const char* key, const char* what) {
  if (const json* v = r.find(key)) r.fail(key, nn::short_json(*v) + " is not supported (" + what + "; supported: null)");
}

void require_false(const nn::ConfigReader& r, const char* key, const char* what) {
  if (r.boolean(key, false)) r.fail(key, std::string("true is not supported (") + what + "; supported: false)");
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const json& cfg, std::string_view where) {
  namespace L = nn::limits;
  const nn::ConfigReader r(cfg, std::string(where) + " config.json");
  constexpr nn::SizeRange channels{1, L::kMaxChannels};
  UNet2DConditionConfig c;
  if (const json* v = r.find("sample_size")) {
    if (v->is_array()) {
      const std::vector<std::size_t> s = r.sizes("sample_size", {}, {1, L::kMaxSampleSize}, 2);
      if (s.size() != 2) r.fail("sample_size", "expected an integer or [height, width], got " + nn::short_json(*v));
      c.sample_height = s[0];
      c.sample_width = s[1];
    } else {
      c.sample_height = c.sample_width = r.size("sample_size", 0, {1, L::kMaxSampleSize});
    }
  }
  c.in_channels = r.size("in_channels", c.in_channels, channels);
  c.out_channels = r.size("out_channels", c.out_channels, channels);
  c.center_input_sample = r.boolean("center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = r.boolean("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = r.number("freq_shift", c.freq_shift);
  c.down_block_types = r.strings("down_block_types", c.down_block_types, L::kMaxBlocks);
  c.mid_block_type = r.optional_string("mid_block_type", c.mid_block_type);
  c.up_block_types = r.strings("up_block_types", c.up_block_types, L::kMaxBlocks);
  c.block_out_channels = r.sizes("block_out_channels", c.block_out_channels, channels, L::kMaxBlocks);
  const std::size_t nb = c.block_out_channels.size();
  if (nb == 0) r.fail("block_out_channels", "must not be empty");
  if (c.down_block_types.size() != nb || c.up_block_types.size() != nb)
    r.fail("block_out_channels", "has " + std::to_string(nb) + " entries but down_block_types has " +
                                     std::to_string(c.down_block_types.size()) + " and up_block_types " +
                                     std::to_string(c.up_block_types.size()) + " (they must have the same length)");
  c.layers_per_block = per_block(r, "layers_per_block", 2, {1, L::kMaxLayersPerBlock}, nb);
  c.transformer_layers_per_block = per_block(r, "transformer_layers_per_block", 1, {1, L::kMaxLayersPerBlock}, nb);
  c.attention_heads = per_block(r, "attention_head_dim", 8, {1, L::kMaxHeads}, nb);
  c.cross_attention_dim = per_block(r, "cross_attention_dim", 1280, channels, nb);
  c.downsample_padding = r.size("downsample_padding", c.downsample_padding, {0, L::kMaxPadding});
  c.mid_block_scale_factor = r.number("mid_block_scale_factor", c.mid_block_scale_factor);
  c.act_fn = r.string("act_fn", c.act_fn);
  if (!r.find("norm_num_groups") && cfg.contains("norm_num_groups"))
    r.fail("norm_num_groups", "null is not supported (conv_norm_out is then absent; supported: a positive integer)");
  c.norm_num_groups = r.size("norm_num_groups", c.norm_num_groups, channels);
  c.norm_eps = r.number("norm_eps", c.norm_eps);
  c.use_linear_projection = r.boolean("use_linear_projection", c.use_linear_projection);
  c.upcast_attention = r.boolean("upcast_attention", c.upcast_attention);
  c.time_embedding_dim = r.optional_size("time_embedding_dim", c.time_embedding_dim, {1, L::kMaxEmbedDim});
  c.conv_in_kernel = r.size("conv_in_kernel", c.conv_in_kernel, {1, kMaxKernel});
  c.conv_out_kernel = r.size("conv_out_kernel", c.conv_out_kernel, {1, kMaxKernel});
  c.addition_embed_type = r.optional_string("addition_embed_type", c.addition_embed_type);
  c.addition_time_embed_dim = r.optional_size("addition_time_embed_dim", c.addition_time_embed_dim, {1, L::kMaxEmbedDim});
  c.projection_class_embeddings_input_dim =
      r.optional_size("projection_class_embeddings_input_dim", c.projection_class_embeddings_input_dim,
                      {1, L::kMaxEmbedDim});

  // What this class does not implement, refused by name.
  require_null(r, "num_attention_heads", "diffusers refuses it too; attention_head_dim gives the heads");
  if (const json* v = r.find("only_cross_attention")) {
    bool any = false;
    if (v->is_boolean()) {
      any = v->get<bool>();
    } else if (v->is_array()) {
      for (const json& e : *v) {
        if (!e.is_boolean()) r.fail("only_cross_attention", "expected a boolean or a list of booleans, got " + nn::short_json(*v));
        any = any || e.get<bool>();
      }
    } else {
      r.fail("only_cross_attention", "expected a boolean or a list of booleans, got " + nn::short_json(*v));
    }
    if (any) r.fail("only_cross_attention", "true is not supported (attn1 attending to the text; supported: false)");
  }
  require_false(r, "mid_block_only_cross_attention", "attn1 attending to the text");
  require_false(r, "dual_cross_attention", "DualTransformer2DModel");
  require_null(r, "class_embed_type", "class conditioning");
  require_null(r, "num_class_embeds", "class conditioning");
  require_null(r, "encoder_hid_dim", "a projection of the text states");
  require_null(r, "encoder_hid_dim_type", "a projection of the text states");
  require_null(r, "time_embedding_act_fn", "an activation after the time embedding");
  require_null(r, "timestep_post_act", "an activation inside the time embedding");
  require_null(r, "time_cond_proj_dim", "the guidance embedding of LCM-distilled U-Nets");
  require_null(r, "cross_attention_norm", "a norm of the text states");
  require_null(r, "reverse_transformer_layers_per_block", "per-layer transformer depths of the up blocks");
  require_false(r, "class_embeddings_concat", "class conditioning");
  require_false(r, "resnet_skip_time_act", "resnets without the time activation");
  if (const std::string t = r.string("time_embedding_type", "positional"); t != "positional")
    r.fail("time_embedding_type", "\"" + t + "\" is not supported (supported: positional)");
  if (const std::string t = r.string("attention_type", "default"); t != "default")
    r.fail("attention_type", "\"" + t + "\" is not supported (supported: default)");
  if (const std::string t = r.string("resnet_time_scale_shift", "default"); t != "default")
    r.fail("resnet_time_scale_shift", "\"" + t + "\" is not supported (supported: default)");
  if (r.number("resnet_out_scale_factor", 1.0) != 1.0)
    r.fail("resnet_out_scale_factor", "is not supported other than 1.0");
  {
    std::string a = c.act_fn;
    std::transform(a.begin(), a.end(), a.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (a != "silu" && a != "swish") r.fail("act_fn", "\"" + c.act_fn + "\" is not supported (supported: silu, swish)");
  }
  for (const std::string& t : c.down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      r.fail("down_block_types", "block type \"" + t + "\" is not supported (supported: CrossAttnDownBlock2D, DownBlock2D)");
  for (const std::string& t : c.up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      r.fail("up_block_types", "block type \"" + t + "\" is not supported (supported: CrossAttnUpBlock2D, UpBlock2D)");
  if (c.mid_block_type && *c.mid_block_type != "UNetMidBlock2DCrossAttn")
    r.fail("mid_block_type", "\"" + *c.mid_block_type + "\" is not supported (supported: UNetMidBlock2DCrossAttn, null)");
  if (c.addition_embed_type) {
    if (*c.addition_embed_type != "text_time")
      r.fail("addition_embed_type", "\"" + *c.addition_embed_type + "\" is not supported (supported: null, text_time)");
    if (!c.addition_time_embed_dim) r.fail("addition_time_embed_dim", "is required with addition_embed_type text_time");
    if (!c.projection_class_embeddings_input_dim)
      r.fail("projection_class_embeddings_input_dim", "is required with addition_embed_type text_time");
  }
  for (std::size_t k : {c.conv_in_kernel, c.conv_out_kernel})
    if (k % 2 == 0) r.fail(k == c.conv_in_kernel ? "conv_in_kernel" : "conv_out_kernel", "must be odd");
  for (std::size_t d : c.cross_attention_dim)
    if (d != c.cross_attention_dim[0])
      r.fail("cross_attention_dim", "different widths per block are not supported (one encoder_hidden_states feeds every block)");
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t ch = c.block_out_channels[i];
    if (ch % c.norm_num_groups != 0)
      r.fail("norm_num_groups", std::to_string(c.norm_num_groups) + " does not divide block_out_channels[" +
                                    std::to_string(i) + "] = " + std::to_string(ch));
    if (c.attention_heads[i] > ch)
      r.fail("attention_head_dim", std::to_string(c.attention_heads[i]) + " heads exceed the " + std::to_string(ch) +
                                       " channels of block " + std::to_string(i) + " (it is the number of heads)");
  }
  if (!(c.norm_eps > 0)) r.fail("norm_eps", "must be positive");
  if (c.mid_block_scale_factor == 0) r.fail("mid_block_scale_factor", "must not be zero");
  if (c.block_out_channels[0] % 2 != 0) r.fail("block_out_channels", "the first width (the time projection) must be even");
  return c;
}

// ---------------------------------------------------------------------------------------------
// The network

namespace {

using Resnet = nn::ResnetBlock2D;
using nn::Dest;

struct Block {
  std::vector<Resnet> resnets;
  std::vector<nn::Transformer2DModel> attentions;  ///< empty for DownBlock2D / UpBlock2D
  bool has_sampler = false;
  nn::Downsample2D down;
  nn::Upsample2D up;
  std::vector<std::size_t> skip_channels;  ///< up blocks: channels of the skip each resnet takes
};

struct Skip {
  const float* p = nullptr;
  std::size_t channels = 0;
};

constexpr std::size_t kMaxSkips = 1024;

}  // namespace

struct UNet2DConditionModel::Impl {
  io::ModelDir dir;
  UNet2DConditionConfig cfg;
  NetworkInfo info;
  std::unique_ptr<nn::WeightStore> store;
  std::string scope;  ///< the U-Net's prefix in a single file ("" for a folder)

  std::size_t temb_dim = 0;
  nn::TimestepEmbedding time_embedding, add_embedding;
  bool text_time = false;
  nn::Conv2d conv_in, conv_out;
  nn::GroupNorm conv_norm_out;
  std::vector<Block> down, up;
  bool has_mid = false;
  Block mid;

  Impl(io::ModelDir d, const nn::LoadOptions& options);  // a diffusers folder
  Impl(io::ModelDir d, UNet2DConditionConfig c, const std::string& prefix, const nn::LoadOptions& options);  // LDM
  void bind();
  Resnet bind_resnet(const std::string& prefix, std::size_t in, std::size_t out, float scale);
  nn::Transformer2DModel bind_transformer(const std::string& prefix, std::size_t channels, std::size_t block,
                                          std::size_t layers);
  Tensor forward(const Tensor& x, std::span<const float> timesteps, const Tensor& text, kernels::Context& ctx,
                 const UNet2DConditionAdded& added) const;
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width, std::size_t tokens) const;
};

Resnet UNet2DConditionModel::Impl::bind_resnet(const std::string& p, std::size_t in, std::size_t out, float scale) {
  Resnet::Options o;
  o.groups = cfg.norm_num_groups;
  o.eps = static_cast<float>(cfg.norm_eps);
  o.temb_channels = temb_dim;
  o.output_scale_factor = scale;
  o.act = kernels::Activation::silu;
  return Resnet::bind(*store, p, in, out, o);
}

nn::Transformer2DModel UNet2DConditionModel::Impl::bind_transformer(const std::string& p, std::size_t channels,
                                                                    std::size_t block, std::size_t layers) {
  nn::Transformer2DModel::Options o;
  o.heads = cfg.attention_heads[block];
  o.head_dim = channels / o.heads;  // diffusers: out_channels // num_attention_heads
  o.context_dim = cfg.cross_attention_dim[block];
  o.groups = cfg.norm_num_groups;
  o.layers = layers;
  o.linear_projection = cfg.use_linear_projection;
  o.norm_eps = 1e-5f;  // BasicTransformerBlock's norm_eps default (the U-Net does not pass its own)
  return nn::Transformer2DModel::bind(*store, p, channels, o);
}

UNet2DConditionModel::Impl::Impl(io::ModelDir d, const nn::LoadOptions& options) : dir(std::move(d)) {
  if (!dir.has_config())
    raise<format_error>(kModel, dir.path().string() + " has no config.json to build the UNet2DConditionModel from");
  cfg = UNet2DConditionConfig::from_json(dir.config(), std::string(kModel) + " " + dir.path().string());
  store = std::make_unique<nn::WeightStore>(dir, kModel, options);
  bind();
}

UNet2DConditionModel::Impl::Impl(io::ModelDir d, UNet2DConditionConfig c, const std::string& prefix,
                                 const nn::LoadOptions& options)
    : dir(std::move(d)), cfg(std::move(c)) {
  detail::check_unet_config(cfg,
                            std::string(kModel) + " " + dir.path().string() + " (the config given to load_original)");
  store = std::make_unique<nn::WeightStore>(dir, kModel, options);
  store->set_name_map(
      [prefix, c = cfg](std::string_view name) { return prefix + detail::unet_original_name(name, c); });
  store->set_scope(prefix);
  scope = prefix;
  bind();
}

void UNet2DConditionModel::Impl::bind() {
  nn::WeightStore& w = *store;
  const UNet2DConditionConfig& c = cfg;
  const std::vector<std::size_t>& ch = c.block_out_channels;
  const std::size_t nb = ch.size(), c0 = ch[0];
  temb_dim = c.time_embed_dim();

  conv_in = nn::Conv2d::bind(w, "conv_in", c.in_channels, c0, c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2);
  time_embedding = nn::TimestepEmbedding::bind(w, "time_embedding", c0, temb_dim, temb_dim);
  if (c.addition_embed_type) {
    text_time = true;
    add_embedding = nn::TimestepEmbedding::bind(w, "add_embedding", *c.projection_class_embeddings_input_dim,
                                                temb_dim, temb_dim);
  }

  // down
  std::vector<std::size_t> skips{c0};
  std::size_t out_ch = c0;
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t in_ch = out_ch;
    out_ch = ch[i];
    const bool attn = c.down_block_types[i] == "CrossAttnDownBlock2D";
    const std::string p = "down_blocks." + std::to_string(i);
    Block b;
    for (std::size_t j = 0; j < c.layers_per_block[i]; ++j) {
      b.resnets.push_back(bind_resnet(p + ".resnets." + std::to_string(j), j == 0 ? in_ch : out_ch, out_ch, 1.0f));
      if (attn)
        b.attentions.push_back(bind_transformer(p + ".attentions." + std::to_string(j), out_ch, i,
                                                c.transformer_layers_per_block[i]));
      skips.push_back(out_ch);
    }
    if (i + 1 < nb) {
      b.has_sampler = true;
      b.down = nn::Downsample2D::bind(w, p + ".downsamplers.0", out_ch, c.downsample_padding);
      skips.push_back(out_ch);
    }
    down.push_back(std::move(b));
  }
  if (skips.size() > kMaxSkips)
    raise<format_error>(kModel, dir.path().string() + ": " + std::to_string(skips.size()) +
                                    " skip connections (max " + std::to_string(kMaxSkips) + ")");

  // mid: resnet, transformer, resnet (UNetMidBlock2DCrossAttn with num_layers 1)
  if (c.mid_block_type) {
    has_mid = true;
    const std::size_t cl = ch.back();
    const float s = static_cast<float>(c.mid_block_scale_factor);
    mid.resnets.push_back(bind_resnet("mid_block.resnets.0", cl, cl, s));
    mid.attentions.push_back(bind_transformer("mid_block.attentions.0", cl, nb - 1, c.transformer_layers_per_block.back()));
    mid.resnets.push_back(bind_resnet("mid_block.resnets.1", cl, cl, s));
  }

  // up (the per-block lists reversed)
  out_ch = ch.back();
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t r = nb - 1 - i;  // the mirrored down block
    const std::size_t prev_out = out_ch;
    out_ch = ch[r];
    const std::size_t in_ch = ch[r == 0 ? 0 : r - 1];
    const bool attn = c.up_block_types[i] == "CrossAttnUpBlock2D";
    const std::string p = "up_blocks." + std::to_string(i);
    const std::size_t L = c.layers_per_block[r] + 1;
    Block b;
    for (std::size_t j = 0; j < L; ++j) {
      const std::size_t res_skip = j == L - 1 ? in_ch : out_ch;
      const std::size_t res_in = j == 0 ? prev_out : out_ch;
      if (skips.empty() || skips.back() != res_skip)
        raise<format_error>(kModel, dir.path().string() + ": " + p + ".resnets." + std::to_string(j) +
                                        " expects a skip of " + std::to_string(res_skip) +
                                        " channels that the down blocks do not provide (inconsistent "
                                        "block_out_channels / layers_per_block)");
      skips.pop_back();
      b.skip_channels.push_back(res_skip);
      b.resnets.push_back(bind_resnet(p + ".resnets." + std::to_string(j), res_in + res_skip, out_ch, 1.0f));
      if (attn)
        b.attentions.push_back(bind_transformer(p + ".attentions." + std::to_string(j), out_ch, r,
                                                c.transformer_layers_per_block[r]));
    }
    if (i + 1 < nb) {
      b.has_sampler = true;
      b.up = nn::Upsample2D::bind(w, p + ".upsamplers.0", out_ch);
    }
    up.push_back(std::move(b));
  }
  if (!skips.empty())
    raise<format_error>(kModel, dir.path().string() + ": the up blocks leave " + std::to_string(skips.size()) +
                                    " skip connections unused (inconsistent layers_per_block)");

  conv_norm_out = nn::GroupNorm::bind(w, "conv_norm_out", c.norm_num_groups, c0, static_cast<float>(c.norm_eps));
  conv_out = nn::Conv2d::bind(w, "conv_out", c0, c.out_channels, c.conv_out_kernel, 1, (c.conv_out_kernel - 1) / 2);
  w.check_all_used();

  info.architecture = kModel;
  info.in_channels = c.in_channels;
  info.out_channels = c.out_channels;
  info.sample_size = c.sample_height.value_or(0);
  info.size_multiple = std::size_t{1} << (nb - 1);
  info.text_dim = c.cross_attention_dim.at(0);
  if (text_time) {  // SDXL: add_embedding([text_embeds; Timesteps(time_ids)]) with 6 time ids
    info.time_ids = 6;
    const std::size_t K = *c.projection_class_embeddings_input_dim, A = *c.addition_time_embed_dim;
    info.pooled_dim = K > 6 * A ? K - 6 * A : 0;
  }
  info.parameters = w.parameters();
  for (const std::string& name : dir.names())  // the U-Net's tensors only (a single file holds more)
    if (name.starts_with(scope)) ++info.dtypes[std::string(dtype_name(dir.find(name)->dtype))];
}

// The arena allocations of forward() at their peak: the kept skips, the two ping-pong buffers, the
// largest temporary of one resnet / transformer / upsampler, plus the output. In double, saturating.
std::uint64_t UNet2DConditionModel::Impl::forward_bytes(std::size_t batch, std::size_t height, std::size_t width,
                                                        std::size_t tokens) const {
  const UNet2DConditionConfig& c = cfg;
  const double B = static_cast<double>(batch), T = static_cast<double>(temb_dim);
  double h = static_cast<double>(height), w = static_cast<double>(width);
  double temp = 0;
  const auto hw_of = [&] { return static_cast<std::size_t>(std::min(h * w, 1e18)); };
  auto block_temp = [&](const Block& blk, std::size_t j) {
    temp = std::max(temp, blk.resnets[j].arena_floats(batch, hw_of()));
    if (!blk.attentions.empty()) temp = std::max(temp, blk.attentions[j].arena_floats(batch, hw_of(), tokens));
  };
  double add_in = 0;
  if (text_time) add_in = B * static_cast<double>(add_embedding.linear_1.in);
  double floats = B * static_cast<double>(c.in_channels) * h * w * (c.center_input_sample ? 1 : 0) + B +
                  B * static_cast<double>(c.block_out_channels[0]) + 2 * add_in + 4 * B * T;
  floats += B * static_cast<double>(c.block_out_channels[0]) * h * w;  // conv_in
  for (const Block& blk : down) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      block_temp(blk, j);
      floats += B * static_cast<double>(blk.resnets[j].out) * h * w;
    }
    if (blk.has_sampler) {
      const nn::Conv2d& sc = blk.down.conv;
      h = std::floor((h + static_cast<double>(sc.pad[0] + sc.pad[2]) - 3) / 2) + 1;
      w = std::floor((w + static_cast<double>(sc.pad[1] + sc.pad[3]) - 3) / 2) + 1;
      floats += B * static_cast<double>(sc.out) * h * w;
    }
  }
  if (has_mid)
    for (std::size_t j = 0; j < mid.resnets.size(); ++j) {
      temp = std::max(temp, mid.resnets[j].arena_floats(batch, hw_of()));
      if (j < mid.attentions.size()) temp = std::max(temp, mid.attentions[j].arena_floats(batch, hw_of(), tokens));
    }
  double pp = B * static_cast<double>(c.block_out_channels.back()) * h * w;
  for (const Block& blk : up) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      pp = std::max(pp, B * static_cast<double>(blk.resnets[j].in) * h * w);
      block_temp(blk, j);
    }
    if (blk.has_sampler) {
      temp = std::max(temp, blk.up.arena_floats(batch, hw_of()));
      h *= 2;
      w *= 2;
    }
  }
  floats += 2 * pp + temp +
            B * static_cast<double>(c.out_channels) * static_cast<double>(height) * static_cast<double>(width);
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

Tensor UNet2DConditionModel::Impl::forward(const Tensor& x, std::span<const float> timesteps, const Tensor& text,
                                           kernels::Context& ctx, const UNet2DConditionAdded& added) const {
  const UNet2DConditionConfig& c = cfg;
  // ---- arguments
  if (x.ndim() != 4 || x.dim(1) != c.in_channels)
    raise<shape_error>(kForward, "x: expected [batch, " + std::to_string(c.in_channels) + ", height, width], got " +
                                     shape_string(x.shape()));
  const std::size_t B = x.dim(0), H = x.dim(2), W = x.dim(3);
  const std::size_t mult = info.size_multiple;
  if (B == 0 || H == 0 || W == 0 || H % mult != 0 || W % mult != 0)
    raise<shape_error>(kForward, "x: batch, height and width must be positive and height and width multiples of " +
                                     std::to_string(mult) + ", got shape " + shape_string(x.shape()));
  if (timesteps.size() != B && timesteps.size() != 1)
    raise<shape_error>(kForward, "timesteps: expected 1 or " + std::to_string(B) + " values (the batch), got " +
                                     std::to_string(timesteps.size()));
  for (float t : timesteps)
    if (!std::isfinite(t)) raise<value_error>(kForward, "timesteps: non-finite value " + std::to_string(t));
  const std::size_t D = c.cross_attention_dim[0];
  if (text.ndim() != 3 || text.dim(0) != B || text.dim(2) != D || text.dim(1) == 0 || text.dim(1) > kMaxTokens)
    raise<shape_error>(kForward, "encoder_hidden_states: expected [" + std::to_string(B) + ", tokens (1.." +
                                     std::to_string(kMaxTokens) + "), " + std::to_string(D) +
                                     " (cross_attention_dim)], got " + shape_string(text.shape()));
  const std::size_t L = text.dim(1);
  std::size_t n_ids = 0;
  if (text_time) {
    if (!added.text_embeds || !added.time_ids)
      raise<value_error>(kForward, std::string("added: the model has addition_embed_type text_time and needs ") +
                                       (added.text_embeds ? "time_ids" : "text_embeds") + " [batch, ...]");
    const Tensor& te = *added.text_embeds;
    const Tensor& ids = *added.time_ids;
    const std::size_t want = add_embedding.linear_1.in, A = *c.addition_time_embed_dim;
    if (te.ndim() != 2 || te.dim(0) != B || ids.ndim() != 2 || ids.dim(0) != B || te.dim(1) + ids.dim(1) * A != want)
      raise<shape_error>(kForward, "added: text_embeds " + shape_string(te.shape()) + " and time_ids " +
                                       shape_string(ids.shape()) + " must be [" + std::to_string(B) +
                                       ", P] and [" + std::to_string(B) + ", n] with P + n * " + std::to_string(A) +
                                       " (addition_time_embed_dim) = " + std::to_string(want) +
                                       " (projection_class_embeddings_input_dim)");
    for (float v : ids)
      if (!std::isfinite(v)) raise<value_error>(kForward, "added: time_ids: non-finite value " + std::to_string(v));
    n_ids = ids.dim(1);
  } else if (added.text_embeds || added.time_ids) {
    raise<value_error>(kForward, "added: text_embeds / time_ids given, but the model has no addition_embed_type");
  }

  kernels::Arena& arena = ctx.arena();
  arena.reset();
  const std::size_t T = temb_dim, C0 = c.block_out_channels[0];
  const float shift = static_cast<float>(c.freq_shift);

  // ---- 0. input
  const float* sample = x.data();
  if (c.center_input_sample) {
    float* s = arena.alloc(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) s[i] = 2.0f * sample[i] - 1.0f;
    sample = s;
  }

  // ---- 1. time embedding (+ SDXL's text_time); `temb` = SiLU(emb), what every resnet takes.
  float* tb = arena.alloc(B);
  for (std::size_t b = 0; b < B; ++b) tb[b] = timesteps[timesteps.size() == 1 ? 0 : b];
  float* proj = arena.alloc(B * C0);
  kernels::timestep_embedding(tb, B, C0, c.flip_sin_to_cos, shift, proj);
  float* emb = arena.alloc(B * T);
  time_embedding(proj, B, emb, ctx);
  if (text_time) {
    const std::size_t m = arena.mark();
    const std::size_t A = *c.addition_time_embed_dim, P = added.text_embeds->dim(1), K = add_embedding.linear_1.in;
    float* tproj = arena.alloc(B * n_ids * A);  // add_time_proj(time_ids.flatten()).reshape(B, -1)
    kernels::timestep_embedding(added.time_ids->data(), B * n_ids, A, c.flip_sin_to_cos, shift, tproj);
    float* cat = arena.alloc(B * K);  // [text_embeds; time_embeds]
    for (std::size_t b = 0; b < B; ++b) {
      std::memcpy(cat + b * K, added.text_embeds->data() + b * P, P * sizeof(float));
      std::memcpy(cat + b * K + P, tproj + b * n_ids * A, n_ids * A * sizeof(float));
    }
    float* aug = arena.alloc(B * T);
    add_embedding(cat, B, aug, ctx);
    for (std::size_t i = 0; i < B * T; ++i) emb[i] += aug[i];
    arena.release(m);
  }
  float* temb = arena.alloc(B * T);
  kernels::activation(kernels::Activation::silu, emb, temb, B * T, ctx);
  const float* ctx_states = text.data();

  // ---- 2. conv_in and 3. down blocks; every output is kept as a skip.
  std::vector<Skip> skips;
  skips.reserve(kMaxSkips);
  std::size_t h = H, w = W;
  float* cur = arena.alloc(B * C0 * H * W);
  conv_in(sample, B, H, W, cur, ctx);
  skips.push_back({cur, C0});
  std::size_t cur_c = C0;
  // LoadOptions::stream_weights: the weights' pages dropped after each resnet + attention pair.
  const auto release = [&] { store->release_streamed_pages(); };
  for (const Block& blk : down) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      const Resnet& r = blk.resnets[j];
      float* out = arena.alloc(B * r.out * h * w);
      r(cur, B, h, w, {out, r.out * h * w}, temb, ctx);
      if (!blk.attentions.empty()) blk.attentions[j]({out, r.out * h * w}, B, h, w, ctx_states, L, ctx);
      release();
      cur = out;
      cur_c = r.out;
      skips.push_back({cur, cur_c});
    }
    if (blk.has_sampler) {
      const std::size_t ho = blk.down.out_height(h), wo = blk.down.out_width(w);
      float* out = arena.alloc(B * cur_c * ho * wo);
      blk.down(cur, B, h, w, {out, cur_c * ho * wo}, ctx);
      h = ho;
      w = wo;
      cur = out;
      skips.push_back({cur, cur_c});
    }
  }

  // ---- 4. mid and 5. up blocks on two ping-pong buffers sized for the largest concatenation.
  std::size_t pp = B * cur_c * h * w;
  {
    std::size_t hh = h, ww = w;
    for (const Block& blk : up) {
      for (const Resnet& r : blk.resnets) pp = std::max(pp, B * r.in * hh * ww);
      if (blk.has_sampler) hh *= 2, ww *= 2;
    }
  }
  float* ping[2] = {arena.alloc(pp), arena.alloc(pp)};
  int side = 0;
  auto append_skip = [&](float* cat, std::size_t hc, const Skip& s, std::size_t plane) {
    const std::size_t stride = (hc + s.channels) * plane;
    for (std::size_t b = 0; b < B; ++b)
      std::memcpy(cat + b * stride + hc * plane, s.p + b * s.channels * plane, s.channels * plane * sizeof(float));
  };
  const std::size_t first_skip = up.front().skip_channels.front();
  const float* hcur = cur;
  if (has_mid) {
    for (std::size_t k = 0; k < mid.resnets.size(); ++k) {
      const bool last = k + 1 == mid.resnets.size();
      float* dst = ping[side];
      const Dest d{dst, (cur_c + (last ? first_skip : 0)) * h * w};
      mid.resnets[k](hcur, B, h, w, d, temb, ctx);
      if (!last && k < mid.attentions.size()) mid.attentions[k](d, B, h, w, ctx_states, L, ctx);
      release();
      hcur = dst;
      side ^= 1;
    }
  } else {
    float* dst = ping[side];
    for (std::size_t b = 0; b < B; ++b)
      std::memcpy(dst + b * (cur_c + first_skip) * h * w, hcur + b * cur_c * h * w, cur_c * h * w * sizeof(float));
    hcur = dst;
    side ^= 1;
  }
  append_skip(ping[side ^ 1], cur_c, skips.back(), h * w);
  skips.pop_back();

  for (std::size_t i = 0; i < up.size(); ++i) {
    const Block& blk = up[i];
    const std::size_t nr = blk.resnets.size();
    for (std::size_t j = 0; j < nr; ++j) {
      const Resnet& r = blk.resnets[j];
      const std::size_t next_skip = j + 1 < nr ? blk.skip_channels[j + 1] : 0;
      float* dst = ping[side];
      const Dest d{dst, (r.out + next_skip) * h * w};
      r(hcur, B, h, w, d, temb, ctx);
      if (!blk.attentions.empty()) blk.attentions[j](d, B, h, w, ctx_states, L, ctx);
      release();
      hcur = dst;
      side ^= 1;
      cur_c = r.out;
      if (j + 1 < nr) {
        append_skip(dst, cur_c, skips.back(), h * w);
        skips.pop_back();
      }
    }
    if (blk.has_sampler) {
      const std::size_t ns = up[i + 1].skip_channels.front();
      float* dst = ping[side];
      blk.up(hcur, B, h, w, {dst, (cur_c + ns) * 4 * h * w}, ctx);
      h *= 2;
      w *= 2;
      hcur = dst;
      side ^= 1;
      append_skip(dst, cur_c, skips.back(), h * w);
      skips.pop_back();
    }
  }

  // ---- 6. GroupNorm -> SiLU -> conv_out.
  float* normed = ping[side];
  conv_norm_out(hcur, normed, B, H * W, ctx, true);
  Tensor out({B, c.out_channels, H, W});
  conv_out(normed, B, H, W, out.data(), ctx);
  release();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Public wrapper

UNet2DConditionModel::UNet2DConditionModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UNet2DConditionModel::UNet2DConditionModel(UNet2DConditionModel&&) noexcept = default;
UNet2DConditionModel& UNet2DConditionModel::operator=(UNet2DConditionModel&&) noexcept = default;
UNet2DConditionModel::~UNet2DConditionModel() = default;

UNet2DConditionModel UNet2DConditionModel::load(const std::filesystem::path& path, const nn::LoadOptions& options) {
  return load(io::ModelDir::open(path, options.variant), options);
}

UNet2DConditionModel UNet2DConditionModel::load(io::ModelDir dir, const nn::LoadOptions& options) {
  return UNet2DConditionModel(std::make_unique<Impl>(std::move(dir), options));
}

UNet2DConditionModel UNet2DConditionModel::load_original(io::ModelDir file, std::string prefix,
                                                         UNet2DConditionConfig config, const nn::LoadOptions& options) {
  return UNet2DConditionModel(std::make_unique<Impl>(std::move(file), std::move(config), prefix, options));
}

bool UNet2DConditionModel::has_original_names(const io::ModelDir& dir, std::string_view prefix) {
  const std::string p(prefix);
  return dir.contains(p + "input_blocks.0.0.weight") && dir.contains(p + "time_embed.0.weight") &&
         dir.contains(p + "out.2.weight");
}

Tensor UNet2DConditionModel::forward(const Tensor& x, std::span<const float> timesteps,
                                     const Tensor& encoder_hidden_states, kernels::Context& ctx,
                                     const UNet2DConditionAdded& added) const {
  return impl_->forward(x, timesteps, encoder_hidden_states, ctx, added);
}

std::uint64_t UNet2DConditionModel::forward_bytes(std::size_t batch, std::size_t height, std::size_t width,
                                                  std::size_t text_tokens) const {
  return impl_->forward_bytes(batch, height, width, text_tokens);
}

Tensor UNet2DConditionModel::forward_conditioned(const Tensor& x, std::span<const float> timesteps,
                                                 const Conditioning& c, kernels::Context& ctx) const {
  if (!c.text)
    raise<value_error>(kForward, "a text-conditional U-Net needs the text encoder's hidden states (a prompt)");
  if (!c.labels.empty()) raise<value_error>(kForward, "a text-conditional U-Net takes no class labels");
  return impl_->forward(x, timesteps, *c.text, ctx, UNet2DConditionAdded{c.pooled, c.time_ids});
}

Tensor UNet2DConditionModel::forward(const Tensor&, std::span<const float>, std::span<const std::int64_t>,
                                     kernels::Context&) const {
  raise<value_error>(kForward, "a text-conditional U-Net needs the text encoder's hidden states (a prompt), "
                               "not class labels");
}

const UNet2DConditionConfig& UNet2DConditionModel::config() const noexcept { return impl_->cfg; }
const NetworkInfo& UNet2DConditionModel::info() const noexcept { return impl_->info; }

}  // namespace models
DIFFUSE_END_NAMESPACE
