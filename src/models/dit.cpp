// SPDX-License-Identifier: MIT
// DiTTransformer2DModel (see models/dit.hpp): config, weight binding (diffusers and original
// facebookresearch/DiT names) and the forward pass.
#include "diffuse/models/dit.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
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

constexpr const char* kModel = "DiTTransformer2DModel";
constexpr std::size_t kTimeProjDim = 256;  // Timesteps(num_channels=256) in CombinedTimestepLabelEmbeddings

/// The bounds of nn/config.hpp on a config however it was obtained (config.json or inferred from
/// the shapes), and the products the network sizes buffers with.
void check_bounds(const DiTConfig& c, std::string_view where) {
  namespace L = nn::limits;
  const nlohmann::json none = nlohmann::json::object();
  const nn::ConfigReader r(none, std::string(where));
  r.check("num_attention_heads", c.num_attention_heads, {1, L::kMaxHeads});
  r.check("attention_head_dim", c.attention_head_dim, {1, L::kMaxChannels});
  r.check("in_channels", c.in_channels, {1, L::kMaxChannels});
  if (c.out_channels) r.check("out_channels", *c.out_channels, {1, L::kMaxChannels});
  r.check("num_layers", c.num_layers, {1, L::kMaxLayers});
  r.check("sample_size", c.sample_size, {1, L::kMaxSampleSize});
  r.check("patch_size", c.patch_size, {1, L::kMaxPatchSize});
  if (c.num_embeds_ada_norm) r.check("num_embeds_ada_norm", *c.num_embeds_ada_norm, {1, L::kMaxClasses});
  const std::size_t d = r.product("num_attention_heads * attention_head_dim", {c.num_attention_heads, c.attention_head_dim});
  if (d > L::kMaxChannels)
    r.fail("num_attention_heads", "* \"attention_head_dim\" = " + std::to_string(c.num_attention_heads) + " * " +
                                      std::to_string(c.attention_head_dim) + " = " + std::to_string(d) +
                                      ", more than the inner width limit of " + std::to_string(L::kMaxChannels));
}

/// diffusers FeedForward's activation_fn -> the element-wise activation after net.0.proj.
kernels::Activation ff_activation(const std::string& name, std::string_view where) {
  if (name == "gelu") return kernels::Activation::gelu_erf;
  if (name == "gelu-approximate") return kernels::Activation::gelu_tanh;
  if (name == "geglu-approximate") return kernels::Activation::quick_gelu;  // ApproximateGELU: x * sigmoid(1.702 x)
  if (name == "linear-silu") return kernels::Activation::silu;
  if (name == "geglu" || name == "swiglu")
    raise<format_error>(where, "activation_fn \"" + name + "\" (gated feed-forward) is not supported by DiT");
  try {
    return kernels::parse_activation(name.c_str());
  } catch (const value_error&) {
    raise<format_error>(where, "unknown activation_fn \"" + name + "\"");
  }
}

std::string block_name(bool original, std::size_t i, std::string_view rest) {
  return (original ? "blocks." : "transformer_blocks.") + std::to_string(i) + "." + std::string(rest);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

DiTConfig DiTConfig::from_json(const nlohmann::json& j, std::string_view where) {
  namespace L = nn::limits;
  const nn::ConfigReader r(j, std::string(where));
  DiTConfig c;
  c.num_attention_heads = r.size("num_attention_heads", c.num_attention_heads, {1, L::kMaxHeads});
  c.attention_head_dim = r.size("attention_head_dim", c.attention_head_dim, {1, L::kMaxChannels});
  c.in_channels = r.size("in_channels", c.in_channels, {1, L::kMaxChannels});
  if (r.find("out_channels")) c.out_channels = r.size("out_channels", 0, {1, L::kMaxChannels});
  c.num_layers = r.size("num_layers", c.num_layers, {1, L::kMaxLayers});
  c.dropout = r.number("dropout", c.dropout);
  c.norm_num_groups = r.size("norm_num_groups", c.norm_num_groups, {0, L::kMaxChannels});
  c.attention_bias = r.boolean("attention_bias", c.attention_bias);
  c.sample_size = r.size("sample_size", c.sample_size, {1, L::kMaxSampleSize});
  c.patch_size = r.size("patch_size", c.patch_size, {1, L::kMaxPatchSize});
  c.activation_fn = r.string("activation_fn", c.activation_fn);
  c.num_embeds_ada_norm = r.optional_size("num_embeds_ada_norm", c.num_embeds_ada_norm, {1, L::kMaxClasses});
  c.upcast_attention = r.boolean("upcast_attention", c.upcast_attention);
  c.norm_type = r.string("norm_type", c.norm_type);
  c.norm_elementwise_affine = r.boolean("norm_elementwise_affine", c.norm_elementwise_affine);
  c.norm_eps = r.number("norm_eps", c.norm_eps);

  if (c.norm_type != "ada_norm_zero")
    raise<format_error>(where, "norm_type \"" + c.norm_type + "\" is not supported (DiT needs \"ada_norm_zero\")");
  if (!c.num_embeds_ada_norm)
    raise<format_error>(where, "num_embeds_ada_norm must be set with norm_type \"ada_norm_zero\"");
  const std::pair<const char*, std::size_t> positive[] = {
      {"num_attention_heads", c.num_attention_heads}, {"attention_head_dim", c.attention_head_dim},
      {"in_channels", c.in_channels}, {"num_layers", c.num_layers}, {"sample_size", c.sample_size},
      {"patch_size", c.patch_size}, {"num_embeds_ada_norm", *c.num_embeds_ada_norm}};
  for (const auto& [key, v] : positive)
    if (v == 0) raise<format_error>(where, std::string("\"") + key + "\" must be positive");
  if (c.out_channels && *c.out_channels == 0) raise<format_error>(where, "\"out_channels\" must be positive");
  if (!(c.norm_eps > 0)) raise<format_error>(where, "\"norm_eps\" must be positive");
  ff_activation(c.activation_fn, where);
  check_bounds(c, where);
  return c;
}

DiTConfig DiTConfig::infer(const io::ModelDir& dir) {
  const std::string where = "DiTConfig::infer";
  const std::string path = dir.path().string();
  auto need = [&](const char* name) -> const io::TensorView& {
    const io::TensorView* v = dir.find(name);
    if (!v) raise<format_error>(where, path + ": missing '" + name + "' (not an original DiT checkpoint)");
    return *v;
  };
  const io::TensorView& xe = need("x_embedder.proj.weight");
  if (xe.shape.size() != 4 || xe.shape[2] != xe.shape[3] || xe.shape[2] == 0)
    raise<format_error>(where, path + ": 'x_embedder.proj.weight' has shape " + shape_string(xe.shape) +
                                   ", expected [D, C, p, p]");
  DiTConfig c;
  const std::size_t d = xe.shape[0];
  c.in_channels = xe.shape[1];
  c.patch_size = xe.shape[2];
  if (d == 0 || d > nn::limits::kMaxChannels || c.in_channels == 0 || c.in_channels > nn::limits::kMaxChannels ||
      c.patch_size > nn::limits::kMaxPatchSize)
    raise<format_error>(where, path + ": 'x_embedder.proj.weight' has shape " + shape_string(xe.shape) +
                                   ", outside the bounds of a DiT (width and channels 1.." +
                                   std::to_string(nn::limits::kMaxChannels) + ", patch 1.." +
                                   std::to_string(nn::limits::kMaxPatchSize) + ")");
  std::size_t layers = 0;
  while (dir.contains("blocks." + std::to_string(layers) + ".attn.qkv.weight")) ++layers;
  if (layers == 0) raise<format_error>(where, path + ": no 'blocks.0.attn.qkv.weight'");
  c.num_layers = layers;
  const io::TensorView& table = need("y_embedder.embedding_table.weight");
  if (table.shape.size() != 2 || table.shape[0] < 2)
    raise<format_error>(where, path + ": 'y_embedder.embedding_table.weight' has shape " + shape_string(table.shape) +
                                   ", expected [classes + 1, D]");
  c.num_embeds_ada_norm = table.shape[0] - 1;
  const io::TensorView& fl = need("final_layer.linear.weight");
  const std::size_t pp = c.patch_size * c.patch_size;
  if (fl.shape.size() != 2 || fl.shape[0] % pp != 0 || fl.shape[0] == 0)
    raise<format_error>(where, path + ": 'final_layer.linear.weight' has shape " + shape_string(fl.shape) +
                                   ", expected [p*p*out_channels, D]");
  c.out_channels = fl.shape[0] / pp;
  c.sample_size = 32;
  if (const io::TensorView* pe = dir.find("pos_embed"); pe && pe->shape.size() == 3) {
    const auto side = static_cast<std::size_t>(std::llround(std::sqrt(static_cast<double>(pe->shape[1]))));
    if (side * side == pe->shape[1] && side > 0) c.sample_size = side * c.patch_size;
  }
  std::size_t heads = 0;
  switch (d) {
    case 384: heads = 6; break;
    case 768: heads = 12; break;
    case 1024: heads = 16; break;
    case 1152: heads = 16; break;
    default:
      raise<format_error>(where, path + ": hidden size " + std::to_string(d) +
                                     " is not one of the standard DiT sizes (384, 768, 1024, 1152); the number of "
                                     "heads cannot be inferred: add a config.json");
  }
  c.num_attention_heads = heads;
  c.attention_head_dim = d / heads;
  c.attention_bias = dir.contains("blocks.0.attn.qkv.bias");
  check_bounds(c, where + " " + path);
  return c;
}

// ---------------------------------------------------------------------------------------------
// The network

namespace {

/// The conditioning embedder of one block (or the one shared by all).
struct Embedder {
  nn::TimestepEmbedding time;
  const float* table = nullptr;  ///< [table_rows, D]
};

struct Block {
  std::size_t embedder = 0;  ///< index into DiT::embedders_
  nn::Linear ada;            ///< norm1.linear: D -> 6D
  bool fused_qkv = false;
  nn::Linear qkv;            ///< original attn.qkv: D -> 3D
  nn::Linear q, k, v;        ///< diffusers to_q/to_k/to_v
  nn::Linear out;            ///< to_out.0
  const float* norm3_gamma = nullptr;
  const float* norm3_beta = nullptr;
  nn::Linear ff1, ff2;
};

class DiT final : public Network {
 public:
  DiT(io::ModelDir dir, const nn::LoadOptions& options);

  const NetworkInfo& info() const noexcept override { return info_; }
  Tensor forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                 kernels::Context& ctx) const override;
  std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const override;

 private:
  void bind(nn::WeightStore& w, bool original);

  io::ModelDir dir_;                          // first: the weights point into its mapping
  std::unique_ptr<nn::WeightStore> weights_;  // owns converted copies (f16 -> f32, matrix_dtype)
  std::size_t shared_parameters_ = 0;         // scalars of the embedder copies equal to block 0's
  DiTConfig cfg_;
  NetworkInfo info_;
  std::size_t dim_ = 0, out_channels_ = 0, returned_channels_ = 0, table_rows_ = 0;
  kernels::Activation ff_act_ = kernels::Activation::gelu_tanh;
  nn::MatrixRef patch_w_;  ///< [D, C*p*p]
  const float* patch_b_ = nullptr;
  std::vector<Embedder> embedders_;
  std::vector<Block> blocks_;
  nn::Linear proj_out_1_, proj_out_2_;
  std::size_t pos_grid_ = 0;
  std::vector<float> pos_table_;  ///< [grid * grid, D] for the config's sample_size
};

/// True when the tensors `a` and `b` hold the same dtype, shape and bytes.
bool same_tensor(const io::ModelDir& dir, const std::string& a, const std::string& b) {
  const io::TensorView* x = dir.find(a);
  const io::TensorView* y = dir.find(b);
  if (!x || !y || x->dtype != y->dtype || x->shape != y->shape || x->nbytes != y->nbytes) return false;
  return std::memcmp(x->data, y->data, x->nbytes) == 0;
}

DiT::DiT(io::ModelDir dir, const nn::LoadOptions& options) : dir_(std::move(dir)) {
  const bool original = dir_.contains("x_embedder.proj.weight");
  const std::string cfg_where = (dir_.path() / "config.json").string();
  if (dir_.has_config())
    cfg_ = DiTConfig::from_json(dir_.config(), cfg_where);
  else if (original)
    cfg_ = DiTConfig::infer(dir_);
  else
    raise<format_error>(kModel, dir_.path().string() + " has no config.json");
  dim_ = cfg_.inner_dim();
  out_channels_ = cfg_.out_channels_or_in();
  returned_channels_ = cfg_.learned_sigma() ? cfg_.in_channels : out_channels_;
  ff_act_ = ff_activation(cfg_.activation_fn, cfg_where);

  weights_ = std::make_unique<nn::WeightStore>(dir_, kModel, options);
  nn::WeightStore& w = *weights_;
  bind(w, original);
  w.check_all_used();

  info_.architecture = kModel;
  info_.in_channels = cfg_.in_channels;
  info_.out_channels = returned_channels_;
  info_.sample_size = cfg_.sample_size;
  info_.size_multiple = cfg_.patch_size;
  const std::size_t n = *cfg_.num_embeds_ada_norm;
  info_.num_classes = table_rows_;
  if (table_rows_ == n + 1) info_.null_class = static_cast<std::int64_t>(n);
  info_.parameters = w.parameters() + shared_parameters_;
  for (const std::string& name : dir_.names()) ++info_.dtypes[std::string(dtype_name(dir_.tensor(name).dtype))];

  // The position table at the native size (diffusers: base_size = sample_size / p, scale 1).
  pos_grid_ = cfg_.sample_size / cfg_.patch_size;
  if (pos_grid_ > 0) {
    const std::size_t floats =
        nn::checked_product({pos_grid_, pos_grid_, dim_}, cfg_where, "the position table (sample_size / patch_size)^2 * width");
    w.reserve(nn::checked_product({floats, sizeof(float)}, cfg_where, "the position table's bytes"),
              "the position table (" + std::to_string(pos_grid_) + " x " + std::to_string(pos_grid_) + " tokens x " +
                  std::to_string(dim_) + " floats, from sample_size " + std::to_string(cfg_.sample_size) + ")");
    pos_table_.resize(floats);
    kernels::sincos_pos_embed_2d(dim_, pos_grid_, pos_grid_, pos_table_.data(), static_cast<double>(pos_grid_));
  }
}

void DiT::bind(nn::WeightStore& w, bool original) {
  const std::size_t d = dim_, p = cfg_.patch_size, c = cfg_.in_channels;
  const std::size_t n_classes = *cfg_.num_embeds_ada_norm;
  const std::size_t inner_ff = 4 * d;  // FeedForward mult = 4

  // Patch embedding.
  const std::string pe = original ? "x_embedder.proj" : "pos_embed.proj";
  patch_w_ = w.matrix(pe + ".weight", {d, c, p, p});
  patch_b_ = w.f32(pe + ".bias", {d});
  w.ignore(original ? "pos_embed" : "pos_embed.pos_embed");  // fixed table: recomputed

  // Conditioning embedders: one per block in diffusers files, one in original files.
  auto emb_names = [&](std::size_t i) {
    const std::string pre = original ? std::string() : block_name(false, i, "norm1.emb.");
    return std::vector<std::string>{
        pre + (original ? "t_embedder.mlp.0" : "timestep_embedder.linear_1"),
        pre + (original ? "t_embedder.mlp.2" : "timestep_embedder.linear_2"),
        pre + (original ? "y_embedder.embedding_table" : "class_embedder.embedding_table")};
  };
  // Table rows: classes + 1 (the null label of classifier-free guidance) or classes.
  {
    const std::string table = emb_names(0)[2] + ".weight";
    table_rows_ = n_classes + 1;
    if (w.contains(table)) {
      const Shape s = w.shape_of(table);
      if (s.size() == 2 && s[1] == d && s[0] == n_classes) table_rows_ = n_classes;
    }
  }
  auto bind_embedder = [&](std::size_t i) {
    const auto names = emb_names(i);
    Embedder e;
    e.time.linear_1 = nn::Linear::bind(w, names[0], kTimeProjDim, d);
    e.time.linear_2 = nn::Linear::bind(w, names[1], d, d);
    e.time.act = kernels::Activation::silu;
    e.table = w.f32(names[2] + ".weight", {table_rows_, d});
    embedders_.push_back(e);
  };
  bind_embedder(0);
  if (!original) {
    // Share block 0's embedder when every copy is byte-identical (then each block would compute
    // exactly the same conditioning); otherwise every block uses its own.
    const auto first = emb_names(0);
    const char* suffixes[] = {".weight", ".bias"};
    bool identical = true;
    for (std::size_t i = 1; i < cfg_.num_layers && identical; ++i) {
      const auto names = emb_names(i);
      for (std::size_t k = 0; k < 3 && identical; ++k)
        for (std::size_t s = 0; s < (k == 2 ? 1u : 2u) && identical; ++s)
          identical = same_tensor(w.dir(), first[k] + suffixes[s], names[k] + suffixes[s]);
    }
    for (std::size_t i = 1; i < cfg_.num_layers; ++i) {
      if (!identical) {
        bind_embedder(i);
        continue;
      }
      // Equal bytes, dtype and shape as block 0's copy (bound above): used, counted, not re-bound.
      const auto names = emb_names(i);
      for (std::size_t k = 0; k < 3; ++k)
        for (std::size_t s = 0; s < (k == 2 ? 1u : 2u); ++s) {
          w.ignore(names[k] + suffixes[s]);
          shared_parameters_ += w.dir().tensor(names[k] + suffixes[s]).numel();
        }
    }
  }

  blocks_.resize(cfg_.num_layers);
  for (std::size_t i = 0; i < cfg_.num_layers; ++i) {
    Block& b = blocks_[i];
    auto name = [&](std::string_view rest) { return block_name(original, i, rest); };
    b.embedder = embedders_.size() > 1 ? i : 0;
    if (original) {
      b.ada = nn::Linear::bind(w, name("adaLN_modulation.1"), d, 6 * d);
      b.fused_qkv = true;
      b.qkv = nn::Linear::bind(w, name("attn.qkv"), d, 3 * d, cfg_.attention_bias);
      b.out = nn::Linear::bind(w, name("attn.proj"), d, d);
      b.ff1 = nn::Linear::bind(w, name("mlp.fc1"), d, inner_ff);
      b.ff2 = nn::Linear::bind(w, name("mlp.fc2"), inner_ff, d);
    } else {
      b.ada = nn::Linear::bind(w, name("norm1.linear"), d, 6 * d);
      b.q = nn::Linear::bind(w, name("attn1.to_q"), d, d, cfg_.attention_bias);
      b.k = nn::Linear::bind(w, name("attn1.to_k"), d, d, cfg_.attention_bias);
      b.v = nn::Linear::bind(w, name("attn1.to_v"), d, d, cfg_.attention_bias);
      b.out = nn::Linear::bind(w, name("attn1.to_out.0"), d, d);
      b.ff1 = nn::Linear::bind(w, name("ff.net.0.proj"), d, inner_ff);
      b.ff2 = nn::Linear::bind(w, name("ff.net.2"), inner_ff, d);
    }
    if (cfg_.norm_elementwise_affine) {
      const std::string n3 = original ? name("norm2") : name("norm3");
      b.norm3_gamma = w.f32(n3 + ".weight", {d});
      b.norm3_beta = w.f32(n3 + ".bias", {d});
    }
  }
  const std::size_t out_features = p * p * out_channels_;
  if (original) {
    proj_out_1_ = nn::Linear::bind(w, "final_layer.adaLN_modulation.1", d, 2 * d);
    proj_out_2_ = nn::Linear::bind(w, "final_layer.linear", d, out_features);
  } else {
    proj_out_1_ = nn::Linear::bind(w, "proj_out_1", d, 2 * d);
    proj_out_2_ = nn::Linear::bind(w, "proj_out_2", d, out_features);
  }
}

/// Bytes (saturating) of `floats` floats computed in double: exact far beyond any real size.
std::uint64_t float_bytes(double floats) {
  const double b = floats * sizeof(float);
  return b >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(b);
}

// The arena allocations of forward() at their peak (the buffers below mirror it), plus the output.
std::uint64_t DiT::forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const {
  const double p = static_cast<double>(cfg_.patch_size), d = static_cast<double>(dim_), b = static_cast<double>(batch);
  const double gh = std::floor(static_cast<double>(height) / p), gw = std::floor(static_cast<double>(width) / p);
  const double tokens = gh * gw, rows = b * tokens;
  const double n_emb = static_cast<double>(embedders_.size());
  const double feat = p * p * static_cast<double>(out_channels_);
  const double cpp = static_cast<double>(cfg_.in_channels) * p * p;
  const bool native = gh == static_cast<double>(pos_grid_) && gw == static_cast<double>(pos_grid_);
  const double base = b * (kTimeProjDim + 1) + 2 * n_emb * b * d + rows * d;        // tproj, t, cond, h
  const double embed = rows * cpp + (native ? 0.0 : tokens * d);                     // patches, position table
  const double blocks = b * 6 * d + 2 * rows * d + rows * 4 * d;                     // mod, norm, branch, ff (> qkv)
  const double out = b * 6 * d + 2 * rows * d + b * 2 * d + rows * feat;             // ... mod_out, o
  const double result = b * static_cast<double>(returned_channels_) * static_cast<double>(height * width);
  constexpr double kRounding = 16.0 * 16;  // each of the ~16 buffers rounded up to 64 bytes
  return float_bytes(base + std::max({embed, blocks, out}) + result + kRounding);
}

Tensor DiT::forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                    kernels::Context& ctx) const {
  constexpr const char* kWhere = "DiTTransformer2DModel::forward";
  const std::size_t d = dim_, p = cfg_.patch_size, c_in = cfg_.in_channels;
  if (x.ndim() != 4 || x.dim(1) != c_in)
    raise<shape_error>(kWhere, "x has shape " + shape_string(x.shape()) + ", expected [B, " + std::to_string(c_in) +
                                   ", H, W]");
  const std::size_t batch = x.dim(0), height = x.dim(2), width = x.dim(3);
  if (batch == 0 || height == 0 || width == 0)
    raise<shape_error>(kWhere, "x has shape " + shape_string(x.shape()) + " with a zero extent");
  if (height % p != 0 || width % p != 0)
    raise<shape_error>(kWhere, "x has height " + std::to_string(height) + " and width " + std::to_string(width) +
                                   ", which must be multiples of patch_size " + std::to_string(p));
  if (timesteps.size() != batch && timesteps.size() != 1)
    raise<shape_error>(kWhere, "timesteps has " + std::to_string(timesteps.size()) + " values, expected " +
                                   std::to_string(batch) + " (the batch) or 1");
  if (labels.empty())
    raise<value_error>(kWhere, "labels are required: DiT is class-conditional (use the null class " +
                                   (info_.null_class ? std::to_string(*info_.null_class) : std::string("-")) +
                                   " for an unconditional prediction)");
  if (labels.size() != batch && labels.size() != 1)
    raise<shape_error>(kWhere, "labels has " + std::to_string(labels.size()) + " values, expected " +
                                   std::to_string(batch) + " (the batch) or 1");
  for (std::int64_t y : labels)
    if (y < 0 || static_cast<std::uint64_t>(y) >= table_rows_)
      raise<value_error>(kWhere, "labels has the value " + std::to_string(y) + ", expected 0.." +
                                     std::to_string(table_rows_ - 1));
  for (float t : timesteps)
    if (!std::isfinite(t)) raise<value_error>(kWhere, "timesteps has a non-finite value");

  const std::size_t gh = height / p, gw = width / p, tokens = gh * gw, rows = batch * tokens;
  const std::size_t heads = cfg_.num_attention_heads, head_dim = cfg_.attention_head_dim;
  const std::size_t cpp = c_in * p * p;
  kernels::Arena& arena = ctx.arena();
  arena.reset();

  // --- Conditioning: c_e [B, D] per embedder, then SiLU(c_e).
  float* tproj = arena.alloc(batch * kTimeProjDim);
  {
    float* t = arena.alloc(batch);
    for (std::size_t b = 0; b < batch; ++b) t[b] = timesteps[timesteps.size() == 1 ? 0 : b];
    kernels::timestep_embedding(t, batch, kTimeProjDim, /*flip_sin_to_cos=*/true, /*shift=*/1.0f, tproj);
  }
  const std::size_t n_emb = embedders_.size();
  float* cond = arena.alloc(n_emb * batch * d);       // c, kept for block 0's final layer
  float* cond_silu = arena.alloc(n_emb * batch * d);  // SiLU(c)
  for (std::size_t e = 0; e < n_emb; ++e) {
    float* ce = cond + e * batch * d;
    embedders_[e].time(tproj, batch, ce, ctx);
    for (std::size_t b = 0; b < batch; ++b) {
      const std::int64_t y = labels[labels.size() == 1 ? 0 : b];
      const float* row = embedders_[e].table + static_cast<std::size_t>(y) * d;
      float* out = ce + b * d;
      for (std::size_t i = 0; i < d; ++i) out[i] += row[i];
    }
  }
  kernels::activation(kernels::Activation::silu, cond, cond_silu, n_emb * batch * d, ctx);

  // --- Patch embedding as a GEMM over patches: patches [B*N, C*p*p] (feature (c, pi, qi), the
  // order of the conv weight [D, C, p, p]) times W^T, + bias, + the position table.
  float* h = arena.alloc(rows * d);  // the residual stream [B, N, D]
  {
    const std::size_t m = arena.mark();
    float* patches = arena.alloc(rows * cpp);
    const float* xs = x.data();
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t i = 0; i < gh; ++i)
        for (std::size_t j = 0; j < gw; ++j) {
          float* dst = patches + ((b * gh + i) * gw + j) * cpp;
          for (std::size_t ch = 0; ch < c_in; ++ch)
            for (std::size_t pi = 0; pi < p; ++pi) {
              const float* src = xs + ((b * c_in + ch) * height + i * p + pi) * width + j * p;
              std::memcpy(dst + (ch * p + pi) * p, src, p * sizeof(float));
            }
        }
    const float* pos = pos_table_.data();
    if (gh != pos_grid_ || gw != pos_grid_) {
      float* t = arena.alloc(tokens * d);
      kernels::sincos_pos_embed_2d(d, gh, gw, t, static_cast<double>(pos_grid_));
      pos = t;
    }
    // Seed h with the position table, then accumulate the projection (beta = 1).
    for (std::size_t b = 0; b < batch; ++b) std::memcpy(h + b * tokens * d, pos, tokens * d * sizeof(float));
    kernels::GemmArgs g;
    g.M = rows;
    g.N = d;
    g.K = cpp;
    g.A = patches;
    g.lda = cpp;
    g.B = patch_w_.data;
    g.ldb = cpp;
    g.b_type = patch_w_.dtype;
    g.b_transposed = true;
    g.C = h;
    g.ldc = d;
    g.beta = 1.0f;
    g.bias = patch_b_;
    kernels::gemm(g, ctx);
    arena.release(m);
  }

  // --- Blocks.
  float* mod = arena.alloc(batch * 6 * d);  // this block's modulation [B, 6D]
  float* norm = arena.alloc(rows * d);      // modulated LayerNorm output
  float* branch = arena.alloc(rows * d);    // attention / MLP output before the gate
  for (const Block& blk : blocks_) {
    blk.ada(cond_silu + blk.embedder * batch * d, batch, mod, ctx);
    const float* shift_msa = mod;
    const float* scale_msa = mod + d;
    const float* gate_msa = mod + 2 * d;
    const float* shift_mlp = mod + 3 * d;
    const float* scale_mlp = mod + 4 * d;
    const float* gate_mlp = mod + 5 * d;

    kernels::LayerNormArgs ln;
    ln.x = h;
    ln.y = norm;
    ln.rows = rows;
    ln.dim = d;
    ln.eps = 1e-6f;
    ln.shift = shift_msa;
    ln.scale = scale_msa;
    ln.rows_per_batch = tokens;
    ln.mod_stride = 6 * d;
    kernels::layer_norm(ln, ctx);

    {
      const std::size_t m = arena.mark();
      float* qkv = arena.alloc(rows * 3 * d);  // [B*N, 3D]: q | k | v per token
      if (blk.fused_qkv) {
        blk.qkv(norm, rows, qkv, ctx);
      } else {
        const nn::Linear* parts[3] = {&blk.q, &blk.k, &blk.v};
        for (std::size_t s = 0; s < 3; ++s) (*parts[s])(norm, rows, qkv + s * d, ctx, 0.0f, 3 * d);
      }
      kernels::AttentionArgs a;
      a.q = qkv;
      a.k = qkv + d;
      a.v = qkv + 2 * d;
      a.o = norm;  // LN output no longer needed
      a.batch = batch;
      a.heads = heads;
      a.q_len = a.kv_len = tokens;
      a.head_dim = head_dim;
      a.q_batch_stride = a.k_batch_stride = a.v_batch_stride = tokens * 3 * d;
      a.q_head_stride = a.k_head_stride = a.v_head_stride = head_dim;
      a.q_row_stride = a.k_row_stride = a.v_row_stride = 3 * d;
      a.o_batch_stride = tokens * d;
      a.o_head_stride = head_dim;
      a.o_row_stride = d;
      kernels::attention(a, ctx);
      arena.release(m);
    }
    blk.out(norm, rows, branch, ctx);
    kernels::gated_add(h, branch, batch, tokens, d, gate_msa, 6 * d, ctx);

    ln.eps = static_cast<float>(cfg_.norm_eps);
    ln.gamma = blk.norm3_gamma;
    ln.beta = blk.norm3_beta;
    ln.shift = shift_mlp;
    ln.scale = scale_mlp;
    kernels::layer_norm(ln, ctx);
    {
      const std::size_t m = arena.mark();
      float* ff = arena.alloc(rows * blk.ff1.out);
      blk.ff1(norm, rows, ff, ctx);
      kernels::activation(ff_act_, ff, ff, rows * blk.ff1.out, ctx);
      blk.ff2(ff, rows, branch, ctx);
      arena.release(m);
    }
    kernels::gated_add(h, branch, batch, tokens, d, gate_mlp, 6 * d, ctx);
  }

  // --- Output layer: shift, scale from block 0's conditioning.
  float* mod_out = arena.alloc(batch * 2 * d);
  proj_out_1_(cond_silu + blocks_.front().embedder * batch * d, batch, mod_out, ctx);
  {
    kernels::LayerNormArgs ln;
    ln.x = h;
    ln.y = norm;
    ln.rows = rows;
    ln.dim = d;
    ln.eps = 1e-6f;
    ln.shift = mod_out;
    ln.scale = mod_out + d;
    ln.rows_per_batch = tokens;
    ln.mod_stride = 2 * d;
    kernels::layer_norm(ln, ctx);
  }
  const std::size_t feat = p * p * out_channels_;
  float* o = arena.alloc(rows * feat);
  proj_out_2_(norm, rows, o, ctx);

  // --- Unpatchify: token (i, j), feature (pi*p + qi)*C + ch -> out[b, ch, i*p + pi, j*p + qi];
  // only the first returned_channels_ channels (learned sigma drops the variance half).
  Tensor out({batch, returned_channels_, height, width});
  float* os = out.data();
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t ch = 0; ch < returned_channels_; ++ch)
      for (std::size_t i = 0; i < gh; ++i)
        for (std::size_t pi = 0; pi < p; ++pi) {
          float* dst = os + ((b * returned_channels_ + ch) * height + i * p + pi) * width;
          for (std::size_t j = 0; j < gw; ++j) {
            const float* src = o + ((b * gh + i) * gw + j) * feat + pi * p * out_channels_ + ch;
            for (std::size_t qi = 0; qi < p; ++qi) dst[j * p + qi] = src[qi * out_channels_];
          }
        }
  return out;
}

}  // namespace

std::unique_ptr<Network> load_dit(io::ModelDir dir, const nn::LoadOptions& options) {
  return std::make_unique<DiT>(std::move(dir), options);
}

}  // namespace models
DIFFUSE_END_NAMESPACE
