// SPDX-License-Identifier: MIT
// Internal: the Unicode operations of the CLIP tokenizer's clean-up and word splitting, on the
// tables of unicode_tables.inc (tools/make_unicode_tables.py).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text::detail {

enum class CharClass : unsigned char { other = 0, letter = 1, number = 2, space = 3 };

/// L* -> letter, N* -> number, White_Space -> space, else other.
DIFFUSE_API CharClass char_class(char32_t c);
/// Canonical combining class (0 for starters).
DIFFUSE_API unsigned combining_class(char32_t c);
/// Appends the full lower-case mapping of `c` (1 to 3 code points).
DIFFUSE_API void append_lower(char32_t c, std::u32string& out);
/// Unicode NFC of `s`.
DIFFUSE_API std::u32string nfc(const std::u32string& s);
/// Decodes UTF-8 (value_error "[where] ...: invalid UTF-8 at byte N" for malformed input, overlong
/// forms, surrogates and code points above U+10FFFF).
DIFFUSE_API std::u32string decode_utf8(std::string_view s, std::string_view where);
/// Appends the UTF-8 encoding of `c`.
DIFFUSE_API void append_utf8(char32_t c, std::string& out);
/// The Unicode version of the tables.
DIFFUSE_API const char* unicode_version();

}  // namespace text::detail
DIFFUSE_END_NAMESPACE
