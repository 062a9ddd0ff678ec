// SPDX-License-Identifier: MIT
// A1111's prompt syntax (include/diffuse/text/prompt.hpp). The parser is a hand-written scanner
// for A1111's re_attention alternatives, in their order:
//   \( \) \[ \] \\ | \ | ( | [ | :\s*([+-]?[.\d]+)\s*\) | ) | ] | [^\\()\[\]:]+ | :
// Every character is covered by one of them, so the scan is contiguous; \s, \d and \b have
// Python's Unicode meanings (str.isspace, category Nd, str.isalnum or '_').
#include "diffuse/text/prompt.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "diffuse/core/error.hpp"
#include "unicode.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text {

namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;  // multiplied by, as A1111 does (not divided by 1.1)

// Python's str.isspace (bidirectional class WS, B or S, or category Zs), Unicode 14.
bool py_space(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

// Python's \w: str.isalnum() (categories L* and N*, exactly, in Python 3.11) or '_'.
bool py_word(char32_t c) {
  if (c == U'_') return true;
  const auto k = detail::char_class(c);
  return k == detail::CharClass::letter || k == detail::CharClass::number;
}

// Python's \d (category Nd): the first code point of each block of ten decimal digits (Unicode
// 14; every Nd character is one of these plus 0..9, in order).
constexpr char32_t kDigitZeros[] = {
    0x30,    0x660,   0x6F0,   0x7C0,   0x966,   0x9E6,   0xA66,   0xAE6,   0xB66,   0xBE6,   0xC66,
    0xCE6,   0xD66,   0xDE6,   0xE50,   0xED0,   0xF20,   0x1040,  0x1090,  0x17E0,  0x1810,  0x1946,
    0x19D0,  0x1A80,  0x1A90,  0x1B50,  0x1BB0,  0x1C40,  0x1C50,  0xA620,  0xA8D0,  0xA900,  0xA9D0,
    0xA9F0,  0xAA50,  0xABF0,  0xFF10,  0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0,
    0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0};

// The value 0..9 of a decimal digit, or -1.
int py_digit(char32_t c) {
  const auto* it = std::upper_bound(std::begin(kDigitZeros), std::end(kDigitZeros), c);
  if (it == std::begin(kDigitZeros)) return -1;
  const char32_t zero = *(it - 1);
  return c - zero < 10 ? static_cast<int>(c - zero) : -1;
}

std::string utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) detail::append_utf8(c, out);
  return out;
}

bool is_syntax(char32_t c) { return c == U'\\' || c == U'(' || c == U')' || c == U'[' || c == U']' || c == U':'; }

// Python's float() of the weight group [+-]?[.\d]+: digits, at most one '.', at least one digit.
// False when Python would raise ValueError.
bool py_float(std::u32string_view s, double& out) {
  std::string ascii;
  bool negative = false;
  std::size_t i = 0;
  if (i < s.size() && (s[i] == U'+' || s[i] == U'-')) negative = s[i++] == U'-';
  std::size_t dots = 0, digits = 0;
  bool int_nonzero = false;
  for (; i < s.size(); ++i) {
    if (s[i] == U'.') {
      ++dots;
      ascii += '.';
      continue;
    }
    const int d = py_digit(s[i]);
    if (d < 0) return false;
    if (dots == 0 && d != 0) int_nonzero = true;
    ++digits;
    ascii += static_cast<char>('0' + d);
  }
  if (dots > 1 || digits == 0) return false;
  double v = 0;
  const auto r = std::from_chars(ascii.data(), ascii.data() + ascii.size(), v, std::chars_format::fixed);
  if (r.ptr != ascii.data() + ascii.size()) return false;
  if (r.ec == std::errc::result_out_of_range)  // Python: inf on overflow, 0 on underflow
    v = int_nonzero ? std::numeric_limits<double>::infinity() : 0.0;
  else if (r.ec != std::errc())
    return false;
  out = negative ? -v : v;
  return true;
}

// Appends a plain-text match, split at A1111's re_break (\s*\bBREAK\b\s*) into pieces with
// ("BREAK", -1) between them.
void append_text(std::u32string_view t, std::vector<PromptPiece>& res) {
  static constexpr std::u32string_view kBreak = U"BREAK";
  std::size_t piece_start = 0, search = 0;
  while (search + kBreak.size() <= t.size()) {
    const std::size_t k = t.find(kBreak, search);
    if (k == std::u32string_view::npos) break;
    const std::size_t after = k + kBreak.size();
    if ((k > 0 && py_word(t[k - 1])) || (after < t.size() && py_word(t[after]))) {
      search = k + 1;
      continue;
    }
    std::size_t begin = k, end = after;
    while (begin > piece_start && py_space(t[begin - 1])) --begin;
    while (end < t.size() && py_space(t[end])) ++end;
    res.push_back({utf8(t.substr(piece_start, begin - piece_start)), 1.0});
    res.push_back({"BREAK", -1.0});
    piece_start = search = end;
  }
  res.push_back({utf8(t.substr(piece_start)), 1.0});
}

}  // namespace

std::vector<PromptPiece> parse_prompt_attention(std::string_view text, const PromptLimits& limits) {
  constexpr const char* kWhere = "parse_prompt_attention";
  if (text.size() > limits.max_bytes)
    raise<value_error>(kWhere, "the prompt has " + std::to_string(text.size()) + " bytes, more than the limit of " +
                                   std::to_string(limits.max_bytes) + " (PromptLimits::max_bytes)");
  const std::u32string s = detail::decode_utf8(text, kWhere);
  std::vector<PromptPiece> res;
  std::vector<std::size_t> round, square;
  const auto multiply_range = [&](std::size_t start, double m) {
    for (std::size_t p = start; p < res.size(); ++p) res[p].weight *= m;
  };
  const auto open = [&](std::vector<std::size_t>& stack) {
    if (round.size() + square.size() >= limits.max_depth)
      raise<value_error>(kWhere, "more than " + std::to_string(limits.max_depth) +
                                     " brackets are open at once (PromptLimits::max_depth)");
    stack.push_back(res.size());
  };
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const char32_t c = s[i];
    if (c == U'\\') {
      const bool escape = i + 1 < n && (s[i + 1] == U'(' || s[i + 1] == U')' || s[i + 1] == U'[' || s[i + 1] == U']' ||
                                        s[i + 1] == U'\\');
      res.push_back({escape ? utf8(s.substr(i + 1, 1)) : std::string(), 1.0});  // a lone '\' gives ""
      i += escape ? 2 : 1;
    } else if (c == U'(') {
      open(round);
      ++i;
    } else if (c == U'[') {
      open(square);
      ++i;
    } else if (c == U':') {
      // :\s*([+-]?[.\d]+)\s*\)
      std::size_t j = i + 1;
      while (j < n && py_space(s[j])) ++j;
      const std::size_t num = j;
      if (j < n && (s[j] == U'+' || s[j] == U'-')) ++j;
      const std::size_t body = j;
      while (j < n && (s[j] == U'.' || py_digit(s[j]) >= 0)) ++j;
      const std::size_t num_end = j;
      while (j < n && py_space(s[j])) ++j;
      if (num_end > body && j < n && s[j] == U')') {
        if (!round.empty()) {
          double w = 0;
          const std::u32string_view literal(s.data() + num, num_end - num);
          if (!py_float(literal, w))
            raise<value_error>(kWhere,
                               "the weight '" + utf8(literal) + "' is not a number (Python's float rejects it)");
          multiply_range(round.back(), w);
          round.pop_back();
        } else {
          append_text(std::u32string_view(s.data() + i, j + 1 - i), res);
        }
        i = j + 1;
      } else {
        append_text(U":", res);
        ++i;
      }
    } else if (c == U')' && !round.empty()) {
      multiply_range(round.back(), kRoundMultiplier);
      round.pop_back();
      ++i;
    } else if (c == U']' && !square.empty()) {
      multiply_range(square.back(), kSquareMultiplier);
      square.pop_back();
      ++i;
    } else if (c == U')' || c == U']') {
      append_text(std::u32string_view(s.data() + i, 1), res);
      ++i;
    } else {
      std::size_t j = i;
      while (j < n && !is_syntax(s[j])) ++j;
      append_text(std::u32string_view(s.data() + i, j - i), res);
      i = j;
    }
  }
  for (std::size_t pos : round) multiply_range(pos, kRoundMultiplier);
  for (std::size_t pos : square) multiply_range(pos, kSquareMultiplier);
  if (res.empty()) res.push_back({"", 1.0});
  std::vector<PromptPiece> merged;
  merged.reserve(res.size());
  for (auto& p : res) {
    if (!merged.empty() && merged.back().weight == p.weight)
      merged.back().text += p.text;
    else
      merged.push_back(std::move(p));
  }
  return merged;
}

TokenizedPrompt tokenize_prompt(const ClipTokenizer& tokenizer, std::string_view prompt, const PromptOptions& options) {
  constexpr const char* kWhere = "tokenize_prompt";
  const PromptLimits& limits = options.limits;
  if (prompt.size() > limits.max_bytes)
    raise<value_error>(kWhere, "the prompt has " + std::to_string(prompt.size()) + " bytes, more than the limit of " +
                                   std::to_string(limits.max_bytes) + " (PromptLimits::max_bytes)");
  if (tokenizer.max_length() < 3) raise<value_error>(kWhere, "the tokenizer's max_length is below 3");
  const std::size_t chunk_length = tokenizer.max_length() - 2;
  std::vector<PromptPiece> parsed;
  if (options.emphasis == Emphasis::none)
    parsed.push_back({std::string(prompt), 1.0});
  else
    parsed = parse_prompt_attention(prompt, limits);

  const std::int32_t start = tokenizer.bos_id(), end = tokenizer.eos_id(), pad = tokenizer.pad_id();
  TokenizedPrompt out;
  const bool weighted = options.emphasis == Emphasis::original || options.emphasis == Emphasis::no_norm;
  const auto check_weight = [&](double w) {
    const float f = static_cast<float>(w);
    if (weighted && !std::isfinite(f))
      raise<value_error>(kWhere, "a weight of the prompt is not a finite 32-bit number: " + std::to_string(w));
    return f;
  };

  if (!options.chunking) {
    PromptChunk chunk;
    chunk.ids.push_back(start);
    chunk.weights.push_back(1.0f);
    std::size_t total = 0;
    for (const PromptPiece& piece : parsed) {
      if (piece.is_break()) continue;
      const float w = check_weight(piece.weight);
      for (std::int32_t id : tokenizer.tokenize(piece.text)) {
        ++total;
        if (chunk.ids.size() > chunk_length) continue;
        chunk.ids.push_back(id);
        chunk.weights.push_back(w);
      }
    }
    chunk.tokens = chunk.ids.size() - 1;
    out.truncated = total - chunk.tokens;
    out.token_count = total;
    chunk.ids.push_back(end);
    chunk.weights.push_back(1.0f);
    chunk.ids.resize(chunk_length + 2, pad);
    chunk.weights.resize(chunk_length + 2, 1.0f);
    out.chunks.push_back(std::move(chunk));
    return out;
  }

  const std::int32_t comma = tokenizer.id_of(",</w>");  // -1 when absent: never matches
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  std::ptrdiff_t last_comma = -1;
  const auto next_chunk = [&](bool is_last) {
    out.token_count += is_last ? ids.size() : chunk_length;
    if (out.chunks.size() >= limits.max_chunks)
      raise<value_error>(kWhere, "the prompt needs more than " + std::to_string(limits.max_chunks) + " chunks of " +
                                     std::to_string(chunk_length) + " tokens (PromptLimits::max_chunks)");
    PromptChunk chunk;
    chunk.tokens = ids.size();
    chunk.ids.reserve(chunk_length + 2);
    chunk.ids.push_back(start);
    chunk.ids.insert(chunk.ids.end(), ids.begin(), ids.end());
    chunk.ids.resize(chunk_length + 1, end);
    chunk.ids.push_back(end);
    chunk.weights.push_back(1.0f);
    chunk.weights.insert(chunk.weights.end(), weights.begin(), weights.end());
    chunk.weights.resize(chunk_length + 2, 1.0f);
    if (end != pad) {  // A1111's process_tokens: everything after the first end token is padding
      auto first = std::find(chunk.ids.begin(), chunk.ids.end(), end);
      std::fill(first + 1, chunk.ids.end(), pad);
    }
    out.chunks.push_back(std::move(chunk));
    ids.clear();
    weights.clear();
    last_comma = -1;
  };
  const std::size_t backtrack = options.comma_padding_backtrack;
  for (const PromptPiece& piece : parsed) {
    if (piece.is_break()) {
      next_chunk(false);
      continue;
    }
    const std::vector<std::int32_t> tokens = tokenizer.tokenize(piece.text);
    const float w = tokens.empty() ? 1.0f : check_weight(piece.weight);
    for (std::int32_t token : tokens) {
      if (token == comma) {
        last_comma = static_cast<std::ptrdiff_t>(ids.size());
      } else if (backtrack != 0 && ids.size() == chunk_length && last_comma != -1 &&
                 ids.size() - static_cast<std::size_t>(last_comma) <= backtrack) {
        const auto at = static_cast<std::size_t>(last_comma) + 1;
        std::vector<std::int32_t> moved_ids(ids.begin() + at, ids.end());
        std::vector<float> moved_weights(weights.begin() + at, weights.end());
        ids.resize(at);
        weights.resize(at);
        next_chunk(false);
        ids = std::move(moved_ids);
        weights = std::move(moved_weights);
      }
      if (ids.size() == chunk_length) next_chunk(false);
      ids.push_back(token);
      weights.push_back(w);
    }
  }
  if (!ids.empty() || out.chunks.empty()) next_chunk(true);
  return out;
}

models::ClipTextOutput encode_prompts(const models::ClipTextModel& encoder, const ClipTokenizer& tokenizer,
                                      std::span<const std::string> prompts, kernels::Context& ctx,
                                      const PromptOptions& options, const models::ClipTextOptions& encoder_options) {
  constexpr const char* kWhere = "encode_prompts";
  if (prompts.empty()) raise<value_error>(kWhere, "no prompts");
  const std::size_t length = tokenizer.max_length();
  if (length > encoder.config().max_position_embeddings)
    raise<value_error>(kWhere, "the tokenizer's max_length " + std::to_string(length) +
                                   " exceeds the encoder's max_position_embeddings " +
                                   std::to_string(encoder.config().max_position_embeddings));
  std::vector<TokenizedPrompt> tokenized;
  tokenized.reserve(prompts.size());
  std::size_t chunks = 0;
  for (const std::string& p : prompts) {
    tokenized.push_back(tokenize_prompt(tokenizer, p, options));
    chunks = std::max(chunks, tokenized.back().chunks.size());
  }
  // Every chunk of every prompt is a sequence of its own, prompt-major: the encoder's output
  // [batch * chunks, 77, D] is then already the concatenation [batch, 77 * chunks, D].
  const std::size_t batch = prompts.size(), rows = batch * chunks;
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  ids.reserve(rows * length);
  weights.reserve(rows * length);
  for (const TokenizedPrompt& t : tokenized) {
    for (std::size_t k = 0; k < chunks; ++k) {
      if (k < t.chunks.size()) {
        ids.insert(ids.end(), t.chunks[k].ids.begin(), t.chunks[k].ids.end());
        weights.insert(weights.end(), t.chunks[k].weights.begin(), t.chunks[k].weights.end());
      } else {  // A1111's empty_chunk: start, then end tokens (padding rule as in tokenize_prompt)
        ids.push_back(tokenizer.bos_id());
        ids.push_back(tokenizer.eos_id());
        ids.resize(ids.size() + length - 2, tokenizer.pad_id());
        weights.resize(weights.size() + length, 1.0f);
      }
    }
  }
  models::ClipTextOutput enc = encoder.encode(ids, rows, ctx, encoder_options);
  const std::size_t d = encoder.config().hidden_size, block = length * d;
  const bool weighted = options.emphasis == Emphasis::original || options.emphasis == Emphasis::no_norm;
  if (weighted) {
    for (std::size_t r = 0; r < rows; ++r) {
      const float* w = weights.data() + r * length;
      if (std::all_of(w, w + length, [](float x) { return x == 1.0f; })) continue;
      float* z = enc.hidden.data() + r * block;
      double before = 0, after = 0;
      for (std::size_t t = 0; t < length; ++t)
        for (std::size_t i = 0; i < d; ++i) {
          before += z[t * d + i];
          z[t * d + i] *= w[t];
          after += z[t * d + i];
        }
      // A1111: z * (original_mean / new_mean), means and ratio in f32; here the means are summed
      // in f64 (the ratio is ill-conditioned when the new mean is near zero) and the ratio
      // applied in f32. A zero new mean would give inf / NaN there; it is left unscaled here.
      if (options.emphasis == Emphasis::original && after != 0) {
        const auto ratio = static_cast<float>(before / after);
        for (std::size_t i = 0; i < block; ++i) z[i] *= ratio;
      }
    }
  }
  models::ClipTextOutput out;
  out.hidden = std::move(enc.hidden);
  out.hidden.reshape({batch, chunks * length, d});
  const auto first_chunks = [&](const Tensor& all) {
    if (all.empty()) return Tensor();
    const std::size_t width = all.size() / rows;
    Tensor t({batch, width});
    for (std::size_t b = 0; b < batch; ++b)
      std::memcpy(t.data() + b * width, all.data() + b * chunks * width, width * sizeof(float));
    return t;
  };
  out.pooled = first_chunks(enc.pooled);
  out.text_embeds = first_chunks(enc.text_embeds);
  return out;
}

}  // namespace text
DIFFUSE_END_NAMESPACE
