// SPDX-License-Identifier: MIT
/** @file memory.hpp
 *  Memory limits: what a load or a generation may allocate before it is refused with a
 *  memory_error that says how much it needs and for what.
 *
 *  A limit of 0 means the default: three quarters of the machine's physical memory
 *  (`sysconf(_SC_PHYS_PAGES) * page size`), which leaves room for the rest of the program and the
 *  operating system; no limit when the physical memory cannot be read. Sizes are written as
 *  `parse_memory_size` reads them: `4G`, `512M`, `1.5GiB`, `65536` (bytes); K, M, G, T are
 *  binary (1024-based).
 *
 *  **Example**
 *  @code
 *  std::uint64_t limit = diffuse::parse_memory_size("4G");            // 4294967296
 *  std::string s = diffuse::format_bytes(diffuse::default_memory_limit());  // "17.4 GiB"
 *  @endcode */
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>

#include <unistd.h>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// The machine's physical memory in bytes, or 0 when it cannot be read.
inline std::uint64_t physical_memory_bytes() noexcept {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
}

/// Three quarters of the physical memory (no limit when it is unknown).
inline std::uint64_t default_memory_limit() noexcept {
  const std::uint64_t phys = physical_memory_bytes();
  return phys ? phys / 4 * 3 : std::numeric_limits<std::uint64_t>::max();
}

/// `limit`, or the default limit when it is 0.
inline std::uint64_t resolve_memory_limit(std::uint64_t limit) noexcept {
  return limit ? limit : default_memory_limit();
}

/// "512 bytes", "3.2 MiB", "6.0 GiB".
inline std::string format_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " bytes";
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

/** A size such as "4G", "512M", "1.5GiB", "100k", "65536" in bytes (K, M, G, T binary; an optional
 *  "B" or "iB" after the unit). Throws value_error for anything else, zero, or a size over 2^63. */
inline std::uint64_t parse_memory_size(std::string_view text) {
  constexpr std::string_view where = "parse_memory_size";
  auto bad = [&](const char* why) {
    std::string t(text.substr(0, 40));
    raise<value_error>(where, "'" + t + "' is not a memory size (" + why + "; e.g. 4G, 512M, 1.5GiB, 65536)");
  };
  std::size_t i = 0;
  double whole = 0;
  bool digits = false;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    whole = whole * 10 + (text[i] - '0');
    digits = true;
    ++i;
  }
  double frac = 0, scale = 1;
  if (i < text.size() && text[i] == '.') {
    ++i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      scale /= 10;
      frac += (text[i] - '0') * scale;
      digits = true;
      ++i;
    }
  }
  if (!digits) bad("no number");
  double mult = 1;
  if (i < text.size()) {
    switch (text[i] | 0x20) {
      case 'k': mult = 1024.0; break;
      case 'm': mult = 1024.0 * 1024; break;
      case 'g': mult = 1024.0 * 1024 * 1024; break;
      case 't': mult = 1024.0 * 1024 * 1024 * 1024; break;
      case 'b': mult = 1; break;
      default: bad("unknown unit");
    }
    const bool unit_b = (text[i] | 0x20) == 'b';
    ++i;
    if (!unit_b) {
      if (i < text.size() && text[i] == 'i') ++i;
      if (i < text.size() && (text[i] | 0x20) == 'b') ++i;
    }
  }
  if (i != text.size()) bad("trailing characters");
  const double bytes = std::floor((whole + frac) * mult);
  if (!(bytes >= 1)) bad("zero");
  if (bytes > 9.2e18) bad("more than 2^63 bytes");
  return static_cast<std::uint64_t>(bytes);
}

DIFFUSE_END_NAMESPACE
