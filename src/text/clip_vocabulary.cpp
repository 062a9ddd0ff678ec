// SPDX-License-Identifier: MIT
// The CLIP vocabulary compiled into the library: OpenAI's bpe_simple_vocab_16e6.txt.gz (MIT, see
// src/text/data/LICENSE.clip), embedded with the assembler's .incbin and inflated once on first use
// (stb_image's zlib decoder for the deflate stream; the gzip header, CRC-32 and size checked here).
// See text/clip_tokenizer.hpp, ClipTokenizer::openai_clip.
#include <array>
#include <cstdint>
#include <string>

#include "../io/inflate.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/text/clip_tokenizer.hpp"

#ifndef DIFFUSE_CLIP_VOCAB_GZ
#error "DIFFUSE_CLIP_VOCAB_GZ (the path of bpe_simple_vocab_16e6.txt.gz) must be defined by the build"
#endif

// The bytes between diffuse_clip_vocab_gz_begin and _end are the file as it is on disk.
__asm__(
    ".pushsection .rodata\n"
    ".balign 16\n"
    ".global diffuse_clip_vocab_gz_begin\n"
    ".hidden diffuse_clip_vocab_gz_begin\n"
    "diffuse_clip_vocab_gz_begin:\n"
    ".incbin \"" DIFFUSE_CLIP_VOCAB_GZ
    "\"\n"
    ".global diffuse_clip_vocab_gz_end\n"
    ".hidden diffuse_clip_vocab_gz_end\n"
    "diffuse_clip_vocab_gz_end:\n"
    ".popsection\n");
extern "C" const unsigned char diffuse_clip_vocab_gz_begin[];
extern "C" const unsigned char diffuse_clip_vocab_gz_end[];

DIFFUSE_BEGIN_NAMESPACE
namespace text {
namespace {

constexpr std::string_view kWhere = "ClipTokenizer::openai_clip";

std::uint32_t crc32(const unsigned char* p, std::size_t n) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::uint32_t le32(const unsigned char* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

/// RFC 1952: the member's header, its deflate stream inflated, the CRC-32 and size checked.
std::string gunzip(const unsigned char* data, std::size_t size) {
  if (size < 18 || data[0] != 0x1f || data[1] != 0x8b || data[2] != 8)
    raise<format_error>(kWhere, "the embedded vocabulary is not a gzip file");
  const unsigned flags = data[3];
  std::size_t at = 10;
  if (flags & 4) at += 2 + (static_cast<std::size_t>(data[10]) | static_cast<std::size_t>(data[11]) << 8);  // FEXTRA
  for (unsigned bit : {8u, 16u})  // FNAME, FCOMMENT: zero-terminated
    if (flags & bit) {
      while (at < size && data[at] != 0) ++at;
      ++at;
    }
  if (flags & 2) at += 2;  // FHCRC
  if (at + 8 > size) raise<format_error>(kWhere, "the embedded vocabulary's gzip header is truncated");
  std::string out = io::detail::inflate_raw(data + at, size - at - 8, "the embedded CLIP vocabulary");
  const unsigned char* trailer = data + size - 8;
  if (le32(trailer + 4) != static_cast<std::uint32_t>(out.size()) ||
      le32(trailer) != crc32(reinterpret_cast<const unsigned char*>(out.data()), out.size()))
    raise<format_error>(kWhere, "the embedded vocabulary fails its CRC-32 or size check");
  return out;
}

}  // namespace

std::string_view openai_clip_merges() {
  static const std::string text = gunzip(
      diffuse_clip_vocab_gz_begin, static_cast<std::size_t>(diffuse_clip_vocab_gz_end - diffuse_clip_vocab_gz_begin));
  return text;
}

ClipTokenizer ClipTokenizer::openai_clip(ClipTokenizerConfig config) {
  return from_openai_merges(openai_clip_merges(), std::move(config));
}

}  // namespace text
DIFFUSE_END_NAMESPACE
