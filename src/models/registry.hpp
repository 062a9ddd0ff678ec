// SPDX-License-Identifier: MIT
// Internal: the constructors load_network() dispatches to, one per architecture. Each takes the
// opened folder by value (the network keeps the mapping alive: weights are used in place).
#pragma once

#include <memory>

#include "diffuse/io/model_dir.hpp"
#include "diffuse/models/network.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

std::unique_ptr<Network> load_unet2d(io::ModelDir dir, const nn::LoadOptions& options);
std::unique_ptr<Network> load_dit(io::ModelDir dir, const nn::LoadOptions& options);

}  // namespace models
DIFFUSE_END_NAMESPACE
