// SPDX-License-Identifier: MIT
/** @file image.hpp
 *  Reading and writing images, and converting between images and tensors.
 *
 *  PNG files are written with stb_image_write; text chunks (tEXt) can be added, which is how
 *  diffuse records the generation parameters under the key "parameters" (the convention image
 *  tools read). Reading accepts what stb_image reads (PNG, JPEG, BMP, TGA, ...).
 *
 *  **Example**
 *  @code
 *  diffuse::Tensor x = ...;                        // [3, H, W] in [-1, 1]
 *  diffuse::io::write_png("out.png", diffuse::io::tensor_to_image(x), {{"parameters", "seed: 1"}});
 *  @endcode
 */
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

/// An 8-bit image, rows top to bottom, channels interleaved (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;  ///< width * height * channels bytes
};

/// Key/value pairs stored as PNG tEXt chunks. Keys are 1-79 Latin-1 characters.
using PngText = std::vector<std::pair<std::string, std::string>>;

/// Reads an image file. Throws io_error if it cannot be read, format_error if it is not an image.
DIFFUSE_API Image read_image(const std::filesystem::path& path);

/// Encodes `image` as PNG bytes, with `text` as tEXt chunks after the header.
/// Throws value_error for an inconsistent image or an invalid text key.
DIFFUSE_API std::vector<std::uint8_t> encode_png(const Image& image, const PngText& text = {});

/// Writes `image` as a PNG file (see encode_png). Throws io_error if the file cannot be written.
DIFFUSE_API void write_png(const std::filesystem::path& path, const Image& image, const PngText& text = {});

/// The tEXt chunks of a PNG file, in file order. Throws format_error for a file that is not a PNG.
DIFFUSE_API PngText read_png_text(const std::filesystem::path& path);

/// A tensor [C, H, W] (C = 1, 3 or 4) with values in [-1, 1] to an 8-bit image: (v + 1) * 127.5,
/// rounded and clamped. Throws shape_error for another shape and value_error for a NaN.
DIFFUSE_API Image tensor_to_image(const Tensor& chw);

/// An 8-bit image to a tensor [C, H, W] with values in [-1, 1].
DIFFUSE_API Tensor image_to_tensor(const Image& image);

/** An 8-bit image as an image-to-image input [1, 3, H, W] in [-1, 1], as diffusers reads a file:
 *  converted to RGB as PIL's `convert("RGB")` does (diffusers.utils.load_image: grey replicated,
 *  alpha dropped), then 2 (v / 255) - 1 in float32 as its VaeImageProcessor computes it (so the
 *  values are the bits diffusers gives the VAE). value_error for an inconsistent image. */
DIFFUSE_API Tensor to_rgb_tensor(const Image& image);

/** An 8-bit image as an inpainting mask [1, 1, H, W] in [0, 1] (white = repaint), as diffusers'
 *  mask processor reads a file: PIL's `convert("L")` (L = (19595 R + 38470 G + 7471 B + 2^15)
 *  >> 16 for colour, alpha dropped), then v / 255. The pipeline binarizes it at 0.5.
 *  value_error for an inconsistent image. */
DIFFUSE_API Tensor to_mask_tensor(const Image& image);

/// Lays out `images` (all the same size) in a grid of `columns` columns, `padding` pixels apart.
DIFFUSE_API Image make_grid(const std::vector<Image>& images, int columns, int padding = 2);

}  // namespace io
DIFFUSE_END_NAMESPACE
