// SPDX-License-Identifier: MIT
// For C++ code inside diffuse (and its tests): a C handle for a pipeline::Model built in C++, e.g. a
// stand-in network, so that the C ABI can be tested on behaviour the shipped models never show (a
// network that returns NaN). The handle is freed with diffuse_model_free like any other.
#pragma once

#include "diffuse/diffuse.h"
#include "diffuse/pipeline/model.hpp"

namespace diffuse_capi {

/// A new diffuse_model handle owning a copy of `model` (shares its network). Throws std::bad_alloc.
diffuse_model* wrap_model(const diffuse::pipeline::Model& model);

}  // namespace diffuse_capi
