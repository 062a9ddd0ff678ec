// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes as an A1111 prompt (text/prompt.hpp). Every input must either be
// refused with a diffuse::value_error (invalid UTF-8, a limit, a weight Python's float rejects or
// one not finite in f32) or parse and chunk consistently: every chunk has 77 ids starting with the
// start token, ids in the vocabulary, 77 f32 weights, at most 75 tokens, at most max_chunks chunks;
// the literal mode (Emphasis::none, no chunking) is exactly the tokenizer's encode_padded. Prompts of
// up to two chunks are encoded with the small CLIP fixture (tests/data/models/clip_text_quick), which
// must give [1, 77 * chunks, 32]. The tokenizer is the 1,000-token one of tests/data/text/prompts/.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/text/prompt.hpp"

namespace {

// A smaller limit than the default keeps every input fast (the parser is O(pieces x depth)).
diffuse::text::PromptOptions fuzz_options() {
  diffuse::text::PromptOptions o;
  o.limits.max_bytes = 8192;
  o.limits.max_chunks = 8;
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace fs = std::filesystem;
  using namespace diffuse::text;
  static const fs::path root = fs::path(DIFFUSE_SOURCE_DIR) / "tests" / "data";
  static const ClipTokenizer tok = ClipTokenizer::load(root / "text" / "prompts" / "tokenizer");
  static const auto enc = std::make_unique<diffuse::models::ClipTextModel>(
      diffuse::models::ClipTextModel::load(root / "models" / "clip_text_quick"));
  static diffuse::kernels::Context ctx(1);
  static const PromptOptions options = fuzz_options();
  // An exact-size copy, so that AddressSanitizer sees any read past the end.
  const std::unique_ptr<char[]> copy(new char[size == 0 ? 1 : size]);
  for (std::size_t i = 0; i < size; ++i) copy[i] = static_cast<char>(data[i]);
  const std::string_view prompt(copy.get(), size);
  try {
    const auto pieces = parse_prompt_attention(prompt, options.limits);
    if (pieces.empty()) __builtin_trap();
    for (std::size_t i = 0; i + 1 < pieces.size(); ++i)
      if (pieces[i].weight == pieces[i + 1].weight) __builtin_trap();  // runs are merged
    const TokenizedPrompt t = tokenize_prompt(tok, prompt, options);
    if (t.chunks.empty() || t.chunks.size() > options.limits.max_chunks) __builtin_trap();
    for (const PromptChunk& c : t.chunks) {
      if (c.ids.size() != 77 || c.weights.size() != 77 || c.tokens > 75 || c.ids[0] != tok.bos_id()) __builtin_trap();
      for (std::int32_t id : c.ids)
        if (id < 0 || static_cast<std::size_t>(id) >= tok.vocab_size()) __builtin_trap();
    }
    PromptOptions literal = options;
    literal.emphasis = Emphasis::none;
    literal.chunking = false;
    if (tokenize_prompt(tok, prompt, literal).chunks.at(0).ids != tok.encode_padded(prompt)) __builtin_trap();
    if (t.chunks.size() <= 2) {
      const std::vector<std::string> one = {std::string(prompt)};
      const auto out = encode_prompts(*enc, tok, one, ctx, options);
      if (out.hidden.shape() != diffuse::Shape{1, 77 * t.chunks.size(), 32}) __builtin_trap();
    }
  } catch (const diffuse::value_error&) {
    // Refused (UTF-8, a limit, a weight): not a crash.
  }
  return 0;
}
