// SPDX-License-Identifier: MIT
// WeightStore: binding by name, shape and dtype checks with messages naming the parameter,
// in-place f32, converted f16/bf16, matrix storage conversion, legacy names, unused parameters.
#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "diffuse/core/convert.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/nn/weights.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse::DType;
using diffuse::Tensor;
using diffuse_test::expect_error;

/// Writes a small model folder into a fresh temporary folder of its own (removed at exit).
fs::path make_dir(const std::string& name, DType storage) {
  static std::deque<diffuse_test::TempDir> dirs;
  const fs::path dir = dirs.emplace_back("weights_" + name).path();
  std::map<std::string, Tensor> t;
  Tensor w({2, 3});
  for (std::size_t i = 0; i < 6; ++i) w.data()[i] = 0.5f * static_cast<float>(i) - 1.0f;
  t["lin.weight"] = w;
  Tensor b({2});
  b.data()[0] = 0.25f;
  b.data()[1] = -4.0f;
  t["lin.bias"] = b;
  t["attn.query.weight"] = Tensor({2, 2});
  t["extra.weight"] = Tensor({1});
  diffuse::io::save_safetensors(dir / "diffusion_pytorch_model.safetensors", t, {}, storage);
  std::ofstream(dir / "config.json") << R"({"_class_name": "Test"})";
  return dir;
}

TEST(WeightStore, F32IsUsedInPlaceAndChecked) {
  const auto dir = diffuse::io::ModelDir::open(make_dir("f32", DType::F32));
  diffuse::nn::WeightStore w(dir, "TestNet");
  const float* b = w.f32("lin.bias", {2});
  EXPECT_EQ(b[0], 0.25f);
  EXPECT_EQ(b[1], -4.0f);
  EXPECT_EQ(static_cast<const void*>(b), static_cast<const void*>(dir.tensor("lin.bias").data));
  const auto m = w.matrix("lin.weight", {2, 3});
  EXPECT_EQ(m.dtype, DType::F32);
  EXPECT_EQ(m.rows, 2u);
  EXPECT_EQ(m.cols, 3u);
  EXPECT_EQ(m.data, static_cast<const void*>(dir.tensor("lin.weight").data));
  EXPECT_EQ(w.parameters(), 8u);
}

TEST(WeightStore, HalfWeightsConvertForF32AndStayHalfForMatrices) {
  for (DType t : {DType::F16, DType::BF16}) {
    const auto dir = diffuse::io::ModelDir::open(make_dir(std::string(diffuse::dtype_name(t)), t));
    diffuse::nn::WeightStore w(dir, "TestNet");
    const float* b = w.f32("lin.bias", {2});
    EXPECT_EQ(b[0], 0.25f);  // exact in both formats
    const auto m = w.matrix("lin.weight", {2, 3});
    EXPECT_EQ(m.dtype, t);
    float back[6];
    diffuse::to_f32(t, m.data, back, 6);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], 0.5f * static_cast<float>(i) - 1.0f);
  }
}

TEST(WeightStore, MatrixDtypeOptionConvertsOnce) {
  const auto dir = diffuse::io::ModelDir::open(make_dir("conv", DType::F32));
  diffuse::nn::WeightStore w(dir, "TestNet", {.matrix_dtype = DType::BF16, .variant = {}});
  const auto m = w.matrix("lin.weight", {2, 3});
  EXPECT_EQ(m.dtype, DType::BF16);
  float back[6];
  diffuse::bf16_to_f32(m.data, back, 6);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], 0.5f * static_cast<float>(i) - 1.0f);
  expect_error<diffuse::value_error>([&] { diffuse::nn::WeightStore(dir, "TestNet", {.matrix_dtype = DType::I8, .variant = {}}); },
                                     {"TestNet", "matrix_dtype", "I8"});
}

TEST(WeightStore, ErrorsNameTheParameterAndShapes) {
  const auto dir = diffuse::io::ModelDir::open(make_dir("err", DType::F32));
  diffuse::nn::WeightStore w(dir, "TestNet");
  expect_error<diffuse::format_error>([&] { w.f32("lin.missing", {4}); },
                                      {"TestNet", "missing parameter 'lin.missing'", "[4]"});
  expect_error<diffuse::shape_error>([&] { w.matrix("lin.weight", {3, 2}); },
                                     {"TestNet", "'lin.weight'", "[2, 3]", "expected [3, 2]"});
}

TEST(WeightStore, PickPrefersTheNameThatExists) {
  const auto dir = diffuse::io::ModelDir::open(make_dir("pick", DType::F32));
  diffuse::nn::WeightStore w(dir, "TestNet");
  EXPECT_EQ(w.pick({"attn.to_q.weight", "attn.query.weight"}), "attn.query.weight");
  EXPECT_EQ(w.pick({"attn.to_k.weight", "attn.key.weight"}), "attn.to_k.weight");  // neither: first
}

TEST(WeightStore, UnusedParametersAreReportedUnlessIgnored) {
  const auto dir = diffuse::io::ModelDir::open(make_dir("unused", DType::F32));
  diffuse::nn::WeightStore w(dir, "TestNet");
  w.f32("lin.bias", {2});
  w.matrix("lin.weight", {2, 3});
  expect_error<diffuse::format_error>([&] { w.check_all_used(); },
                                      {"TestNet", "2 parameter(s)", "'attn.query.weight'", "'extra.weight'"});
  w.ignore("extra.weight");
  w.ignore("attn.");
  EXPECT_NO_THROW(w.check_all_used());
}

}  // namespace

TEST(WeightStore, RowViewsServeRowsInPlace) {
  for (DType storage : {DType::F32, DType::F16}) {
    const auto dir = diffuse::io::ModelDir::open(make_dir(storage == DType::F32 ? "rows32" : "rows16", storage));
    diffuse::nn::WeightStore w(dir, "TestNet");
    w.add_row_view("second.weight", "lin.weight", 1, 1);
    w.add_row_view("second.bias", "lin.bias", 1, 1);
    w.add_row_view("past.weight", "lin.weight", 1, 2);
    EXPECT_TRUE(w.contains("second.weight"));
    EXPECT_EQ(w.shape_of("second.weight"), (diffuse::Shape{1, 3}));
    const float* b = w.f32("second.bias", {1});
    EXPECT_EQ(b[0], -4.0f);
    const auto m = w.matrix("second.weight", {1, 3});
    EXPECT_EQ(m.rows, 1u);
    EXPECT_EQ(m.cols, 3u);
    const auto& whole = dir.tensor("lin.weight");
    EXPECT_EQ(m.data, static_cast<const void*>(whole.data + whole.nbytes / 2));  // row 1, no copy
    EXPECT_EQ(w.parameters(), 4u);
    expect_error<diffuse::shape_error>([&] { w.matrix("second.weight", {2, 3}); },
                                       {"'lin.weight' rows [1, 2) (asked as 'second.weight')", "shape [1, 3]"});
    expect_error<diffuse::shape_error>([&] { w.matrix("past.weight", {2, 3}); },
                                       {"'lin.weight' of shape [2, 3] has no rows [1, 3) for 'past.weight'"});
    // The file tensors behind the views count as used.
    w.ignore("attn.");
    w.ignore("extra.");
    EXPECT_NO_THROW(w.check_all_used());
  }
}
