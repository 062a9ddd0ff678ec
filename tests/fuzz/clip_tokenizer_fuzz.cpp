// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes as a prompt through the CLIP tokenizer. Every input must either
// be rejected with a diffuse::value_error (invalid UTF-8) or give ids that are all in the
// vocabulary, with encode_padded exactly max_length long and equal to the truncated encode.
// The vocabulary is OpenAI's merges list when DIFFUSE_CLIP_MERGES names the decompressed
// bpe_simple_vocab_16e6.txt (scripts/fuzz.sh sets it when ../shared/data/clip is there), else a
// small built-in one (byte characters, all letter pairs, a few longer merges).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/text/clip_tokenizer.hpp"

namespace {

std::unique_ptr<diffuse::text::ClipTokenizer> make_tokenizer() {
  using diffuse::text::ClipTokenizer;
  if (const char* path = std::getenv("DIFFUSE_CLIP_MERGES")) {
    std::ifstream in(path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!text.empty()) return std::make_unique<ClipTokenizer>(ClipTokenizer::from_openai_merges(text));
  }
  std::unordered_map<std::string, std::int32_t> vocab;
  std::int32_t id = 0;
  for (unsigned b = 0; b < 256; ++b) vocab.emplace(diffuse::text::clip_byte_char(static_cast<unsigned char>(b)), id++);
  for (unsigned b = 0; b < 256; ++b)
    vocab.emplace(diffuse::text::clip_byte_char(static_cast<unsigned char>(b)) + "</w>", id++);
  std::vector<std::pair<std::string, std::string>> merges;
  auto add = [&](std::string a, std::string b) {
    if (vocab.emplace(a + b, id).second) ++id;
    merges.emplace_back(std::move(a), std::move(b));
  };
  for (char a = 'a'; a <= 'z'; ++a)
    for (char b = 'a'; b <= 'z'; ++b) add(std::string(1, a), std::string(1, b));
  for (char a = 'a'; a <= 'z'; ++a) add(std::string(1, a), "e</w>");
  add("th", "e</w>"), add("ab", "ab"), add("abab", "ab"), add("aa", "aa");
  vocab.emplace("<|startoftext|>", id++);
  vocab.emplace("<|endoftext|>", id++);
  return std::make_unique<ClipTokenizer>(std::move(vocab), merges);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto tok = make_tokenizer();
  // An exact-size copy, so that AddressSanitizer sees any read past the end.
  const std::unique_ptr<char[]> copy(new char[size == 0 ? 1 : size]);
  for (std::size_t i = 0; i < size; ++i) copy[i] = static_cast<char>(data[i]);
  const std::string_view prompt(copy.get(), size);
  try {
    const std::vector<std::int32_t> ids = tok->encode(prompt);
    if (ids.size() < 2 || ids.front() != tok->bos_id() || ids.back() != tok->eos_id()) __builtin_trap();
    for (std::int32_t i : ids)
      if (i < 0 || static_cast<std::size_t>(i) >= tok->vocab_size()) __builtin_trap();
    const std::vector<std::int32_t> padded = tok->encode_padded(prompt);
    if (padded.size() != tok->max_length()) __builtin_trap();
    const std::size_t content = std::min(ids.size() - 2, tok->max_length() - 2);
    for (std::size_t i = 0; i <= content; ++i)
      if (padded[i] != ids[i]) __builtin_trap();
    if (padded[content + 1] != tok->eos_id()) __builtin_trap();
  } catch (const diffuse::value_error&) {
    // Not UTF-8: refused, not a crash.
  }
  return 0;
}
