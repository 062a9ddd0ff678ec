// SPDX-License-Identifier: MIT
/** @file pipeline_index.hpp
 *  A diffusers pipeline folder's `model_index.json`: which components the pipeline has (each a
 *  subfolder: `"vae": ["diffusers", "AutoencoderKL"]`), and the class names of a class-conditional
 *  pipeline (`id2label`, DiTPipeline's ImageNet labels).
 *
 *  The file is read with the strict JSON reader (core/json.hpp) and checked before anything else
 *  is opened: a component entry is `[library, class]` (two strings; `[null, null]` marks an
 *  optional component the pipeline was saved without, such as a removed safety checker), its name
 *  must be a plain folder name (no `/`, `..` or leading `.`), keys starting with `_` are metadata,
 *  other values (booleans such as `requires_safety_checker`) are pipeline settings and kept.
 *  `id2label` maps decimal class ids (0 ..< 1,000,000) to names; each name is at most 4096 bytes.
 *
 *  **Class names** (`ClassNames`): as diffusers' DiTPipeline.labels, each label is split at commas
 *  into synonyms ("tench, Tinca tinca" -> "tench", "Tinca tinca"), any of which selects the class.
 *  Unlike diffusers (whose dictionary silently keeps the last of two classes sharing a synonym, so
 *  "crane" is always 517, the machine), a synonym of two classes is refused, naming both, and a
 *  name matches regardless of case. An unknown name is refused with the nearest names.
 *
 *  **Example**
 *  @code
 *  auto index = diffuse::pipeline::PipelineIndex::read("DiT-XL-2-256/model_index.json");
 *  if (const auto* vae = index.find("vae")) std::printf("vae: %s\n", vae->class_name.c_str());
 *  diffuse::pipeline::ClassNames names(index.id2label);
 *  std::int64_t id = names.find("golden retriever");  // 207
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {

/// One component of a pipeline: its subfolder name and the class that saved it.
struct PipelineComponent {
  std::string name;        ///< "unet", "transformer", "vae", "scheduler", ...
  std::string library;     ///< "diffusers", "transformers"
  std::string class_name;  ///< "AutoencoderKL", "DDIMScheduler", ...
};

/// A parsed model_index.json (see the file comment).
struct DIFFUSE_API PipelineIndex {
  std::string class_name;                     ///< `_class_name`, e.g. "DiTPipeline" (may be empty)
  std::vector<PipelineComponent> components;  ///< present components, sorted by name
  std::vector<std::string> absent;            ///< components saved as [null, null]
  std::vector<std::string> id2label;          ///< by class id; empty strings for ids not listed
  nlohmann::json settings = nlohmann::json::object();  ///< the other non-metadata keys

  /// The component called `name`, or nullptr.
  const PipelineComponent* find(std::string_view name) const noexcept;

  /// Checks a parsed model_index.json (format_error "[where] label: ..." naming the key).
  static PipelineIndex parse(const nlohmann::json& index, std::string_view where, const std::string& label);
  /// Reads and checks `file` (io_error when it cannot be read, format_error otherwise).
  static PipelineIndex read(const std::filesystem::path& file);
};

/// Class names by id, looked up by any comma-separated synonym (see the file comment).
class DIFFUSE_API ClassNames {
 public:
  ClassNames() = default;
  /// From labels by class id (PipelineIndex::id2label); empty labels are ids without a name.
  explicit ClassNames(std::vector<std::string> labels);

  bool empty() const noexcept { return labels_.empty(); }
  /// Number of ids (the largest named id + 1).
  std::size_t size() const noexcept { return labels_.size(); }
  /// The full label of `id` ("golden retriever"), empty when it has none or is out of range.
  const std::string& label(std::int64_t id) const noexcept;
  const std::vector<std::string>& labels() const noexcept { return labels_; }

  /** The id named `name` (any synonym, case-insensitive, surrounding spaces ignored). Throws
   *  value_error for an unknown name (with up to five nearest names) or a synonym of several
   *  classes (naming them). */
  std::int64_t find(std::string_view name) const;
  /// Up to `n` names nearest to `name` (edit distance, then substring matches), nearest first.
  std::vector<std::string> nearest(std::string_view name, std::size_t n = 5) const;

 private:
  std::vector<std::string> labels_;
  std::map<std::string, std::vector<std::int64_t>, std::less<>> by_name_;  // folded synonym -> ids
  std::vector<std::string> synonyms_;                                       // each synonym once, as written
};

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
