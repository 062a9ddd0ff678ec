// SPDX-License-Identifier: MIT
#include "diffuse/io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

struct MappedFile::Impl {
  std::filesystem::path path;
  void* addr = nullptr;
  std::size_t size = 0;

  ~Impl() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

namespace {
[[noreturn]] void fail(const std::filesystem::path& path, const char* what, int err) {
  raise<io_error>("MappedFile", path.string() + ": " + what + ": " + std::strerror(err));
}

// Closes the descriptor on every path out of the constructor; the mapping outlives it.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace

MappedFile::MappedFile() noexcept = default;

MappedFile::MappedFile(const std::filesystem::path& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) fail(path, "cannot open", errno);
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) fail(path, "cannot stat", errno);
  if (S_ISDIR(st.st_mode)) fail(path, "cannot map", EISDIR);
  if (!S_ISREG(st.st_mode)) fail(path, "cannot map (not a regular file)", EINVAL);
  if (st.st_size == 0) return;  // mmap of length 0 is EINVAL; an empty file is simply empty
  const auto size = static_cast<std::size_t>(st.st_size);
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (addr == MAP_FAILED) fail(path, "cannot map", errno);
  impl_->addr = addr;
  impl_->size = size;
}

MappedFile::~MappedFile() = default;
MappedFile::MappedFile(MappedFile&& other) noexcept = default;
MappedFile& MappedFile::operator=(MappedFile&& other) noexcept = default;

const std::byte* MappedFile::data() const noexcept {
  return impl_ ? static_cast<const std::byte*>(impl_->addr) : nullptr;
}

std::size_t MappedFile::size() const noexcept { return impl_ ? impl_->size : 0; }

void MappedFile::release_pages() const noexcept {
  if (impl_ && impl_->addr && impl_->size) (void)::madvise(impl_->addr, impl_->size, MADV_DONTNEED);
}

const std::filesystem::path& MappedFile::path() const noexcept {
  static const std::filesystem::path empty;
  return impl_ ? impl_->path : empty;
}

}  // namespace io
DIFFUSE_END_NAMESPACE
