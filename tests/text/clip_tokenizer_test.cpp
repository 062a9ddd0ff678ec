// SPDX-License-Identifier: MIT
// The CLIP tokenizer against transformers.CLIPTokenizer on the committed corpus
// (tests/data/text/clip_tokenizer_corpus.json, tools/make_clip_tokenizer_fixture.py), built from
// OpenAI's merges list (../shared/data/clip, decompressed by tests/CMakeLists.txt).
#include <gtest/gtest.h>

#include <algorithm>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/text/clip_tokenizer.hpp"
#include "test_util.hpp"
#include "text/unicode.hpp"

namespace fs = std::filesystem;
using diffuse::text::ClipTokenizer;
using diffuse::text::ClipTokenizerConfig;
using diffuse_test::expect_error;
using nlohmann::json;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The library's own copy of OpenAI's merges list (text/clip_vocabulary.cpp); the test
// EmbeddedVocabularyIsOpenAIsFile compares it with the file beside the repository when there is one.
const std::string& merges_text() {
  static const std::string text(diffuse::text::openai_clip_merges());
  return text;
}

#define REQUIRE_MERGES()                                                                              \
  do {                                                                                                \
    if (merges_text().empty()) {                                                                      \
      GTEST_SKIP() << "OpenAI's bpe_simple_vocab_16e6.txt.gz not found beside the repository "        \
                      "(../shared/data/clip): the CLIP vocabulary is not checked";                    \
    }                                                                                                 \
  } while (false)

const ClipTokenizer& sd1() {
  static const ClipTokenizer t = ClipTokenizer::from_openai_merges(merges_text());
  return t;
}

TEST(ClipTokenizer, EmbeddedVocabularyIsOpenAIsFile) {
  const std::string& text = merges_text();
  // bpe_simple_vocab_16e6.txt as gunzip gives it: 3,194,984 bytes, 262,145 lines (CLIP uses 48,895).
  EXPECT_EQ(text.size(), 3194984u);
  EXPECT_EQ(text.rfind("\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n", 0), 0u) << text.substr(0, 60);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 262145);
  const ClipTokenizer t = ClipTokenizer::openai_clip();
  EXPECT_EQ(t.vocab_size(), 49408u);
  EXPECT_EQ(t.encode("a photo of a cat"), (std::vector<std::int32_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  constexpr const char* path = DIFFUSE_CLIP_MERGES;
  if (path[0] == '\0') GTEST_SKIP() << "../shared/data/clip not beside the repository: only the embedded copy is checked";
  EXPECT_TRUE(read_file(path) == text) << "the embedded vocabulary differs from " << path;
}

const json& corpus() {
  static const json j = json::parse(read_file(fs::path(DIFFUSE_TEST_DATA_DIR) / "text" / "clip_tokenizer_corpus.json"));
  return j;
}

std::vector<std::int32_t> ids_of(const json& a) { return a.get<std::vector<std::int32_t>>(); }

// A pipeline-style tokenizer folder written from the merges list (vocab.json, merges.txt, configs).
fs::path write_folder(const std::string& name, const json& tokenizer_config, const json* special_map = nullptr) {
  const fs::path root = fs::temp_directory_path() / ("diffuse_clip_tok_" + name);
  const fs::path dir = root / "tokenizer";
  fs::create_directories(dir);
  const ClipTokenizer& t = sd1();
  json vocab = json::object();
  for (std::int32_t i = 0; i < static_cast<std::int32_t>(t.vocab_size()); ++i) vocab[t.token(i)] = i;
  std::ofstream(dir / "vocab.json") << vocab.dump();
  std::ofstream m(dir / "merges.txt");
  m << "#version: 0.2\n";
  const std::string& text = merges_text();
  std::size_t pos = text.find('\n') + 1;
  for (int n = 0; n < 48894; ++n) {
    const std::size_t end = text.find('\n', pos);
    m << text.substr(pos, end - pos) << "\n";
    pos = end + 1;
  }
  m.close();
  std::ofstream(dir / "tokenizer_config.json") << tokenizer_config.dump();
  if (special_map) std::ofstream(dir / "special_tokens_map.json") << special_map->dump();
  return root;
}

}  // namespace

TEST(ClipTokenizer, VocabularyFromOpenAIMerges) {
  REQUIRE_MERGES();
  const ClipTokenizer& t = sd1();
  EXPECT_EQ(t.vocab_size(), 49408u);
  EXPECT_EQ(t.bos_id(), 49406);
  EXPECT_EQ(t.eos_id(), 49407);
  EXPECT_EQ(t.pad_id(), 49407);
  EXPECT_EQ(t.token(0), "!");
  EXPECT_EQ(t.token(256), "!</w>");
  EXPECT_EQ(t.id_of("a</w>"), 320);
  EXPECT_EQ(t.encode("a photo of an astronaut"), (std::vector<std::int32_t>{49406, 320, 1125, 539, 550, 18376, 49407}));
}

// Every prompt of the corpus: ids, SD 1.x padding, OpenCLIP padding, exactly as transformers.
TEST(ClipTokenizer, CorpusMatchesTransformers) {
  REQUIRE_MERGES();
  const json& cases = corpus().at("cases");
  ASSERT_GE(cases.size(), 500u);
  ClipTokenizerConfig oc_config;
  oc_config.pad_token.assign(1, '!');  // (not = "!": a GCC 12 -Wrestrict false positive)
  const ClipTokenizer oc = ClipTokenizer::from_openai_merges(merges_text(), oc_config);
  ASSERT_EQ(oc.pad_id(), 0);
  std::size_t checked = 0, long_prompts = 0;
  for (const json& c : cases) {
    const std::string p = c.at("prompt");
    const auto ids = sd1().encode(p);
    EXPECT_EQ(ids, ids_of(c.at("ids"))) << "prompt: '" << p << "'";
    EXPECT_EQ(sd1().encode_padded(p), ids_of(c.at("padded"))) << "prompt: '" << p << "'";
    if (c.contains("padded_openclip")) {
      EXPECT_EQ(oc.encode_padded(p), ids_of(c.at("padded_openclip"))) << "prompt: '" << p << "'";
    }
    long_prompts += ids.size() > 77;
    ++checked;
  }
  EXPECT_GE(long_prompts, 20u);
  EXPECT_EQ(checked, cases.size());
}

// The folder loader reads vocab.json / merges.txt and the pad token from the configs.
TEST(ClipTokenizer, LoadsPipelineFolder) {
  REQUIRE_MERGES();
  const fs::path sd = write_folder("sd1", {{"model_max_length", 77}, {"pad_token", "<|endoftext|>"}});
  const ClipTokenizer a = ClipTokenizer::load(sd);
  EXPECT_EQ(a.pad_id(), 49407);
  EXPECT_EQ(a.max_length(), 77u);
  const json added = {{"content", "!"}, {"lstrip", false}, {"normalized", false}};
  const json map = {{"pad_token", added}};
  const fs::path oc = write_folder("openclip", {{"model_max_length", 77}}, &map);
  const ClipTokenizer b = ClipTokenizer::load(oc / "tokenizer");  // the tokenizer folder itself works too
  EXPECT_EQ(b.pad_id(), 0);
  const fs::path unset = write_folder("unset", {{"model_max_length", 1e30}});
  EXPECT_EQ(ClipTokenizer::load(unset).max_length(), 77u);
  for (const json& c : corpus().at("cases")) {
    const std::string p = c.at("prompt");
    ASSERT_EQ(a.encode_padded(p), ids_of(c.at("padded"))) << p;
    if (c.contains("padded_openclip")) {
      ASSERT_EQ(b.encode_padded(p), ids_of(c.at("padded_openclip"))) << p;
    }
  }
  fs::remove_all(sd), fs::remove_all(oc), fs::remove_all(unset);
}

TEST(ClipTokenizer, MalformedFolders) {
  const fs::path dir = fs::temp_directory_path() / "diffuse_clip_tok_bad";
  fs::remove_all(dir);
  fs::create_directories(dir);
  expect_error<diffuse::io_error>([&] { ClipTokenizer::load(dir); }, {"ClipTokenizer", "no vocab.json"});
  std::ofstream(dir / "vocab.json") << R"({"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4})";
  expect_error<diffuse::io_error>([&] { ClipTokenizer::load(dir); }, {"no merges.txt"});
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na b c\n";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"merges.txt", "line 2"});
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na x\n";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"merge 1 'a x'", "not in the vocabulary"});
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na b\n";
  std::ofstream(dir / "tokenizer_config.json") << R"({"pad_token": "!"})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"pad_token '!'", "not in the vocabulary"});
  std::ofstream(dir / "tokenizer_config.json") << R"({"model_max_length": 1})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"tokenizer_config.json", "below 2"});
  std::ofstream(dir / "tokenizer_config.json") << R"({"pad_token": 5})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"'pad_token'"});
  std::ofstream(dir / "tokenizer_config.json") << R"({})";
  std::ofstream(dir / "vocab.json") << R"({"a": 0, "a": 1})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"vocab.json", "duplicate"});
  std::ofstream(dir / "vocab.json") << R"({"a": 0, "b": 0})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"id 0 is used by both"});
  std::ofstream(dir / "vocab.json") << R"({"a": -3})";
  expect_error<diffuse::format_error>([&] { ClipTokenizer::load(dir); }, {"token 'a' has id -3"});
  fs::remove_all(dir);
}

TEST(ClipTokenizer, InvalidUtf8IsAValueError) {
  REQUIRE_MERGES();
  for (const char* bad : {"\xff", "a\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\x80"})
    expect_error<diffuse::value_error>([&] { sd1().encode(bad); }, {"ClipTokenizer::tokenize", "invalid UTF-8 at byte"});
}

// A million-letter word and a million punctuation marks: linear-time BPE (the fuzzer's "bounded time").
TEST(ClipTokenizer, LongInputsInBoundedTime) {
  REQUIRE_MERGES();
  const auto t0 = std::chrono::steady_clock::now();
  const auto a = sd1().tokenize(std::string(1 << 20, 'q'));
  const auto b = sd1().tokenize(std::string(1 << 20, '!'));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(a.empty());
  EXPECT_FALSE(b.empty());
  EXPECT_LT(s, 20.0);
}

TEST(ClipUnicode, Nfc) {
  using diffuse::text::detail::nfc;
  EXPECT_EQ(nfc(U"cafe\u0301"), U"caf\u00e9");
  EXPECT_EQ(nfc(U"a\u0307\u0323"), U"\u1ea1\u0307");  // reordered (ccc 220 before 230), then composed
  EXPECT_EQ(nfc(U"\u1100\u1161\u11a8"), U"\uac01");    // Hangul L V T
  EXPECT_EQ(nfc(U"\u212b"), U"\u00c5");                // singleton Angstrom sign
  EXPECT_EQ(nfc(U"\u0301a"), U"\u0301a");              // leading non-starter
  EXPECT_EQ(nfc(U"\u0958"), U"\u0915\u093c");          // composition exclusion stays decomposed
}
