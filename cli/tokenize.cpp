// SPDX-License-Identifier: MIT
// `diffuse tokenize`: the CLIP token ids of a prompt and their count.
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
  try {
    ids = tok.encode(args.prompt);
  } catch (const diffuse::value_error& e) {
    throw UsageError(e.what());
  }
  const std::size_t count = ids.size() - 2, limit = tok.max_length() - 2;
  if (args.json) {
    nlohmann::json j = {{"ids", ids}, {"count", count}, {"max_length", tok.max_length()}, {"truncated", count > limit}};
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
  std::printf("%zu tokens (of %zu)%s\n", count, limit, count > limit ? ": the rest is truncated" : "");
  return kOk;
}

}  // namespace diffuse_cli
