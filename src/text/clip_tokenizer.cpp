// SPDX-License-Identifier: MIT
#include "diffuse/text/clip_tokenizer.hpp"

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <limits>
#include <queue>

#include <nlohmann/json.hpp>

#include "diffuse/core/json.hpp"
#include "diffuse/core/error.hpp"
#include "unicode.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace text {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "ClipTokenizer";
constexpr std::string_view kEow = "</w>";
constexpr std::size_t kMaxLengthCap = std::size_t{1} << 20;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) raise<io_error>(kWhere, p.string() + ": cannot open");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) raise<io_error>(kWhere, p.string() + ": cannot read");
  return s;
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The byte -> code point table of GPT-2 (printable Latin-1 bytes stand for themselves, the others
// are shifted to U+0100 and up, in byte order).
const std::array<char32_t, 256>& byte_table() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

// A special token's content: a string, or an AddedToken object {"content": ...}.
bool token_string(const json& v, std::string& out) {
  if (v.is_string()) {
    out = v.get<std::string>();
    return true;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    out = v["content"].get<std::string>();
    return true;
  }
  return false;
}

void read_special(const json& j, const std::string& label, ClipTokenizerConfig& c, bool max_length) {
  if (!j.is_object()) raise<format_error>(kWhere, label + ": not a JSON object");
  auto field = [&](const char* key, std::string& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!token_string(j[key], out))
      raise<format_error>(kWhere, label + ": '" + key + "' is neither a string nor {\"content\": string}");
  };
  field("bos_token", c.bos_token);
  field("eos_token", c.eos_token);
  field("unk_token", c.unk_token);
  field("pad_token", c.pad_token);
  if (max_length && j.contains("model_max_length")) {
    const json& m = j["model_max_length"];
    // transformers writes a huge number (1e30) when the length is unset: keep CLIP's 77 then.
    if (m.is_number_unsigned() || m.is_number_integer()) {
      if (m.is_number_integer() && m.get<std::int64_t>() < 2)
        raise<format_error>(kWhere, label + ": model_max_length " + m.dump() + " is below 2");
      const auto v = m.is_number_unsigned() ? m.get<std::uint64_t>() : static_cast<std::uint64_t>(m.get<std::int64_t>());
      if (v < 2) raise<format_error>(kWhere, label + ": model_max_length " + m.dump() + " is below 2");
      if (v <= kMaxLengthCap) c.max_length = static_cast<std::size_t>(v);
    } else if (!m.is_number_float()) {
      raise<format_error>(kWhere, label + ": model_max_length is not a number");
    }
  }
}

// The pieces of a cleaned-up text, by the CLIP pattern (see the header).
template <class F>
void split_words(const std::u32string& s, F&& emit) {
  using detail::CharClass;
  const std::size_t n = s.size();
  auto cls = [&](std::size_t i) { return detail::char_class(s[i]); };
  auto starts = [&](std::size_t i, std::u32string_view w) {
    return n - i >= w.size() && std::u32string_view(s).substr(i, w.size()) == w;
  };
  static constexpr std::u32string_view kAlternatives[] = {U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t",
                                                          U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  std::size_t i = 0;
  while (i < n) {
    const CharClass c = cls(i);
    if (c == CharClass::space) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    if (s[i] == U'<' || s[i] == U'\'') {
      for (auto w : kAlternatives)
        if (starts(i, w)) {
          len = w.size();
          break;
        }
      if (len > 3) {
        // <|startoftext|> / <|endoftext|> (only reachable through lower-casing, the literal ones are
        // cut out before): the byte-level pre-tokenizer's GPT-2 pattern splits the match again,
        // into "<|", the letters, "|>".
        emit(std::u32string_view(s).substr(i, 2));
        emit(std::u32string_view(s).substr(i + 2, len - 4));
        emit(std::u32string_view(s).substr(i + len - 2, 2));
        i += len;
        continue;
      }
    }
    if (len == 0) {
      if (c == CharClass::number) {
        len = 1;
      } else {
        std::size_t j = i + 1;
        while (j < n && cls(j) == c) ++j;
        len = j - i;
      }
    }
    emit(std::u32string_view(s).substr(i, len));
    i += len;
  }
}

}  // namespace

std::string clip_byte_char(unsigned char b) {
  std::string s;
  detail::append_utf8(byte_table()[b], s);
  return s;
}

ClipTokenizer::ClipTokenizer(std::unordered_map<std::string, std::int32_t> vocab,
                             const std::vector<std::pair<std::string, std::string>>& merges,
                             ClipTokenizerConfig config)
    : config_(std::move(config)), vocab_(std::move(vocab)) {
  if (vocab_.empty()) raise<format_error>(kWhere, "the vocabulary is empty");
  std::int32_t max_id = 0;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0 || static_cast<std::size_t>(id) > 16 * 1024 * 1024)
      raise<format_error>(kWhere, "vocabulary: token '" + tok + "' has id " + std::to_string(id) +
                                      " outside [0, 16777216]");
    max_id = std::max(max_id, id);
  }
  by_id_.assign(static_cast<std::size_t>(max_id) + 1, nullptr);
  for (const auto& [tok, id] : vocab_) {
    if (by_id_[static_cast<std::size_t>(id)] != nullptr)
      raise<format_error>(kWhere, "vocabulary: id " + std::to_string(id) + " is used by both '" + tok + "' and '" +
                                      *by_id_[static_cast<std::size_t>(id)] + "'");
    by_id_[static_cast<std::size_t>(id)] = &tok;
  }
  auto special = [&](const std::string& tok, const char* what) {
    const std::int32_t id = id_of(tok);
    if (id < 0) raise<format_error>(kWhere, std::string(what) + " '" + tok + "' is not in the vocabulary");
    return id;
  };
  bos_ = special(config_.bos_token, "bos_token");
  eos_ = special(config_.eos_token, "eos_token");
  unk_ = special(config_.unk_token, "unk_token");
  pad_ = special(config_.pad_token, "pad_token");
  for (const auto* t : {&config_.bos_token, &config_.eos_token, &config_.unk_token, &config_.pad_token}) {
    if (t->empty()) continue;
    std::u32string u = detail::decode_utf8(*t, "ClipTokenizer");
    if (std::none_of(specials_.begin(), specials_.end(), [&](const auto& sp) { return sp.first == u; }))
      specials_.emplace_back(std::move(u), id_of(*t));
  }
  if (config_.max_length < 2 || config_.max_length > kMaxLengthCap)
    raise<value_error>(kWhere, "max_length " + std::to_string(config_.max_length) + " is outside [2, 1048576]");
  for (unsigned b = 0; b < 256; ++b) {
    const std::string c = clip_byte_char(static_cast<unsigned char>(b));
    const std::int32_t a = id_of(c), e = id_of(c + std::string(kEow));
    byte_id_[b] = a < 0 ? unk_ : a;
    byte_eow_id_[b] = e < 0 ? unk_ : e;
  }
  merges_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const auto& [l, rr] = merges[r];
    const std::int32_t a = id_of(l), b = id_of(rr), m = id_of(l + rr);
    auto line = [&] { return "merge " + std::to_string(r + 1) + " '" + l + " " + rr + "'"; };
    if (a < 0 || b < 0) raise<format_error>(kWhere, line() + ": a part is not in the vocabulary");
    if (m < 0) raise<format_error>(kWhere, line() + ": the merged token is not in the vocabulary");
    const std::uint64_t key = (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint32_t>(b);
    // A repeated pair keeps its first (lowest) rank.
    merges_.emplace(key, (static_cast<std::uint64_t>(r) << 32) | static_cast<std::uint32_t>(m));
  }
}

ClipTokenizer ClipTokenizer::load(const fs::path& path) {
  fs::path dir = path;
  if (!is_file(dir / "vocab.json") && is_file(dir / "tokenizer" / "vocab.json")) dir = dir / "tokenizer";
  const fs::path vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
  if (!is_file(vocab_path)) raise<io_error>(kWhere, path.string() + ": no vocab.json (nor tokenizer/vocab.json)");
  if (!is_file(merges_path)) raise<io_error>(kWhere, dir.string() + ": no merges.txt");

  const json vj = parse_json_strict(read_text(vocab_path), kWhere, vocab_path.string(), "vocabulary");
  if (!vj.is_object()) raise<format_error>(kWhere, vocab_path.string() + ": not a JSON object");
  std::unordered_map<std::string, std::int32_t> vocab;
  vocab.reserve(vj.size());
  for (const auto& [tok, v] : vj.items()) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > 16 * 1024 * 1024)
      raise<format_error>(kWhere, vocab_path.string() + ": token '" + tok + "' has id " + v.dump() +
                                      ", not an integer in [0, 16777216]");
    vocab.emplace(tok, static_cast<std::int32_t>(v.get<std::int64_t>()));
  }

  const std::string mt = read_text(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::size_t line_no = 0;
  for (std::size_t pos = 0; pos < mt.size();) {
    std::size_t end = mt.find('\n', pos);
    if (end == std::string::npos) end = mt.size();
    std::string_view line(mt.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 9) == "#version:")) continue;
    const std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
        line.find(' ', sp + 1) != std::string_view::npos)
      raise<format_error>(kWhere, merges_path.string() + ": line " + std::to_string(line_no) +
                                      " is not two tokens separated by one space");
    merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
  }

  ClipTokenizerConfig config;
  for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
    const fs::path p = dir / name;
    if (!is_file(p)) continue;
    read_special(parse_json_strict(read_text(p), kWhere, p.string(), "config"), p.string(), config,
                 std::string_view(name) == "tokenizer_config.json");
  }
  try {
    return ClipTokenizer(std::move(vocab), merges, std::move(config));
  } catch (const format_error& e) {
    raise<format_error>(kWhere, dir.string() + ": " + std::string(e.what()).substr(kWhere.size() + 3));
  }
}

ClipTokenizer ClipTokenizer::from_openai_merges(std::string_view text, ClipTokenizerConfig config) {
  constexpr std::size_t kMerges = 49152 - 256 - 2;  // lines 2 .. 48895 of the file
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(kMerges);
  std::size_t pos = text.find('\n');
  if (pos == std::string_view::npos) raise<format_error>(kWhere, "OpenAI merges: no header line");
  ++pos;
  for (std::size_t n = 0; n < kMerges; ++n) {
    if (pos >= text.size())
      raise<format_error>(kWhere, "OpenAI merges: " + std::to_string(n) + " merges, expected " +
                                      std::to_string(kMerges));
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    const std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size())
      raise<format_error>(kWhere, "OpenAI merges: line " + std::to_string(n + 2) + " is not two tokens");
    merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
  }
  std::unordered_map<std::string, std::int32_t> vocab;
  std::int32_t id = 0;
  std::vector<unsigned> order;  // the byte characters in code-point order of bytes_to_unicode's list
  for (unsigned b = 0; b < 256; ++b)
    if (byte_table()[b] == b) order.push_back(b);
  for (unsigned b = 0; b < 256; ++b)
    if (byte_table()[b] != b) order.push_back(b);
  for (unsigned b : order) vocab.emplace(clip_byte_char(static_cast<unsigned char>(b)), id++);
  for (unsigned b : order) vocab.emplace(clip_byte_char(static_cast<unsigned char>(b)) + std::string(kEow), id++);
  for (const auto& [a, b] : merges) vocab.emplace(a + b, id++);
  vocab.emplace("<|startoftext|>", id++);
  vocab.emplace("<|endoftext|>", id++);
  return ClipTokenizer(std::move(vocab), merges, std::move(config));
}

const std::string& ClipTokenizer::token(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= by_id_.size() || by_id_[static_cast<std::size_t>(id)] == nullptr)
    raise<value_error>("ClipTokenizer::token", "no token has id " + std::to_string(id));
  return *by_id_[static_cast<std::size_t>(id)];
}

std::int32_t ClipTokenizer::id_of(std::string_view tok) const {
  const auto it = vocab_.find(std::string(tok));
  return it == vocab_.end() ? -1 : it->second;
}

void ClipTokenizer::bpe(std::string_view word, std::vector<std::int32_t>& out) const {
  // Symbols as a linked list over the word's bytes; a min-heap of candidate merges by
  // (rank, position), validated when popped (tokenizers' BPE::merge_all).
  const std::size_t n = word.size();
  if (n == 0) return;
  struct Sym {
    std::int32_t id;
    std::int32_t prev, next;  // -1 at the ends
  };
  std::vector<Sym> sym(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    sym[i] = {i + 1 == n ? byte_eow_id_[b] : byte_id_[b], static_cast<std::int32_t>(i) - 1,
              i + 1 == n ? -1 : static_cast<std::int32_t>(i + 1)};
  }
  struct Cand {
    std::uint32_t rank;
    std::int32_t pos;
    std::int32_t merged;
    std::int32_t right;  // the right symbol's id when queued
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
  auto push = [&](std::int32_t pos) {
    if (pos < 0) return;
    const std::int32_t nx = sym[static_cast<std::size_t>(pos)].next;
    if (nx < 0) return;
    const std::uint64_t key = (static_cast<std::uint64_t>(sym[static_cast<std::size_t>(pos)].id) << 32) |
                              static_cast<std::uint32_t>(sym[static_cast<std::size_t>(nx)].id);
    const auto it = merges_.find(key);
    if (it == merges_.end()) return;
    heap.push({static_cast<std::uint32_t>(it->second >> 32), pos, static_cast<std::int32_t>(it->second & 0xFFFFFFFFu),
               sym[static_cast<std::size_t>(nx)].id});
  };
  for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::int32_t>(i));
  std::vector<bool> removed(n, false);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const auto p = static_cast<std::size_t>(c.pos);
    if (removed[p]) continue;
    const std::int32_t nx = sym[p].next;
    if (nx < 0) continue;
    // Still the same pair? (Either side may have been merged since it was queued.)
    const std::uint64_t key =
        (static_cast<std::uint64_t>(sym[p].id) << 32) | static_cast<std::uint32_t>(sym[static_cast<std::size_t>(nx)].id);
    const auto it = merges_.find(key);
    if (it == merges_.end() || static_cast<std::int32_t>(it->second & 0xFFFFFFFFu) != c.merged ||
        sym[static_cast<std::size_t>(nx)].id != c.right)
      continue;
    sym[p].id = c.merged;
    removed[static_cast<std::size_t>(nx)] = true;
    sym[p].next = sym[static_cast<std::size_t>(nx)].next;
    if (sym[p].next >= 0) sym[static_cast<std::size_t>(sym[p].next)].prev = c.pos;
    push(sym[p].prev);
    push(c.pos);
  }
  for (std::int32_t i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next) out.push_back(sym[static_cast<std::size_t>(i)].id);
}

std::vector<std::int32_t> ClipTokenizer::tokenize(std::string_view prompt) const {
  std::vector<std::int32_t> out;
  const std::u32string all = detail::decode_utf8(prompt, "ClipTokenizer::tokenize");
  // 1. Literal special tokens are cut out before any clean-up.
  const std::u32string_view sv(all);
  std::string word;
  auto segment = [&](std::u32string_view seg) {
    if (seg.empty()) return;
    // 2. NFC, white space runs -> " ", lower case.
    const std::u32string composed = detail::nfc(std::u32string(seg));
    std::u32string clean;
    clean.reserve(composed.size());
    bool in_space = false;
    for (char32_t c : composed) {
      if (detail::char_class(c) == detail::CharClass::space) {
        if (!in_space) clean.push_back(U' ');
        in_space = true;
        continue;
      }
      in_space = false;
      detail::append_lower(c, clean);
    }
    // 3-4. Words, bytes, BPE.
    split_words(clean, [&](std::u32string_view w) {
      word.clear();
      for (char32_t c : w) detail::append_utf8(c, word);
      bpe(word, out);
    });
  };
  // Leftmost-longest match of the special tokens (bos, eos, unk, pad) in the raw text, as
  // tokenizers' added vocabulary does: with OpenCLIP's pad token "!", every "!" becomes id 0.
  std::size_t start = 0;
  for (std::size_t i = 0; i < sv.size();) {
    const std::pair<std::u32string, std::int32_t>* best = nullptr;
    for (const auto& sp : specials_)
      if (sv.substr(i, sp.first.size()) == sp.first && (best == nullptr || sp.first.size() > best->first.size()))
        best = &sp;
    if (best == nullptr) {
      ++i;
      continue;
    }
    segment(sv.substr(start, i - start));
    out.push_back(best->second);
    i += best->first.size();
    start = i;
  }
  segment(sv.substr(start));
  return out;
}

std::vector<std::int32_t> ClipTokenizer::encode(std::string_view prompt) const {
  std::vector<std::int32_t> ids = tokenize(prompt);
  ids.insert(ids.begin(), bos_);
  ids.push_back(eos_);
  return ids;
}

std::vector<std::int32_t> ClipTokenizer::encode_padded(std::string_view prompt) const {
  std::vector<std::int32_t> ids = tokenize(prompt);
  const std::size_t keep = std::min(ids.size(), config_.max_length - 2);
  std::vector<std::int32_t> out;
  out.reserve(config_.max_length);
  out.push_back(bos_);
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep));
  out.push_back(eos_);
  out.resize(config_.max_length, pad_);
  return out;
}

}  // namespace text
DIFFUSE_END_NAMESPACE
