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
  std::size_t parameters = 0;

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
  const std::size_t d = c.hidden_size;
  m.token_embedding = w.f32(p + "embeddings.token_embedding.weight", {c.vocab_size, d});
  m.position_embedding = w.f32(p + "embeddings.position_embedding.weight", {c.max_position_embeddings, d});
  const auto act = clip_activation(c.hidden_act, where);
  const auto eps = static_cast<float>(c.layer_norm_eps);
  for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
    m.layers.push_back(nn::TransformerLayer::bind(w, p + "encoder.layers." + std::to_string(i), d,
                                                  c.num_attention_heads, c.intermediate_size, eps, act));
  m.final_norm = nn::LayerNorm::bind(w, p + "final_layer_norm", d, eps);
  if (c.with_projection) m.projection = nn::Linear::bind(w, "text_projection", d, c.projection_dim, false);
  w.ignore(p + "embeddings.position_ids");
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
