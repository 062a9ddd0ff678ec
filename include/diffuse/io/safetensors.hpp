// SPDX-License-Identifier: MIT
/** @file safetensors.hpp
 *  Reading and writing the safetensors format (huggingface/safetensors).
 *
 *  `SafetensorsFile` maps a file (or takes a byte buffer) and validates the whole header the way
 *  the reference Rust reader does before any tensor is handed out: header length limits, UTF-8,
 *  JSON schema, duplicate keys, dtype names, offsets that tile the data buffer exactly from 0
 *  with no gap or overlap, byte sizes that match dtype x shape (with overflow checks), and no
 *  trailing bytes. Every violation raises `format_error` naming the file (or `<memory>`) and the
 *  tensor, e.g.
 *  `[safetensors] model.safetensors: tensor 'conv.weight': data_offsets [0, 12] hold 12 bytes but F32 [2, 2] needs 16`.
 *
 *  Tensors are handed out as non-owning `TensorView`s into the mapping. Their data pointer is
 *  **not** aligned in general (only the reference writer pads the header to 8 bytes): read it
 *  with memcpy, or convert with `to_f32`.
 *
 *  `save_safetensors` writes the reference writer's layout: `__metadata__` first, tensors
 *  sorted by dtype (largest alignment first) then by name, packed back to back, header padded
 *  with spaces to a multiple of 8 so that every tensor is naturally aligned in the file.
 *
 *  **Example**
 *  @code
 *  auto f = diffuse::io::SafetensorsFile::open("unet/diffusion_pytorch_model.safetensors");
 *  for (const auto& t : f.tensors()) std::cout << t.name << ' ' << dtype_name(t.dtype) << '\n';
 *  diffuse::Tensor w = f.to_f32("conv_in.weight");
 *
 *  std::map<std::string, diffuse::Tensor> state{{"w", w}};
 *  diffuse::io::save_safetensors("out.safetensors", state, {{"format", "pt"}}, diffuse::DType::F16);
 *  @endcode
 */
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/mapped_file.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

/// The `__metadata__` of a safetensors file: a flat string -> string map.
using SafetensorsMetadata = std::map<std::string, std::string>;

/// A tensor inside a safetensors file: a non-owning view that is valid as long as the
/// `SafetensorsFile` it came from. `data` may be unaligned.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;                     ///< `{}` is a scalar
  const std::byte* data = nullptr; ///< first byte, any alignment
  std::size_t nbytes = 0;          ///< == numel() * dtype_bits(dtype) / 8

  /// Number of elements (1 for a scalar, 0 if any extent is 0).
  std::size_t numel() const { return shape_numel(shape); }
  /// The stored bytes, little-endian, row-major.
  std::span<const std::byte> bytes() const { return {data, nbytes}; }
};

/// A validated safetensors file (mapped from disk or held in memory). Move-only.
class DIFFUSE_API SafetensorsFile {
 public:
  /// Largest header accepted, as in the reference reader.
  static constexpr std::size_t kMaxHeaderSize = 100'000'000;

  /// Maps and validates `path`. Throws io_error if it cannot be read, format_error if malformed.
  static SafetensorsFile open(const std::filesystem::path& path);
  /// Validates an in-memory file, taking ownership of the bytes. `label` names it in errors.
  static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string label = "<memory>");
  /// Validates a copy of `bytes`.
  static SafetensorsFile from_bytes(std::span<const std::byte> bytes, std::string label = "<memory>");

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  /// The path given to open(), or the label given to from_bytes().
  const std::string& label() const noexcept { return label_; }
  /// Number of tensors.
  std::size_t size() const noexcept { return tensors_.size(); }
  /// All tensors, in file (data offset) order.
  const std::vector<TensorView>& tensors() const noexcept { return tensors_; }
  /// Tensor names, in file (data offset) order.
  std::vector<std::string> names() const;
  /// True if a tensor is called `name`.
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  /// The tensor called `name`, or nullptr.
  const TensorView* find(std::string_view name) const;
  /// The tensor called `name`; throws format_error naming the file if there is none.
  const TensorView& tensor(std::string_view name) const;
  /// The `__metadata__` map (empty if the file has none).
  const SafetensorsMetadata& metadata() const noexcept { return metadata_; }
  /// Length N of the JSON header (the bytes after the 8-byte length, padding included).
  std::size_t header_size() const noexcept { return header_size_; }
  /// The JSON header text, padding included.
  std::string_view header() const noexcept;
  /// The whole file.
  std::span<const std::byte> file_bytes() const noexcept { return {base_, file_size_}; }

  /// Drops the pages of the file's mapping from the process (MappedFile::release_pages); nothing
  /// for a file read into memory.
  void release_pages() const noexcept {
    if (mapping_) mapping_->release_pages();
  }

  /// The tensor called `name` converted to f32 (any dtype but F4, F6_* and C64, which raise
  /// value_error). Throws format_error if there is no such tensor.
  Tensor to_f32(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  void parse();

  std::string label_;
  std::unique_ptr<MappedFile> mapping_;
  std::vector<std::byte> owned_;
  const std::byte* base_ = nullptr;
  std::size_t file_size_ = 0;
  std::size_t header_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  SafetensorsMetadata metadata_;
};

/// `view` converted to a new f32 tensor; `label` names the file in errors. Raises value_error
/// for dtypes that `dtype_convertible_to_f32` rejects.
DIFFUSE_API Tensor tensor_view_to_f32(const TensorView& view, std::string_view label = "<memory>");

/// A tensor to write: raw little-endian, row-major bytes (not copied; must outlive the call).
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::span<const std::byte> data;
};

/// The bytes of a safetensors file holding `tensors` and `metadata` (reference layout, see the
/// file comment). Throws value_error for a duplicate or reserved name, invalid UTF-8 in a name
/// or metadata, or a byte count that does not match dtype x shape.
DIFFUSE_API std::vector<std::byte> serialize_safetensors(std::span<const TensorData> tensors,
                                                         const SafetensorsMetadata& metadata = {});

/// Writes `tensors` to `path` (layout and errors as serialize_safetensors), through a temporary
/// file in the same folder renamed into place. Throws io_error if it cannot be written.
DIFFUSE_API void save_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                                  const SafetensorsMetadata& metadata = {});

/// Writes named f32 tensors, stored as `storage` (F32, F16 or BF16, rounded to nearest even);
/// another storage dtype raises value_error.
DIFFUSE_API void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                                  const SafetensorsMetadata& metadata = {}, DType storage = DType::F32);

}  // namespace io
DIFFUSE_END_NAMESPACE
