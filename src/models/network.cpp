// SPDX-License-Identifier: MIT
// load_network(): picks the architecture from config.json (see models/network.hpp).
#include <string>

#include "diffuse/core/error.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/models/unet2d_condition.hpp"
#include "registry.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

Network::~Network() = default;

Tensor Network::forward_conditioned(const Tensor& x, std::span<const float> timesteps, const Conditioning& c,
                                    kernels::Context& ctx) const {
  if (c.text || c.pooled || c.time_ids)
    raise<value_error>("Network::forward", info().architecture + " takes no text conditioning (give class labels)");
  return forward(x, timesteps, c.labels, ctx);
}

std::unique_ptr<Network> load_network(const std::filesystem::path& path, const nn::LoadOptions& options) {
  io::ModelDir dir = io::ModelDir::open(path, options.variant);
  constexpr const char* kWhere = "load_network";
  // Original facebookresearch/DiT files have no diffusers config; recognise them by their keys.
  if (dir.contains("x_embedder.proj.weight") && dir.contains("final_layer.linear.weight"))
    return load_dit(std::move(dir), options);
  if (!dir.has_config())
    raise<format_error>(kWhere, path.string() + " has no config.json, and its tensors are not a known checkpoint");
  const nlohmann::json& cfg = dir.config();
  const auto it = cfg.find("_class_name");
  if (it == cfg.end() || !it->is_string())
    raise<format_error>(kWhere, (path / "config.json").string() + " has no \"_class_name\" string");
  const std::string cls = it->get<std::string>();
  if (cls == "UNet2DModel") return load_unet2d(std::move(dir), options);
  if (cls == "DiTTransformer2DModel") return load_dit(std::move(dir), options);
  if (cls == "UNet2DConditionModel")
    return std::make_unique<UNet2DConditionModel>(UNet2DConditionModel::load(std::move(dir), options));
  const auto norm = cfg.find("norm_type");
  if (cls == "Transformer2DModel" && norm != cfg.end() && norm->is_string() && *norm == "ada_norm_zero")
    return load_dit(std::move(dir), options);
  raise<format_error>(kWhere, (path / "config.json").string() + ": architecture \"" + cls +
                                  "\" is not supported (known: UNet2DModel, DiTTransformer2DModel, UNet2DConditionModel)");
}

}  // namespace models
DIFFUSE_END_NAMESPACE
