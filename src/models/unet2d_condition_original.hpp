// SPDX-License-Identifier: MIT
// Internal: the original (LDM / A1111 single-file) names of a UNet2DConditionModel's parameters,
// shared by unet2d_condition.cpp (load_original) and the tests of the mapping.
#pragma once

#include <string>
#include <string_view>

#include "diffuse/config.hpp"
#include "diffuse/models/unet2d_condition.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models::detail {

/** The LDM name (without the file's prefix) of the diffusers parameter `name` of a U-Net with
 *  config `c`: `down_blocks.1.resnets.0.norm1.weight` -> `input_blocks.4.0.in_layers.0.weight`
 *  for SD 1.5 (layers_per_block 2). A name outside the layout (an index past the config's
 *  blocks, an unknown module) is returned unchanged, so the lookup fails naming it. */
std::string unet_original_name(std::string_view name, const UNet2DConditionConfig& c);

/// Checks a caller-built config as UNet2DConditionConfig::from_json checks a config.json
/// (format_error naming `where` and the field): load_original takes a struct, not a file.
void check_unet_config(const UNet2DConditionConfig& c, const std::string& where);

}  // namespace models::detail
DIFFUSE_END_NAMESPACE
