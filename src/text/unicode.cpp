// SPDX-License-Identifier: MIT
#include "unicode.hpp"

#include <algorithm>
#include <cstdint>

#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text::detail {

namespace {

struct CharRange {
  std::uint32_t first, last, value;
};
struct LowerEntry {
  std::uint32_t cp, l0, l1, l2;
};
struct DecompEntry {
  std::uint32_t cp, d0, d1;
};
struct CompEntry {
  std::uint32_t first, second, composite;
};

#include "unicode_tables.inc"

template <std::size_t N>
std::uint32_t range_value(const CharRange (&table)[N], char32_t c) {
  const auto* end = table + N;
  const auto* it = std::upper_bound(table, end, static_cast<std::uint32_t>(c),
                                    [](std::uint32_t v, const CharRange& r) { return v < r.first; });
  if (it == table) return 0;
  --it;
  return c <= it->last ? it->value : 0;
}

// Hangul syllables (Unicode 3.12, conjoining jamo behaviour).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = std::end(kDecomposition);
  const auto* it = std::lower_bound(std::begin(kDecomposition), end, static_cast<std::uint32_t>(c),
                                    [](const DecompEntry& e, std::uint32_t v) { return e.cp < v; });
  if (it == end || it->cp != c) {
    out.push_back(c);
    return;
  }
  decompose(it->d0, out);  // depth is bounded by the data (at most 4 levels)
  if (it->d1 != 0) out.push_back(it->d1);
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = std::end(kComposition);
  const auto* it = std::lower_bound(std::begin(kComposition), end, std::pair<char32_t, char32_t>(a, b),
                                    [](const CompEntry& e, std::pair<char32_t, char32_t> v) {
                                      return e.first < v.first || (e.first == v.first && e.second < v.second);
                                    });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

CharClass char_class(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::letter;
    if (c >= '0' && c <= '9') return CharClass::number;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::space;
    return CharClass::other;
  }
  return static_cast<CharClass>(range_value(kCharClass, c));
}

unsigned combining_class(char32_t c) { return c < 0x300 ? 0 : range_value(kCombiningClass, c); }

void append_lower(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  const auto* end = std::end(kLower);
  const auto* it = std::lower_bound(std::begin(kLower), end, static_cast<std::uint32_t>(c),
                                    [](const LowerEntry& e, std::uint32_t v) { return e.cp < v; });
  if (it == end || it->cp != c) {
    out.push_back(c);
    return;
  }
  out.push_back(it->l0);
  if (it->l1 != 0) out.push_back(it->l1);
  if (it->l2 != 0) out.push_back(it->l2);
}

std::u32string nfc(const std::u32string& s) {
  // Canonical decomposition (below U+00C0 nothing decomposes or combines: a fast path for ASCII).
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0xC0; })) return s;
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t c : s) decompose(c, d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (std::size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition (UAX #15).
  if (d.empty()) return d;
  std::size_t starter = 0, target = 1;
  bool has_starter = combining_class(d[0]) == 0;
  unsigned last_class = has_starter ? 0 : 256;
  for (std::size_t i = 1; i < d.size(); ++i) {
    const char32_t c = d[i];
    const unsigned cc = combining_class(c);
    const char32_t composite = has_starter ? compose(d[starter], c) : 0;
    if (composite != 0 && (last_class < cc || last_class == 0)) {
      d[starter] = composite;
      continue;
    }
    if (cc == 0) starter = target, has_starter = true;
    last_class = cc;
    d[target++] = c;
  }
  d.resize(target);
  return d;
}

std::u32string decode_utf8(std::string_view s, std::string_view where) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  auto bad = [&](std::size_t at) {
    raise<value_error>(where, "prompt: invalid UTF-8 at byte " + std::to_string(at));
  };
  for (std::size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    std::size_t len = 0;
    char32_t c = 0, min = 0;
    if ((b & 0xE0) == 0xC0) {
      len = 2, c = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, c = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, c = b & 0x07, min = 0x10000;
    } else {
      bad(i);
    }
    if (n - i < len) bad(i);
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) bad(i);
      c = (c << 6) | (p[i + k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) bad(i);
    out.push_back(c);
    i += len;
  }
  return out;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

const char* unicode_version() { return DIFFUSE_UNICODE_VERSION; }

}  // namespace text::detail
DIFFUSE_END_NAMESPACE
