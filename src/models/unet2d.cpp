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

/// diffusers ResnetBlock2D (time_embedding_norm "default" or "scale_shift").
struct Resnet {
  nn::GroupNorm norm1, norm2;
  nn::Conv2d conv1, conv2, shortcut;
  bool has_shortcut = false;
  nn::Linear time_emb_proj;
  std::size_t in = 0, out = 0;
  float output_scale_factor = 1.0f;
};

/// diffusers Attention as built by the UNet2D blocks (_from_deprecated_attn_block): optional
/// GroupNorm, q/k/v fused into one [3 * inner, C] matrix at load, to_out.0, residual, rescale.
struct Attn {
  bool has_norm = false;
  nn::GroupNorm norm;
  nn::Linear qkv;  ///< to_q | to_k | to_v fused at load: [3 * inner, channels] and bias [3 * inner]
  nn::Linear to_out;              ///< inner -> channels
  std::size_t channels = 0, heads = 1, head_dim = 0, inner = 0;
  float rescale_output_factor = 1.0f;
};

struct Block {
  std::vector<Resnet> resnets;
  std::vector<Attn> attentions;  ///< empty for DownBlock2D / UpBlock2D
  bool has_sampler = false;
  nn::Conv2d sampler;            ///< downsamplers.0.conv or upsamplers.0.conv
  /// Upsamplers: nearest 2x then the 3x3 conv, as four 2x2 convs on the low-resolution input, one
  /// per output phase (py, px) (see make_upsample_phases).
  std::array<nn::Conv2d, 4> phases;
  std::vector<std::size_t> skip_channels;  ///< up blocks: channels of the skip each resnet takes
};

/// An output destination: [batch, C, H, W] with the given batch stride (floats), so that an op
/// can write h into the first channels of a torch.cat([h, skip]) buffer.
struct Dest {
  float* p;
  std::size_t batch_stride;
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
  void run_conv(const nn::Conv2d& c, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                kernels::Context& ctx, const float* residual = nullptr) const;
  void run_resnet(const Resnet& r, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                  const float* temb, kernels::Context& ctx) const;
  void run_attention(const Attn& a, Dest x, std::size_t batch, std::size_t spatial, kernels::Context& ctx) const;
  void make_upsample_phases(Block& b);
  void run_upsample(const Block& blk, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                    kernels::Context& ctx) const;

  io::ModelDir dir_;  // the mapping f32 weights are used from
  UNet2DConfig cfg_;
  NetworkInfo info_;
  std::unique_ptr<nn::WeightStore> store_;    // owns converted weights
  std::deque<std::vector<float>> owned_;       // fused q/k/v weights and biases

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
  nn::WeightStore& w = *store_;
  const std::size_t g = *cfg_.norm_num_groups;
  const float eps = static_cast<float>(cfg_.norm_eps);
  check_groups(p + ".norm1", in, g);
  check_groups(p + ".norm2", out, g);
  Resnet r;
  r.in = in;
  r.out = out;
  r.output_scale_factor = scale;
  r.norm1 = nn::GroupNorm::bind(w, p + ".norm1", g, in, eps);
  r.conv1 = nn::Conv2d::bind(w, p + ".conv1", in, out, 3, 1, 1);
  const std::size_t tp = cfg_.resnet_time_scale_shift == "scale_shift" ? 2 * out : out;
  r.time_emb_proj = nn::Linear::bind(w, p + ".time_emb_proj", temb_dim_, tp);
  r.norm2 = nn::GroupNorm::bind(w, p + ".norm2", g, out, eps);
  r.conv2 = nn::Conv2d::bind(w, p + ".conv2", out, out, 3, 1, 1);
  if (in != out) {
    r.has_shortcut = true;
    r.shortcut = nn::Conv2d::bind(w, p + ".conv_shortcut", in, out, 1, 1, 0);
  }
  return r;
}

Attn UNet2D::bind_attention(const std::string& p, std::size_t channels, std::size_t head_dim,
                            std::optional<std::size_t> groups, float rescale) {
  nn::WeightStore& w = *store_;
  Attn a;
  a.channels = channels;
  a.head_dim = head_dim;
  a.heads = channels / head_dim;  // heads = C // attention_head_dim, dim_head = attention_head_dim
  if (a.heads == 0)
    raise<format_error>(kModel, dir_.path().string() + ": " + p + ": attention_head_dim " + std::to_string(head_dim) +
                                    " exceeds the " + std::to_string(channels) + " channels (zero heads)");
  a.inner = a.heads * head_dim;
  a.rescale_output_factor = rescale;
  if (groups) {
    check_groups(p + ".group_norm", channels, *groups);
    a.has_norm = true;
    a.norm = nn::GroupNorm::bind(w, p + ".group_norm", *groups, channels, static_cast<float>(cfg_.norm_eps));
  }
  // Both namings: diffusers >= 0.14 and the legacy deprecated attention block.
  const std::string names[3][2] = {{"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}};
  nn::MatrixRef m[3];
  const float* b[3];
  for (int i = 0; i < 3; ++i) {
    const std::string nw = p + "." + names[i][0] + ".weight", lw = p + "." + names[i][1] + ".weight";
    const std::string nb = p + "." + names[i][0] + ".bias", lb = p + "." + names[i][1] + ".bias";
    m[i] = w.matrix(w.pick({nw, lw}), {a.inner, channels});
    b[i] = w.f32(w.pick({nb, lb}), {a.inner});
  }
  const std::size_t n = a.inner * channels;
  const bool same = m[0].dtype == m[1].dtype && m[1].dtype == m[2].dtype;
  const DType dt = same ? m[0].dtype : DType::F32;
  const std::size_t bytes = dtype_bits(dt) / 8 * n;
  w.reserve(3 * bytes + 3 * a.inner * sizeof(float), "the fused q/k/v weights of '" + p + "'");
  std::vector<float>& fused = owned_.emplace_back((3 * bytes + sizeof(float) - 1) / sizeof(float));
  auto* dst = reinterpret_cast<std::byte*>(fused.data());
  for (int i = 0; i < 3; ++i) {
    if (same)
      std::memcpy(dst + i * bytes, m[i].data, bytes);
    else
      to_f32(m[i].dtype, m[i].data, reinterpret_cast<float*>(dst + i * bytes), n);
  }
  std::vector<float>& bias = owned_.emplace_back(3 * a.inner);
  for (int i = 0; i < 3; ++i) std::memcpy(bias.data() + i * a.inner, b[i], a.inner * sizeof(float));
  a.qkv.weight = nn::MatrixRef{fused.data(), dt, 3 * a.inner, channels};
  a.qkv.bias = bias.data();
  a.qkv.in = channels;
  a.qkv.out = 3 * a.inner;
  const std::string out = w.contains(p + ".to_out.0.weight") || !w.contains(p + ".proj_attn.weight")
                              ? p + ".to_out.0"
                              : p + ".proj_attn";
  a.to_out = nn::Linear::bind(w, out, a.inner, channels);
  return a;
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
      b.sampler = nn::Conv2d::bind(w, p + ".downsamplers.0.conv", out_ch, out_ch, 3, 2, c.downsample_padding);
      if (c.downsample_padding == 0) b.sampler.pad = {0, 0, 1, 1};  // F.pad(x, (0, 1, 0, 1)) first
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
      b.sampler = nn::Conv2d::bind(w, p + ".upsamplers.0.conv", out_ch, out_ch, 3, 1, 1);
      make_upsample_phases(b);
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

void UNet2D::run_conv(const nn::Conv2d& c, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                      kernels::Context& ctx, const float* residual) const {
  const std::size_t out_plane = c.out_height(h) * c.out_width(w);
  if (y.batch_stride == c.out * out_plane) {
    c(x, batch, h, w, y.p, ctx, residual);
    return;
  }
  for (std::size_t b = 0; b < batch; ++b)
    c(x + b * c.in * h * w, 1, h, w, y.p + b * y.batch_stride, ctx,
      residual ? residual + b * c.out * out_plane : nullptr);
}

void UNet2D::run_resnet(const Resnet& r, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                        const float* temb, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t hw = h * w;
  const std::size_t m = arena.mark();
  const bool fused = act_ == kernels::Activation::silu;
  float* a = arena.alloc(batch * std::max(r.in, r.has_shortcut ? r.out : 0) * hw);
  r.norm1(x, a, batch, hw, ctx, fused);
  if (!fused) kernels::activation(act_, a, a, batch * r.in * hw, ctx);
  float* hbuf = arena.alloc(batch * r.out * hw);
  r.conv1(a, batch, h, w, hbuf, ctx);
  const std::size_t tp = r.time_emb_proj.out;
  float* t = arena.alloc(batch * tp);
  r.time_emb_proj(temb, batch, t, ctx);
  if (tp == r.out) {
    kernels::add_channel_bias(hbuf, batch, r.out, hw, t, tp, ctx);
    r.norm2(hbuf, hbuf, batch, hw, ctx, fused);
  } else {
    // scale_shift: norm2(h) * (1 + scale) + shift, scale/shift = chunk(time_emb_proj(temb), 2, dim=1).
    r.norm2(hbuf, hbuf, batch, hw, ctx, false);
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t c = 0; c < r.out; ++c) {
        const float scale = 1.0f + t[b * tp + c], shift = t[b * tp + r.out + c];
        float* p = hbuf + (b * r.out + c) * hw;
        for (std::size_t s = 0; s < hw; ++s) p[s] = p[s] * scale + shift;
      }
    if (act_ != kernels::Activation::identity) kernels::activation(act_, hbuf, hbuf, batch * r.out * hw, ctx);
  }
  if (!fused && tp == r.out) kernels::activation(act_, hbuf, hbuf, batch * r.out * hw, ctx);
  const float* residual = x;
  if (r.has_shortcut) {
    r.shortcut(x, batch, h, w, a, ctx);  // a (norm1's output) is free again
    residual = a;
  }
  run_conv(r.conv2, hbuf, batch, h, w, y, ctx, residual);
  if (r.output_scale_factor != 1.0f) {
    const float s = r.output_scale_factor;
    for (std::size_t b = 0; b < batch; ++b) {
      float* p = y.p + b * y.batch_stride;
      for (std::size_t i = 0; i < r.out * hw; ++i) p[i] /= s;
    }
  }
  arena.release(m);
}

void UNet2D::run_attention(const Attn& a, Dest x, std::size_t batch, std::size_t hw, kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t C = a.channels, inner = a.inner;
  // tokens [B, HW, C] = GroupNorm(x) transposed.
  float* tok = arena.alloc(batch * hw * C);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* xb = x.p + b * x.batch_stride;
    float* tb = tok + b * hw * C;
    if (a.has_norm) {
      kernels::GroupNormArgs g;
      g.x = xb;
      g.y = tb;
      g.batch = 1;
      g.channels = C;
      g.spatial = hw;
      g.groups = a.norm.groups;
      g.eps = a.norm.eps;
      g.gamma = a.norm.gamma;
      g.beta = a.norm.beta;
      g.transpose_out = true;
      kernels::group_norm(g, ctx);
    } else {
      for (std::size_t c = 0; c < C; ++c)
        for (std::size_t s = 0; s < hw; ++s) tb[s * C + c] = xb[c * hw + s];
    }
  }
  // q | k | v in one GEMM: [B*HW, 3*inner].
  float* qkv = arena.alloc(batch * hw * 3 * inner);
  a.qkv(tok, batch * hw, qkv, ctx);
  float* o = arena.alloc(batch * hw * inner);
  {
    kernels::AttentionArgs at;
    at.q = qkv;
    at.k = qkv + inner;
    at.v = qkv + 2 * inner;
    at.o = o;
    at.batch = batch;
    at.heads = a.heads;
    at.q_len = at.kv_len = hw;
    at.head_dim = a.head_dim;
    at.q_batch_stride = at.k_batch_stride = at.v_batch_stride = hw * 3 * inner;
    at.q_head_stride = at.k_head_stride = at.v_head_stride = a.head_dim;
    at.q_row_stride = at.k_row_stride = at.v_row_stride = 3 * inner;
    at.o_batch_stride = hw * inner;
    at.o_head_stride = a.head_dim;
    at.o_row_stride = inner;
    kernels::attention(at, ctx);
  }
  float* proj = tok;  // the tokens are consumed
  a.to_out(o, batch * hw, proj, ctx);
  // x[b, c, s] = (proj[b, s, c] + x[b, c, s]) / rescale_output_factor, in tiles of 16 channels.
  constexpr std::size_t kTile = 16;
  const std::size_t tiles = (C + kTile - 1) / kTile;
  const float r = a.rescale_output_factor;
  ctx.pool().parallel_for(batch * tiles, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t b = item / tiles, c0 = (item % tiles) * kTile, c1 = std::min(C, c0 + kTile);
      float* xb = x.p + b * x.batch_stride;
      const float* pb = proj + b * hw * C;
      for (std::size_t s0 = 0; s0 < hw; s0 += 64) {
        const std::size_t s1 = std::min(hw, s0 + 64);
        for (std::size_t c = c0; c < c1; ++c) {
          float* xc = xb + c * hw;
          if (r == 1.0f)
            for (std::size_t s = s0; s < s1; ++s) xc[s] = pb[s * C + c] + xc[s];
          else
            for (std::size_t s = s0; s < s1; ++s) xc[s] = (pb[s * C + c] + xc[s]) / r;
        }
      }
    }
  });
  arena.release(m);
}

// conv3x3(nearest2x(x)) without the 4x larger intermediate: output pixel (2i + py, 2j + px) reads
// up[2i + py + d - 1] = x[i + floor((py + d - 1) / 2)] for taps d = 0, 1, 2, so rows of the kernel that
// land on the same input row are summed: phase 0 uses x[i-1] (tap 0) and x[i] (taps 1 + 2), phase 1 uses
// x[i] (taps 0 + 1) and x[i+1] (tap 2); likewise for columns. Each phase is a 2x2 conv with one-sided
// padding on x: 4 instead of 9 multiply-adds per output (the same sums in another order).
void UNet2D::make_upsample_phases(Block& b) {
  const nn::Conv2d& c = b.sampler;
  const std::size_t O = c.out, I = c.in;
  static constexpr int kTaps[2][2][2] = {{{0, -1}, {1, 2}}, {{0, 1}, {2, -1}}};  // [phase][row of 2x2][taps]
  for (std::size_t py = 0; py < 2; ++py)
    for (std::size_t px = 0; px < 2; ++px) {
      std::vector<float>& wp = owned_.emplace_back(O * I * 4);
      for (std::size_t oi = 0; oi < O * I; ++oi) {
        const float* k = c.weight + oi * 9;
        for (int a = 0; a < 2; ++a)
          for (int bb = 0; bb < 2; ++bb) {
            float sum = 0.0f;
            for (int dy : kTaps[py][a])
              for (int dx : kTaps[px][bb])
                if (dy >= 0 && dx >= 0) sum += k[dy * 3 + dx];
            wp[oi * 4 + static_cast<std::size_t>(a * 2 + bb)] = sum;
          }
      }
      nn::Conv2d& ph = b.phases[py * 2 + px];
      ph = c;
      ph.weight = wp.data();
      ph.kh = ph.kw = 2;
      ph.stride = 1;
      ph.pad = {py == 0 ? 1u : 0u, px == 0 ? 1u : 0u, py == 0 ? 0u : 1u, px == 0 ? 0u : 1u};
      ph.winograd.reset();  // 2x2 phases never run Winograd
    }
  b.sampler.winograd.reset();  // the 3x3 conv itself only runs as its four phases
}

void UNet2D::run_upsample(const Block& blk, const float* x, std::size_t batch, std::size_t h, std::size_t w, Dest y,
                          kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m = arena.mark();
  const std::size_t C = blk.sampler.out, plane = h * w;
  float* ph = arena.alloc(4 * batch * C * plane);
  for (std::size_t p = 0; p < 4; ++p) blk.phases[p](x, batch, h, w, ph + p * batch * C * plane, ctx);
  // Interleave: y[b, o, 2i + py, 2j + px] = phase[py * 2 + px][b, o, i, j].
  ctx.pool().parallel_for(batch * C, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t item = begin; item < end; ++item) {
      const std::size_t b = item / C, o = item % C;
      float* yo = y.p + b * y.batch_stride + o * 4 * plane;
      const float* src[4];
      for (std::size_t p = 0; p < 4; ++p) src[p] = ph + p * batch * C * plane + item * plane;
      for (std::size_t i = 0; i < h; ++i)
        for (std::size_t py = 0; py < 2; ++py) {
          float* row = yo + (2 * i + py) * 2 * w;
          const float* s0 = src[py * 2] + i * w;
          const float* s1 = src[py * 2 + 1] + i * w;
          for (std::size_t j = 0; j < w; ++j) {
            row[2 * j] = s0[j];
            row[2 * j + 1] = s1[j];
          }
        }
    }
  });
  arena.release(m);
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
    const double tp = c.resnet_time_scale_shift == "scale_shift" ? 2.0 * static_cast<double>(r.out) : static_cast<double>(r.out);
    temp = std::max(temp, B * hw * (static_cast<double>(std::max(r.in, r.has_shortcut ? r.out : 0)) + static_cast<double>(r.out)) + B * tp);
  };
  auto attn_temp = [&](const Attn& a, double hw) {
    temp = std::max(temp, B * hw * (static_cast<double>(a.channels) + 4.0 * static_cast<double>(a.inner)));
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
      h = std::floor((h + static_cast<double>(blk.sampler.pad[0] + blk.sampler.pad[2]) - 3) / 2) + 1;
      w = std::floor((w + static_cast<double>(blk.sampler.pad[1] + blk.sampler.pad[3]) - 3) / 2) + 1;
      floats += B * static_cast<double>(blk.sampler.out) * h * w;
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
      temp = std::max(temp, 4 * B * static_cast<double>(blk.sampler.out) * h * w);
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
      run_resnet(r, cur, B, h, w, {out, r.out * h * w}, temb, ctx);
      if (!blk.attentions.empty()) run_attention(blk.attentions[j], {out, r.out * h * w}, B, h * w, ctx);
      cur = out;
      cur_c = r.out;
      skips[n_skips++] = {cur, cur_c};
    }
    if (blk.has_sampler) {
      const std::size_t ho = blk.sampler.out_height(h), wo = blk.sampler.out_width(w);
      float* out = arena.alloc(B * cur_c * ho * wo);
      blk.sampler(cur, B, h, w, out, ctx);
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
      run_resnet(mid_.resnets[k], hcur, B, h, w, d, temb, ctx);
      if (!last && k < mid_.attentions.size()) run_attention(mid_.attentions[k], d, B, h * w, ctx);
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
      run_resnet(r, hcur, B, h, w, d, temb, ctx);
      if (!blk.attentions.empty()) run_attention(blk.attentions[j], d, B, h * w, ctx);
      hcur = dst;
      side ^= 1;
      cur_c = r.out;
      if (j + 1 < L) append_skip(dst, cur_c, skips[--n_skips], h * w);
    }
    if (blk.has_sampler) {
      const std::size_t ns = up_[i + 1].skip_channels.front();
      float* dst = ping[side];
      run_upsample(blk, hcur, B, h, w, {dst, (cur_c + ns) * 4 * h * w}, ctx);
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
