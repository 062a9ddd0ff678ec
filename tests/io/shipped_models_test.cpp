// SPDX-License-Identifier: MIT
// The default models shipped in models/ (saved by diffusers' save_pretrained) load through ModelDir
// unchanged: config, every tensor as finite f32, and a working scheduler from scheduler_config.json.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "diffuse/io/model_dir.hpp"
#include "diffuse/sample/diffusers_scheduler.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path kModels = fs::path(DIFFUSE_SOURCE_DIR) / "models";

void expect_loads(const std::string& name, const std::string& cls, std::size_t min_tensors) {
  const auto dir = diffuse::io::ModelDir::open(kModels / name);
  ASSERT_TRUE(dir.has_config());
  EXPECT_EQ(dir.config().at("_class_name").get<std::string>(), cls);
  EXPECT_GE(dir.size(), min_tensors);
  std::size_t params = 0;
  for (const auto& n : dir.names()) {
    const auto& view = dir.tensor(n);
    const diffuse::Tensor t = dir.file_of(n).to_f32(n);
    ASSERT_EQ(t.size(), view.numel()) << n;
    for (float v : t.values()) ASSERT_TRUE(std::isfinite(v)) << name << ": " << n;
    params += view.numel();
  }
  EXPECT_GT(params, 100000u) << name;
}

TEST(ShippedModels, DigitsUnetLoads) { expect_loads("digits-unet", "UNet2DModel", 50); }

TEST(ShippedModels, DigitsDitLoads) { expect_loads("digits-dit", "DiTTransformer2DModel", 20); }

TEST(ShippedModels, SchedulerConfigsBuildSchedules) {
  auto unet = diffuse::DiffusersScheduler<float>::from_file(kModels / "digits-unet" / "scheduler_config.json");
  unet.set_timesteps(50);
  EXPECT_EQ(unet.timesteps().size(), 50u);
  auto dit = diffuse::DiffusersScheduler<float>::from_file(kModels / "digits-dit" / "scheduler_config.json");
  dit.set_timesteps(20);
  EXPECT_EQ(dit.timesteps().size(), 20u);
}

}  // namespace
