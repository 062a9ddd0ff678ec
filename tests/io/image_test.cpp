// SPDX-License-Identifier: MIT
#include "diffuse/io/image.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <vector>

#include "temp_dir.hpp"

namespace {

namespace io = diffuse::io;
namespace fs = std::filesystem;

/// A path in this process's own fresh temporary folder (removed at exit).
fs::path temp_path(const std::string& name) {
  static const diffuse_test::TempDir dir("image");
  return dir / name;
}

io::Image gradient(int w, int h, int c) {
  io::Image im{w, h, c, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * c))};
  for (std::size_t i = 0; i < im.pixels.size(); ++i) im.pixels[i] = static_cast<std::uint8_t>((i * 37) % 256);
  return im;
}

TEST(Image, PngRoundTripKeepsPixelsAndText) {
  const auto path = temp_path("rt.png");
  const io::Image im = gradient(7, 5, 3);
  const io::PngText text{{"parameters", "seed: 42, sampler: euler\nsecond line"}, {"Software", "diffuse"}};
  io::write_png(path, im, text);
  const io::Image back = io::read_image(path);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.channels, 3);
  EXPECT_EQ(back.pixels, im.pixels);
  EXPECT_EQ(io::read_png_text(path), text);
  fs::remove(path);
}

TEST(Image, EncodingIsDeterministic) {
  const io::Image im = gradient(16, 16, 4);
  EXPECT_EQ(io::encode_png(im, {{"parameters", "x"}}), io::encode_png(im, {{"parameters", "x"}}));
}

// The tEXt chunks' bytes against PNG's layout, with CRCs from zlib.crc32 (Python) rather than the
// library's own crc32: length, "tEXt", key, NUL, value, CRC over type and data; an empty value too.
TEST(Image, TextChunkBytesKnownAnswer) {
  const io::Image im = gradient(1, 1, 1);
  const auto plain = io::encode_png(im);
  const auto png = io::encode_png(im, {{"a", "b"}, {"key", ""}});
  const std::vector<std::uint8_t> chunks{0, 0, 0, 3, 't', 'E', 'X', 't', 'a', 0, 'b', 0xDC, 0x49, 0xA2, 0x3B,
                                         0, 0, 0, 4, 't', 'E', 'X', 't', 'k', 'e', 'y', 0, 0xEB, 0x42, 0x6D, 0x3E};
  ASSERT_EQ(png.size(), plain.size() + chunks.size());
  constexpr std::size_t kAfterHeader = 8 + 25;  // signature, IHDR
  EXPECT_TRUE(std::equal(plain.begin(), plain.begin() + kAfterHeader, png.begin()));
  EXPECT_EQ(std::vector<std::uint8_t>(png.begin() + kAfterHeader, png.begin() + kAfterHeader + 31), chunks);
  EXPECT_TRUE(std::equal(plain.begin() + kAfterHeader, plain.end(), png.begin() + kAfterHeader + 31));
}

TEST(Image, TensorConversionRoundTrip) {
  diffuse::Tensor t({3, 2, 2});
  const float vals[12] = {-1.0f, 1.0f, 0.0f, 0.5f, -0.5f, 2.0f, -3.0f, 0.25f, 1.0f, -1.0f, 0.0f, 0.75f};
  for (int i = 0; i < 12; ++i) t[static_cast<std::size_t>(i)] = vals[i];
  const io::Image im = io::tensor_to_image(t);
  EXPECT_EQ(im.channels, 3);
  EXPECT_EQ(im.pixels[0], 0);    // channel 0, pixel 0: -1
  EXPECT_EQ(im.pixels[3], 255);  // channel 0, pixel 1: +1
  EXPECT_EQ(im.pixels[1 * 3 + 1], 255);  // channel 1, pixel 1: 2.0 clamps
  EXPECT_EQ(im.pixels[2 * 3 + 1], 0);    // channel 1, pixel 2: -3.0 clamps
  const diffuse::Tensor back = io::image_to_tensor(im);
  EXPECT_EQ(back.shape(), t.shape());
  EXPECT_NEAR(back[2], 0.0f, 1.0f / 127.5f);
}

TEST(Image, Errors) {
  diffuse::Tensor bad({2, 4, 4});
  EXPECT_THROW(io::tensor_to_image(bad), diffuse::shape_error);
  diffuse::Tensor nan({1, 2, 2});
  nan[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(io::tensor_to_image(nan), diffuse::value_error);
  EXPECT_THROW(io::encode_png(gradient(2, 2, 3), {{"", "empty key"}}), diffuse::value_error);
  io::Image wrong = gradient(2, 2, 3);
  wrong.pixels.pop_back();
  EXPECT_THROW(io::encode_png(wrong), diffuse::value_error);
  EXPECT_THROW(io::read_image("/nonexistent/diffuse.png"), diffuse::io_error);

  const auto notpng = temp_path("not.png");
  std::ofstream(notpng) << "hello";
  EXPECT_THROW(io::read_image(notpng), diffuse::format_error);
  EXPECT_THROW(io::read_png_text(notpng), diffuse::format_error);

  const auto corrupt = temp_path("crc.png");
  auto bytes = io::encode_png(gradient(3, 3, 3), {{"parameters", "abc"}});
  bytes[8 + 25 + 8] ^= 0x01;  // a byte inside the tEXt chunk
  std::ofstream(corrupt, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                 static_cast<std::streamsize>(bytes.size()));
  try {
    io::read_png_text(corrupt);
    FAIL() << "a corrupted chunk must be reported";
  } catch (const diffuse::format_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad CRC in chunk tEXt"), std::string::npos) << e.what();
  }
  fs::remove(notpng);
  fs::remove(corrupt);
}

TEST(Image, GridLaysOutImages) {
  std::vector<io::Image> ims(5, gradient(4, 3, 3));
  const io::Image grid = io::make_grid(ims, 3, 1);
  EXPECT_EQ(grid.width, 3 * 4 + 4);
  EXPECT_EQ(grid.height, 2 * 3 + 3);
  EXPECT_EQ(grid.pixels[0], 255);  // padding is white
  EXPECT_EQ(grid.pixels[(1 * grid.width + 1) * 3], ims[0].pixels[0]);
  EXPECT_THROW(io::make_grid({}, 2), diffuse::value_error);
}

}  // namespace
