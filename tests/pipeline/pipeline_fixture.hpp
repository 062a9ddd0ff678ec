// SPDX-License-Identifier: MIT
// Helpers of the pipeline parity tests (DiT, SD, SDXL, img2img, single files; read_json is in
// test_util.hpp): JSON fixtures written back, images
// laid out as diffusers' output_type "np", error figures, and the pipeline's sampler name for a
// diffusers scheduler class of a fixture case.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/tensor.hpp"
#include "diffuse/pipeline/generate.hpp"
#include "test_util.hpp"

namespace diffuse_test {

inline void write_json(const std::filesystem::path& p, const nlohmann::json& j) {
  std::ofstream out(p);
  out << j.dump(2);
}

/// ours [B, C, H, W] in [-1, 1] as diffusers' output_type "np": (x / 2 + 0.5).clamp(0, 1), [B, H, W, C].
inline diffuse::Tensor as_np_images(const diffuse::Tensor& x) {
  const std::size_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  diffuse::Tensor out({B, H, W, C});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t i = 0; i < H * W; ++i)
        out.data()[(b * H * W + i) * C + c] = std::clamp(x.data()[(b * C + c) * H * W + i] / 2.0f + 0.5f, 0.0f, 1.0f);
  return out;
}

/// max |a - b|; a shape mismatch is a test failure and gives 1e9.
inline double max_abs_diff(const diffuse::Tensor& a, const diffuse::Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return 1e9;
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
  return d;
}

/// max |a|.
inline double max_abs(const diffuse::Tensor& a) {
  double m = 0;
  for (float v : a.values()) m = std::max(m, std::abs(static_cast<double>(v)));
  return m;
}

/// The pipeline's sampler name for the diffusers scheduler class a fixture case ran.
inline std::string sampler_of(const std::string& cls) {
  if (cls == "EulerDiscreteScheduler") return "euler";
  if (cls == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (cls == "DDIMScheduler") return "ddim";
  if (cls == "DPMSolverMultistepScheduler") return "dpmpp_2m";
  if (cls == "PNDMScheduler") return "pndm";
  ADD_FAILURE() << "no sampler for " << cls;
  return {};
}

/** The settings every diffusers pipeline case of the fixtures has, as GenerateOptions: the
 *  scheduler class's sampler on the default schedule, steps, guidance, seed, the prompts (the
 *  batch) and the negative prompts when the case has them (null or absent: none). */
inline diffuse::pipeline::GenerateOptions case_base_options(const nlohmann::json& c) {
  diffuse::pipeline::GenerateOptions o;
  o.sampler = sampler_of(c.at("cls").get<std::string>());
  o.schedule = "default";
  o.steps = c.at("steps").get<int>();
  o.cfg_scale = c.at("guidance").get<float>();
  o.seed = c.at("seed").get<std::uint64_t>();
  o.prompts = c.at("prompt").get<std::vector<std::string>>();
  o.batch = o.prompts.size();
  if (c.contains("negative") && !c.at("negative").is_null())
    o.negative_prompts = c.at("negative").get<std::vector<std::string>>();
  return o;
}

}  // namespace diffuse_test
