// SPDX-License-Identifier: MIT
/** @file model_dir.hpp
 *  A diffusers (or transformers) model folder: `config.json` plus weights in safetensors, single
 *  or sharded, optionally in a variant such as `fp16`.
 *
 *  Weights are looked for, in this order, as
 *  - `diffusion_pytorch_model[.VARIANT].safetensors`,
 *  - `diffusion_pytorch_model.safetensors.index[.VARIANT].json` (diffusers' sharded naming), or
 *    `diffusion_pytorch_model[.VARIANT].safetensors.index.json`,
 *  - then the same three with `model` (transformers' name).
 *
 *  A sharded index is `{"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}`. Every
 *  shard is opened and validated, and the index must agree with the shards exactly: each key
 *  is in the shard the map names, no tensor is in two shards, no shard holds a tensor the map
 *  does not list, and no shard path leaves the folder (absolute paths, `..`, symlinks out).
 *  Tensors are then looked up by name across all shards.
 *
 *  A path to a single `.safetensors` file (no config) or to an `*.index.json` file is accepted too.
 *
 *  **Example**
 *  @code
 *  auto unet = diffuse::io::ModelDir::open("sd15/unet", "fp16");
 *  int channels = unet.config().at("in_channels");
 *  diffuse::Tensor w = unet.to_f32("conv_in.weight");
 *  @endcode
 */
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/io/safetensors.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

/// The weights (and config) of one model folder. Move-only.
class DIFFUSE_API ModelDir {
 public:
  /// Opens a model folder, a single .safetensors file or a sharded index file. `variant` (e.g.
  /// "fp16") selects `*.VARIANT.safetensors` weights; it is never silently ignored: if no weights
  /// of that variant exist, io_error lists the names looked for. Throws io_error for missing
  /// files and format_error for a malformed config, index or weights file.
  static ModelDir open(const std::filesystem::path& path, std::string_view variant = {});

  ModelDir(ModelDir&&) noexcept;
  ModelDir& operator=(ModelDir&&) noexcept;
  ~ModelDir();

  /// The folder (or the file, when a single file was opened).
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Parsed config.json; a null JSON value when a single file was opened.
  const nlohmann::json& config() const noexcept { return config_; }
  bool has_config() const noexcept { return !config_.is_null(); }
  /// The weights files, in index order (one for unsharded weights).
  std::vector<std::filesystem::path> weight_files() const;
  /// The opened weights files.
  const std::vector<SafetensorsFile>& files() const noexcept { return files_; }
  /// Drops the resident pages of every weights file's mapping (SafetensorsFile::release_pages).
  void release_pages() const noexcept {
    for (const auto& f : files_) f.release_pages();
  }
  /// True when the weights came from a sharded index.
  bool sharded() const noexcept { return sharded_; }
  /// The index's "metadata" object (null when unsharded or absent).
  const nlohmann::json& index_metadata() const noexcept { return index_metadata_; }

  /// Number of tensors across all files.
  std::size_t size() const noexcept { return where_.size(); }
  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  /// The tensor called `name`, or nullptr.
  const TensorView* find(std::string_view name) const;
  /// The tensor called `name`; throws format_error naming the folder if there is none.
  const TensorView& tensor(std::string_view name) const;
  /// The file holding tensor `name` (format_error if none).
  const SafetensorsFile& file_of(std::string_view name) const;
  /// The tensor called `name` as f32 (see SafetensorsFile::to_f32).
  Tensor to_f32(std::string_view name) const;

 private:
  ModelDir() = default;
  void open_index(const std::filesystem::path& index_path);

  std::filesystem::path path_;
  nlohmann::json config_;
  nlohmann::json index_metadata_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> where_;  // tensor -> index into files_
};

}  // namespace io
DIFFUSE_END_NAMESPACE
