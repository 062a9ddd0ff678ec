// SPDX-License-Identifier: MIT
/** @file prompt.hpp
 *  Prompts as AUTOMATIC1111's stable-diffusion-webui reads them: the emphasis syntax, prompts
 *  longer than 77 tokens split into 75-token chunks, and `BREAK`. Both are optional; a plain
 *  prompt of at most 75 tokens gives exactly what transformers gives (docs/prompts.md).
 *
 *  **Emphasis** (`parse_prompt_attention`, A1111 modules/prompt_parser.py, the version whose
 *  weight token allows spaces, `(word : 1.3)`): the prompt is cut into pieces of text, each
 *  with a weight.
 *  - `(text)` multiplies the weight of what it encloses by 1.1, `[text]` by 1/1.1,
 *    `(text:1.3)` by 1.3 (the number is `[+-]?[.0-9]+` with any decimal digits, as Python's
 *    `float`); brackets nest and multiply.
 *  - `\(`, `\)`, `\[`, `\]`, `\\` are the literal characters; a backslash before anything
 *    else disappears.
 *  - Unbalanced brackets: a `)` or `]` without its opening bracket is literal text; an opening
 *    bracket never closed applies its 1.1 (or 1/1.1) to everything after it.
 *  - `BREAK` (the upper-case word, between non-word characters) becomes a piece ("BREAK", -1),
 *    which starts a new chunk. Inside brackets its weight is multiplied too, and then it is
 *    no longer a break but the word "break" with a negative weight, exactly as in A1111.
 *  - Neighbouring pieces of equal weight are merged; an empty prompt gives one piece ("", 1).
 *  - A weight that Python's `float` rejects (`(a:1.2.3)`, `(a:.)`) raises value_error, where
 *    A1111 raises ValueError.
 *
 *  **Chunks** (`tokenize_prompt`, A1111 modules/sd_hijack_clip.py `tokenize_line`): each
 *  piece is tokenized on its own (ClipTokenizer::tokenize) and its tokens carry its weight.
 *  Tokens fill chunks of `max_length - 2` (75); a full chunk starts the next one, and when the
 *  token that would start it is not a comma and a comma (`,</w>`) is among the last
 *  `comma_padding_backtrack` (20) tokens of the full chunk, the tokens after that comma move to
 *  the next chunk. A `BREAK` ends the current chunk (even an empty one). Each chunk is padded to
 *  75 with the end token, wrapped in start and end tokens (77 ids, weights 1), and when the pad
 *  token is not the end token (OpenCLIP), every id after the first end token becomes the pad id.
 *  With `chunking` off, the tokens are truncated to 75 and laid out as transformers'
 *  `padding="max_length", truncation=True` (BREAK pieces are dropped).
 *
 *  **Encoding** (`encode_prompts`): every chunk of every prompt is encoded as its own 77-token
 *  sequence (one ClipTextModel::encode call), and the chunks are concatenated along the
 *  sequence: hidden [batch, 77 * chunks, D]. A prompt with fewer chunks than the longest of the
 *  batch is padded with empty chunks (start token, then end tokens), as A1111 does. With
 *  `Emphasis::original`, each chunk's hidden states z [77, D] of each prompt are multiplied by
 *  the token weights and then by mean(z before) / mean(z after) (A1111's EmphasisOriginal; A1111
 *  takes the mean over the chunk's whole batch, which is the same for one prompt per call);
 *  a chunk whose weights are all 1 is left as the encoder returned it (the same numbers: the
 *  ratio is exactly 1). `pooled` / `text_embeds` are those of each prompt's first chunk.
 *
 *  **Limits** (PromptLimits): the prompt's length in bytes, the nesting depth of open brackets
 *  and the number of chunks are bounded; beyond them value_error names the limit. The parser's
 *  work is at most (pieces x depth), the tokenizer's linear.
 *
 *  **Example**
 *  @code
 *  auto tok = diffuse::text::ClipTokenizer::load("sd15");
 *  auto enc = diffuse::models::ClipTextModel::load("sd15/text_encoder");
 *  diffuse::kernels::Context ctx(2);
 *  std::vector<std::string> prompts = {"a (red:1.3) fox BREAK snow, [blurry]", ""};
 *  auto out = diffuse::text::encode_prompts(enc, tok, prompts, ctx);   // hidden [2, 154, 768]
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/clip_text.hpp"
#include "diffuse/text/clip_tokenizer.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text {

/// A piece of a parsed prompt: text and its weight. ("BREAK", -1) is the chunk break.
struct PromptPiece {
  std::string text;
  double weight = 1.0;

  bool is_break() const noexcept { return weight == -1.0 && text == "BREAK"; }
  friend bool operator==(const PromptPiece&, const PromptPiece&) = default;
};

/// Bounds on what a prompt may ask for (value_error naming the limit beyond them).
struct PromptLimits {
  std::size_t max_bytes = 65536;  ///< prompt length in UTF-8 bytes
  std::size_t max_depth = 64;     ///< brackets open at once
  std::size_t max_chunks = 32;    ///< chunks of one prompt (32 x 75 = 2,400 tokens)
};

/// The emphasis modes of A1111 (its "Emphasis" setting).
enum class Emphasis {
  none,      ///< no parsing: the prompt is literal text, brackets and BREAK included
  ignore,    ///< parsed (brackets removed, BREAK honoured), weights not applied
  original,  ///< weights applied to the hidden states, then the mean restored (A1111's default)
  no_norm,   ///< weights applied, mean not restored (A1111's "No norm")
};

struct PromptOptions {
  Emphasis emphasis = Emphasis::original;
  /// Split into 75-token chunks (A1111); off: truncate to 75 tokens as transformers does.
  bool chunking = true;
  /// A1111's comma_padding_backtrack (0 disables the rule).
  std::size_t comma_padding_backtrack = 20;
  PromptLimits limits;
};

/// One encoder sequence of a prompt.
struct PromptChunk {
  std::vector<std::int32_t> ids;  ///< max_length ids: start, 75 tokens or padding, end/pad
  std::vector<float> weights;     ///< per id (1 for the start, end and padding tokens)
  std::size_t tokens = 0;         ///< the prompt's tokens in this chunk (without padding)
};

struct TokenizedPrompt {
  std::vector<PromptChunk> chunks;  ///< at least one
  /// A1111's token count: 75 for each chunk but the last, plus the last chunk's tokens.
  std::size_t token_count = 0;
  /// Tokens cut off (chunking off only).
  std::size_t truncated = 0;
};

/// The pieces of `text` with their weights, exactly as A1111's parse_prompt_attention (file
/// comment). value_error for invalid UTF-8, a prompt longer than limits.max_bytes, more than
/// limits.max_depth open brackets, or a weight Python's float rejects.
DIFFUSE_API std::vector<PromptPiece> parse_prompt_attention(std::string_view text, const PromptLimits& limits = {});

/// The chunks of `prompt` (file comment). value_error beyond options.limits (more than
/// max_chunks chunks), for a weight that is not finite in f32, and as parse_prompt_attention.
DIFFUSE_API TokenizedPrompt tokenize_prompt(const ClipTokenizer& tokenizer, std::string_view prompt,
                                            const PromptOptions& options = {});

/// Encodes `prompts` (file comment): hidden [prompts, 77 * chunks, D] with the emphasis applied,
/// pooled / text_embeds of the first chunks (when `encoder_options.pooled`). value_error for no
/// prompts or a tokenizer whose max_length exceeds the encoder's positions, and as tokenize_prompt
/// and ClipTextModel::encode.
DIFFUSE_API models::ClipTextOutput encode_prompts(const models::ClipTextModel& encoder, const ClipTokenizer& tokenizer,
                                                  std::span<const std::string> prompts, kernels::Context& ctx,
                                                  const PromptOptions& options = {},
                                                  const models::ClipTextOptions& encoder_options = {});

}  // namespace text
DIFFUSE_END_NAMESPACE
