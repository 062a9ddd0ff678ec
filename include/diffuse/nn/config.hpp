// SPDX-License-Identifier: MIT
/** @file config.hpp
 *  Reading a network's config.json safely: every size is an integer within the bounds a real
 *  model could have, and every size product is computed with an overflow check. Every network
 *  reads its config through `ConfigReader` (UNet2DModel, DiTTransformer2DModel, and the networks
 *  to come), so that a hostile config.json is a format_error naming the file and the key, never
 *  a wrapped-around allocation size.
 *
 *  **Bounds** (`nn::limits`). Generous for every published diffusion model (SD 1.x/2.x, SDXL,
 *  SD3, Flux, DiT-XL, PixArt, the DDPM/ADM UNets: at most 1280 block channels, 3072 inner width,
 *  38 heads, 57 transformer layers, 1000 classes, 1000-4000 train timesteps, sample_size 1024),
 *  and small enough that a product of any of them (e.g. the DiT position table
 *  (sample_size/patch)^2 * heads * head_dim <= 2^44) cannot overflow 64 bits:
 *
 *  | bound | value | keys |
 *  |---|---|---|
 *  | kMaxChannels | 65536 | in/out_channels, block_out_channels, inner width heads*head_dim, groups |
 *  | kMaxEmbedDim | 262144 | time_embedding_dim (4 x channels by default) |
 *  | kMaxHeads | 1024 | num_attention_heads |
 *  | kMaxSampleSize | 16384 | sample_size |
 *  | kMaxPatchSize | 64 | patch_size |
 *  | kMaxLayers | 1024 | num_layers |
 *  | kMaxLayersPerBlock | 64 | layers_per_block |
 *  | kMaxBlocks | 16 | length of block_out_channels / down_block_types / up_block_types |
 *  | kMaxClasses | 1048576 | num_embeds_ada_norm, num_class_embeds |
 *  | kMaxTrainTimesteps | 100000 | num_train_timesteps |
 *  | kMaxPadding | 16 | downsample_padding |
 *
 *  **Example**
 *  @code
 *  diffuse::nn::ConfigReader r(dir.config(), (dir.path() / "config.json").string());
 *  std::size_t heads = r.size("num_attention_heads", 16, {1, diffuse::nn::limits::kMaxHeads});
 *  std::size_t dim = r.product("num_attention_heads * attention_head_dim", {heads, head_dim});
 *  @endcode */
#pragma once

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

/// The bounds of config.json dimensions (see the file comment).
namespace limits {
inline constexpr std::size_t kMaxChannels = std::size_t{1} << 16;
inline constexpr std::size_t kMaxEmbedDim = std::size_t{1} << 18;
inline constexpr std::size_t kMaxHeads = 1024;
inline constexpr std::size_t kMaxSampleSize = 16384;
inline constexpr std::size_t kMaxPatchSize = 64;
inline constexpr std::size_t kMaxLayers = 1024;
inline constexpr std::size_t kMaxLayersPerBlock = 64;
inline constexpr std::size_t kMaxBlocks = 16;
inline constexpr std::size_t kMaxClasses = std::size_t{1} << 20;
inline constexpr std::size_t kMaxTrainTimesteps = 100000;
inline constexpr std::size_t kMaxPadding = 16;
}  // namespace limits

/// An inclusive range of accepted sizes.
struct SizeRange {
  std::size_t min = 0;
  std::size_t max = 0;
};

/// `factors` multiplied, or format_error "[where] what = a * b * ... overflows" when the product
/// does not fit in 64 bits.
DIFFUSE_API std::size_t checked_product(std::initializer_list<std::size_t> factors, std::string_view where,
                                        std::string_view what);

/// A JSON value shortened for a message (at most `max_chars` characters).
DIFFUSE_API std::string short_json(const nlohmann::json& v, std::size_t max_chars = 40);

/** Typed, bounded reads of a config.json object. `where` names the file in every message:
 *  format_error "[where] \"key\" ...". A key that is absent or null takes the fallback. */
class DIFFUSE_API ConfigReader {
 public:
  /// format_error when `config` is not an object.
  ConfigReader(const nlohmann::json& config, std::string where);

  const nlohmann::json& json() const noexcept { return *j_; }
  const std::string& where() const noexcept { return where_; }
  /// The value of `key`, or nullptr when absent or null.
  const nlohmann::json* find(std::string_view key) const;

  /// A non-negative integer (integral floats such as 32.0 accepted) in `range`.
  std::size_t size(std::string_view key, std::size_t fallback, SizeRange range) const;
  /// As size(); null gives nullopt.
  std::optional<std::size_t> optional_size(std::string_view key, std::optional<std::size_t> fallback,
                                           SizeRange range) const;
  /// A list of at most `max_count` integers, each in `range`.
  std::vector<std::size_t> sizes(std::string_view key, std::vector<std::size_t> fallback, SizeRange range,
                                 std::size_t max_count) const;
  /// A finite number.
  double number(std::string_view key, double fallback) const;
  bool boolean(std::string_view key, bool fallback) const;
  std::string string(std::string_view key, std::string fallback) const;
  /// As string(); null gives nullopt.
  std::optional<std::string> optional_string(std::string_view key, std::optional<std::string> fallback) const;
  /// A list of at most `max_count` strings.
  std::vector<std::string> strings(std::string_view key, std::vector<std::string> fallback,
                                   std::size_t max_count) const;

  /// format_error "[where] \"key\" what".
  [[noreturn]] void fail(std::string_view key, std::string_view what) const;
  /// Checks an already-read size against `range` (format_error naming `key` otherwise).
  void check(std::string_view key, std::size_t value, SizeRange range) const;
  /// checked_product with this reader's `where`.
  std::size_t product(std::string_view what, std::initializer_list<std::size_t> factors) const;

 private:
  std::size_t to_size(std::string_view key, const nlohmann::json& v, SizeRange range) const;

  const nlohmann::json* j_;
  std::string where_;
};

}  // namespace nn
DIFFUSE_END_NAMESPACE
