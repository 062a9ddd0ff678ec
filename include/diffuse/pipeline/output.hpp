// SPDX-License-Identifier: MIT
/** @file output.hpp
 *  From a generated batch to pictures: 8-bit images (grey, RGB or RGBA8 for a host's texture),
 *  nearest-neighbour upscaling for small models, a grid for a batch, and the "parameters" text that
 *  image tools read from the PNG (AUTOMATIC1111's format: "Key: value, Key: value, ...").
 *
 *  **Example**
 *  @code
 *  diffuse::Tensor images = diffuse::pipeline::generate(model, options, ctx);
 *  auto pics = diffuse::pipeline::to_images(images, 8);           // 16x16 digits shown at 128x128
 *  auto text = diffuse::pipeline::parameters_text(model, resolved, {{"Scale", "8x (nearest)"}});
 *  diffuse::io::write_png("out.png", diffuse::pipeline::grid(pics), {{"parameters", text}});
 *  @endcode */
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/pipeline/generate.hpp"
#include "diffuse/pipeline/model.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

/** One 8-bit image per batch item of `images` [B, C, H, W] (C = 1, 3 or 4; values in [-1, 1],
 *  clamped), each upscaled `scale` times (nearest). Throws shape_error for another shape,
 *  value_error for a NaN or scale < 1. */
DIFFUSE_API std::vector<io::Image> to_images(const Tensor& images, int scale = 1);

/// Batch item `index` of `images` [B, C, H, W] as RGBA8 (grey is replicated, alpha 255).
DIFFUSE_API io::Image to_rgba8(const Tensor& images, std::size_t index = 0);

/// `image` enlarged `scale` times in each direction, each pixel repeated (no smoothing).
DIFFUSE_API io::Image upscale_nearest(const io::Image& image, int scale);

/// The images in a grid: `columns` 0 picks min(n, 10) (a 10-class batch is one row; 20 images two rows).
DIFFUSE_API io::Image grid(const std::vector<io::Image>& images, int columns = 0, int padding = 2);

/** The "parameters" text of a generation with resolved `options`, e.g.
 *  "class: 3, Steps: 25, Sampler: flow_euler, Schedule type: default, CFG scale: 2, Seed: 42,
 *  Size: 16x16, Model: digits-dit, Batch size: 1". With `index`, the image's own class and
 *  "Batch pos"; `extra` pairs are appended ("Scale", "8x (nearest)"). A text model's prompt comes
 *  first, on its own line, then "Negative prompt: ..." when there is one, then the settings (with
 *  "Clip skip" when > 1, "Denoising strength" for img2img, "RNG: CPU" / "RNG: NV" and "ENSD" in A1111's
 *  noise modes, where an image's "Seed" is its own, seed + index), as A1111 writes them (prompts of a
 *  batch without `index`: joined by " | "). */
DIFFUSE_API std::string parameters_text(const Model& model, const GenerateOptions& options,
                                        std::optional<std::size_t> index = std::nullopt,
                                        const std::vector<std::pair<std::string, std::string>>& extra = {});

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
