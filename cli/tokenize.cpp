// SPDX-License-Identifier: MIT
// `diffuse tokenize`: the CLIP token ids of a prompt and their count, and the 77-id chunks the
// prompt layer (text/prompt.hpp: A1111's emphasis, BREAK, 75-token chunks) makes of it.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/text/clip_tokenizer.hpp"
#include "diffuse/text/prompt.hpp"

namespace diffuse_cli {

int run_tokenize(const TokenizeArgs& args) {
  namespace fs = std::filesystem;
  using diffuse::text::ClipTokenizer;
  std::error_code ec;
  if (!fs::exists(args.model, ec)) throw std::runtime_error("no such model folder or file: " + args.model);
  ClipTokenizer tok = [&] {
    if (fs::is_regular_file(args.model, ec)) {  // OpenAI's bpe_simple_vocab_16e6.txt (decompressed)
      std::ifstream in(args.model, std::ios::binary);
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return ClipTokenizer::from_openai_merges(text);
    }
    return ClipTokenizer::load(args.model);
  }();
  std::vector<std::int32_t> ids;
  diffuse::text::PromptOptions options;
  options.emphasis = args.no_emphasis ? diffuse::text::Emphasis::none : diffuse::text::Emphasis::original;
  options.chunking = !args.no_chunking;
  diffuse::text::TokenizedPrompt chunked;
  bool literal = true;  // the prompt has no emphasis syntax and no BREAK
  try {
    ids = tok.encode(args.prompt);
    chunked = diffuse::text::tokenize_prompt(tok, args.prompt, options);
    if (!args.no_emphasis) {
      const auto pieces = diffuse::text::parse_prompt_attention(args.prompt, options.limits);
      literal = pieces.size() == 1 && pieces[0].weight == 1.0 && pieces[0].text == args.prompt;
    }
  } catch (const diffuse::value_error& e) {
    throw UsageError(e.what());
  }
  const std::size_t count = ids.size() - 2, limit = tok.max_length() - 2;
  if (args.json) {
    nlohmann::json chunks = nlohmann::json::array();
    for (const auto& c : chunked.chunks)
      chunks.push_back({{"ids", c.ids}, {"weights", c.weights}, {"tokens", c.tokens}});
    nlohmann::json j = {{"ids", ids},
                        {"count", count},
                        {"max_length", tok.max_length()},
                        {"truncated", count > limit},
                        {"token_count", chunked.token_count},
                        {"chunks", chunks}};
    if (args.tokens) {
      std::vector<std::string> names;
      for (std::int32_t i : ids) names.push_back(tok.token(i));
      j["tokens"] = names;
    }
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return kOk;
  }
  std::string line;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
  if (args.tokens) {
    line.clear();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i) line += ' ';
      line += tok.token(ids[i]);
    }
    std::printf("%s\n", line.c_str());
  }
  const auto& chunks = chunked.chunks;
  if (!literal || chunks.size() > 1) {
    for (std::size_t k = 0; k < chunks.size(); ++k) {
      line = "chunk " + std::to_string(k + 1) + " (" + std::to_string(chunks[k].tokens) + " tokens):";
      for (std::int32_t i : chunks[k].ids) line += ' ' + std::to_string(i);
      std::printf("%s\n", line.c_str());
      const auto& w = chunks[k].weights;
      if (std::any_of(w.begin(), w.end(), [](float x) { return x != 1.0f; })) {
        line = "  weights:";
        char buf[32];
        for (float x : w) {
          std::snprintf(buf, sizeof buf, " %.6g", static_cast<double>(x));
          line += buf;
        }
        std::printf("%s\n", line.c_str());
      }
    }
  }
  if (args.no_chunking || chunks.size() == 1) {
    const std::size_t n = args.no_chunking ? chunked.token_count : (literal ? count : chunked.token_count);
    std::printf("%zu tokens (of %zu)%s\n", n, limit, n > limit ? ": the rest is truncated" : "");
  } else {
    line.clear();
    for (std::size_t k = 0; k < chunks.size(); ++k) line += (k ? " + " : "") + std::to_string(chunks[k].tokens);
    std::printf("%zu chunks of %zu (%s tokens), A1111's count %zu/%zu\n", chunks.size(), limit, line.c_str(),
                chunked.token_count, chunks.size() * limit);
  }
  return kOk;
}

}  // namespace diffuse_cli
