// SPDX-License-Identifier: MIT
// diffusers AutoencoderKL (see models/vae.hpp): config, binding by diffusers or LDM names, the
// encoder and decoder on two ping-pong buffers of the context's arena, and diffusers' tiling.
#include "diffuse/models/vae.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/nn/blocks.hpp"
#include "diffuse/nn/config.hpp"
#include "diffuse/nn/layers.hpp"
#include "latent_scaling.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

constexpr const char* kModel = "AutoencoderKL";
constexpr std::size_t kMaxVaeBlocks = 8;

double d(std::size_t v) { return static_cast<double>(v); }

std::vector<double> read_numbers(const nn::ConfigReader& r, std::string_view key, std::size_t count) {
  const nlohmann::json* v = r.find(key);
  if (!v) return {};
  if (!v->is_array()) r.fail(key, "must be a list of numbers or null, got " + nn::short_json(*v));
  if (v->size() != count)
    r.fail(key, "must have latent_channels = " + std::to_string(count) + " values, got " + std::to_string(v->size()));
  std::vector<double> out;
  for (const nlohmann::json& x : *v) {
    if (!x.is_number() || !std::isfinite(x.get<double>()))
      r.fail(key, "must hold finite numbers, got " + nn::short_json(x));
    out.push_back(x.get<double>());
  }
  return out;
}

}  // namespace

AutoencoderKLConfig AutoencoderKLConfig::from_json(const nlohmann::json& j, std::string_view where) {
  namespace L = nn::limits;
  const nn::ConfigReader r(j, std::string(where));
  AutoencoderKLConfig c;
  const nn::SizeRange channels{1, L::kMaxChannels};
  c.in_channels = r.size("in_channels", c.in_channels, channels);
  c.out_channels = r.size("out_channels", c.out_channels, channels);
  c.down_block_types = r.strings("down_block_types", c.down_block_types, kMaxVaeBlocks);
  c.up_block_types = r.strings("up_block_types", c.up_block_types, kMaxVaeBlocks);
  c.block_out_channels = r.sizes("block_out_channels", c.block_out_channels, channels, kMaxVaeBlocks);
  c.layers_per_block = r.size("layers_per_block", c.layers_per_block, {1, L::kMaxLayersPerBlock});
  c.act_fn = r.string("act_fn", c.act_fn);
  c.latent_channels = r.size("latent_channels", c.latent_channels, {1, 1024});
  c.norm_num_groups = r.size("norm_num_groups", c.norm_num_groups, {1, L::kMaxChannels});
  if (const nlohmann::json* s = r.find("sample_size"); s && s->is_array()) {
    const std::vector<std::size_t> hw = r.sizes("sample_size", {}, {8, L::kMaxSampleSize}, 2);
    if (hw.empty()) r.fail("sample_size", "must be an integer or a list of one or two integers");
    c.sample_size = hw[0];
  } else {
    c.sample_size = r.size("sample_size", c.sample_size, {8, L::kMaxSampleSize});
  }
  c.scaling_factor = r.number("scaling_factor", c.scaling_factor);
  if (!(c.scaling_factor > 0)) r.fail("scaling_factor", "must be positive");
  if (const nlohmann::json* s = r.find("shift_factor")) {
    if (!s->is_number() || !std::isfinite(s->get<double>()))
      r.fail("shift_factor", "must be a finite number or null, got " + nn::short_json(*s));
    c.shift_factor = s->get<double>();
  }
  c.latents_mean = read_numbers(r, "latents_mean", c.latent_channels);
  c.latents_std = read_numbers(r, "latents_std", c.latent_channels);
  if (c.latents_mean.empty() != c.latents_std.empty())
    r.fail(c.latents_mean.empty() ? "latents_mean" : "latents_std", "must be given together with its pair");
  for (double s : c.latents_std)
    if (!(s > 0)) r.fail("latents_std", "must hold positive values");
  c.force_upcast = r.boolean("force_upcast", c.force_upcast);
  c.use_quant_conv = r.boolean("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = r.boolean("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = r.boolean("mid_block_add_attention", c.mid_block_add_attention);

  const std::size_t n = c.block_out_channels.size();
  if (n == 0) r.fail("block_out_channels", "must not be empty");
  if (c.down_block_types.size() != n)
    r.fail("down_block_types", "has " + std::to_string(c.down_block_types.size()) + " entries, block_out_channels " +
                                   std::to_string(n));
  if (c.up_block_types.size() != n)
    r.fail("up_block_types",
           "has " + std::to_string(c.up_block_types.size()) + " entries, block_out_channels " + std::to_string(n));
  for (const std::string& t : c.down_block_types)
    if (t != "DownEncoderBlock2D")
      r.fail("down_block_types", "\"" + t + "\" is not supported (supported: DownEncoderBlock2D)");
  for (const std::string& t : c.up_block_types)
    if (t != "UpDecoderBlock2D") r.fail("up_block_types", "\"" + t + "\" is not supported (supported: UpDecoderBlock2D)");
  if (c.act_fn != "silu" && c.act_fn != "swish")
    r.fail("act_fn", "\"" + c.act_fn + "\" is not supported (supported: silu)");
  for (std::size_t ch : c.block_out_channels)
    if (ch % c.norm_num_groups != 0)
      r.fail("norm_num_groups", std::to_string(c.norm_num_groups) + " does not divide block_out_channels entry " +
                                    std::to_string(ch));
  if (const nlohmann::json* t = r.find("norm_type"); t && !(t->is_string() && t->get<std::string>() == "group"))
    r.fail("norm_type", "only \"group\" is supported, got " + nn::short_json(*t));
  return c;
}

AutoencoderKLConfig AutoencoderKLConfig::family(std::string_view name) {
  AutoencoderKLConfig c;
  c.down_block_types.assign(4, "DownEncoderBlock2D");
  c.up_block_types.assign(4, "UpDecoderBlock2D");
  c.block_out_channels = {128, 256, 512, 512};
  c.layers_per_block = 2;
  c.sample_size = 512;
  if (name == "sd") return c;
  c.sample_size = 1024;
  if (name == "sdxl") {
    c.scaling_factor = 0.13025;
    return c;
  }
  c.latent_channels = 16;
  c.use_quant_conv = c.use_post_quant_conv = false;
  if (name == "sd3") {
    c.scaling_factor = 1.5305;
    c.shift_factor = 0.0609;
    return c;
  }
  if (name == "flux") {
    c.scaling_factor = 0.3611;
    c.shift_factor = 0.1159;
    return c;
  }
  raise<value_error>(kModel, "unknown VAE family \"" + std::string(name) + "\" (known: sd, sdxl, sd3, flux)");
}

// ---------------------------------------------------------------------------------------------
// Names of the original LDM checkpoints

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

std::size_t to_index(std::string_view s) {
  std::size_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() ? v : std::numeric_limits<std::size_t>::max();
}

// The LDM name of a diffusers AutoencoderKL parameter (the inverse of diffusers'
// convert_ldm_vae_checkpoint). Names it does not know stay as they are.
std::string ldm_name(std::string_view name, std::size_t blocks) {
  std::vector<std::string_view> p = split(name);
  std::string out;
  auto add = [&](std::string_view s) {
    if (!out.empty()) out += '.';
    out += s;
  };
  // Resnet leaves: conv_shortcut -> nin_shortcut, the rest unchanged.
  auto leaf = [&](std::size_t from) {
    for (std::size_t i = from; i < p.size(); ++i) add(p[i] == "conv_shortcut" ? std::string_view("nin_shortcut") : p[i]);
  };
  if (p.size() < 2 || (p[0] != "encoder" && p[0] != "decoder")) return std::string(name);
  add(p[0]);
  const bool dec = p[0] == "decoder";
  if ((p[1] == "down_blocks" || p[1] == "up_blocks") && p.size() >= 5) {
    std::size_t i = to_index(p[2]);
    if (i >= blocks) return std::string(name);
    if (dec) i = blocks - 1 - i;
    add(dec ? "up" : "down");
    add(std::to_string(i));
    if (p[3] == "resnets") {
      add("block");
      add(p[4]);
      leaf(5);
    } else if (p[3] == "downsamplers" || p[3] == "upsamplers") {
      add(dec ? "upsample" : "downsample");
      leaf(5);  // skips the ".0"
    } else {
      return std::string(name);
    }
    return out;
  }
  if (p[1] == "mid_block" && p.size() >= 5) {
    add("mid");
    if (p[2] == "resnets") {
      add(p[3] == "0" ? "block_1" : p[3] == "1" ? "block_2" : p[3]);
      leaf(4);
    } else if (p[2] == "attentions") {
      add("attn_1");
      std::string_view m = p[4];
      std::size_t rest = 5;
      if (m == "group_norm") m = "norm";
      else if (m == "to_q" || m == "query") m = "q";
      else if (m == "to_k" || m == "key") m = "k";
      else if (m == "to_v" || m == "value") m = "v";
      else if (m == "proj_attn") m = "proj_out";
      else if (m == "to_out" && p.size() >= 6) {
        m = "proj_out";
        rest = 6;  // skips the ".0"
      }
      add(m);
      leaf(rest);
    } else {
      return std::string(name);
    }
    return out;
  }
  if (p[1] == "conv_norm_out") {
    add("norm_out");
    leaf(2);
    return out;
  }
  leaf(1);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Modules

struct MidBlock {
  nn::ResnetBlock2D r0, r1;
  bool has_attention = false;
  nn::SpatialAttention attention;
};

struct EncoderBlock {
  std::vector<nn::ResnetBlock2D> resnets;
  bool has_down = false;
  nn::Downsample2D down;
};

struct DecoderBlock {
  std::vector<nn::ResnetBlock2D> resnets;
  bool has_up = false;
  nn::Upsample2D up;
};

}  // namespace

struct AutoencoderKL::Impl {
  io::ModelDir dir;
  AutoencoderKLConfig cfg;
  std::unique_ptr<nn::WeightStore> store;
  std::size_t parameters = 0;
  std::size_t factor = 1;  // 2^(blocks - 1)

  // encoder
  nn::Conv2d enc_in, enc_out, quant_conv;
  std::vector<EncoderBlock> enc_blocks;
  MidBlock enc_mid;
  nn::GroupNorm enc_norm;
  // decoder
  nn::Conv2d post_quant_conv, dec_in, dec_out;
  MidBlock dec_mid;
  std::vector<DecoderBlock> dec_blocks;
  nn::GroupNorm dec_norm;

  explicit Impl(io::ModelDir d) : dir(std::move(d)) {}

  void bind();
  MidBlock bind_mid(const std::string& prefix, std::size_t channels);

  double mid_temp(const MidBlock& m, std::size_t batch, std::size_t hw) const;
  // Runs a mid block from ping[side] (contiguous [B, C, hw]); returns the side holding the output.
  int run_mid(const MidBlock& m, float* const ping[2], int side, std::size_t batch, std::size_t h, std::size_t w,
              kernels::Context& ctx) const;
  void decode_into(const float* z, std::size_t batch, std::size_t h, std::size_t w, float* out,
                   kernels::Context& ctx) const;
  void encode_into(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* out,
                   kernels::Context& ctx) const;
  void check_memory(std::uint64_t bytes, kernels::Context& ctx, std::string_view what) const;
};

AutoencoderKL::AutoencoderKL(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AutoencoderKL::AutoencoderKL(AutoencoderKL&&) noexcept = default;
AutoencoderKL& AutoencoderKL::operator=(AutoencoderKL&&) noexcept = default;
AutoencoderKL::~AutoencoderKL() = default;

const AutoencoderKLConfig& AutoencoderKL::config() const noexcept { return impl_->cfg; }
std::size_t AutoencoderKL::parameters() const noexcept { return impl_->parameters; }
std::size_t AutoencoderKL::scale_factor() const noexcept { return impl_->factor; }

MidBlock AutoencoderKL::Impl::bind_mid(const std::string& p, std::size_t ch) {
  nn::ResnetBlock2D::Options o;
  o.groups = cfg.norm_num_groups;
  o.eps = 1e-6f;
  MidBlock m;
  m.r0 = nn::ResnetBlock2D::bind(*store, p + ".resnets.0", ch, ch, o);
  if (cfg.mid_block_add_attention) {
    nn::SpatialAttention::Options a;
    a.head_dim = ch;  // attention_head_dim = the channels: one head
    a.groups = cfg.norm_num_groups;
    a.eps = 1e-6f;
    m.has_attention = true;
    m.attention = nn::SpatialAttention::bind(*store, p + ".attentions.0", ch, a);
  }
  m.r1 = nn::ResnetBlock2D::bind(*store, p + ".resnets.1", ch, ch, o);
  return m;
}

void AutoencoderKL::Impl::bind() {
  nn::WeightStore& w = *store;
  const AutoencoderKLConfig& c = cfg;
  const std::vector<std::size_t>& ch = c.block_out_channels;
  const std::size_t n = ch.size(), L = c.latent_channels, G = c.norm_num_groups;
  factor = std::size_t{1} << (n - 1);
  nn::ResnetBlock2D::Options o;
  o.groups = G;
  o.eps = 1e-6f;

  // encoder
  enc_in = nn::Conv2d::bind(w, "encoder.conv_in", c.in_channels, ch[0], 3, 1, 1);
  std::size_t out_ch = ch[0];
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t in_ch = out_ch;
    out_ch = ch[i];
    const std::string p = "encoder.down_blocks." + std::to_string(i);
    EncoderBlock b;
    for (std::size_t j = 0; j < c.layers_per_block; ++j)
      b.resnets.push_back(
          nn::ResnetBlock2D::bind(w, p + ".resnets." + std::to_string(j), j == 0 ? in_ch : out_ch, out_ch, o));
    if (i + 1 < n) {
      b.has_down = true;
      b.down = nn::Downsample2D::bind(w, p + ".downsamplers.0", out_ch, 0);
    }
    enc_blocks.push_back(std::move(b));
  }
  enc_mid = bind_mid("encoder.mid_block", ch.back());
  enc_norm = nn::GroupNorm::bind(w, "encoder.conv_norm_out", G, ch.back(), 1e-6f);
  enc_out = nn::Conv2d::bind(w, "encoder.conv_out", ch.back(), 2 * L, 3, 1, 1);
  if (c.use_quant_conv) quant_conv = nn::Conv2d::bind(w, "quant_conv", 2 * L, 2 * L, 1, 1, 0);

  // decoder
  if (c.use_post_quant_conv) post_quant_conv = nn::Conv2d::bind(w, "post_quant_conv", L, L, 1, 1, 0);
  dec_in = nn::Conv2d::bind(w, "decoder.conv_in", L, ch.back(), 3, 1, 1);
  dec_mid = bind_mid("decoder.mid_block", ch.back());
  std::vector<std::size_t> rev(ch.rbegin(), ch.rend());
  out_ch = rev[0];
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t prev = out_ch;
    out_ch = rev[i];
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    DecoderBlock b;
    for (std::size_t j = 0; j < c.layers_per_block + 1; ++j)
      b.resnets.push_back(
          nn::ResnetBlock2D::bind(w, p + ".resnets." + std::to_string(j), j == 0 ? prev : out_ch, out_ch, o));
    if (i + 1 < n) {
      b.has_up = true;
      b.up = nn::Upsample2D::bind(w, p + ".upsamplers.0", out_ch);
    }
    dec_blocks.push_back(std::move(b));
  }
  dec_norm = nn::GroupNorm::bind(w, "decoder.conv_norm_out", G, ch[0], 1e-6f);
  dec_out = nn::Conv2d::bind(w, "decoder.conv_out", ch[0], c.out_channels, 3, 1, 1);
  w.check_all_used();
  parameters = w.parameters();
}

AutoencoderKL AutoencoderKL::load(const std::filesystem::path& path, const nn::LoadOptions& options) {
  return load(io::ModelDir::open(path, options.variant), options);
}

AutoencoderKL AutoencoderKL::load(io::ModelDir dir, const nn::LoadOptions& options) {
  auto impl = std::make_unique<Impl>(std::move(dir));
  Impl& m = *impl;
  if (!m.dir.has_config())
    raise<format_error>(kModel, m.dir.path().string() + " has no config.json to build the AutoencoderKL from");
  m.cfg = AutoencoderKLConfig::from_json(m.dir.config(),
                                         std::string(kModel) + " " + (m.dir.path() / "config.json").string());
  m.store = std::make_unique<nn::WeightStore>(m.dir, kModel, options);
  m.bind();
  return AutoencoderKL(std::move(impl));
}

bool AutoencoderKL::has_ldm_names(const io::ModelDir& dir, std::string_view prefix) {
  const std::string p(prefix);
  return dir.contains(p + "decoder.conv_in.weight") && dir.contains(p + "decoder.up.0.block.0.conv1.weight");
}

AutoencoderKL AutoencoderKL::load_ldm(io::ModelDir file, std::string prefix, AutoencoderKLConfig config,
                                      const nn::LoadOptions& options) {
  auto impl = std::make_unique<Impl>(std::move(file));
  Impl& m = *impl;
  m.cfg = std::move(config);
  m.store = std::make_unique<nn::WeightStore>(m.dir, kModel, options);
  const std::size_t blocks = m.cfg.block_out_channels.size();
  m.store->set_name_map([prefix, blocks](std::string_view name) { return prefix + ldm_name(name, blocks); });
  m.store->set_scope(prefix);
  // LDM checkpoints also keep the training loss's tensors under the VAE's prefix.
  m.store->ignore(prefix + "loss.");
  m.bind();
  return AutoencoderKL(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Forward

double AutoencoderKL::Impl::mid_temp(const MidBlock& m, std::size_t batch, std::size_t hw) const {
  double t = std::max(m.r0.arena_floats(batch, hw), m.r1.arena_floats(batch, hw));
  if (m.has_attention) t = std::max(t, m.attention.arena_floats(batch, hw));
  return t;
}

int AutoencoderKL::Impl::run_mid(const MidBlock& m, float* const ping[2], int side, std::size_t B, std::size_t h,
                                 std::size_t w, kernels::Context& ctx) const {
  const std::size_t C = m.r0.out, hw = h * w;
  m.r0(ping[side], B, h, w, {ping[side ^ 1], C * hw}, nullptr, ctx);
  side ^= 1;
  if (m.has_attention) m.attention({ping[side], C * hw}, B, hw, ctx);
  m.r1(ping[side], B, h, w, {ping[side ^ 1], C * hw}, nullptr, ctx);
  return side ^ 1;
}

std::uint64_t AutoencoderKL::decode_bytes(std::size_t batch, std::size_t lh, std::size_t lw) const {
  const Impl& m = *impl_;
  double h = d(lh), w = d(lw), pp = 0, temp = 0;
  const std::size_t B = batch;
  auto hw = [&] { return static_cast<std::size_t>(std::min(h * w, 1e18)); };
  pp = std::max(pp, d(B) * d(m.dec_in.out) * h * w);
  if (m.cfg.use_post_quant_conv) temp = std::max(temp, d(B) * d(m.cfg.latent_channels) * h * w);
  temp = std::max(temp, m.mid_temp(m.dec_mid, B, hw()));
  for (const DecoderBlock& b : m.dec_blocks) {
    for (const nn::ResnetBlock2D& r : b.resnets) {
      pp = std::max(pp, d(B) * d(std::max(r.in, r.out)) * h * w);
      temp = std::max(temp, r.arena_floats(B, hw()));
    }
    if (b.has_up) {
      temp = std::max(temp, b.up.arena_floats(B, hw()));
      h *= 2, w *= 2;
      pp = std::max(pp, d(B) * d(b.up.conv.out) * h * w);
    }
  }
  const double floats = 2 * pp + temp + d(B) * d(m.cfg.out_channels) * h * w;
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

std::uint64_t AutoencoderKL::encode_bytes(std::size_t batch, std::size_t height, std::size_t width) const {
  const Impl& m = *impl_;
  double h = d(height), w = d(width), pp = 0, temp = 0;
  const std::size_t B = batch;
  auto hw = [&] { return static_cast<std::size_t>(std::min(h * w, 1e18)); };
  pp = std::max(pp, d(B) * d(m.enc_in.out) * h * w);
  for (const EncoderBlock& b : m.enc_blocks) {
    for (const nn::ResnetBlock2D& r : b.resnets) {
      pp = std::max(pp, d(B) * d(std::max(r.in, r.out)) * h * w);
      temp = std::max(temp, r.arena_floats(B, hw()));
    }
    if (b.has_down) {
      h = std::floor((h - 2) / 2) + 1;
      w = std::floor((w - 2) / 2) + 1;
    }
  }
  temp = std::max(temp, m.mid_temp(m.enc_mid, B, hw()));
  const double out = d(B) * 2 * d(m.cfg.latent_channels) * h * w;
  const double floats = 2 * pp + temp + 2 * out;
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

void AutoencoderKL::Impl::check_memory(std::uint64_t bytes, kernels::Context& ctx, std::string_view what) const {
  const std::uint64_t limit = ctx.arena().limit() ? ctx.arena().limit() : default_memory_limit();
  if (bytes > limit)
    raise<memory_error>(kModel, std::string(what) + " needs " + format_bytes(bytes) +
                                    " of activations, more than the memory limit of " + format_bytes(limit) +
                                    " (decode_tiled / encode_moments_tiled need less)");
}

void AutoencoderKL::Impl::decode_into(const float* z, std::size_t B, std::size_t h, std::size_t w, float* out,
                                      kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m0 = arena.mark();
  std::size_t pp = B * dec_in.out * h * w;
  {
    std::size_t hh = h, ww = w;
    for (const DecoderBlock& b : dec_blocks) {
      for (const nn::ResnetBlock2D& r : b.resnets) pp = std::max(pp, B * std::max(r.in, r.out) * hh * ww);
      if (b.has_up) hh *= 2, ww *= 2;
    }
  }
  float* ping[2] = {arena.alloc(pp), arena.alloc(pp)};
  int side = 0;
  const float* x = z;
  if (cfg.use_post_quant_conv) {
    float* t = arena.alloc(B * cfg.latent_channels * h * w);
    post_quant_conv(z, B, h, w, t, ctx);
    x = t;
  }
  dec_in(x, B, h, w, ping[side], ctx);
  side = run_mid(dec_mid, ping, side, B, h, w, ctx);
  for (const DecoderBlock& b : dec_blocks) {
    for (const nn::ResnetBlock2D& r : b.resnets) {
      r(ping[side], B, h, w, {ping[side ^ 1], r.out * h * w}, nullptr, ctx);
      side ^= 1;
    }
    if (b.has_up) {
      b.up(ping[side], B, h, w, {ping[side ^ 1], b.up.conv.out * 4 * h * w}, ctx);
      side ^= 1;
      h *= 2, w *= 2;
    }
  }
  dec_norm(ping[side], ping[side], B, h * w, ctx, true);  // GroupNorm + SiLU in place
  dec_out(ping[side], B, h, w, out, ctx);
  arena.release(m0);
  store->release_streamed_pages();  // LoadOptions::stream_weights
}

void AutoencoderKL::Impl::encode_into(const float* x, std::size_t B, std::size_t h, std::size_t w, float* out,
                                      kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m0 = arena.mark();
  std::size_t pp = B * enc_in.out * h * w;
  {
    std::size_t hh = h, ww = w;
    for (const EncoderBlock& b : enc_blocks) {
      for (const nn::ResnetBlock2D& r : b.resnets) pp = std::max(pp, B * std::max(r.in, r.out) * hh * ww);
      if (b.has_down) hh = b.down.out_height(hh), ww = b.down.out_width(ww);
    }
  }
  float* ping[2] = {arena.alloc(pp), arena.alloc(pp)};
  int side = 0;
  enc_in(x, B, h, w, ping[side], ctx);
  for (const EncoderBlock& b : enc_blocks) {
    for (const nn::ResnetBlock2D& r : b.resnets) {
      r(ping[side], B, h, w, {ping[side ^ 1], r.out * h * w}, nullptr, ctx);
      side ^= 1;
    }
    if (b.has_down) {
      const std::size_t ho = b.down.out_height(h), wo = b.down.out_width(w);
      b.down(ping[side], B, h, w, {ping[side ^ 1], b.down.conv.out * ho * wo}, ctx);
      side ^= 1;
      h = ho, w = wo;
    }
  }
  side = run_mid(enc_mid, ping, side, B, h, w, ctx);
  enc_norm(ping[side], ping[side], B, h * w, ctx, true);
  if (cfg.use_quant_conv) {
    float* t = arena.alloc(B * enc_out.out * h * w);
    enc_out(ping[side], B, h, w, t, ctx);
    quant_conv(t, B, h, w, out, ctx);
  } else {
    enc_out(ping[side], B, h, w, out, ctx);
  }
  arena.release(m0);
  store->release_streamed_pages();  // LoadOptions::stream_weights
}

namespace {

void check_input(const Tensor& t, std::size_t channels, std::size_t multiple, const char* what, const char* name) {
  if (t.ndim() != 4 || t.dim(1) != channels || t.dim(0) == 0 || t.dim(2) == 0 || t.dim(3) == 0 ||
      t.dim(2) % multiple != 0 || t.dim(3) % multiple != 0)
    raise<shape_error>(what, std::string(name) + ": expected [batch, " + std::to_string(channels) +
                                 ", height, width] with positive sizes" +
                                 (multiple > 1 ? ", height and width multiples of " + std::to_string(multiple) : "") +
                                 ", got " + shape_string(t.shape()));
  const float* p = t.data();
  for (std::size_t i = 0; i < t.size(); ++i)
    if (!std::isfinite(p[i]))
      raise<value_error>(what, std::string(name) + ": non-finite value at flat index " + std::to_string(i));
}

// diffusers' blend_v / blend_h on [B, C, H, W] tiles held as Tensors, in place on `b`.
void blend_v(const Tensor& a, Tensor& b, std::size_t extent) {
  extent = std::min({a.dim(2), b.dim(2), extent});
  const std::size_t B = b.dim(0), C = b.dim(1), W = b.dim(3), ha = a.dim(2), hb = b.dim(2);
  for (std::size_t y = 0; y < extent; ++y) {
    const float wb = static_cast<float>(static_cast<double>(y) / static_cast<double>(extent));
    const float wa = static_cast<float>(1.0 - static_cast<double>(y) / static_cast<double>(extent));
    for (std::size_t bc = 0; bc < B * C; ++bc) {
      const float* ra = a.data() + (bc * ha + (ha - extent + y)) * W;
      float* rb = b.data() + (bc * hb + y) * W;
      for (std::size_t x = 0; x < W; ++x) rb[x] = ra[x] * wa + rb[x] * wb;
    }
  }
}

void blend_h(const Tensor& a, Tensor& b, std::size_t extent) {
  extent = std::min({a.dim(3), b.dim(3), extent});
  const std::size_t B = b.dim(0), C = b.dim(1), H = b.dim(2), wa_ = a.dim(3), wb_ = b.dim(3);
  for (std::size_t x = 0; x < extent; ++x) {
    const float wb = static_cast<float>(static_cast<double>(x) / static_cast<double>(extent));
    const float wa = static_cast<float>(1.0 - static_cast<double>(x) / static_cast<double>(extent));
    for (std::size_t bc = 0; bc < B * C; ++bc)
      for (std::size_t y = 0; y < H; ++y) {
        float& v = b.data()[(bc * H + y) * wb_ + x];
        v = a.data()[(bc * H + y) * wa_ + (wa_ - extent + x)] * wa + v * wb;
      }
  }
}

Tensor crop(const Tensor& t, std::size_t y0, std::size_t x0, std::size_t h, std::size_t w) {
  const std::size_t B = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3);
  h = std::min(h, H - y0);
  w = std::min(w, W - x0);
  Tensor out({B, C, h, w});
  for (std::size_t bc = 0; bc < B * C; ++bc)
    for (std::size_t y = 0; y < h; ++y)
      std::memcpy(out.data() + (bc * h + y) * w, t.data() + (bc * H + y0 + y) * W + x0, w * sizeof(float));
  return out;
}

// diffusers' tiled_decode / _tiled_encode: tiles of `in_tile` input pixels every `step`, each
// mapped by `run` to an output tile, blended with the tile above and to the left over `extent`
// rows/columns (in place, raster order), cropped to `keep` and concatenated.
template <class Run>
Tensor tiled(const Tensor& x, std::size_t out_channels, std::size_t in_tile, std::size_t step, std::size_t extent,
             std::size_t keep, Run run) {
  const std::size_t B = x.dim(0), H = x.dim(2), W = x.dim(3);
  std::vector<std::vector<Tensor>> rows;
  for (std::size_t i = 0; i < H; i += step) {
    std::vector<Tensor>& row = rows.emplace_back();
    for (std::size_t j = 0; j < W; j += step) row.push_back(run(crop(x, i, j, in_tile, in_tile)));
  }
  std::size_t out_h = 0, out_w = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < rows[i].size(); ++j) {
      Tensor& t = rows[i][j];
      if (i > 0) blend_v(rows[i - 1][j], t, extent);
      if (j > 0) blend_h(rows[i][j - 1], t, extent);
    }
  }
  // Sizes of the cropped tiles: min(keep, tile size).
  for (const Tensor& t : rows[0]) out_w += std::min(keep, t.dim(3));
  for (const auto& row : rows) out_h += std::min(keep, row[0].dim(2));
  Tensor out({B, out_channels, out_h, out_w});
  std::size_t y0 = 0;
  for (const auto& row : rows) {
    const std::size_t th = std::min(keep, row[0].dim(2));
    std::size_t x0 = 0;
    for (const Tensor& t : row) {
      const std::size_t tw = std::min(keep, t.dim(3)), TH = t.dim(2), TW = t.dim(3);
      for (std::size_t bc = 0; bc < B * out_channels; ++bc)
        for (std::size_t y = 0; y < th; ++y)
          std::memcpy(out.data() + (bc * out_h + y0 + y) * out_w + x0, t.data() + (bc * TH + y) * TW,
                      tw * sizeof(float));
      x0 += tw;
    }
    y0 += th;
  }
  return out;
}

}  // namespace

Tensor AutoencoderKL::decode(const Tensor& z, kernels::Context& ctx, const VaeDecodeOptions& options) const {
  const Impl& m = *impl_;
  check_input(z, m.cfg.latent_channels, 1, "AutoencoderKL::decode", "z");
  const std::size_t B = z.dim(0), h = z.dim(2), w = z.dim(3);
  const std::size_t tile = std::max<std::size_t>(1, m.cfg.sample_size / m.factor);
  const bool larger_than_tile = h > tile || w > tile;
  const std::uint64_t bytes = decode_bytes(B, h, w);
  const std::uint64_t above = options.tile_above ? options.tile_above : std::uint64_t{1} << 30;
  if (options.tiling == VaeDecodeOptions::Tiling::on ||
      (options.tiling == VaeDecodeOptions::Tiling::automatic && larger_than_tile && bytes > above))
    return larger_than_tile ? decode_tiled(z, ctx) : decode(z, ctx, {VaeDecodeOptions::Tiling::off, 0});
  m.check_memory(bytes, ctx, "decoding a " + shape_string(z.shape()) + " latent");
  Tensor out({B, m.cfg.out_channels, h * m.factor, w * m.factor});
  m.decode_into(z.data(), B, h, w, out.data(), ctx);
  return out;
}

std::uint64_t AutoencoderKL::decode_peak_bytes(std::size_t h, std::size_t w, const VaeDecodeOptions& options) const {
  const Impl& m = *impl_;
  const std::size_t tile = std::max<std::size_t>(1, m.cfg.sample_size / m.factor);
  const bool larger_than_tile = h > tile || w > tile;
  const std::uint64_t bytes = decode_bytes(1, h, w);
  const std::uint64_t above = options.tile_above ? options.tile_above : std::uint64_t{1} << 30;
  const bool tiled = larger_than_tile && (options.tiling == VaeDecodeOptions::Tiling::on ||
                                          (options.tiling == VaeDecodeOptions::Tiling::automatic && bytes > above));
  if (!tiled) return bytes;
  // One tile's activations, the decoded tiles kept until they are blended (about (4/3)^2 of the
  // image) and the image itself.
  const double image = d(m.cfg.out_channels) * d(h) * d(w) * d(m.factor) * d(m.factor) * sizeof(float);
  const double total = d(decode_bytes(1, std::min(tile, h), std::min(tile, w))) + 3.0 * image;
  return total >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(total);
}

Tensor AutoencoderKL::decode_tiled(const Tensor& z, kernels::Context& ctx) const {
  const Impl& m = *impl_;
  check_input(z, m.cfg.latent_channels, 1, "AutoencoderKL::decode_tiled", "z");
  const std::size_t lt = static_cast<std::size_t>(static_cast<double>(m.cfg.sample_size) / static_cast<double>(m.factor));
  const std::size_t st = m.cfg.sample_size;
  const std::size_t step = std::max<std::size_t>(1, static_cast<std::size_t>(static_cast<double>(lt) * 0.75));
  const std::size_t extent = static_cast<std::size_t>(static_cast<double>(st) * 0.25);
  m.check_memory(decode_bytes(z.dim(0), std::min(lt, z.dim(2)), std::min(lt, z.dim(3))), ctx, "a decoder tile");
  return tiled(z, m.cfg.out_channels, lt, step, extent, st - extent, [&](const Tensor& t) {
    Tensor o({t.dim(0), m.cfg.out_channels, t.dim(2) * m.factor, t.dim(3) * m.factor});
    m.decode_into(t.data(), t.dim(0), t.dim(2), t.dim(3), o.data(), ctx);
    return o;
  });
}

Tensor AutoencoderKL::encode_moments(const Tensor& image, kernels::Context& ctx) const {
  const Impl& m = *impl_;
  check_input(image, m.cfg.in_channels, m.factor, "AutoencoderKL::encode", "image");
  const std::size_t B = image.dim(0), H = image.dim(2), W = image.dim(3);
  m.check_memory(encode_bytes(B, H, W), ctx, "encoding a " + shape_string(image.shape()) + " image");
  Tensor out({B, 2 * m.cfg.latent_channels, H / m.factor, W / m.factor});
  m.encode_into(image.data(), B, H, W, out.data(), ctx);
  return out;
}

Tensor AutoencoderKL::encode_moments_tiled(const Tensor& image, kernels::Context& ctx) const {
  const Impl& m = *impl_;
  check_input(image, m.cfg.in_channels, m.factor, "AutoencoderKL::encode_tiled", "image");
  const std::size_t lt = static_cast<std::size_t>(static_cast<double>(m.cfg.sample_size) / static_cast<double>(m.factor));
  const std::size_t st = m.cfg.sample_size;
  const std::size_t step = std::max<std::size_t>(1, static_cast<std::size_t>(static_cast<double>(st) * 0.75));
  const std::size_t extent = static_cast<std::size_t>(static_cast<double>(lt) * 0.25);
  m.check_memory(encode_bytes(image.dim(0), std::min(st, image.dim(2)), std::min(st, image.dim(3))), ctx,
                 "an encoder tile");
  const std::size_t L2 = 2 * m.cfg.latent_channels;
  return tiled(image, L2, st, step, extent, lt - extent, [&](const Tensor& t) {
    if (t.dim(2) % m.factor || t.dim(3) % m.factor)
      raise<shape_error>("AutoencoderKL::encode_tiled", "an edge tile of " + shape_string(t.shape()) +
                                                            " is not a multiple of " + std::to_string(m.factor));
    Tensor o({t.dim(0), L2, t.dim(2) / m.factor, t.dim(3) / m.factor});
    m.encode_into(t.data(), t.dim(0), t.dim(2), t.dim(3), o.data(), ctx);
    return o;
  });
}

Tensor AutoencoderKL::posterior_mean(const Tensor& moments) {
  if (moments.ndim() != 4 || moments.dim(1) % 2 != 0)
    raise<shape_error>("AutoencoderKL::posterior_mean",
                       "moments: expected [batch, 2 * latent_channels, h, w], got " + shape_string(moments.shape()));
  const std::size_t B = moments.dim(0), L = moments.dim(1) / 2, hw = moments.dim(2) * moments.dim(3);
  Tensor mean({B, L, moments.dim(2), moments.dim(3)});
  for (std::size_t b = 0; b < B; ++b)
    std::memcpy(mean.data() + b * L * hw, moments.data() + b * 2 * L * hw, L * hw * sizeof(float));
  return mean;
}

Tensor AutoencoderKL::posterior_sample(const Tensor& moments, TorchGenerator& gen) {
  Tensor mean = posterior_mean(moments);
  const Tensor eps = randn(gen, mean.shape());
  const std::size_t B = mean.dim(0), L = mean.dim(1), hw = mean.dim(2) * mean.dim(3);
  for (std::size_t b = 0; b < B; ++b) {
    const float* logvar = moments.data() + (b * 2 + 1) * L * hw;
    float* m = mean.data() + b * L * hw;
    const float* e = eps.data() + b * L * hw;
    for (std::size_t i = 0; i < L * hw; ++i) {
      const float lv = std::clamp(logvar[i], -30.0f, 20.0f);
      const float std_ = std::exp(0.5f * lv);
      m[i] = m[i] + std_ * e[i];
    }
  }
  return mean;
}

Tensor AutoencoderKL::to_vae_latents(const Tensor& latents) const {
  const auto& c = impl_->cfg;
  check_input(latents, c.latent_channels, 1, "AutoencoderKL::to_vae_latents", "latents");
  return detail::map_latents(latents, true, c.scaling_factor, c.shift_factor, c.latents_mean, c.latents_std);
}

Tensor AutoencoderKL::to_model_latents(const Tensor& z) const {
  const auto& c = impl_->cfg;
  check_input(z, c.latent_channels, 1, "AutoencoderKL::to_model_latents", "z");
  return detail::map_latents(z, false, c.scaling_factor, c.shift_factor, c.latents_mean, c.latents_std);
}

}  // namespace models
DIFFUSE_END_NAMESPACE
