// SPDX-License-Identifier: MIT
// Test helper for the CLI tests: checks a PNG's size and that its "parameters" text contains
// every given substring (an argument "channels=N" checks the channel count instead).
//   diffuse_cli_check_png FILE WIDTH HEIGHT [SUBSTRING | channels=N ...]
#include <cstdio>
#include <exception>
#include <string>

#include "diffuse/io/image.hpp"

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s FILE WIDTH HEIGHT [SUBSTRING...]\n", argv[0]);
    return 2;
  }
  const auto img = diffuse::io::read_image(argv[1]);
  if (img.width != std::stoi(argv[2]) || img.height != std::stoi(argv[3])) {
    std::fprintf(stderr, "%s is %dx%d, expected %sx%s\n", argv[1], img.width, img.height, argv[2], argv[3]);
    return 1;
  }
  std::string params;
  bool found = false;
  for (const auto& [k, v] : diffuse::io::read_png_text(argv[1]))
    if (k == "parameters") {
      params = v;
      found = true;
    }
  if (!found) {
    std::fprintf(stderr, "%s has no \"parameters\" text chunk\n", argv[1]);
    return 1;
  }
  for (int i = 4; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("channels=", 0) == 0) {
      if (img.channels != std::stoi(arg.substr(9))) {
        std::fprintf(stderr, "%s has %d channels, expected %s\n", argv[1], img.channels, arg.substr(9).c_str());
        return 1;
      }
      continue;
    }
    if (params.find(argv[i]) == std::string::npos) {
      std::fprintf(stderr, "'%s' not in the parameters: %s\n", argv[i], params.c_str());
      return 1;
    }
  }
  std::printf("%s: %dx%d, parameters: %s\n", argv[1], img.width, img.height, params.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
