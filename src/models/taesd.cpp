// SPDX-License-Identifier: MIT
// diffusers AutoencoderTiny (see models/taesd.hpp): config, binding by diffusers or original TAESD
// names, and the encoder and decoder on two ping-pong buffers of the context's arena.
#include "diffuse/models/taesd.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <deque>
#include <limits>
#include <utility>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/nn/blocks.hpp"
#include "diffuse/nn/config.hpp"
#include "diffuse/nn/layers.hpp"
#include "latent_scaling.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

constexpr const char* kModel = "AutoencoderTiny";
constexpr const char* kFamilies[] = {"taesd", "taesdxl", "taesd3", "taef1"};

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

// diffusers' layers chain block_out_channels[i] -> block_out_channels[i] convs after the first
// entry, so a model whose entries differ cannot run there; refuse it here, naming the key.
void check_uniform(const nn::ConfigReader& r, std::string_view key, const std::vector<std::size_t>& ch) {
  for (std::size_t c : ch)
    if (c != ch.front())
      r.fail(key, "entries must all be equal (diffusers' " + std::string(key.starts_with("enc") ? "EncoderTiny" : "DecoderTiny") +
                      " maps each entry's channels to themselves), got " + std::to_string(ch.front()) + " and " +
                      std::to_string(c));
}

}  // namespace

AutoencoderTinyConfig AutoencoderTinyConfig::from_json(const nlohmann::json& j, std::string_view where) {
  namespace L = nn::limits;
  const nn::ConfigReader r(j, std::string(where));
  AutoencoderTinyConfig c;
  const nn::SizeRange channels{1, L::kMaxChannels};
  c.in_channels = r.size("in_channels", c.in_channels, channels);
  c.out_channels = r.size("out_channels", c.out_channels, channels);
  c.encoder_block_out_channels =
      r.sizes("encoder_block_out_channels", c.encoder_block_out_channels, channels, L::kMaxBlocks);
  c.decoder_block_out_channels =
      r.sizes("decoder_block_out_channels", c.decoder_block_out_channels, channels, L::kMaxBlocks);
  c.act_fn = r.string("act_fn", c.act_fn);
  c.upsample_fn = r.string("upsample_fn", c.upsample_fn);
  c.latent_channels = r.size("latent_channels", c.latent_channels, {1, 1024});
  c.upsampling_scaling_factor = r.size("upsampling_scaling_factor", c.upsampling_scaling_factor, {1, 64});
  c.num_encoder_blocks = r.sizes("num_encoder_blocks", c.num_encoder_blocks, {0, L::kMaxLayersPerBlock}, L::kMaxBlocks);
  c.num_decoder_blocks = r.sizes("num_decoder_blocks", c.num_decoder_blocks, {0, L::kMaxLayersPerBlock}, L::kMaxBlocks);
  c.latent_magnitude = r.number("latent_magnitude", c.latent_magnitude);
  if (!(c.latent_magnitude > 0)) r.fail("latent_magnitude", "must be positive");
  c.latent_shift = r.number("latent_shift", c.latent_shift);
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

  if (c.act_fn != "relu") r.fail("act_fn", "\"" + c.act_fn + "\" is not supported (supported: relu)");
  if (c.upsample_fn != "nearest")
    r.fail("upsample_fn", "\"" + c.upsample_fn + "\" is not supported (supported: nearest)");
  if (c.upsampling_scaling_factor != 2)
    r.fail("upsampling_scaling_factor", std::to_string(c.upsampling_scaling_factor) + " is not supported (supported: 2)");
  if (c.encoder_block_out_channels.empty()) r.fail("encoder_block_out_channels", "must not be empty");
  if (c.decoder_block_out_channels.empty()) r.fail("decoder_block_out_channels", "must not be empty");
  if (c.num_encoder_blocks.size() != c.encoder_block_out_channels.size())
    r.fail("num_encoder_blocks", "has " + std::to_string(c.num_encoder_blocks.size()) +
                                     " entries, encoder_block_out_channels " +
                                     std::to_string(c.encoder_block_out_channels.size()));
  if (c.num_decoder_blocks.size() != c.decoder_block_out_channels.size())
    r.fail("num_decoder_blocks", "has " + std::to_string(c.num_decoder_blocks.size()) +
                                     " entries, decoder_block_out_channels " +
                                     std::to_string(c.decoder_block_out_channels.size()));
  check_uniform(r, "encoder_block_out_channels", c.encoder_block_out_channels);
  check_uniform(r, "decoder_block_out_channels", c.decoder_block_out_channels);
  // diffusers records block_out_channels = decoder_block_out_channels; a different value means the
  // file was not written by AutoencoderTiny.
  if (r.find("block_out_channels") &&
      r.sizes("block_out_channels", {}, channels, L::kMaxBlocks) != c.decoder_block_out_channels)
    r.fail("block_out_channels", "must equal decoder_block_out_channels (diffusers records it so)");
  // Every conv's weight count must be representable (the largest is C x C x 9).
  (void)r.product("encoder channels^2 * 9", {c.encoder_block_out_channels.front(), c.encoder_block_out_channels.front(), 9});
  (void)r.product("decoder channels^2 * 9", {c.decoder_block_out_channels.front(), c.decoder_block_out_channels.front(), 9});
  return c;
}

AutoencoderTinyConfig AutoencoderTinyConfig::family(std::string_view name) {
  AutoencoderTinyConfig c;
  if (name == "taesd" || name == "taesdxl") return c;
  c.latent_channels = 16;
  if (name == "taesd3") {
    c.scaling_factor = 1.5305;
    c.shift_factor = 0.0609;
    return c;
  }
  if (name == "taef1") {
    c.scaling_factor = 0.3611;
    c.shift_factor = 0.1159;
    return c;
  }
  raise<value_error>(kModel, "unknown TAESD family \"" + std::string(name) + "\" (known: taesd, taesdxl, taesd3, taef1)");
}

// ---------------------------------------------------------------------------------------------
// Names of the original TAESD files

namespace {

// "decoder.layers.N.rest" -> "(N + shift).rest"; names outside `half` stay as they are (and are
// then reported missing by the store, naming both spellings).
std::string original_name(std::string_view name, std::string_view half, std::size_t shift) {
  const std::string p = std::string(half) + ".layers.";
  if (!name.starts_with(p)) return std::string(name);
  std::string_view rest = name.substr(p.size());
  std::size_t n = 0;
  const auto r = std::from_chars(rest.data(), rest.data() + rest.size(), n);
  if (r.ec != std::errc() || r.ptr == rest.data()) return std::string(name);
  return std::to_string(n + shift) + std::string(rest.substr(static_cast<std::size_t>(r.ptr - rest.data())));
}

struct DecoderStage {
  std::vector<nn::AutoencoderTinyBlock> blocks;
  bool has_up = false;
  nn::Upsample2D up;  // nearest 2x + the bias-free conv, computed as four 2x2 phase convs
  nn::Conv2d conv;    // the last stage's conv_out (with bias)
};

struct EncoderStage {
  nn::Conv2d conv;  // the first: in_channels -> C with bias; the others stride 2, no bias
  std::vector<nn::AutoencoderTinyBlock> blocks;
};

}  // namespace

struct AutoencoderTiny::Impl {
  // Stable addresses: each WeightStore points at its ModelDir.
  std::deque<io::ModelDir> dirs;
  std::deque<nn::WeightStore> stores;
  AutoencoderTinyConfig cfg;
  std::size_t parameters = 0;
  std::size_t dec_factor = 1, enc_factor = 1;

  bool has_decoder = false, has_encoder = false;
  nn::Conv2d dec_in;
  std::vector<DecoderStage> dec;
  std::vector<EncoderStage> enc;
  nn::Conv2d enc_out;

  void bind_decoder(nn::WeightStore& w);
  void bind_encoder(nn::WeightStore& w);
  void decode_into(const float* z, std::size_t batch, std::size_t h, std::size_t w, float* out,
                   kernels::Context& ctx) const;
  void encode_into(const float* x, std::size_t batch, std::size_t h, std::size_t w, float* out,
                   kernels::Context& ctx) const;
  void check_memory(std::uint64_t bytes, kernels::Context& ctx, std::string_view what) const;
};

AutoencoderTiny::AutoencoderTiny(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AutoencoderTiny::AutoencoderTiny(AutoencoderTiny&&) noexcept = default;
AutoencoderTiny& AutoencoderTiny::operator=(AutoencoderTiny&&) noexcept = default;
AutoencoderTiny::~AutoencoderTiny() = default;

const AutoencoderTinyConfig& AutoencoderTiny::config() const noexcept { return impl_->cfg; }
std::size_t AutoencoderTiny::parameters() const noexcept { return impl_->parameters; }
std::size_t AutoencoderTiny::decoder_scale_factor() const noexcept { return impl_->dec_factor; }
std::size_t AutoencoderTiny::encoder_scale_factor() const noexcept { return impl_->enc_factor; }
bool AutoencoderTiny::has_decoder() const noexcept { return impl_->has_decoder; }
bool AutoencoderTiny::has_encoder() const noexcept { return impl_->has_encoder; }

void AutoencoderTiny::Impl::bind_decoder(nn::WeightStore& w) {
  const AutoencoderTinyConfig& c = cfg;
  const std::size_t C = c.decoder_block_out_channels.front(), n = c.num_decoder_blocks.size();
  std::size_t idx = 0;
  auto name = [&](std::size_t i) { return "decoder.layers." + std::to_string(i); };
  dec_in = nn::Conv2d::bind(w, name(idx), c.latent_channels, C, 3, 1, 1);
  idx += 2;  // the conv and its ReLU
  for (std::size_t i = 0; i < n; ++i) {
    DecoderStage s;
    for (std::size_t b = 0; b < c.num_decoder_blocks[i]; ++b) s.blocks.push_back(nn::AutoencoderTinyBlock::bind(w, name(idx++), C, C));
    if (i + 1 < n) {
      s.has_up = true;
      ++idx;  // nn.Upsample
      const std::string conv = name(idx++);
      s.up = nn::Upsample2D::from_conv(w, nn::Conv2d::bind(w, conv, C, C, 3, 1, 1, false), conv);
    } else {
      s.conv = nn::Conv2d::bind(w, name(idx++), C, c.out_channels, 3, 1, 1);
    }
    dec.push_back(std::move(s));
  }
  dec_factor = std::size_t{1} << (n - 1);
  has_decoder = true;
}

void AutoencoderTiny::Impl::bind_encoder(nn::WeightStore& w) {
  const AutoencoderTinyConfig& c = cfg;
  const std::size_t C = c.encoder_block_out_channels.front(), n = c.num_encoder_blocks.size();
  std::size_t idx = 0;
  auto name = [&](std::size_t i) { return "encoder.layers." + std::to_string(i); };
  for (std::size_t i = 0; i < n; ++i) {
    EncoderStage s;
    s.conv = i == 0 ? nn::Conv2d::bind(w, name(idx++), c.in_channels, C, 3, 1, 1)
                    : nn::Conv2d::bind(w, name(idx++), C, C, 3, 2, 1, false);
    for (std::size_t b = 0; b < c.num_encoder_blocks[i]; ++b) s.blocks.push_back(nn::AutoencoderTinyBlock::bind(w, name(idx++), C, C));
    enc.push_back(std::move(s));
  }
  enc_out = nn::Conv2d::bind(w, name(idx), C, c.latent_channels, 3, 1, 1);
  enc_factor = std::size_t{1} << (n - 1);
  has_encoder = true;
}

AutoencoderTiny AutoencoderTiny::load(const std::filesystem::path& path, const nn::LoadOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec) && !fs::exists(path / "diffusion_pytorch_model.safetensors", ec) &&
      !fs::exists(path / "diffusion_pytorch_model.safetensors.index.json", ec) && options.variant.empty()) {
    for (const char* fam : kFamilies) {
      const fs::path dec = path / (std::string(fam) + "_decoder.safetensors");
      if (!fs::exists(dec, ec)) continue;
      const fs::path enc = path / (std::string(fam) + "_encoder.safetensors");
      AutoencoderTinyConfig cfg =
          fs::exists(path / "config.json", ec)
              ? AutoencoderTinyConfig::from_json(read_json_file(path / "config.json", kModel, "config"),
                                                 std::string(kModel) + " " + (path / "config.json").string())
              : AutoencoderTinyConfig::family(fam);
      return load_original(dec, fs::exists(enc, ec) ? enc : fs::path(), std::move(cfg), options);
    }
  }
  return load(io::ModelDir::open(path, options.variant), options);
}

AutoencoderTiny AutoencoderTiny::load(io::ModelDir dir, const nn::LoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  io::ModelDir& d0 = m.dirs.emplace_back(std::move(dir));
  if (!d0.has_config())
    raise<format_error>(kModel, d0.path().string() + " has no config.json to build the AutoencoderTiny from");
  m.cfg = AutoencoderTinyConfig::from_json(d0.config(), std::string(kModel) + " " + (d0.path() / "config.json").string());
  nn::WeightStore& w = m.stores.emplace_back(d0, kModel, options);
  m.bind_encoder(w);
  m.bind_decoder(w);
  w.check_all_used();
  m.parameters = w.parameters();
  return AutoencoderTiny(std::move(impl));
}

AutoencoderTiny AutoencoderTiny::load_original(const std::filesystem::path& decoder_file,
                                               const std::filesystem::path& encoder_file, AutoencoderTinyConfig config,
                                               const nn::LoadOptions& options) {
  if (decoder_file.empty() && encoder_file.empty())
    raise<value_error>("AutoencoderTiny::load_original", "neither a decoder nor an encoder file was given");
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.cfg = std::move(config);
  // The original Decoder starts with a Clamp module (index 0), so its layers are diffusers' + 1.
  if (!decoder_file.empty()) {
    io::ModelDir& dd = m.dirs.emplace_back(io::ModelDir::open(decoder_file));
    nn::WeightStore& w = m.stores.emplace_back(dd, std::string(kModel) + " decoder", options);
    w.set_name_map([](std::string_view n) { return original_name(n, "decoder", 1); });
    m.bind_decoder(w);
    w.check_all_used();
    m.parameters += w.parameters();
  }
  if (!encoder_file.empty()) {
    io::ModelDir& de = m.dirs.emplace_back(io::ModelDir::open(encoder_file));
    nn::WeightStore& w = m.stores.emplace_back(de, std::string(kModel) + " encoder", options);
    w.set_name_map([](std::string_view n) { return original_name(n, "encoder", 0); });
    m.bind_encoder(w);
    w.check_all_used();
    m.parameters += w.parameters();
  }
  return AutoencoderTiny(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Forward

std::uint64_t AutoencoderTiny::decode_bytes(std::size_t batch, std::size_t lh, std::size_t lw) const {
  const Impl& m = *impl_;
  if (!m.has_decoder) return 0;
  const double B = d(batch), C = d(m.dec_in.out);
  double h = d(lh), w = d(lw), temp = 0, pp = B * C * h * w;
  const double clamp = B * d(m.cfg.latent_channels) * h * w;
  auto hw = [&] { return static_cast<std::size_t>(std::min(h * w, 1e18)); };
  for (const DecoderStage& s : m.dec) {
    for (const nn::AutoencoderTinyBlock& b : s.blocks) temp = std::max(temp, b.arena_floats(batch, hw()));
    if (s.has_up) {
      temp = std::max(temp, s.up.arena_floats(batch, hw()));
      h *= 2, w *= 2;
      pp = std::max(pp, B * C * h * w);
    }
  }
  const double floats = clamp + 2 * pp + temp + B * d(m.cfg.out_channels) * h * w;
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

std::uint64_t AutoencoderTiny::encode_bytes(std::size_t batch, std::size_t height, std::size_t width) const {
  const Impl& m = *impl_;
  if (!m.has_encoder) return 0;
  const double B = d(batch), C = d(m.enc_out.in);
  double h = d(height), w = d(width), temp = 0, pp = 0;
  const double input = B * d(m.cfg.in_channels) * h * w;
  for (std::size_t i = 0; i < m.enc.size(); ++i) {
    if (i > 0) h = std::ceil(h / 2), w = std::ceil(w / 2);
    pp = std::max(pp, B * C * h * w);
    for (const nn::AutoencoderTinyBlock& b : m.enc[i].blocks)
      temp = std::max(temp, b.arena_floats(batch, static_cast<std::size_t>(std::min(h * w, 1e18))));
  }
  const double floats = input + 2 * pp + temp + B * d(m.cfg.latent_channels) * h * w;
  const double bytes = floats * sizeof(float);
  return bytes >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(bytes);
}

void AutoencoderTiny::Impl::check_memory(std::uint64_t bytes, kernels::Context& ctx, std::string_view what) const {
  const std::uint64_t limit = ctx.arena().limit() ? ctx.arena().limit() : default_memory_limit();
  if (bytes > limit)
    raise<memory_error>(kModel, std::string(what) + " needs " + format_bytes(bytes) +
                                    " of activations, more than the memory limit of " + format_bytes(limit));
}

void AutoencoderTiny::Impl::decode_into(const float* z, std::size_t B, std::size_t h, std::size_t w, float* out,
                                        kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m0 = arena.mark();
  const std::size_t C = dec_in.out;
  std::size_t pp = B * C * h * w;
  for (std::size_t i = 0, hh = h, ww = w; i < dec.size(); ++i)
    if (dec[i].has_up) hh *= 2, ww *= 2, pp = std::max(pp, B * C * hh * ww);
  // Clamp: tanh(x / 3) * 3, as DecoderTiny.forward (on the latent only: 1/64 of the pixels and 4
  // of the 64 channels, so a scalar loop is a rounding error of the decode's time).
  const std::size_t nz = B * cfg.latent_channels * h * w;
  float* t = arena.alloc(nz);
  for (std::size_t i = 0; i < nz; ++i) t[i] = std::tanh(z[i] / 3.0f) * 3.0f;
  float* ping[2] = {arena.alloc(pp), arena.alloc(pp)};
  int side = 0;
  dec_in(t, B, h, w, ping[side], ctx);
  kernels::activation(kernels::Activation::relu, ping[side], ping[side], B * C * h * w, ctx);
  for (const DecoderStage& s : dec) {
    for (const nn::AutoencoderTinyBlock& b : s.blocks) {
      b(ping[side], B, h, w, ping[side ^ 1], ctx);
      side ^= 1;
    }
    if (s.has_up) {
      s.up(ping[side], B, h, w, {ping[side ^ 1], C * 4 * h * w}, ctx);
      side ^= 1;
      h *= 2, w *= 2;
    } else {
      s.conv(ping[side], B, h, w, out, ctx);
    }
  }
  // [0, 1] -> [-1, 1]: x.mul(2).sub(1) (the product is exact, so one rounding as torch's two).
  const std::size_t n = B * cfg.out_channels * h * w;
  ctx.pool().parallel_for(n, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t i = begin; i < end; ++i) out[i] = out[i] * 2.0f - 1.0f;
  });
  arena.release(m0);
}

void AutoencoderTiny::Impl::encode_into(const float* x, std::size_t B, std::size_t h, std::size_t w, float* out,
                                        kernels::Context& ctx) const {
  kernels::Arena& arena = ctx.arena();
  const std::size_t m0 = arena.mark();
  const std::size_t C = enc_out.in;
  const std::size_t nx = B * cfg.in_channels * h * w;
  float* t = arena.alloc(nx);
  // [-1, 1] -> [0, 1]: x.add(1).div(2) (the halving is exact).
  ctx.pool().parallel_for(nx, [&](std::size_t begin, std::size_t end, std::size_t) {
    for (std::size_t i = begin; i < end; ++i) t[i] = (x[i] + 1.0f) * 0.5f;
  });
  float* ping[2] = {arena.alloc(B * C * h * w), arena.alloc(B * C * h * w)};
  int side = 0;
  const float* in = t;
  for (const EncoderStage& s : enc) {
    const std::size_t ho = s.conv.out_height(h), wo = s.conv.out_width(w);
    s.conv(in, B, h, w, ping[side], ctx);
    h = ho, w = wo;
    for (const nn::AutoencoderTinyBlock& b : s.blocks) {
      b(ping[side], B, h, w, ping[side ^ 1], ctx);
      side ^= 1;
    }
    in = ping[side];
    side ^= 1;
  }
  enc_out(in, B, h, w, out, ctx);
  arena.release(m0);
}

namespace {

void check_input(const Tensor& t, std::size_t channels, const char* what, const char* name) {
  if (t.ndim() != 4 || t.dim(1) != channels || t.dim(0) == 0 || t.dim(2) == 0 || t.dim(3) == 0)
    raise<shape_error>(what, std::string(name) + ": expected [batch, " + std::to_string(channels) +
                                 ", height, width] with positive sizes, got " + shape_string(t.shape()));
  const float* p = t.data();
  for (std::size_t i = 0; i < t.size(); ++i)
    if (!std::isfinite(p[i]))
      raise<value_error>(what, std::string(name) + ": non-finite value at flat index " + std::to_string(i));
}

}  // namespace

Tensor AutoencoderTiny::decode(const Tensor& z, kernels::Context& ctx) const {
  const Impl& m = *impl_;
  constexpr const char* kWhere = "AutoencoderTiny::decode";
  if (!m.has_decoder) raise<value_error>(kWhere, "this model was loaded without a decoder");
  check_input(z, m.cfg.latent_channels, kWhere, "z");
  const std::size_t B = z.dim(0), h = z.dim(2), w = z.dim(3);
  m.check_memory(decode_bytes(B, h, w), ctx, "decoding a " + shape_string(z.shape()) + " latent");
  Tensor out({B, m.cfg.out_channels, h * m.dec_factor, w * m.dec_factor});
  m.decode_into(z.data(), B, h, w, out.data(), ctx);
  return out;
}

Tensor AutoencoderTiny::encode(const Tensor& image, kernels::Context& ctx) const {
  const Impl& m = *impl_;
  constexpr const char* kWhere = "AutoencoderTiny::encode";
  if (!m.has_encoder) raise<value_error>(kWhere, "this model was loaded without an encoder");
  check_input(image, m.cfg.in_channels, kWhere, "image");
  const std::size_t B = image.dim(0), H = image.dim(2), W = image.dim(3);
  m.check_memory(encode_bytes(B, H, W), ctx, "encoding a " + shape_string(image.shape()) + " image");
  std::size_t h = H, w = W;
  for (std::size_t i = 1; i < m.enc.size(); ++i) h = m.enc[i].conv.out_height(h), w = m.enc[i].conv.out_width(w);
  Tensor out({B, m.cfg.latent_channels, h, w});
  m.encode_into(image.data(), B, H, W, out.data(), ctx);
  return out;
}

Tensor AutoencoderTiny::scale_latents(const Tensor& x) const {
  Tensor y = x;
  const float s = static_cast<float>(2.0 * impl_->cfg.latent_magnitude), shift = static_cast<float>(impl_->cfg.latent_shift);
  for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] = std::clamp(y.data()[i] / s + shift, 0.0f, 1.0f);
  return y;
}

Tensor AutoencoderTiny::unscale_latents(const Tensor& x) const {
  Tensor y = x;
  const float s = static_cast<float>(2.0 * impl_->cfg.latent_magnitude), shift = static_cast<float>(impl_->cfg.latent_shift);
  for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] = (y.data()[i] - shift) * s;
  return y;
}

Tensor AutoencoderTiny::to_vae_latents(const Tensor& latents) const {
  const auto& c = impl_->cfg;
  check_input(latents, c.latent_channels, "AutoencoderTiny::to_vae_latents", "latents");
  return detail::map_latents(latents, true, c.scaling_factor, c.shift_factor, c.latents_mean, c.latents_std);
}

Tensor AutoencoderTiny::to_model_latents(const Tensor& z) const {
  const auto& c = impl_->cfg;
  check_input(z, c.latent_channels, "AutoencoderTiny::to_model_latents", "z");
  return detail::map_latents(z, false, c.scaling_factor, c.shift_factor, c.latents_mean, c.latents_std);
}

}  // namespace models
DIFFUSE_END_NAMESPACE
