// SPDX-License-Identifier: MIT
// diffusers UNet2DModel (see models/unet2d.hpp): config parsing, parameter binding by the published
// names, and the forward pass on the kernels with every activation in the context's arena.
//
// Memory plan of a forward (all from ctx.arena(), in the same order on every call):
//   time embedding | conv_in output and every down-block output (the skip list, kept to the end)
//   | two ping-pong buffers for the mid and up path | per-block temporaries (mark/release).
// An up-block resnet consumes torch.cat([h, skip], dim=1): the op producing h writes it straight
// into the first channels of the ping-pong buffer that holds the concatenation (batch stride
// (C_h + C_skip) * H * W), and only the skip is copied in behind it.
#include "diffuse/models/unet2d.hpp"

#include <algorithm>
#include <cctype>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/nn/blocks.hpp"
#include "diffuse/nn/config.hpp"
#include "diffuse/nn/layers.hpp"
#include "registry.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Config parsing

[[noreturn]] void bad_field(std::string_view where, const char* name, const std::string& what) {
  raise<format_error>(where, std::string("config.json \"") + name + "\": " + what);
}

std::string join_names(std::initializer_list<const char*> names) {
  std::string s;
  for (const char* n : names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

// "UNetResDownBlock2D" is diffusers' alias of "DownBlock2D" (get_down_block strips "UNetRes").
std::string strip_unetres(const std::string& t) { return t.rfind("UNetRes", 0) == 0 ? t.substr(7) : t; }

}  // namespace

UNet2DConfig UNet2DConfig::from_json(const json& cfg, std::string_view where) {
  if (!cfg.is_object()) raise<format_error>(where, "config.json is not a JSON object");
  namespace L = nn::limits;
  const nn::ConfigReader r(cfg, std::string(where));
  constexpr nn::SizeRange channels{0, L::kMaxChannels};
  UNet2DConfig c;
  if (const json* v = r.find("sample_size")) {
    if (v->is_array()) {
      if (v->size() != 2) bad_field(where, "sample_size", "expected an integer or [height, width], got " + nn::short_json(*v));
      const nlohmann::json hw = {{"sample_size", *v}};
      const std::vector<std::size_t> s = nn::ConfigReader(hw, std::string(where)).sizes("sample_size", {}, {1, L::kMaxSampleSize}, 2);
      c.sample_height = s[0];
      c.sample_width = s[1];
    } else {
      c.sample_height = c.sample_width = r.size("sample_size", 0, {1, L::kMaxSampleSize});
    }
  }
  c.in_channels = r.size("in_channels", c.in_channels, channels);
  c.out_channels = r.size("out_channels", c.out_channels, channels);
  c.center_input_sample = r.boolean("center_input_sample", c.center_input_sample);
  c.time_embedding_type = r.string("time_embedding_type", c.time_embedding_type);
  c.time_embedding_dim = r.optional_size("time_embedding_dim", c.time_embedding_dim, {0, L::kMaxEmbedDim});
  c.freq_shift = r.number("freq_shift", c.freq_shift);
  c.flip_sin_to_cos = r.boolean("flip_sin_to_cos", c.flip_sin_to_cos);
  c.down_block_types = r.strings("down_block_types", c.down_block_types, L::kMaxBlocks);
  c.mid_block_type = r.optional_string("mid_block_type", c.mid_block_type);
  c.up_block_types = r.strings("up_block_types", c.up_block_types, L::kMaxBlocks);
  c.block_out_channels = r.sizes("block_out_channels", c.block_out_channels, channels, L::kMaxBlocks);
  c.layers_per_block = r.size("layers_per_block", c.layers_per_block, {0, L::kMaxLayersPerBlock});
  c.mid_block_scale_factor = r.number("mid_block_scale_factor", c.mid_block_scale_factor);
  c.downsample_padding = r.size("downsample_padding", c.downsample_padding, {0, L::kMaxPadding});
  c.downsample_type = r.string("downsample_type", c.downsample_type);
  c.upsample_type = r.string("upsample_type", c.upsample_type);
  c.dropout = r.number("dropout", c.dropout);
  c.act_fn = r.string("act_fn", c.act_fn);
  c.attention_head_dim = r.optional_size("attention_head_dim", c.attention_head_dim, channels);
  c.norm_num_groups = r.optional_size("norm_num_groups", c.norm_num_groups, channels);
  c.attn_norm_num_groups = r.optional_size("attn_norm_num_groups", c.attn_norm_num_groups, channels);
  c.norm_eps = r.number("norm_eps", c.norm_eps);
  c.resnet_time_scale_shift = r.string("resnet_time_scale_shift", c.resnet_time_scale_shift);
  c.add_attention = r.boolean("add_attention", c.add_attention);
  c.class_embed_type = r.optional_string("class_embed_type", c.class_embed_type);
  c.num_class_embeds = r.optional_size("num_class_embeds", c.num_class_embeds, {0, L::kMaxClasses});
  c.num_train_timesteps = r.optional_size("num_train_timesteps", c.num_train_timesteps, {0, L::kMaxTrainTimesteps});
  if (const json* v = r.find("null_class_label")) {
    if (!v->is_number_integer()) bad_field(where, "null_class_label", "expected an integer, got " + nn::short_json(*v));
    c.null_class_label = v->get<std::int64_t>();
  }

  // Consistency, as UNet2DModel.__init__ checks it (and what its modules would fail on).
  const std::size_t n = c.block_out_channels.size();
  if (n == 0) bad_field(where, "block_out_channels", "must not be empty");
  if (c.down_block_types.size() != n || c.up_block_types.size() != n)
    raise<format_error>(where, "config.json: down_block_types (" + std::to_string(c.down_block_types.size()) +
                                   "), up_block_types (" + std::to_string(c.up_block_types.size()) +
                                   ") and block_out_channels (" + std::to_string(n) + ") must have the same length");
  for (std::size_t ch : c.block_out_channels)
    if (ch == 0) bad_field(where, "block_out_channels", "channels must be positive");
  if (c.layers_per_block == 0) bad_field(where, "layers_per_block", "must be at least 1");
  if (c.in_channels == 0 || c.out_channels == 0) bad_field(where, "in_channels", "in/out channels must be positive");
  for (const std::string& t : c.down_block_types) {
    const std::string s = strip_unetres(t);
    if (s != "DownBlock2D" && s != "AttnDownBlock2D")
      bad_field(where, "down_block_types",
                "block type \"" + t + "\" is not supported (supported: DownBlock2D, AttnDownBlock2D)");
  }
  for (const std::string& t : c.up_block_types) {
    const std::string s = strip_unetres(t);
    if (s != "UpBlock2D" && s != "AttnUpBlock2D")
      bad_field(where, "up_block_types",
                "block type \"" + t + "\" is not supported (supported: UpBlock2D, AttnUpBlock2D)");
  }
  if (c.mid_block_type && *c.mid_block_type != "UNetMidBlock2D")
    bad_field(where, "mid_block_type",
              "block type \"" + *c.mid_block_type + "\" is not supported (supported: UNetMidBlock2D, null)");
  if (c.time_embedding_type != "positional" && c.time_embedding_type != "learned" &&
      c.time_embedding_type != "fourier")
    bad_field(where, "time_embedding_type",
              "\"" + c.time_embedding_type + "\" is not supported (supported: " +
                  join_names({"positional", "learned", "fourier"}) + ")");
  if (c.time_embedding_type == "learned" && !c.num_train_timesteps)
    bad_field(where, "num_train_timesteps", "is required with time_embedding_type \"learned\"");
  // DownBlock2D/UpBlock2D always use a conv; AttnDown/AttnUp read these fields.
  if (c.downsample_type != "conv")
    bad_field(where, "downsample_type", "\"" + c.downsample_type + "\" is not supported (supported: conv)");
  if (c.upsample_type != "conv")
    bad_field(where, "upsample_type", "\"" + c.upsample_type + "\" is not supported (supported: conv)");
  if (c.resnet_time_scale_shift != "default" && c.resnet_time_scale_shift != "scale_shift")
    bad_field(where, "resnet_time_scale_shift",
              "\"" + c.resnet_time_scale_shift + "\" is not supported (supported: default, scale_shift)");
  {
    std::string a = c.act_fn;
    std::transform(a.begin(), a.end(), a.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (a != "silu" && a != "swish" && a != "gelu")
      bad_field(where, "act_fn",
                "\"" + c.act_fn + "\" is not supported (supported: silu, swish, gelu; diffusers also has mish, relu)");
  }
  if (c.class_embed_type && *c.class_embed_type != "timestep") {
    if (*c.class_embed_type == "identity")
      bad_field(where, "class_embed_type",
                "\"identity\" adds embedding vectors given as class labels, which Network::forward (integer labels) "
                "cannot pass (supported: null with num_class_embeds, timestep)");
    bad_field(where, "class_embed_type",
              "\"" + *c.class_embed_type + "\" is not supported (supported: null with num_class_embeds, timestep)");
  }
  if (!c.norm_num_groups || *c.norm_num_groups == 0)
    bad_field(where, "norm_num_groups", "must be a positive integer (diffusers' resnet blocks need it)");
  if (c.attn_norm_num_groups && *c.attn_norm_num_groups == 0)
    bad_field(where, "attn_norm_num_groups", "must be positive or null");
  if (c.attention_head_dim && *c.attention_head_dim == 0)
    bad_field(where, "attention_head_dim", "must be positive or null");
  if (!(c.norm_eps > 0)) bad_field(where, "norm_eps", "must be positive");
  if (c.mid_block_scale_factor == 0) bad_field(where, "mid_block_scale_factor", "must not be zero");
  if (c.time_embed_dim() == 0) bad_field(where, "time_embedding_dim", "must be positive");
  return c;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Modules

constexpr const char* kModel = "UNet2DModel";
constexpr const char* kForward = "UNet2DModel::forward";

using Resnet = nn::ResnetBlock2D;
using Attn = nn::SpatialAttention;
using nn::Dest;

struct Block {
  std::vector<Resnet> resnets;
  std::vector<Attn> attentions;  ///< empty for DownBlock2D / UpBlock2D
  bool has_sampler = false;
  nn::Downsample2D down;         ///< downsamplers.0 (down blocks)
  nn::Upsample2D up;             ///< upsamplers.0 (up blocks)
  std::vector<std::size_t> skip_channels;  ///< up blocks: channels of the skip each resnet takes
};

struct Skip {
  const float* p = nullptr;
  std::size_t channels = 0;
};

constexpr std::size_t kMaxSkips = 256;

class UNet2D final : public Network {
 public:
  UNet2D(io::ModelDir dir, const nn::LoadOptions& options);

  const NetworkInfo& info() const noexcept override { return info_; }
  Tensor forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                 kernels::Context& ctx) const override;
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const override;

 private:
  Resnet bind_resnet(const std::string& prefix, std::size_t in, std::size_t out, float scale);
  Attn bind_attention(const std::string& prefix, std::size_t channels, std::size_t head_dim,
                      std::optional<std::size_t> groups, float rescale);
  void check_groups(const std::string& name, std::size_t channels, std::size_t groups) const;

  void time_proj(const float* t, std::size_t batch, float* out) const;

  io::ModelDir dir_;  // the mapping f32 weights are used from
  UNet2DConfig cfg_;
  NetworkInfo info_;
  std::unique_ptr<nn::WeightStore> store_;    // owns converted weights

  kernels::Activation act_ = kernels::Activation::silu;
  std::size_t time_in_ = 0;   // width of the time projection
  std::size_t temb_dim_ = 0;  // T
  const float* fourier_weight_ = nullptr;  // [C0]
  const float* learned_time_ = nullptr;    // [num_train_timesteps, C0]
  nn::TimestepEmbedding time_embedding_;
  enum class ClassEmbed { none, table, timestep } class_kind_ = ClassEmbed::none;
  const float* class_table_ = nullptr;  // [num_class_embeds, T]
  nn::TimestepEmbedding class_embedding_;

  nn::Conv2d conv_in_, conv_out_;
  nn::GroupNorm conv_norm_out_;
  std::vector<Block> down_, up_;
  bool has_mid_ = false;
  Block mid_;
  std::size_t n_skips_ = 0;
};

void UNet2D::check_groups(const std::string& name, std::size_t channels, std::size_t groups) const {
  if (groups == 0 || channels % groups != 0)
    raise<format_error>(kModel, dir_.path().string() + ": " + name + " has " + std::to_string(channels) +
                                    " channels, not divisible into " + std::to_string(groups) +
                                    " groups (config.json norm_num_groups / attn_norm_num_groups)");
}

Resnet UNet2D::bind_resnet(const std::string& p, std::size_t in, std::size_t out, float scale) {
  nn::ResnetBlock2D::Options o;
  o.groups = *cfg_.norm_num_groups;
  o.eps = static_cast<float>(cfg_.norm_eps);
  o.temb_channels = temb_dim_;
  o.scale_shift = cfg_.resnet_time_scale_shift == "scale_shift";
  o.output_scale_factor = scale;
  o.act = act_;
  return nn::ResnetBlock2D::bind(*store_, p, in, out, o);
}

Attn UNet2D::bind_attention(const std::string& p, std::size_t channels, std::size_t head_dim,
                            std::optional<std::size_t> groups, float rescale) {
  nn::SpatialAttention::Options o;
  o.head_dim = head_dim;
  o.groups = groups;
  o.eps = static_cast<float>(cfg_.norm_eps);
  o.rescale_output_factor = rescale;
  return nn::SpatialAttention::bind(*store_, p, channels, o);
}

UNet2D::UNet2D(io::ModelDir dir, const nn::LoadOptions& options) : dir_(std::move(dir)) {
  if (!dir_.has_config())
    raise<format_error>(kModel, dir_.path().string() + " has no config.json to build the UNet2DModel from");
  cfg_ = UNet2DConfig::from_json(dir_.config(), std::string(kModel) + " " + (dir_.path() / "config.json").string());
  store_ = std::make_unique<nn::WeightStore>(dir_, kModel, options);
  nn::WeightStore& w = *store_;
  const UNet2DConfig& c = cfg_;
  const std::vector<std::size_t>& ch = c.block_out_channels;
  const std::size_t nb = ch.size();
  const std::size_t c0 = ch[0];
  const float eps = static_cast<float>(c.norm_eps);
  {
    std::string a = c.act_fn;
    std::transform(a.begin(), a.end(), a.begin(), [](unsigned char x) { return static_cast<char>(std::tolower(x)); });
    act_ = kernels::parse_activation(a.c_str());
  }
  temb_dim_ = c.time_embed_dim();

  conv_in_ = nn::Conv2d::bind(w, "conv_in", c.in_channels, c0, 3, 1, 1);
  // time
  time_in_ = c0;
  if (c.time_embedding_type == "fourier") {
    time_in_ = 2 * c0;
    fourier_weight_ = w.f32("time_proj.weight", {c0});
  } else if (c.time_embedding_type == "learned") {
    learned_time_ = w.f32("time_proj.weight", {*c.num_train_timesteps, c0});
  }
  time_embedding_ = nn::TimestepEmbedding::bind(w, "time_embedding", time_in_, temb_dim_, temb_dim_);
  if (!c.class_embed_type && c.num_class_embeds) {
    class_kind_ = ClassEmbed::table;
    class_table_ = w.f32("class_embedding.weight", {*c.num_class_embeds, temb_dim_});
  } else if (c.class_embed_type == "timestep") {
    class_kind_ = ClassEmbed::timestep;
    class_embedding_ = nn::TimestepEmbedding::bind(w, "class_embedding", time_in_, temb_dim_, temb_dim_);
  }

  // down
  std::vector<std::size_t> skips{c0};
  std::size_t out_ch = c0;
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t in_ch = out_ch;
    out_ch = ch[i];
    const bool attn = strip_unetres(c.down_block_types[i]) == "AttnDownBlock2D";
    const std::size_t head_dim = c.attention_head_dim.value_or(out_ch);
    const std::string p = "down_blocks." + std::to_string(i);
    Block b;
    for (std::size_t j = 0; j < c.layers_per_block; ++j) {
      b.resnets.push_back(bind_resnet(p + ".resnets." + std::to_string(j), j == 0 ? in_ch : out_ch, out_ch, 1.0f));
      if (attn)
        b.attentions.push_back(bind_attention(p + ".attentions." + std::to_string(j), out_ch, head_dim,
                                              *c.norm_num_groups, 1.0f));
      skips.push_back(out_ch);
    }
    if (i + 1 < nb) {
      b.has_sampler = true;
      b.down = nn::Downsample2D::bind(w, p + ".downsamplers.0", out_ch, c.downsample_padding);
      skips.push_back(out_ch);
    }
    down_.push_back(std::move(b));
  }
  n_skips_ = skips.size();
  if (n_skips_ > kMaxSkips)
    raise<format_error>(kModel, dir_.path().string() + ": " + std::to_string(n_skips_) + " skip connections (max " +
                                    std::to_string(kMaxSkips) + ")");

  // mid
  if (c.mid_block_type) {
    has_mid_ = true;
    const std::size_t cl = ch.back();
    const float s = static_cast<float>(c.mid_block_scale_factor);
    std::optional<std::size_t> attn_groups = c.attn_norm_num_groups;
    if (!attn_groups && c.resnet_time_scale_shift == "default") attn_groups = c.norm_num_groups;
    mid_.resnets.push_back(bind_resnet("mid_block.resnets.0", cl, cl, s));
    if (c.add_attention)
      mid_.attentions.push_back(
          bind_attention("mid_block.attentions.0", cl, c.attention_head_dim.value_or(cl), attn_groups, s));
    mid_.resnets.push_back(bind_resnet("mid_block.resnets.1", cl, cl, s));
  }

  // up
  std::vector<std::size_t> rev(ch.rbegin(), ch.rend());
  out_ch = rev[0];
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t prev_out = out_ch;
    out_ch = rev[i];
    const std::size_t in_ch = rev[std::min(i + 1, nb - 1)];
    const bool attn = strip_unetres(c.up_block_types[i]) == "AttnUpBlock2D";
    const std::size_t head_dim = c.attention_head_dim.value_or(out_ch);
    const std::string p = "up_blocks." + std::to_string(i);
    const std::size_t L = c.layers_per_block + 1;
    Block b;
    for (std::size_t j = 0; j < L; ++j) {
      const std::size_t res_skip = j == L - 1 ? in_ch : out_ch;
      const std::size_t res_in = j == 0 ? prev_out : out_ch;
      // The skip this resnet pops must have the channels diffusers built it for.
      const std::size_t actual = skips.back();
      skips.pop_back();
      if (actual != res_skip)
        raise<format_error>(kModel, dir_.path().string() + ": " + p + ".resnets." + std::to_string(j) +
                                        " expects a skip of " + std::to_string(res_skip) + " channels but receives " +
                                        std::to_string(actual) + " (inconsistent block_out_channels)");
      b.skip_channels.push_back(res_skip);
      b.resnets.push_back(bind_resnet(p + ".resnets." + std::to_string(j), res_in + res_skip, out_ch, 1.0f));
      if (attn)
        b.attentions.push_back(bind_attention(p + ".attentions." + std::to_string(j), out_ch, head_dim,
                                              *c.norm_num_groups, 1.0f));
    }
    if (i + 1 < nb) {
      b.has_sampler = true;
      b.up = nn::Upsample2D::bind(w, p + ".upsamplers.0", out_ch);
    }
    up_.push_back(std::move(b));
  }

  check_groups("conv_norm_out", c0, *c.norm_num_groups);
  conv_norm_out_ = nn::GroupNorm::bind(w, "conv_norm_out", *c.norm_num_groups, c0, eps);
  conv_out_ = nn::Conv2d::bind(w, "conv_out", c0, c.out_channels, 3, 1, 1);
  w.check_all_used();

  info_.architecture = kModel;
  info_.in_channels = c.in_channels;
  info_.out_channels = c.out_channels;
  info_.sample_size = c.sample_height.value_or(0);
  info_.size_multiple = std::size_t{1} << (nb - 1);
  info_.num_classes = class_kind_ == ClassEmbed::table ? *c.num_class_embeds : 0;
  if (c.null_class_label) {
    if (class_kind_ == ClassEmbed::table &&
        (*c.null_class_label < 0 || static_cast<std::size_t>(*c.null_class_label) >= *c.num_class_embeds))
      bad_field(kModel, "null_class_label",
                std::to_string(*c.null_class_label) + " is not a label of the " + std::to_string(*c.num_class_embeds) +
                    " classes");
    info_.null_class = c.null_class_label;
  }
  info_.parameters = w.parameters();
  for (const std::string& name : dir_.names()) ++info_.dtypes[std::string(dtype_name(dir_.find(name)->dtype))];
}

// ---------------------------------------------------------------------------------------------
// Forward

void UNet2D::time_proj(const float* t, std::size_t batch, float* out) const {
  const std::size_t c0 = cfg_.block_out_channels[0];
  if (fourier_weight_) {
    // GaussianFourierProjection(log=True, flip_sin_to_cos=False): x = log(t) * W * 2 * pi, [sin, cos].
    const float two_pi_scale = 2.0f;
    const float pi = static_cast<float>(std::numbers::pi);
    for (std::size_t b = 0; b < batch; ++b) {
      const float lt = std::log(t[b]);
      for (std::size_t k = 0; k < c0; ++k) {
        const float a = lt * fourier_weight_[k] * two_pi_scale * pi;
        out[b * 2 * c0 + k] = std::sin(a);
        out[b * 2 * c0 + c0 + k] = std::cos(a);
      }
    }
  } else if (learned_time_) {
    for (std::size_t b = 0; b < batch; ++b)
      std::memcpy(out + b * c0, learned_time_ + static_cast<std::size_t>(t[b]) * c0, c0 * sizeof(float));
  } else {
    kernels::timestep_embedding(t, batch, c0, cfg_.flip_sin_to_cos, static_cast<float>(cfg_.freq_shift), out);
  }
}

// The arena allocations of forward() at their peak: the kept skips, the two ping-pong buffers,
// the largest temporary of one resnet / attention / upsampler, plus the output. In double
// (exact far beyond any real size), saturating.
std::uint64_t UNet2D::forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const {
  const UNet2DConfig& c = cfg_;
  const double B = static_cast<double>(batch), T = static_cast<double>(temb_dim_);
  double h = static_cast<double>(height), w = static_cast<double>(width);
  double temp = 0;  // the largest temporary
  auto resnet_temp = [&](const Resnet& r, double hw) {
    temp = std::max(temp, r.arena_floats(batch, static_cast<std::size_t>(hw)));
  };
  auto attn_temp = [&](const Attn& a, double hw) {
    temp = std::max(temp, a.arena_floats(batch, static_cast<std::size_t>(hw)));
  };
  double floats = B * static_cast<double>(c.in_channels) * h * w * (c.center_input_sample ? 1 : 0) + B +
                  B * static_cast<double>(time_in_) * 2 + 3 * B * T;
  floats += B * static_cast<double>(c.block_out_channels[0]) * h * w;  // conv_in
  for (const Block& blk : down_) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      resnet_temp(blk.resnets[j], h * w);
      if (!blk.attentions.empty()) attn_temp(blk.attentions[j], h * w);
      floats += B * static_cast<double>(blk.resnets[j].out) * h * w;
    }
    if (blk.has_sampler) {
      const nn::Conv2d& sc = blk.down.conv;
      h = std::floor((h + static_cast<double>(sc.pad[0] + sc.pad[2]) - 3) / 2) + 1;
      w = std::floor((w + static_cast<double>(sc.pad[1] + sc.pad[3]) - 3) / 2) + 1;
      floats += B * static_cast<double>(sc.out) * h * w;
    }
  }
  for (const Resnet& r : mid_.resnets) resnet_temp(r, h * w);
  for (const Attn& a : mid_.attentions) attn_temp(a, h * w);
  double pp = 0;
  for (const Block& blk : up_) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      pp = std::max(pp, B * static_cast<double>(blk.resnets[j].in) * h * w);
      resnet_temp(blk.resnets[j], h * w);
      if (!blk.attentions.empty()) attn_temp(blk.attentions[j], h * w);
    }
    if (blk.has_sampler) {
      temp = std::max(temp, 4 * B * static_cast<double>(blk.up.conv.out) * h * w);
      h *= 2;
      w *= 2;
    }
  }
  floats += 2 * pp + temp + B * static_cast<double>(c.out_channels) * static_cast<double>(height) * static_cast<double>(width);
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

Tensor UNet2D::forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                       kernels::Context& ctx) const {
  const UNet2DConfig& c = cfg_;
  // ---- arguments
  if (x.ndim() != 4)
    raise<shape_error>(kForward, "x: expected [batch, " + std::to_string(c.in_channels) + ", height, width], got " +
                                     shape_string(x.shape()));
  const std::size_t B = x.dim(0), H = x.dim(2), W = x.dim(3);
  if (x.dim(1) != c.in_channels)
    raise<shape_error>(kForward, "x: expected " + std::to_string(c.in_channels) + " channels, got shape " +
                                     shape_string(x.shape()));
  const std::size_t mult = info_.size_multiple;
  if (B == 0 || H == 0 || W == 0 || H % mult != 0 || W % mult != 0)
    raise<shape_error>(kForward, "x: batch, height and width must be positive and height and width multiples of " +
                                     std::to_string(mult) + ", got shape " + shape_string(x.shape()));
  if (timesteps.size() != B && timesteps.size() != 1)
    raise<shape_error>(kForward, "timesteps: expected 1 or " + std::to_string(B) + " values (the batch), got " +
                                     std::to_string(timesteps.size()));
  for (float t : timesteps) {
    if (!std::isfinite(t)) raise<value_error>(kForward, "timesteps: non-finite value " + std::to_string(t));
    if (learned_time_ && (t < 0 || t != std::floor(t) || t >= static_cast<float>(*c.num_train_timesteps)))
      raise<value_error>(kForward, "timesteps: " + std::to_string(t) +
                                       " is not an integer in [0, num_train_timesteps = " +
                                       std::to_string(*c.num_train_timesteps) + ") (time_embedding_type learned)");
    if (fourier_weight_ && !(t > 0))
      raise<value_error>(kForward, "timesteps: " + std::to_string(t) +
                                       " must be positive (time_embedding_type fourier takes log(t))");
  }
  if (class_kind_ == ClassEmbed::none) {
    if (!labels.empty())
      raise<value_error>(kForward, "labels: the model is unconditional (no class_embedding), got " +
                                       std::to_string(labels.size()) + " labels");
  } else {
    if (labels.empty())
      raise<value_error>(kForward, "labels: the model is class-conditional, class labels are required");
    if (labels.size() != B && labels.size() != 1)
      raise<shape_error>(kForward, "labels: expected 1 or " + std::to_string(B) + " values (the batch), got " +
                                       std::to_string(labels.size()));
    for (std::int64_t l : labels) {
      if (class_kind_ == ClassEmbed::table && (l < 0 || static_cast<std::uint64_t>(l) >= *c.num_class_embeds))
        raise<value_error>(kForward, "labels: " + std::to_string(l) + " is out of range [0, " +
                                         std::to_string(*c.num_class_embeds) + ")");
      if (class_kind_ == ClassEmbed::timestep && learned_time_ &&
          (l < 0 || static_cast<std::uint64_t>(l) >= *c.num_train_timesteps))
        raise<value_error>(kForward, "labels: " + std::to_string(l) + " is out of range [0, " +
                                         std::to_string(*c.num_train_timesteps) + ")");
      if (class_kind_ == ClassEmbed::timestep && fourier_weight_ && l <= 0)
        raise<value_error>(kForward, "labels: " + std::to_string(l) + " must be positive (fourier time projection)");
    }
  }

  kernels::Arena& arena = ctx.arena();
  arena.reset();
  const std::size_t T = temb_dim_;
  const std::size_t C0 = c.block_out_channels[0];

  // ---- 0. input
  const float* sample = x.data();
  if (c.center_input_sample) {
    float* s = arena.alloc(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) s[i] = 2.0f * sample[i] - 1.0f;
    sample = s;
  }

  // ---- 1. time (and class) embedding; `temb` is act(emb), what every resnet's time_emb_proj takes.
  float* tb = arena.alloc(B);
  for (std::size_t b = 0; b < B; ++b) tb[b] = timesteps[timesteps.size() == 1 ? 0 : b];
  float* proj = arena.alloc(B * time_in_);
  time_proj(tb, B, proj);
  float* emb = arena.alloc(B * T);
  time_embedding_(proj, B, emb, ctx);
  if (class_kind_ == ClassEmbed::table) {
    for (std::size_t b = 0; b < B; ++b) {
      const float* row = class_table_ + static_cast<std::size_t>(labels[labels.size() == 1 ? 0 : b]) * T;
      for (std::size_t j = 0; j < T; ++j) emb[b * T + j] += row[j];
    }
  } else if (class_kind_ == ClassEmbed::timestep) {
    const std::size_t m = arena.mark();
    float* lb = arena.alloc(B);
    for (std::size_t b = 0; b < B; ++b) lb[b] = static_cast<float>(labels[labels.size() == 1 ? 0 : b]);
    float* lp = arena.alloc(B * time_in_);
    time_proj(lb, B, lp);
    float* ce = arena.alloc(B * T);
    class_embedding_(lp, B, ce, ctx);
    for (std::size_t i = 0; i < B * T; ++i) emb[i] += ce[i];
    arena.release(m);
  }
  float* temb = arena.alloc(B * T);
  kernels::activation(act_, emb, temb, B * T, ctx);

  // ---- 2. conv_in and 3. down blocks; every output is kept as a skip.
  std::array<Skip, kMaxSkips> skips;
  std::size_t n_skips = 0;
  std::size_t h = H, w = W;
  float* cur = arena.alloc(B * C0 * H * W);
  conv_in_(sample, B, H, W, cur, ctx);
  skips[n_skips++] = {cur, C0};
  std::size_t cur_c = C0;
  for (const Block& blk : down_) {
    for (std::size_t j = 0; j < blk.resnets.size(); ++j) {
      const Resnet& r = blk.resnets[j];
      float* out = arena.alloc(B * r.out * h * w);
      r(cur, B, h, w, {out, r.out * h * w}, temb, ctx);
      if (!blk.attentions.empty()) blk.attentions[j]({out, r.out * h * w}, B, h * w, ctx);
      cur = out;
      cur_c = r.out;
      skips[n_skips++] = {cur, cur_c};
    }
    if (blk.has_sampler) {
      const std::size_t ho = blk.down.out_height(h), wo = blk.down.out_width(w);
      float* out = arena.alloc(B * cur_c * ho * wo);
      blk.down(cur, B, h, w, {out, cur_c * ho * wo}, ctx);
      h = ho;
      w = wo;
      cur = out;
      skips[n_skips++] = {cur, cur_c};
    }
  }

  // ---- 4. mid and 5. up blocks on two ping-pong buffers sized for the largest concatenation.
  std::size_t pp = 0;
  {
    std::size_t hh = h, ww = w;
    for (const Block& blk : up_) {
      for (const Resnet& r : blk.resnets) pp = std::max(pp, B * r.in * hh * ww);
      if (blk.has_sampler) hh *= 2, ww *= 2;
    }
  }
  float* ping[2] = {arena.alloc(pp), arena.alloc(pp)};
  int side = 0;
  // Copies skip `s` behind the h already written into the first `hc` channels of `cat`.
  auto append_skip = [&](float* cat, std::size_t hc, const Skip& s, std::size_t plane) {
    const std::size_t stride = (hc + s.channels) * plane;
    for (std::size_t b = 0; b < B; ++b)
      std::memcpy(cat + b * stride + hc * plane, s.p + b * s.channels * plane, s.channels * plane * sizeof(float));
  };
  const std::size_t first_skip = up_.front().skip_channels.front();
  const float* hcur = cur;  // input of the next op: contiguous [B, cur_c, h, w]
  if (has_mid_) {
    for (std::size_t k = 0; k < mid_.resnets.size(); ++k) {
      const bool last = k + 1 == mid_.resnets.size();
      float* dst = ping[side];
      const Dest d{dst, (cur_c + (last ? first_skip : 0)) * h * w};
      mid_.resnets[k](hcur, B, h, w, d, temb, ctx);
      if (!last && k < mid_.attentions.size()) mid_.attentions[k](d, B, h * w, ctx);
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
  append_skip(ping[side ^ 1], cur_c, skips[--n_skips], h * w);

  for (std::size_t i = 0; i < up_.size(); ++i) {
    const Block& blk = up_[i];
    const std::size_t L = blk.resnets.size();
    for (std::size_t j = 0; j < L; ++j) {
      const Resnet& r = blk.resnets[j];
      // Where this resnet's output goes: the next concatenation, or a plain buffer.
      std::size_t next_skip = 0;
      if (j + 1 < L) next_skip = blk.skip_channels[j + 1];
      float* dst = ping[side];
      const Dest d{dst, (r.out + next_skip) * h * w};
      r(hcur, B, h, w, d, temb, ctx);
      if (!blk.attentions.empty()) blk.attentions[j](d, B, h * w, ctx);
      hcur = dst;
      side ^= 1;
      cur_c = r.out;
      if (j + 1 < L) append_skip(dst, cur_c, skips[--n_skips], h * w);
    }
    if (blk.has_sampler) {
      const std::size_t ns = up_[i + 1].skip_channels.front();
      float* dst = ping[side];
      blk.up(hcur, B, h, w, {dst, (cur_c + ns) * 4 * h * w}, ctx);
      h *= 2;
      w *= 2;
      hcur = dst;
      side ^= 1;
      append_skip(dst, cur_c, skips[--n_skips], h * w);
    }
  }

  // ---- 6. GroupNorm -> SiLU -> conv_out (conv_act is nn.SiLU whatever act_fn is).
  float* normed = ping[side];
  conv_norm_out_(hcur, normed, B, H * W, ctx, true);
  Tensor out({B, c.out_channels, H, W});
  conv_out_(normed, B, H, W, out.data(), ctx);
  if (fourier_weight_) {
    const std::size_t n = c.out_channels * H * W;
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t i = 0; i < n; ++i) out[b * n + i] /= tb[b];
  }
  return out;
}

}  // namespace

std::unique_ptr<Network> load_unet2d(io::ModelDir dir, const nn::LoadOptions& options) {
  return std::make_unique<UNet2D>(std::move(dir), options);
}

}  // namespace models
DIFFUSE_END_NAMESPACE
