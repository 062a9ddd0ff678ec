// SPDX-License-Identifier: MIT
#include "diffuse/models/clip_text.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "diffuse/core/error.hpp"
#include "diffuse/kernels/ops.hpp"
#include "diffuse/nn/layers.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

namespace {

constexpr const char* kWhere = "ClipTextModel";

std::size_t json_size(const nlohmann::json& j, const char* key, std::size_t fallback, std::size_t max,
                      std::string_view where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<std::int64_t>() < 1 || it->get<std::uint64_t>() > max)
    raise<format_error>(where, std::string("\"") + key + "\" must be an integer in [1, " + std::to_string(max) +
                                   "], got " + it->dump());
  return it->get<std::size_t>();
}

kernels::Activation clip_activation(const std::string& name, std::string_view where) {
  if (name == "quick_gelu") return kernels::Activation::quick_gelu;
  if (name == "gelu") return kernels::Activation::gelu_erf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return kernels::Activation::gelu_tanh;
  if (name == "silu" || name == "swish") return kernels::Activation::silu;
  raise<format_error>(where, "hidden_act \"" + name + "\" is not supported (quick_gelu, gelu, gelu_new, silu)");
}

}  // namespace

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& j, std::string_view where) {
  if (!j.is_object()) raise<format_error>(where, "config must be a JSON object");
  ClipTextConfig c;
  c.vocab_size = json_size(j, "vocab_size", c.vocab_size, std::size_t{1} << 24, where);
  c.hidden_size = json_size(j, "hidden_size", c.hidden_size, std::size_t{1} << 16, where);
  c.intermediate_size = json_size(j, "intermediate_size", c.intermediate_size, std::size_t{1} << 18, where);
  c.projection_dim = json_size(j, "projection_dim", c.projection_dim, std::size_t{1} << 16, where);
  c.num_hidden_layers = json_size(j, "num_hidden_layers", c.num_hidden_layers, 1024, where);
  c.num_attention_heads = json_size(j, "num_attention_heads", c.num_attention_heads, std::size_t{1} << 16, where);
  c.max_position_embeddings =
      json_size(j, "max_position_embeddings", c.max_position_embeddings, std::size_t{1} << 16, where);
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) raise<format_error>(where, "\"hidden_act\" must be a string, got " + it->dump());
    c.hidden_act = it->get<std::string>();
  }
  clip_activation(c.hidden_act, where);
  if (auto it = j.find("layer_norm_eps"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || !(it->get<double>() > 0) || !(it->get<double>() < 1))
      raise<format_error>(where, "\"layer_norm_eps\" must be a number in (0, 1), got " + it->dump());
    c.layer_norm_eps = it->get<double>();
  }
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    const nlohmann::json& e = it->is_array() && !it->empty() ? (*it)[0] : *it;
    if (!e.is_number_integer()) raise<format_error>(where, "\"eos_token_id\" must be an integer, got " + it->dump());
    c.eos_token_id = e.get<std::int64_t>();
  }
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    const std::string arch = (*it)[0].get<std::string>();
    if (arch == "CLIPTextModelWithProjection")
      c.with_projection = true;
    else if (arch != "CLIPTextModel")
      raise<format_error>(where, "architecture \"" + arch + "\" is not a CLIP text model");
  }
  if (c.hidden_size % c.num_attention_heads != 0)
    raise<format_error>(where, "hidden_size " + std::to_string(c.hidden_size) + " is not divisible by " +
                                   "num_attention_heads " + std::to_string(c.num_attention_heads));
  // Bounded sizes make the products below fit comfortably in 64 bits (2^24 * 2^16 = 2^40).
  return c;
}

struct ClipTextModel::Impl {
  io::ModelDir dir;
  ClipTextConfig cfg;
  std::unique_ptr<nn::WeightStore> store;
  const float* token_embedding = nullptr;     // [vocab, D]
  const float* position_embedding = nullptr;  // [max_pos, D]
  std::vector<nn::TransformerLayer> layers;
  nn::LayerNorm final_norm;
  nn::Linear projection;
  std::vector<float> projection_t;  // OpenCLIP's text_projection [D, P] transposed to [P, D]
  std::size_t parameters = 0;

  // Binds every parameter; `p` is the transformers prefix ("text_model." or "") of the names asked.
  void bind(const std::string& p, bool open_clip, const std::string& where);

  explicit Impl(io::ModelDir d) : dir(std::move(d)) {}
};

ClipTextModel::ClipTextModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipTextModel::ClipTextModel(ClipTextModel&&) noexcept = default;
ClipTextModel& ClipTextModel::operator=(ClipTextModel&&) noexcept = default;
ClipTextModel::~ClipTextModel() = default;

const ClipTextConfig& ClipTextModel::config() const noexcept { return impl_->cfg; }
std::size_t ClipTextModel::parameters() const noexcept { return impl_->parameters; }

ClipTextModel ClipTextModel::load(const std::filesystem::path& path, const nn::LoadOptions& options) {
  return load(io::ModelDir::open(path, options.variant), options);
}

void ClipTextModel::Impl::bind(const std::string& p, bool open_clip, const std::string& where) {
  const ClipTextConfig& c = cfg;
  nn::WeightStore& w = *store;
  const std::size_t d = c.hidden_size;
  token_embedding = w.f32(p + "embeddings.token_embedding.weight", {c.vocab_size, d});
  position_embedding = w.f32(p + "embeddings.position_embedding.weight", {c.max_position_embeddings, d});
  const auto act = clip_activation(c.hidden_act, where);
  const auto eps = static_cast<float>(c.layer_norm_eps);
  for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
    layers.push_back(nn::TransformerLayer::bind(w, p + "encoder.layers." + std::to_string(i), d,
                                                c.num_attention_heads, c.intermediate_size, eps, act));
  final_norm = nn::LayerNorm::bind(w, p + "final_layer_norm", d, eps);
  if (c.with_projection && !open_clip) {
    projection = nn::Linear::bind(w, "text_projection", d, c.projection_dim, false);
  } else if (c.with_projection) {
    // OpenCLIP multiplies x @ text_projection ([D, P]); the Linear wants [P, D]: one transposed copy.
    const std::size_t pd = c.projection_dim;
    const float* t = w.f32("text_projection", {d, pd});
    w.reserve(std::uint64_t{d} * pd * sizeof(float), "text_projection transposed");
    projection_t.resize(d * pd);
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < pd; ++j) projection_t[j * d + i] = t[i * pd + j];
    projection.in = d;
    projection.out = pd;
    projection.weight = nn::MatrixRef{projection_t.data(), DType::F32, pd, d};  // used on few rows: not prepacked
  }
}

ClipTextModel ClipTextModel::load(io::ModelDir dir, const nn::LoadOptions& options) {
  auto impl = std::make_unique<Impl>(std::move(dir));
  Impl& m = *impl;
  const std::string where = std::string(kWhere) + " " + m.dir.path().string();
  if (!m.dir.has_config()) raise<format_error>(kWhere, m.dir.path().string() + ": no config.json");
  m.cfg = ClipTextConfig::from_json(m.dir.config(), where);
  const ClipTextConfig& c = m.cfg;
  m.store = std::make_unique<nn::WeightStore>(m.dir, c.with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel",
                                              options);
  nn::WeightStore& w = *m.store;
  const std::string p = w.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  m.bind(p, false, where);
  w.ignore(p + "embeddings.position_ids");
  w.check_all_used();
  m.parameters = w.parameters();
  return ClipTextModel(std::move(impl));
}

namespace {

// OpenCLIP's name for transformers' `name` (asked without the text_model. prefix), under `prefix`.
std::string open_clip_name(std::string_view name, const std::string& prefix) {
  static constexpr std::pair<std::string_view, std::string_view> kTop[] = {
      {"embeddings.token_embedding.weight", "token_embedding.weight"},
      {"embeddings.position_embedding.weight", "positional_embedding"},
      {"final_layer_norm.weight", "ln_final.weight"},
      {"final_layer_norm.bias", "ln_final.bias"},
      {"text_projection", "text_projection"}};
  for (const auto& [from, to] : kTop)
    if (name == from) return prefix + std::string(to);
  static constexpr std::string_view kLayers = "encoder.layers.";
  if (name.substr(0, kLayers.size()) == kLayers) {
    const std::string_view rest = name.substr(kLayers.size());  // "N.layer_norm1.weight"
    const std::size_t dot = rest.find('.');
    if (dot != std::string_view::npos) {
      const std::string_view index = rest.substr(0, dot), leaf = rest.substr(dot + 1);
      static constexpr std::pair<std::string_view, std::string_view> kLeaf[] = {
          {"layer_norm1.", "ln_1."},     {"layer_norm2.", "ln_2."},          {"mlp.fc1.", "mlp.c_fc."},
          {"mlp.fc2.", "mlp.c_proj."},   {"self_attn.out_proj.", "attn.out_proj."}};
      for (const auto& [from, to] : kLeaf)
        if (leaf.substr(0, from.size()) == from)
          return prefix + "transformer.resblocks." + std::string(index) + "." + std::string(to) +
                 std::string(leaf.substr(from.size()));
    }
  }
  return prefix + "(no OpenCLIP name for " + std::string(name) + ")";
}

bool is_open_clip(const io::ModelDir& dir, std::string_view prefix) {
  return dir.contains(std::string(prefix) + "transformer.resblocks.0.attn.in_proj_weight");
}

}  // namespace

bool ClipTextModel::has_original_names(const io::ModelDir& dir, std::string_view prefix) {
  const std::string p(prefix);
  return is_open_clip(dir, prefix) || dir.contains(p + "text_model.embeddings.token_embedding.weight") ||
         dir.contains(p + "embeddings.token_embedding.weight");
}

ClipTextModel ClipTextModel::load_original(io::ModelDir file, std::string prefix, ClipTextConfig config,
                                           const nn::LoadOptions& options) {
  auto impl = std::make_unique<Impl>(std::move(file));
  Impl& m = *impl;
  m.cfg = std::move(config);
  const ClipTextConfig& c = m.cfg;
  const std::string where = std::string(kWhere) + " " + m.dir.path().string() + " (" + prefix + "*)";
  m.store = std::make_unique<nn::WeightStore>(m.dir, c.with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel",
                                              options);
  nn::WeightStore& w = *m.store;
  w.set_scope(prefix);
  if (is_open_clip(m.dir, prefix)) {
    w.set_name_map([prefix](std::string_view n) { return open_clip_name(n, prefix); });
    const std::size_t d = c.hidden_size;
    for (std::size_t i = 0; i < c.num_hidden_layers; ++i) {
      const std::string at = "encoder.layers." + std::to_string(i) + ".self_attn.";
      const std::string fused = prefix + "transformer.resblocks." + std::to_string(i) + ".attn.in_proj_";
      const char* qkv[] = {"q_proj.", "k_proj.", "v_proj."};
      for (std::size_t j = 0; j < 3; ++j) {
        w.add_row_view(at + qkv[j] + "weight", fused + "weight", j * d, d);
        w.add_row_view(at + qkv[j] + "bias", fused + "bias", j * d, d);
      }
    }
    m.bind("", true, where);
    // SD 2.x files keep the 24th layer that diffusers' 23-layer text encoder drops.
    for (std::size_t i = c.num_hidden_layers;
         m.dir.contains(prefix + "transformer.resblocks." + std::to_string(i) + ".ln_1.weight"); ++i)
      w.ignore(prefix + "transformer.resblocks." + std::to_string(i) + ".");
    w.ignore(prefix + "logit_scale");
    if (!c.with_projection) w.ignore(prefix + "text_projection");
  } else {
    w.set_name_map([prefix](std::string_view n) { return prefix + std::string(n); });
    const std::string p = w.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
    m.bind(p, false, where);
    w.ignore(prefix + p + "embeddings.position_ids");
  }
  w.check_all_used();
  m.parameters = w.parameters();
  return ClipTextModel(std::move(impl));
}

ClipTextOutput ClipTextModel::encode(std::span<const std::int32_t> ids, std::size_t batch, kernels::Context& ctx,
                                     const ClipTextOptions& options) const {
  constexpr const char* kEnc = "ClipTextModel::encode";
  const Impl& m = *impl_;
  const ClipTextConfig& c = m.cfg;
  if (batch == 0 || ids.empty() || ids.size() % batch != 0)
    raise<shape_error>(kEnc, std::to_string(ids.size()) + " ids do not make " + std::to_string(batch) +
                                 " non-empty sequences of equal length");
  const std::size_t tokens = ids.size() / batch, d = c.hidden_size, rows = ids.size();
  if (tokens > c.max_position_embeddings)
    raise<shape_error>(kEnc, "sequences of " + std::to_string(tokens) + " tokens exceed max_position_embeddings " +
                                 std::to_string(c.max_position_embeddings));
  for (std::size_t i = 0; i < rows; ++i)
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= c.vocab_size)
      raise<value_error>(kEnc, "token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                   " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  const std::size_t layers = c.num_hidden_layers;
  if (options.clip_skip < 1 || options.clip_skip > layers)
    raise<value_error>(kEnc, "clip_skip " + std::to_string(options.clip_skip) + " is outside [1, " +
                                 std::to_string(layers) + "]");

  ClipTextOutput out;
  out.hidden = Tensor({batch, tokens, d});
  float* h = out.hidden.data();
  for (std::size_t r = 0; r < rows; ++r) {
    const float* te = m.token_embedding + static_cast<std::size_t>(ids[r]) * d;
    const float* pe = m.position_embedding + (r % tokens) * d;
    for (std::size_t i = 0; i < d; ++i) h[r * d + i] = te[i] + pe[i];
  }
  ctx.arena().reset();
  // Layers run: all of them for the last hidden state or the pooled output, else up to the skip.
  const std::size_t keep_after = layers - (options.clip_skip - 1);  // hidden_states[-k] is after this many
  const std::size_t run = options.pooled ? layers : keep_after;
  std::vector<float> full;  // the residual stream when it runs past the kept state
  float* x = h;
  if (run > keep_after) {
    full.resize(rows * d);
    x = full.data();
  }
  for (std::size_t i = 0; i < run; ++i) {
    if (x != h && i == 0) std::memcpy(x, h, rows * d * sizeof(float));
    m.layers[i](x, batch, tokens, true, ctx);
    if (x != h && i + 1 == keep_after) std::memcpy(h, x, rows * d * sizeof(float));
  }
  if (keep_after == layers || options.final_norm_on_skip) m.final_norm(h, h, rows, ctx);
  m.store->release_streamed_pages();  // LoadOptions::stream_weights
  if (!options.pooled) return out;
  const float* last = h;
  if (x != h) {
    m.final_norm(x, x, rows, ctx);
    last = x;
  }
  out.pooled = Tensor({batch, d});
  for (std::size_t b = 0; b < batch; ++b) {
    const std::int32_t* row = ids.data() + b * tokens;
    std::size_t at = 0;
    if (c.eos_token_id == 2) {
      at = static_cast<std::size_t>(std::max_element(row, row + tokens) - row);  // first maximum
    } else {
      for (std::size_t t = 0; t < tokens; ++t)
        if (row[t] == c.eos_token_id) {
          at = t;
          break;
        }
    }
    std::memcpy(out.pooled.data() + b * d, last + (b * tokens + at) * d, d * sizeof(float));
  }
  if (c.with_projection) {
    out.text_embeds = Tensor({batch, c.projection_dim});
    m.projection(out.pooled.data(), batch, out.text_embeds.data(), ctx);
  }
  return out;
}

}  // namespace models
DIFFUSE_END_NAMESPACE
