// SPDX-License-Identifier: MIT
// The progress bar of `diffuse generate` (see Progress in cli.hpp).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "cli.hpp"

namespace diffuse_cli {

Progress::Progress(std::size_t total, bool enabled)
    : total_(total), tty_(enabled && isatty(fileno(stderr)) != 0), start_(std::chrono::steady_clock::now()) {}

void Progress::update(std::size_t done, std::size_t total) {
  total_ = std::max(total, done);  // dpm_adaptive: its budget, then the trials taken at the end
  if (!tty_ || total_ == 0) return;
  constexpr std::size_t kWidth = 30;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::size_t filled = done * kWidth / total_;
  const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
  std::fprintf(stderr, "\r[%s] %zu/%zu  %.2f steps/s ", bar.c_str(), done, total_,
               secs > 0 ? static_cast<double>(done) / secs : 0.0);
  std::fflush(stderr);
  drawn_ = true;
}

double Progress::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

}  // namespace diffuse_cli
