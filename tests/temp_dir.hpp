// SPDX-License-Identifier: MIT
// A fresh scratch folder per use, for the test programs.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>

#include "diffuse/core/error.hpp"

namespace diffuse_test {

/** A new, empty folder under the system temporary directory, removed (with everything in it) by the
 *  destructor. The name holds the tag, the process id, a per-process counter and a random number, and
 *  the folder is created with `create_directory` (which fails on an existing one), so two objects
 *  never share a folder: not within a process, not between the processes `ctest -j` runs at the same
 *  time, and never with a folder a crashed earlier run left behind (nothing is ever reused). */
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "tmp") {
    namespace fs = std::filesystem;
    static std::atomic<std::uint64_t> counter{0};
    const fs::path base = fs::temp_directory_path();
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::uint64_t r = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
      const fs::path p = base / ("diffuse_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
                                 std::to_string(counter.fetch_add(1)) + "_" + std::to_string(r % 1000000007u));
      std::error_code ec;
      if (fs::create_directory(p, ec)) {
        path_ = p;
        return;
      }
    }
    diffuse::raise<diffuse::io_error>("diffuse_test::TempDir", "cannot create a fresh folder under " + base.string());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  /// `path() / name`.
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace diffuse_test
