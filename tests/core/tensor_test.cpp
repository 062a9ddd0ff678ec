// SPDX-License-Identifier: MIT
#include "diffuse/core/tensor.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "diffuse/core/dtype.hpp"

namespace {

using diffuse::Shape;
using diffuse::Tensor;

TEST(Tensor, ShapeFillAndIndexing) {
  Tensor t({2, 3, 4}, 0.25f);
  EXPECT_EQ(t.ndim(), 3u);
  EXPECT_EQ(t.size(), 24u);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.dim(-1), 4u);
  EXPECT_EQ(t.dim(0), 2u);
  t(1, 2, 3) = 7.0f;
  EXPECT_EQ(t[23], 7.0f);  // row-major
  EXPECT_EQ(t[0], 0.25f);
}

TEST(Tensor, ScalarAndZeroSized) {
  Tensor scalar(Shape{}, 3.0f);
  EXPECT_EQ(scalar.size(), 1u);
  EXPECT_EQ(scalar.ndim(), 0u);
  Tensor zero({4, 0, 2});
  EXPECT_EQ(zero.size(), 0u);
  EXPECT_TRUE(zero.empty());
}

TEST(Tensor, FromValuesChecksCount) {
  const std::vector<float> v{1, 2, 3, 4, 5, 6};
  const Tensor t = Tensor::from_values({2, 3}, v);
  EXPECT_EQ(t(1, 0), 4.0f);
  EXPECT_THROW(Tensor::from_values({2, 2}, v), diffuse::shape_error);
}

TEST(Tensor, ReshapeKeepsDataAndRejectsWrongCount) {
  Tensor t({2, 6}, 1.0f);
  t[5] = 9.0f;
  t.reshape({3, 4});
  EXPECT_EQ(t(1, 1), 9.0f);
  try {
    t.reshape({5, 5});
    FAIL() << "reshape to a different element count must throw";
  } catch (const diffuse::shape_error& e) {
    EXPECT_STREQ(e.what(), "[BasicTensor::reshape] cannot reshape [3, 4] to [5, 5]");
  }
}

TEST(Tensor, CheckShapeNamesTensorAndShapes) {
  const Tensor t({1, 4, 8, 8});
  EXPECT_NO_THROW(diffuse::check_shape(t, {1, 4, 8, 8}, "unet", "sample"));
  try {
    diffuse::check_shape(t, {1, 3, 8, 8}, "unet", "sample");
    FAIL();
  } catch (const diffuse::shape_error& e) {
    EXPECT_STREQ(e.what(), "[unet] sample: expected shape [1, 3, 8, 8], got [1, 4, 8, 8]");
  }
  EXPECT_THROW(diffuse::check_shape(t, {1, 4, 8}, "unet", "sample"), diffuse::shape_error);
  EXPECT_THROW(t.dim(4), diffuse::shape_error);
  EXPECT_THROW(t.dim(-5), diffuse::shape_error);
}

TEST(Tensor, CheckFiniteReportsNaNAndInf) {
  Tensor t({3, 3}, 1.0f);
  EXPECT_NO_THROW(diffuse::check_finite(t, "test", "x"));
  t[4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(diffuse::check_finite(t, "test", "x"), diffuse::value_error);
  t[4] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(diffuse::check_finite(t, "test", "x"), diffuse::value_error);
}

TEST(Tensor, XtensorExpressions) {
  Tensor a({4}, 2.0f);
  Tensor b({4}, 3.0f);
  a.array() = a.array() * b.array() + 1.0f;
  for (float v : a.values()) EXPECT_EQ(v, 7.0f);
  diffuse::BasicTensor<double> d({2, 2}, 0.5);
  EXPECT_EQ(d.size(), 4u);
  EXPECT_THROW(diffuse::check_same_shape(a, Tensor({2, 2}), "t", "a", "b"), diffuse::shape_error);
}

TEST(DType, NamesBitsAndLookup) {
  for (diffuse::DType t : diffuse::all_dtypes()) {
    const auto back = diffuse::dtype_from_name(diffuse::dtype_name(t));
    ASSERT_TRUE(back.has_value()) << diffuse::dtype_name(t);
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(diffuse::dtype_bits(diffuse::DType::BF16), 16u);
  EXPECT_EQ(diffuse::dtype_bits(diffuse::DType::F4), 4u);
  EXPECT_EQ(diffuse::dtype_bits(diffuse::DType::C64), 64u);
  EXPECT_FALSE(diffuse::dtype_from_name("f32").has_value());  // names are case-sensitive
  EXPECT_FALSE(diffuse::dtype_from_name("F128").has_value());
}

}  // namespace
