// SPDX-License-Identifier: MIT
/** @file clip_tokenizer.hpp
 *  The CLIP byte-level BPE tokenizer, id for id as `transformers.CLIPTokenizer` (5.x, backed by
 *  the tokenizers library) with the vocabulary of a pipeline's `tokenizer/` folder.
 *
 *  A prompt goes through, in this order:
 *  1. The special tokens (bos `<|startoftext|>`, eos and unk `<|endoftext|>`, and the pad token)
 *     written literally in the prompt are cut out first (leftmost, longest) and become their ids,
 *     as tokenizers' added tokens are. With OpenCLIP's pad token `!` (SD 2.x, SDXL's second
 *     tokenizer) every `!` of a prompt is therefore id 0, exactly as in transformers.
 *  2. Clean-up of each remaining piece: Unicode NFC, every run of white space (`\s+`, the
 *     White_Space property) replaced by one space, per-character full lower-casing (U+0130 gives
 *     "i" + U+0307). No HTML unescaping and no ftfy: transformers does neither.
 *  3. Word splitting by the pattern
 *     `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`
 *     (leftmost alternative first, white space dropped), matched by hand on code points with
 *     the Unicode tables of src/text/unicode_tables.inc (tools/make_unicode_tables.py).
 *  4. Each word's UTF-8 bytes are mapped to GPT-2's byte-to-unicode characters, the last one
 *     carrying `</w>`, and merged by rank (lowest rank first, leftmost first on ties), as
 *     tokenizers' BPE does.
 *  5. `encode` adds `<|startoftext|>` / `<|endoftext|>`; `encode_padded` truncates to
 *     `max_length` (77) and pads with the folder's pad token: `<|endoftext|>` (49407, SD 1.x) or
 *     `!` (id 0, OpenCLIP ViT-H/bigG: SD 2.x, SDXL's second tokenizer).
 *
 *  Work is linear in the prompt's length (a heap-based BPE), so arbitrary input has bounded cost.
 *  A prompt that is not valid UTF-8 raises value_error naming the byte offset.
 *
 *  The character classes are those of Unicode 14 (Python's unicodedata); code points assigned
 *  later may be classified differently from tokenizers' Oniguruma tables.
 *
 *  **Example**
 *  @code
 *  auto tok = diffuse::text::ClipTokenizer::load("sd15");        // sd15/tokenizer/vocab.json ...
 *  std::vector<std::int32_t> ids = tok.encode_padded("a photo of a cat");   // 77 ids
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text {

/// Special tokens and lengths; loaded from tokenizer_config.json / special_tokens_map.json.
struct ClipTokenizerConfig {
  std::string bos_token = "<|startoftext|>";
  std::string eos_token = "<|endoftext|>";
  std::string unk_token = "<|endoftext|>";
  std::string pad_token = "<|endoftext|>";
  /// Sequence length of encode_padded (model_max_length; CLIP's 77 when absent or > 2^20).
  std::size_t max_length = 77;
};

/// The tokenizer (immutable after construction; encode is thread-safe).
class DIFFUSE_API ClipTokenizer {
 public:
  /// Loads `vocab.json` and `merges.txt` (and, when present, `tokenizer_config.json` and
  /// `special_tokens_map.json`) from `path/tokenizer/`, or from `path` itself when it has a
  /// vocab.json. io_error for missing files, format_error (naming the file and line or key) for
  /// malformed ones, special tokens absent from the vocabulary, or merges producing unknown tokens.
  static ClipTokenizer load(const std::filesystem::path& path);

  /// Builds the vocabulary from OpenAI's `bpe_simple_vocab_16e6.txt` (decompressed) the way
  /// OpenAI's clip does: the 256 byte characters, the same with `</w>`, one token per merge of
  /// lines 2..48895, then `<|startoftext|>`, `<|endoftext|>` (49,408 tokens).
  static ClipTokenizer from_openai_merges(std::string_view merges_text, ClipTokenizerConfig config = {});

  /** The real CLIP vocabulary (49,408 tokens: SD 1.x/2.x, SDXL, SD3), built from the copy of
   *  OpenAI's merges list compiled into the library, as from_openai_merges builds it; for files
   *  that carry no tokenizer (single-file checkpoints). The list is inflated once per process
   *  (about 50 ms); `config` chooses the pad token ("!" for the OpenCLIP encoders). */
  static ClipTokenizer openai_clip(ClipTokenizerConfig config = {});

  /// From a token -> id map and the merges in rank order ("a b" pairs).
  ClipTokenizer(std::unordered_map<std::string, std::int32_t> vocab,
                const std::vector<std::pair<std::string, std::string>>& merges, ClipTokenizerConfig config = {});

  /// The content tokens of `prompt` (no start/end tokens, no truncation).
  std::vector<std::int32_t> tokenize(std::string_view prompt) const;
  /// bos + tokenize(prompt) + eos, not truncated (tokenizer(prompt).input_ids).
  std::vector<std::int32_t> encode(std::string_view prompt) const;
  /// bos + the first max_length - 2 content tokens + eos, padded with the pad token to
  /// max_length: tokenizer(prompt, padding="max_length", max_length=77, truncation=True).
  std::vector<std::int32_t> encode_padded(std::string_view prompt) const;

  std::int32_t bos_id() const noexcept { return bos_; }
  std::int32_t eos_id() const noexcept { return eos_; }
  std::int32_t pad_id() const noexcept { return pad_; }
  std::int32_t unk_id() const noexcept { return unk_; }
  const ClipTokenizerConfig& config() const noexcept { return config_; }
  std::size_t max_length() const noexcept { return config_.max_length; }
  /// Number of tokens (ids are 0 .. vocab_size() - 1 for CLIP's vocabulary).
  std::size_t vocab_size() const noexcept { return vocab_.size(); }
  /// The token string of `id` (byte-level characters, `</w>` marks a word end); value_error for an unknown id.
  const std::string& token(std::int32_t id) const;
  /// The id of `token`, or -1.
  std::int32_t id_of(std::string_view token) const;

 private:
  void bpe(std::string_view word, std::vector<std::int32_t>& out) const;

  ClipTokenizerConfig config_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<const std::string*> by_id_;
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<std::uint64_t, std::uint64_t> merges_;
  std::int32_t byte_id_[256]{};      // byte character alone
  std::int32_t byte_eow_id_[256]{};  // byte character + "</w>"
  std::int32_t bos_ = 0, eos_ = 0, pad_ = 0, unk_ = 0;
  std::vector<std::pair<std::u32string, std::int32_t>> specials_;  // matched literally in prompts
};

/// OpenAI's bpe_simple_vocab_16e6.txt (decompressed, 48,895 lines), the copy compiled into the
/// library (see ClipTokenizer::openai_clip).
DIFFUSE_API std::string_view openai_clip_merges();

/// GPT-2's byte-to-unicode map: the UTF-8 text of the character standing for byte `b`.
DIFFUSE_API std::string clip_byte_char(unsigned char b);

}  // namespace text
DIFFUSE_END_NAMESPACE
