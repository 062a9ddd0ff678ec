// SPDX-License-Identifier: MIT
/** @file json.hpp
 *  The one strict JSON reader of diffuse, for every JSON file it opens (config.json,
 *  scheduler_config.json, sharded weight indexes, model_index.json) and for safetensors headers.
 *  Header-only, so that the header-only sampler core (`DiffusersScheduler::from_file`) and the
 *  compiled library share it.
 *
 *  `parse_json_strict(text, ...)` rejects, as format_error naming the file:
 *  - text that is not JSON (no comments, no NaN literal, no trailing text; Infinity and -Infinity
 *    only with `JsonLimits::python_literals`, see below);
 *  - a duplicate key in any object (nlohmann would keep the last one silently; Python's json keeps
 *    the last one too, so such a file means different things to different readers);
 *  - nesting deeper than `JsonLimits::max_depth` levels (128, serde_json's limit), so that no
 *    later recursive walk over the value (copy, dump, comparison) can run out of stack.
 *
 *  `read_json_file(path, ...)` opens the file without blocking (O_NONBLOCK), checks on the opened
 *  descriptor that it is a regular file (a symlink to /dev/zero, a FIFO, a directory or a device
 *  is refused before one byte is read, so nothing hangs or reads without end) and that its size
 *  is at most `JsonLimits::max_bytes` (4 MiB by default: the largest published configs and weight
 *  indexes are about 200 KB), reads it, and parses it as above. io_error when the file cannot be
 *  opened or read, format_error for the rest. Config files are written by Python's json module,
 *  which writes an infinite float as a bare Infinity or -Infinity (diffusers' own
 *  DPMSolverMultistepScheduler config has "lambda_min_clipped": -Infinity), so read_json_file
 *  accepts those two literals as values (the doubles +inf and -inf), as Python's json.load does;
 *  NaN stays refused (no config means it), and a safetensors header, which safetensors' own
 *  reader parses as strict JSON, takes neither.
 *
 *  **Example**
 *  @code
 *  nlohmann::json cfg = diffuse::read_json_file("unet/config.json", "ModelDir", "config");
 *  @endcode */
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Limits of the strict JSON reader.
struct JsonLimits {
  /// Deepest nesting of arrays and objects accepted.
  std::size_t max_depth = 128;
  /// Largest file read_json_file accepts, in bytes.
  std::uint64_t max_bytes = std::uint64_t{4} << 20;
  /// Accept Python's Infinity and -Infinity literals as values (read_json_file sets it).
  bool python_literals = false;
};

namespace detail {
struct JsonReject {
  std::string what;
};

/// A string that cannot come from a JSON file's text (a NUL byte leads it): the stand-in for a
/// Python literal, turned back into a double by the parser callback.
inline constexpr std::string_view kJsonLiteralMark{"\0diffuse-literal:", 17};

/** `text` with each Infinity and -Infinity outside strings replaced by a marked string
 *  ("\u0000diffuse-literal:Infinity"), for parse_json_strict to turn into a double. Nothing else
 *  changes. */
inline std::string mark_python_literals(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (std::string_view lit : {std::string_view("-Infinity"), std::string_view("Infinity")}) {
      if (text.substr(i, lit.size()) == lit) {
        out += "\"\\u0000diffuse-literal:";
        out += lit;
        out += '"';
        i += lit.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

inline std::string json_size_string(std::uint64_t bytes) {
  if (bytes < (std::uint64_t{1} << 20)) return std::to_string(bytes) + " bytes";
  return std::to_string(bytes) + " bytes (" + std::to_string(bytes >> 20) + " MiB)";
}
}  // namespace detail

/** Parses `text` strictly (see the file comment). Errors are format_error "[where] label: what:
 *  ...", e.g. "[ModelDir] unet/config.json: config: duplicate key 'in_channels'". */
inline nlohmann::json parse_json_strict(std::string_view text, std::string_view where, const std::string& label,
                                        std::string_view what, const JsonLimits& limits = {}) {
  using nlohmann::json;
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::vector<bool> is_object;              // open containers, innermost last
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (is_object.size() >= limits.max_depth)
          throw detail::JsonReject{"nesting deeper than " + std::to_string(limits.max_depth) + " levels"};
        is_object.push_back(ev == json::parse_event_t::object_start);
        if (is_object.back()) keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!is_object.empty()) {
          if (is_object.back()) keys.pop_back();
          is_object.pop_back();
        }
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get<std::string>()).second) {
          std::string k = parsed.get<std::string>();
          if (k.size() > 64) k = k.substr(0, 61) + "...";
          throw detail::JsonReject{"duplicate key '" + k + "'"};
        }
        break;
      case json::parse_event_t::value:
        if (limits.python_literals && parsed.is_string()) {
          const std::string& v = parsed.get_ref<const std::string&>();
          if (v.size() > detail::kJsonLiteralMark.size() &&
              v.compare(0, detail::kJsonLiteralMark.size(), detail::kJsonLiteralMark) == 0) {
            const std::string_view lit = std::string_view(v).substr(detail::kJsonLiteralMark.size());
            parsed =
                lit == "Infinity" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
          }
        }
        break;
    }
    return true;
  };
  try {
    if (limits.python_literals) {
      if (text.find("diffuse-literal:") != std::string_view::npos)
        throw detail::JsonReject{"the text 'diffuse-literal:' is reserved (it marks Infinity literals)"};
      const std::string marked = detail::mark_python_literals(text);
      return json::parse(marked.begin(), marked.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    }
    return json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const detail::JsonReject& r) {
    raise<format_error>(where, label + ": " + std::string(what) + ": " + r.what);
  } catch (const json::exception& e) {
    raise<format_error>(where, label + ": " + std::string(what) + " is not valid JSON: " + e.what());
  }
}

/** Reads and parses the JSON file `path` (see the file comment); `what` says what the file is in
 *  messages ("config", "scheduler config", "index"). */
inline nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view where, std::string_view what,
                                     const JsonLimits& limits = {}) {
  const std::string label = path.string();
  // O_NONBLOCK: opening a FIFO for reading does not wait for a writer; the type check below then
  // refuses it. Everything is judged on the opened descriptor, so a swapped file cannot slip in.
  const int fd = ::open(label.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) raise<io_error>(where, label + ": cannot open the " + std::string(what) + " (" + std::strerror(errno) + ")");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    raise<io_error>(where, label + ": cannot stat the " + std::string(what) + " (" + std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    raise<format_error>(where, label + ": the " + std::string(what) + " is " + kind + ", not a regular file");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  auto too_big = [&](std::uint64_t n) {
    raise<format_error>(where, label + ": the " + std::string(what) + " is " + detail::json_size_string(n) +
                                   ", more than the limit of " + detail::json_size_string(limits.max_bytes) +
                                   " for a JSON file");
  };
  if (size > limits.max_bytes) too_big(size);
  // Read at most max_bytes + 1 bytes, whatever the size said (the file may grow meanwhile).
  std::string text(static_cast<std::size_t>(size), '\0');
  std::size_t got = 0;
  for (;;) {
    if (got == text.size()) {
      if (text.size() > limits.max_bytes) too_big(text.size());
      text.resize(text.size() + 4096);
    }
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      raise<io_error>(where, label + ": cannot read the " + std::string(what) + " (" + std::strerror(errno) + ")");
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  text.resize(got);
  if (text.size() > limits.max_bytes) too_big(text.size());
  JsonLimits file_limits = limits;
  file_limits.python_literals = true;
  return parse_json_strict(text, where, label, what, file_limits);
}

DIFFUSE_END_NAMESPACE
