// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes through the in-memory safetensors reader. Every input must
// either be rejected with a diffuse::error or yield tensors that can all be read (to_f32 for
// every convertible dtype, a byte checksum for the rest) without touching memory out of bounds.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // An exact-size copy, so that AddressSanitizer sees any read past the end.
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>(data[i]);
  try {
    const auto f = diffuse::io::SafetensorsFile::from_bytes(std::move(bytes));
    volatile float sink = 0.0f;
    volatile unsigned checksum = 0;
    for (const auto& t : f.tensors()) {
      for (std::size_t i = 0; i < t.nbytes; ++i) checksum = checksum + static_cast<unsigned>(t.data[i]);
      if (f.find(t.name) != &t) __builtin_trap();  // lookup must find the same view
      try {
        const diffuse::Tensor x = f.to_f32(t.name);
        if (x.size() != t.numel()) __builtin_trap();
        if (!x.empty()) sink = sink + x[x.size() - 1];
      } catch (const diffuse::value_error&) {
        // F4 / F6 / C64, or a zero-sized shape too large to index: refused, not a crash.
      }
    }
    (void)f.metadata();
  } catch (const diffuse::error&) {
    // Rejected input: fine.
  }
  return 0;
}
