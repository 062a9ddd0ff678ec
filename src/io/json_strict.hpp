// SPDX-License-Identifier: MIT
// Internal: JSON parsing that rejects duplicate keys (nlohmann keeps the last one silently).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io::detail {

/// Parses `text`; raises format_error "[where] label: what ..." for invalid JSON, a duplicate key
/// in any object, or nesting deeper than 128 levels.
nlohmann::json parse_json_strict(std::string_view text, std::string_view where, const std::string& label,
                                 std::string_view what);

}  // namespace io::detail
DIFFUSE_END_NAMESPACE
