// SPDX-License-Identifier: MIT
// A1111 prompts against the Python reference of tools/make_prompt_fixtures.py (tests/data/text/prompts/):
// the parsed pieces and weights exactly, the chunk ids and f32 weights exactly, the hidden states (emphasis and
// mean restoration on the small CLIP fixtures) within a bound; plain prompts bit for bit as the encoder alone;
// batches, emphasis modes, chunking off, and every limit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/text/prompt.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using diffuse::Tensor;
using diffuse::models::ClipTextModel;
using diffuse::text::ClipTokenizer;
using diffuse::text::Emphasis;
using diffuse::text::PromptOptions;
using diffuse::text::PromptPiece;
using diffuse_test::expect_error;
using nlohmann::json;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR) / "text" / "prompts";
const fs::path kModels = fs::path(DIFFUSE_TEST_DATA_DIR) / "models";

const json& fixture() {
  static const json j = [] {
    std::ifstream in(kData / "prompts.json");
    return json::parse(in);
  }();
  return j;
}

struct Case {
  const char* name;
  const char* tokenizer;
  const char* model;
};
constexpr Case kCases[] = {{"quick", "tokenizer", "clip_text_quick"},
                           {"gelu_proj", "tokenizer_openclip", "clip_text_gelu_proj"}};

// max |a - b| / max |b| over the whole tensor.
double rel(const float* a, const float* b, std::size_t n) {
  double diff = 0, mag = 0;
  for (std::size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::abs(static_cast<double>(b[i])));
  }
  return diff / mag;
}

// The encoder's own f32 error (clip_text_test: under 5e-7 x max|ref|) plus that of the mean ratio
// mean(z) / mean(z * w), whose relative error is the encoder's times kappa = mean|z w| / |mean(z w)|,
// large when the weighted mean is near zero (these small random networks have means near zero; a
// negative weight can flip its sign). kappa is the reference chunk's mean|ref| / |mean(ref)| (the
// restored mean is the one before weighting, so both scale alike). Bound: 1e-5 + 5e-8 kappa; measured
// (make_prompt_fixtures.py, 25 prompts x 2 models) 5.5e-7 at most for kappa < 5000, 1.04e-4 for the
// prompt with a negative weight on gelu_proj (kappa 7985).
constexpr double kBound = 1e-5;
constexpr double kPerKappa = 5e-8;

// max over the 77-token chunks of mean|z| / |mean z|.
double kappa(const Tensor& ref) {
  const std::size_t d = ref.shape().back(), n = 77 * d;
  double worst = 0;
  for (std::size_t at = 0; at + n <= ref.size(); at += n) {
    double sum = 0, abs_sum = 0;
    for (std::size_t i = 0; i < n; ++i) {
      sum += ref.data()[at + i];
      abs_sum += std::abs(static_cast<double>(ref.data()[at + i]));
    }
    worst = std::max(worst, abs_sum / std::abs(sum));
  }
  return worst;
}

}  // namespace

TEST(Prompt, ParserMatchesPythonReference) {
  std::size_t checked = 0, errors = 0;
  for (const json& rec : fixture()["prompts"]) {
    const std::string prompt = rec["prompt"];
    SCOPED_TRACE(prompt);
    if (rec.contains("error")) {
      expect_error<diffuse::value_error>([&] { diffuse::text::parse_prompt_attention(prompt); },
                                         {"[parse_prompt_attention]", "is not a number"});
      ++errors;
      continue;
    }
    const auto got = diffuse::text::parse_prompt_attention(prompt);
    const json& want = rec["parsed"];
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].text, want[i][0].get<std::string>()) << i;
      EXPECT_EQ(got[i].weight, want[i][1].get<double>()) << i;  // exactly: the same double operations
    }
    ++checked;
  }
  EXPECT_GE(checked, 20u);
  EXPECT_EQ(errors, 2u);
}

TEST(Prompt, A1111Examples) {
  using V = std::vector<PromptPiece>;
  const auto parse = [](const char* s) { return diffuse::text::parse_prompt_attention(s); };
  EXPECT_EQ(parse("normal text"), (V{{"normal text", 1.0}}));
  EXPECT_EQ(parse("an (important) word"), (V{{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}));
  EXPECT_EQ(parse("(unbalanced"), (V{{"unbalanced", 1.1}}));
  EXPECT_EQ(parse("\\(literal\\]"), (V{{"(literal]", 1.0}}));
  EXPECT_EQ(parse("(unnecessary)(parens)"), (V{{"unnecessaryparens", 1.1}}));
  EXPECT_EQ(parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."), (V{{"a ", 1.0},
                                                                             {"house", 1.5730000000000004},
                                                                             {" ", 1.1},
                                                                             {"on", 1.0},
                                                                             {" a ", 1.1},
                                                                             {"hill", 0.55},
                                                                             {", sun, ", 1.1},
                                                                             {"sky", 1.4641000000000006},
                                                                             {".", 1.1}}));
  EXPECT_EQ(parse(""), (V{{"", 1.0}}));
  EXPECT_EQ(parse("a BREAK b"), (V{{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}));
  EXPECT_TRUE(parse("a BREAK b")[1].is_break());
}

TEST(Prompt, ChunksAndHiddenStatesMatchPythonReference) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const ClipTokenizer tok = ClipTokenizer::load(kData / c.tokenizer);
    const ClipTextModel enc = ClipTextModel::load(kModels / c.model);
    const auto ref = diffuse::io::SafetensorsFile::open(kData / (std::string("hidden_") + c.name + ".safetensors"));
    diffuse::kernels::Context ctx(2);
    double worst = 0, worst_ill = 0;
    std::size_t prompts = 0, chunks = 0;
    const json& all = fixture()["prompts"];
    for (std::size_t i = 0; i < all.size(); ++i) {
      const json& rec = all[i];
      if (rec.contains("error")) continue;
      const std::string prompt = rec["prompt"];
      SCOPED_TRACE(prompt);
      const json& want = rec[c.name];
      const auto t = diffuse::text::tokenize_prompt(tok, prompt);
      EXPECT_EQ(t.token_count, want["token_count"].get<std::size_t>());
      ASSERT_EQ(t.chunks.size(), want["chunks"].size());
      for (std::size_t k = 0; k < t.chunks.size(); ++k) {
        EXPECT_EQ(t.chunks[k].ids, want["chunks"][k]["ids"].get<std::vector<std::int32_t>>()) << k;
        EXPECT_EQ(t.chunks[k].weights, want["chunks"][k]["weights"].get<std::vector<float>>()) << k;
        EXPECT_EQ(t.chunks[k].tokens, want["chunks"][k]["tokens"].get<std::size_t>()) << k;
      }
      const std::vector<std::string> one = {prompt};
      const auto out = diffuse::text::encode_prompts(enc, tok, one, ctx);
      const Tensor z = ref.to_f32("p" + std::to_string(i));
      ASSERT_EQ(out.hidden.shape(), z.shape());
      const double e = rel(out.hidden.data(), z.data(), z.size()), k = kappa(z);
      EXPECT_LE(e, kBound + kPerKappa * k) << "kappa " << k;
      (k < 5000 ? worst : worst_ill) = std::max(k < 5000 ? worst : worst_ill, e);
      const Tensor pooled = ref.to_f32("p" + std::to_string(i) + "_pooled");
      EXPECT_LE(rel(out.pooled.data(), pooled.data(), pooled.size()), kBound);
      if (enc.config().with_projection) {
        const Tensor embeds = ref.to_f32("p" + std::to_string(i) + "_embeds");
        ASSERT_EQ(out.text_embeds.shape(), embeds.shape());
        EXPECT_LE(rel(out.text_embeds.data(), embeds.data(), embeds.size()), kBound);
      }
      ++prompts;
      chunks += t.chunks.size();
    }
    EXPECT_GE(prompts, 20u);
    std::printf("[ %s ] %zu prompts, %zu chunks: hidden states within %.3g x max|ref| (kappa < 5000), %.3g above\n",
                c.name, prompts, chunks, worst, worst_ill);
  }
}

TEST(Prompt, PlainPromptIsExactlyTheEncoder) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const ClipTokenizer tok = ClipTokenizer::load(kData / c.tokenizer);
    const ClipTextModel enc = ClipTextModel::load(kModels / c.model);
    diffuse::kernels::Context ctx(2);
    for (const std::string prompt : {"", "a photo of a cat", "a breathtaking landscape, golden hour, 8k"}) {
      const auto ids = tok.encode_padded(prompt);
      const auto want = enc.encode(ids, 1, ctx);
      for (bool chunking : {true, false}) {
        for (Emphasis emphasis : {Emphasis::original, Emphasis::none, Emphasis::ignore, Emphasis::no_norm}) {
          PromptOptions o;
          o.chunking = chunking;
          o.emphasis = emphasis;
          const std::vector<std::string> one = {prompt};
          EXPECT_EQ(diffuse::text::tokenize_prompt(tok, prompt, o).chunks.at(0).ids, ids);
          const auto got = diffuse::text::encode_prompts(enc, tok, one, ctx, o);
          ASSERT_EQ(got.hidden.shape(), want.hidden.shape());
          EXPECT_EQ(std::memcmp(got.hidden.data(), want.hidden.data(), want.hidden.size() * sizeof(float)), 0);
          EXPECT_EQ(std::memcmp(got.pooled.data(), want.pooled.data(), want.pooled.size() * sizeof(float)), 0);
        }
      }
    }
  }
}

TEST(Prompt, BatchPadsWithEmptyChunks) {
  const Case& c = kCases[1];
  const ClipTokenizer tok = ClipTokenizer::load(kData / c.tokenizer);
  const ClipTextModel enc = ClipTextModel::load(kModels / c.model);
  diffuse::kernels::Context ctx(2);
  const std::vector<std::string> prompts = {"an (important) word", "first part BREAK second part", ""};
  const auto batch = diffuse::text::encode_prompts(enc, tok, prompts, ctx);
  ASSERT_EQ(batch.hidden.shape(), (diffuse::Shape{3, 154, 40}));
  const std::size_t row = 154 * 40, chunk = 77 * 40;
  const auto empty = diffuse::text::encode_prompts(enc, tok, std::vector<std::string>{""}, ctx);
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    const auto alone = diffuse::text::encode_prompts(enc, tok, std::vector<std::string>{prompts[b]}, ctx);
    const std::size_t n = alone.hidden.size();
    EXPECT_EQ(std::memcmp(batch.hidden.data() + b * row, alone.hidden.data(), n * sizeof(float)), 0) << b;
    if (n < row) {
      EXPECT_EQ(std::memcmp(batch.hidden.data() + b * row + n, empty.hidden.data(), chunk * sizeof(float)), 0) << b;
    }
    // The projection GEMM runs on 6 rows here and 1 or 2 alone: the same up to rounding.
    EXPECT_LE(rel(batch.text_embeds.data() + b * 24, alone.text_embeds.data(), 24), 1e-6);
  }
}

TEST(Prompt, EmphasisModes) {
  const Case& c = kCases[0];
  const ClipTokenizer tok = ClipTokenizer::load(kData / c.tokenizer);
  const ClipTextModel enc = ClipTextModel::load(kModels / c.model);
  diffuse::kernels::Context ctx(1);
  const std::vector<std::string> one = {"a (red:1.5) fox, [[snow]] BREAK (sky)"};
  PromptOptions o;
  o.emphasis = Emphasis::ignore;
  const auto raw = diffuse::text::encode_prompts(enc, tok, one, ctx, o);
  o.emphasis = Emphasis::no_norm;
  const auto scaled = diffuse::text::encode_prompts(enc, tok, one, ctx, o);
  o.emphasis = Emphasis::original;
  const auto restored = diffuse::text::encode_prompts(enc, tok, one, ctx, o);
  const auto t = diffuse::text::tokenize_prompt(tok, one[0], o);
  ASSERT_EQ(t.chunks.size(), 2u);
  ASSERT_EQ(raw.hidden.shape(), (diffuse::Shape{1, 154, 32}));
  const std::size_t d = 32;
  for (std::size_t k = 0; k < 2; ++k) {
    double before = 0, after = 0, restored_sum = 0;
    for (std::size_t p = 0; p < 77; ++p)
      for (std::size_t i = 0; i < d; ++i) {
        const std::size_t at = (k * 77 + p) * d + i;
        EXPECT_EQ(scaled.hidden.data()[at], raw.hidden.data()[at] * t.chunks[k].weights[p]);
        before += raw.hidden.data()[at];
        after += scaled.hidden.data()[at];
        restored_sum += restored.hidden.data()[at];
      }
    EXPECT_NE(before, after);
    EXPECT_NEAR(restored_sum, before, 1e-4 * std::abs(before) + 1e-3);  // the mean restored
  }
  // Emphasis::none: brackets and BREAK are text.
  o.emphasis = Emphasis::none;
  const auto literal = diffuse::text::tokenize_prompt(tok, one[0], o);
  EXPECT_EQ(literal.chunks.size(), 1u);
  EXPECT_EQ(literal.chunks[0].ids, tok.encode_padded(one[0]));
}

TEST(Prompt, ChunkingOffTruncatesAsTransformers) {
  const ClipTokenizer tok = ClipTokenizer::load(kData / "tokenizer_openclip");
  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "(word) ";
  PromptOptions o;
  o.chunking = false;
  const auto t = diffuse::text::tokenize_prompt(tok, prompt, o);
  ASSERT_EQ(t.chunks.size(), 1u);
  EXPECT_EQ(t.chunks[0].tokens, 75u);
  EXPECT_GT(t.truncated, 0u);
  EXPECT_EQ(t.token_count, 75u + t.truncated);
  o.emphasis = Emphasis::none;
  std::string plain;
  for (int i = 0; i < 60; ++i) plain += "word ";
  EXPECT_EQ(diffuse::text::tokenize_prompt(tok, plain, o).chunks[0].ids, tok.encode_padded(plain));
  EXPECT_FLOAT_EQ(t.chunks[0].weights[1], 1.1f);
}

TEST(Prompt, Limits) {
  const ClipTokenizer tok = ClipTokenizer::load(kData / "tokenizer");
  expect_error<diffuse::value_error>(
      [&] { diffuse::text::parse_prompt_attention(std::string(65537, 'a')); },
      {"[parse_prompt_attention]", "65537 bytes", "limit of 65536", "PromptLimits::max_bytes"});
  expect_error<diffuse::value_error>([&] { diffuse::text::parse_prompt_attention(std::string(65, '(')); },
                                     {"more than 64 brackets", "PromptLimits::max_depth"});
  EXPECT_NO_THROW(diffuse::text::parse_prompt_attention(std::string(64, '(') + "a" + std::string(64, ']')));
  std::string many;
  for (int i = 0; i < 32; ++i) many += "x BREAK ";
  EXPECT_EQ(diffuse::text::tokenize_prompt(tok, many).chunks.size(), 32u);
  many += "x BREAK ";
  expect_error<diffuse::value_error>([&] { diffuse::text::tokenize_prompt(tok, many); },
                                     {"[tokenize_prompt]", "more than 32 chunks", "PromptLimits::max_chunks"});
  PromptOptions o;
  o.limits.max_chunks = 2;
  expect_error<diffuse::value_error>([&] { diffuse::text::tokenize_prompt(tok, std::string(400, 'q'), o); },
                                     {"more than 2 chunks"});
  expect_error<diffuse::value_error>([&] { diffuse::text::tokenize_prompt(tok, "(a:" + std::string(50, '9') + ")"); },
                                     {"not a finite 32-bit number"});
  expect_error<diffuse::value_error>([&] { diffuse::text::parse_prompt_attention("\xff"); }, {"invalid UTF-8"});
  expect_error<diffuse::value_error>(
      [&] {
        diffuse::kernels::Context ctx(1);
        diffuse::text::encode_prompts(ClipTextModel::load(kModels / "clip_text_quick"), tok, {}, ctx);
      },
      {"[encode_prompts] no prompts"});
}

TEST(Prompt, PythonFloatEdgeCases) {
  const auto w = [](const std::string& s) { return diffuse::text::parse_prompt_attention("(a:" + s + ")")[0].weight; };
  EXPECT_EQ(w("2."), 2.0);
  EXPECT_EQ(w(".25"), 0.25);
  EXPECT_EQ(w("+3"), 3.0);
  EXPECT_EQ(w("-0.5"), -0.5);
  EXPECT_EQ(w("\u0661\u0662"), 12.0);                     // Arabic-Indic digits, as Python's float
  EXPECT_EQ(w("0." + std::string(400, '0') + "1"), 0.0);  // underflow, as Python
  EXPECT_TRUE(std::isinf(w(std::string(400, '9'))));      // overflow: inf, as Python
  // Not a weight token: literal text.
  EXPECT_EQ(diffuse::text::parse_prompt_attention("(a:1e3)")[0].text, "a:1e3");
  EXPECT_EQ(diffuse::text::parse_prompt_attention("(a:\u00b2)")[0].text, "a:\u00b2");  // superscript: not \d
}
