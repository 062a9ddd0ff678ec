// SPDX-License-Identifier: MIT
// Image I/O on stb_image / stb_image_write. The stb implementations are compiled here with
// static linkage, so they cannot clash with another copy of stb in the application.
#include "diffuse/io/image.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <iterator>
#include <string>

#include "diffuse/core/error.hpp"
#include "inflate.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO_STDERR
#include <stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

DIFFUSE_BEGIN_NAMESPACE
namespace io {

namespace detail {
std::string inflate_raw(const unsigned char* data, std::size_t size, const char* what) {
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    raise<format_error>("inflate", std::string(what) + ": the compressed stream is too large");
  int out_len = 0;
  char* out = stbi_zlib_decode_noheader_malloc(reinterpret_cast<const char*>(data), static_cast<int>(size), &out_len);
  if (!out || out_len < 0) {
    std::free(out);
    raise<format_error>("inflate", std::string(what) + ": not a valid deflate stream");
  }
  std::string s(out, static_cast<std::size_t>(out_len));
  std::free(out);
  return s;
}
}  // namespace detail

namespace {

constexpr std::array<std::uint8_t, 8> kPngSignature{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

std::vector<std::uint8_t> read_file(const std::filesystem::path& path, const char* where) {
  std::ifstream in(path, std::ios::binary);
  if (!in) raise<io_error>(where, path.string() + ": cannot open: " + std::strerror(errno));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) raise<io_error>(where, path.string() + ": read failed");
  return bytes;
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

void store_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}

/// The size of the tEXt chunk for `key` and `value` (length, type, key, NUL, value, CRC), after
/// checking that PNG can hold them.
std::size_t text_chunk_size(const std::string& key, const std::string& value) {
  if (key.empty() || key.size() > 79 || key.find('\0') != std::string::npos)
    raise<value_error>("encode_png", "text key '" + key + "' must be 1 to 79 characters without NUL");
  if (value.find('\0') != std::string::npos)
    raise<value_error>("encode_png", "text value for '" + key + "' contains a NUL byte");
  constexpr std::size_t kMaxChunkData = 0x7FFFFFFF;  // PNG chunk lengths are at most 2^31 - 1
  if (value.size() > kMaxChunkData - 1 - key.size())
    raise<value_error>("encode_png", "text value for '" + key + "' is " + std::to_string(value.size()) +
                                         " bytes, more than a PNG chunk can hold");
  return 12 + key.size() + 1 + value.size();
}

/// Writes the tEXt chunk into `out`, which has text_chunk_size(key, value) bytes. Sized stores
/// into a buffer allocated once, rather than appends that grow a vector.
void write_text_chunk(std::uint8_t* out, const std::string& key, const std::string& value) {
  const std::size_t len = key.size() + 1 + value.size();
  store_u32(out, static_cast<std::uint32_t>(len));
  std::memcpy(out + 4, "tEXt", 4);
  std::memcpy(out + 8, key.data(), key.size());
  out[8 + key.size()] = 0;
  if (!value.empty()) std::memcpy(out + 9 + key.size(), value.data(), value.size());
  store_u32(out + 8 + len, crc32(out + 4, 4 + len));
}

void check_image(const Image& image, const char* where) {
  if (image.width <= 0 || image.height <= 0 || image.channels < 1 || image.channels > 4)
    raise<value_error>(where, "image of " + std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
                                  std::to_string(image.channels) + " is not a valid size");
  const auto need = static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height) *
                    static_cast<std::size_t>(image.channels);
  if (image.pixels.size() != need)
    raise<value_error>(where, "image of " + std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
                                  std::to_string(image.channels) + " needs " + std::to_string(need) +
                                  " bytes, has " + std::to_string(image.pixels.size()));
}

}  // namespace

Image read_image(const std::filesystem::path& path) {
  const auto bytes = read_file(path, "read_image");
  if (bytes.size() > static_cast<std::size_t>(INT32_MAX))
    raise<format_error>("read_image", path.string() + ": file too large");
  int w = 0, h = 0, c = 0;
  stbi_uc* data = stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &c, 0);
  if (data == nullptr)
    raise<format_error>("read_image", path.string() + ": not a readable image (" + stbi_failure_reason() + ")");
  Image image{w, h, c, {}};
  image.pixels.assign(data, data + static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * static_cast<std::size_t>(c));
  stbi_image_free(data);
  return image;
}

std::vector<std::uint8_t> encode_png(const Image& image, const PngText& text) {
  check_image(image, "encode_png");
  std::vector<std::uint8_t> png;
  auto sink = [](void* ctx, void* data, int size) {
    auto* out = static_cast<std::vector<std::uint8_t>*>(ctx);
    const auto* p = static_cast<const std::uint8_t*>(data);
    out->insert(out->end(), p, p + size);
  };
  if (stbi_write_png_to_func(sink, &png, image.width, image.height, image.channels, image.pixels.data(),
                             image.width * image.channels) == 0)
    raise<value_error>("encode_png", "stb_image_write could not encode the image");
  // The signature (8 bytes) and the IHDR chunk (4 + 4 + 13 + 4 bytes) come first; text goes after.
  constexpr std::size_t kAfterHeader = 8 + 25;
  if (png.size() < kAfterHeader) raise<value_error>("encode_png", "stb_image_write returned a truncated PNG");
  std::size_t text_bytes = 0;
  for (const auto& [key, value] : text) text_bytes += text_chunk_size(key, value);
  std::vector<std::uint8_t> out(png.size() + text_bytes);
  std::memcpy(out.data(), png.data(), kAfterHeader);
  std::size_t at = kAfterHeader;
  for (const auto& [key, value] : text) {
    write_text_chunk(out.data() + at, key, value);
    at += text_chunk_size(key, value);
  }
  std::memcpy(out.data() + at, png.data() + kAfterHeader, png.size() - kAfterHeader);
  return out;
}

void write_png(const std::filesystem::path& path, const Image& image, const PngText& text) {
  const auto png = encode_png(image, text);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) raise<io_error>("write_png", path.string() + ": cannot open for writing: " + std::strerror(errno));
  out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  out.close();
  if (!out) raise<io_error>("write_png", path.string() + ": write failed");
}

PngText read_png_text(const std::filesystem::path& path) {
  const auto bytes = read_file(path, "read_png_text");
  const std::string name = path.string();
  if (bytes.size() < 8 || !std::equal(kPngSignature.begin(), kPngSignature.end(), bytes.begin()))
    raise<format_error>("read_png_text", name + ": not a PNG file");
  PngText text;
  std::size_t at = 8;
  while (at + 12 <= bytes.size()) {
    const std::uint32_t len = get_u32(&bytes[at]);
    if (len > bytes.size() - at - 12) raise<format_error>("read_png_text", name + ": chunk runs past the end");
    const std::string type(reinterpret_cast<const char*>(&bytes[at + 4]), 4);
    const std::uint8_t* data = &bytes[at + 8];
    if (crc32(&bytes[at + 4], 4 + std::size_t{len}) != get_u32(data + len))
      raise<format_error>("read_png_text", name + ": bad CRC in chunk " + type);
    if (type == "tEXt") {
      const auto* nul = static_cast<const std::uint8_t*>(std::memchr(data, 0, len));
      if (nul == nullptr) raise<format_error>("read_png_text", name + ": tEXt chunk without a key separator");
      text.emplace_back(std::string(reinterpret_cast<const char*>(data), static_cast<std::size_t>(nul - data)),
                        std::string(reinterpret_cast<const char*>(nul + 1), static_cast<std::size_t>(data + len - nul - 1)));
    }
    if (type == "IEND") return text;
    at += 12 + std::size_t{len};
  }
  raise<format_error>("read_png_text", name + ": no IEND chunk");
}

Image tensor_to_image(const Tensor& chw) {
  if (chw.ndim() != 3 || (chw.dim(0) != 1 && chw.dim(0) != 3 && chw.dim(0) != 4))
    raise<shape_error>("tensor_to_image", "expected shape [C, H, W] with C = 1, 3 or 4, got " +
                                              shape_string(chw.shape()));
  const std::size_t c = chw.dim(0), h = chw.dim(1), w = chw.dim(2);
  Image image{static_cast<int>(w), static_cast<int>(h), static_cast<int>(c), std::vector<std::uint8_t>(c * h * w)};
  for (std::size_t k = 0; k < c; ++k)
    for (std::size_t i = 0; i < h * w; ++i) {
      const float v = chw[k * h * w + i];
      if (std::isnan(v))
        raise<value_error>("tensor_to_image", "NaN at channel " + std::to_string(k) + ", pixel " + std::to_string(i));
      const float scaled = std::nearbyint((v + 1.0f) * 127.5f);
      image.pixels[i * c + k] = static_cast<std::uint8_t>(std::clamp(scaled, 0.0f, 255.0f));
    }
  return image;
}

Tensor image_to_tensor(const Image& image) {
  check_image(image, "image_to_tensor");
  const auto c = static_cast<std::size_t>(image.channels), h = static_cast<std::size_t>(image.height),
             w = static_cast<std::size_t>(image.width);
  Tensor t({c, h, w});
  for (std::size_t k = 0; k < c; ++k)
    for (std::size_t i = 0; i < h * w; ++i) t[k * h * w + i] = static_cast<float>(image.pixels[i * c + k]) / 127.5f - 1.0f;
  return t;
}

Tensor to_rgb_tensor(const Image& image) {
  check_image(image, "to_rgb_tensor");
  const auto c = static_cast<std::size_t>(image.channels), h = static_cast<std::size_t>(image.height),
             w = static_cast<std::size_t>(image.width);
  Tensor t({1, 3, h, w});
  for (std::size_t k = 0; k < 3; ++k) {
    const std::size_t src = c >= 3 ? k : 0;  // grey (and grey + alpha): the one channel thrice
    for (std::size_t i = 0; i < h * w; ++i) {
      const float v = static_cast<float>(image.pixels[i * c + src]) / 255.0f;
      t[k * h * w + i] = 2.0f * v - 1.0f;
    }
  }
  return t;
}

Tensor to_mask_tensor(const Image& image) {
  check_image(image, "to_mask_tensor");
  const auto c = static_cast<std::size_t>(image.channels), h = static_cast<std::size_t>(image.height),
             w = static_cast<std::size_t>(image.width);
  Tensor t({1, 1, h, w});
  for (std::size_t i = 0; i < h * w; ++i) {
    const std::uint8_t* px = &image.pixels[i * c];
    // PIL's ImagingConvert RGB -> L: the ITU-R 601-2 luma in 16-bit fixed point, rounded.
    const std::uint32_t l = c >= 3 ? (19595u * px[0] + 38470u * px[1] + 7471u * px[2] + 0x8000u) >> 16 : px[0];
    t[i] = static_cast<float>(l) / 255.0f;
  }
  return t;
}

Image make_grid(const std::vector<Image>& images, int columns, int padding) {
  if (images.empty()) raise<value_error>("make_grid", "no images");
  if (columns < 1 || padding < 0) raise<value_error>("make_grid", "columns must be >= 1 and padding >= 0");
  const Image& first = images.front();
  for (const auto& im : images) {
    check_image(im, "make_grid");
    if (im.width != first.width || im.height != first.height || im.channels != first.channels)
      raise<value_error>("make_grid", "images differ in size");
  }
  const int n = static_cast<int>(images.size());
  const int cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  Image grid{cols * first.width + (cols + 1) * padding, rows * first.height + (rows + 1) * padding, first.channels, {}};
  grid.pixels.assign(static_cast<std::size_t>(grid.width) * static_cast<std::size_t>(grid.height) *
                         static_cast<std::size_t>(grid.channels), 255);
  const auto c = static_cast<std::size_t>(first.channels);
  for (int idx = 0; idx < n; ++idx) {
    const int x0 = padding + (idx % cols) * (first.width + padding), y0 = padding + (idx / cols) * (first.height + padding);
    for (int y = 0; y < first.height; ++y)
      std::copy_n(&images[static_cast<std::size_t>(idx)].pixels[static_cast<std::size_t>(y * first.width) * c],
                  static_cast<std::size_t>(first.width) * c,
                  &grid.pixels[(static_cast<std::size_t>(y0 + y) * static_cast<std::size_t>(grid.width) +
                                static_cast<std::size_t>(x0)) * c]);
  }
  return grid;
}

}  // namespace io
DIFFUSE_END_NAMESPACE
