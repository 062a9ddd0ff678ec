// SPDX-License-Identifier: MIT
// Uses a header-only part (tensors, dtypes) and a compiled part (bulk f16 conversion) of diffuse.
#include <cstdint>
#include <cstdio>

#include <diffuse/core/convert.hpp>
#include <diffuse/core/dtype.hpp>
#include <diffuse/core/tensor.hpp>

int main() {
  diffuse::Tensor t({2, 3}, 1.5f);
  const std::uint16_t half[2] = {0x3C00, 0xC000};  // 1.0, -2.0
  float out[2] = {};
  diffuse::f16_to_f32(half, out, 2);
  const bool ok = t.size() == 6 && t(1, 2) == 1.5f && out[0] == 1.0f && out[1] == -2.0f &&
                  diffuse::dtype_from_name("BF16") == diffuse::DType::BF16;
  std::printf("diffuse consumer: %s (conversion path %s)\n", ok ? "ok" : "FAILED",
              diffuse::convert_isa().data());
  return ok ? 0 : 1;
}
