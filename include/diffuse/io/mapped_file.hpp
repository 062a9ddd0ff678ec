// SPDX-License-Identifier: MIT
/** @file mapped_file.hpp
 *  A read-only memory mapping of a whole file (RAII). Weights are used in place from the
 *  mapping, so opening a multi-gigabyte checkpoint costs no copy; pages are read on first touch.
 *
 *  **Example**
 *  @code
 *  diffuse::io::MappedFile f("model.safetensors");
 *  std::span<const std::byte> bytes = f.bytes();
 *  @endcode
 */
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

/// A read-only mapping of a file. Move-only; the mapping lives until destruction.
class DIFFUSE_API MappedFile {
 public:
  /// No file: size() == 0, data() == nullptr.
  MappedFile() noexcept;
  /// Maps `path` read-only. An empty file maps fine (size() == 0). Throws io_error naming the
  /// file and the system's reason when it cannot be opened, stat'ed or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// First byte of the file (nullptr for an empty file). Page-aligned, read-only.
  const std::byte* data() const noexcept;
  /// File size in bytes.
  std::size_t size() const noexcept;
  /// The whole file.
  std::span<const std::byte> bytes() const noexcept { return {data(), size()}; }
  /** Drops the mapping's pages from the process (madvise MADV_DONTNEED): its resident memory
   *  falls by what had been read, and a later read fetches the pages again from the page cache
   *  (or the disk). The contents are unchanged (the mapping is private and never written).
   *  Used by LoadOptions::stream_weights. */
  void release_pages() const noexcept;
  /// The path the file was opened with (empty for a default-constructed object).
  const std::filesystem::path& path() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace io
DIFFUSE_END_NAMESPACE
