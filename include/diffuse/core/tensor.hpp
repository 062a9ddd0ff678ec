// SPDX-License-Identifier: MIT
/** @file tensor.hpp
 *  The N-d array of the public API: a row-major, owning array of `T` built on `xt::xarray`, with
 *  shape checks that raise `shape_error` naming the tensor and both shapes.
 *
 *  `Tensor` (f32) is what networks take and return; samplers are templated on the scalar and also
 *  run on `BasicTensor<double>`. `array()` exposes the xtensor array for expressions:
 *
 *  **Example**
 *  @code
 *  diffuse::Tensor x({1, 4, 64, 64});            // zeros
 *  x.array() += 0.5f;                            // any xtensor expression
 *  diffuse::check_shape(x, {1, 4, 64, 64}, "sample_euler", "x");
 *  @endcode
 */
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// A shape: one extent per dimension, outermost first. `{}` is a scalar (one element).
using Shape = std::vector<std::size_t>;

/// "[1, 4, 64, 64]".
template <class Range>
std::string shape_string(const Range& shape) {
  std::string s = "[";
  bool first = true;
  for (auto d : shape) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

/// Number of elements of a shape (1 for a scalar, 0 if any extent is 0).
template <class Range>
std::size_t shape_numel(const Range& shape) {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

/// An owning, row-major N-d array of `T`.
template <class T>
class BasicTensor {
 public:
  using value_type = T;
  using array_type = xt::xarray<T, xt::layout_type::row_major>;

  /// An empty tensor of shape [0].
  BasicTensor() : a_(array_type::from_shape({0})) {}

  /// A tensor of `shape` filled with `fill`.
  explicit BasicTensor(const Shape& shape, T fill = T{}) : a_(array_type::from_shape(shape)) {
    std::fill(a_.begin(), a_.end(), fill);
  }
  BasicTensor(std::initializer_list<std::size_t> shape, T fill = T{}) : BasicTensor(Shape(shape), fill) {}

  /// Takes over an xtensor array (any expression converts to it).
  explicit BasicTensor(array_type a) : a_(std::move(a)) {}

  /// A tensor of `shape` holding a copy of `values`; throws shape_error when the counts differ.
  static BasicTensor from_values(const Shape& shape, std::span<const T> values) {
    if (shape_numel(shape) != values.size())
      raise<shape_error>("BasicTensor::from_values", "shape " + shape_string(shape) + " holds " +
                                                         std::to_string(shape_numel(shape)) + " elements, got " +
                                                         std::to_string(values.size()));
    BasicTensor t(shape);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }

  /// The shape as a vector.
  Shape shape() const { return Shape(a_.shape().begin(), a_.shape().end()); }
  /// Extent of dimension `i`; negative `i` counts from the end. Throws shape_error when out of range.
  std::size_t dim(std::ptrdiff_t i) const {
    const auto n = static_cast<std::ptrdiff_t>(a_.dimension());
    if (i < 0) i += n;
    if (i < 0 || i >= n)
      raise<shape_error>("BasicTensor::dim", "dimension " + std::to_string(i) + " of a tensor of shape " +
                                                 shape_string(a_.shape()));
    return a_.shape()[static_cast<std::size_t>(i)];
  }
  std::size_t ndim() const { return a_.dimension(); }
  std::size_t size() const { return a_.size(); }
  bool empty() const { return a_.size() == 0; }

  T* data() { return a_.data(); }
  const T* data() const { return a_.data(); }
  T* begin() { return a_.data(); }
  T* end() { return a_.data() + a_.size(); }
  const T* begin() const { return a_.data(); }
  const T* end() const { return a_.data() + a_.size(); }
  std::span<T> values() { return {a_.data(), a_.size()}; }
  std::span<const T> values() const { return {a_.data(), a_.size()}; }

  /// Flat (row-major) element access, unchecked.
  T& operator[](std::size_t i) { return a_.data()[i]; }
  const T& operator[](std::size_t i) const { return a_.data()[i]; }

  /// Multi-index access, unchecked.
  template <class... I>
  T& operator()(I... idx) {
    return a_(idx...);
  }
  template <class... I>
  const T& operator()(I... idx) const {
    return a_(idx...);
  }

  /// The underlying xtensor array, for expressions.
  array_type& array() { return a_; }
  const array_type& array() const { return a_; }

  /// Changes the shape in place, keeping the elements; throws shape_error when the counts differ.
  void reshape(const Shape& shape) {
    if (shape_numel(shape) != a_.size())
      raise<shape_error>("BasicTensor::reshape", "cannot reshape " + shape_string(a_.shape()) + " to " +
                                                     shape_string(shape));
    a_.reshape(shape);
  }

  bool same_shape(const BasicTensor& other) const {
    return a_.dimension() == other.a_.dimension() &&
           std::equal(a_.shape().begin(), a_.shape().end(), other.a_.shape().begin());
  }

 private:
  array_type a_;
};

/// The f32 tensor networks take and return.
using Tensor = BasicTensor<float>;

/// Throws shape_error "[where] name: expected shape [..], got [..]" unless `t` has `expected`.
template <class T>
void check_shape(const BasicTensor<T>& t, const Shape& expected, std::string_view where, std::string_view name) {
  const auto& s = t.array().shape();
  if (s.size() != expected.size() || !std::equal(s.begin(), s.end(), expected.begin()))
    raise<shape_error>(where, std::string(name) + ": expected shape " + shape_string(expected) + ", got " +
                                  shape_string(s));
}

/// Throws shape_error unless `a` and `b` have the same shape.
template <class T>
void check_same_shape(const BasicTensor<T>& a, const BasicTensor<T>& b, std::string_view where,
                      std::string_view name_a, std::string_view name_b) {
  if (!a.same_shape(b))
    raise<shape_error>(where, std::string(name_a) + " has shape " + shape_string(a.array().shape()) + " but " +
                                  std::string(name_b) + " has shape " + shape_string(b.array().shape()));
}

/// Throws value_error naming the tensor and the first offending index if it holds a NaN or an infinity.
template <class T>
void check_finite(const BasicTensor<T>& t, std::string_view where, std::string_view name) {
  const T* p = t.data();
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (!(p[i] - p[i] == T(0)))  // false for NaN and +-inf
      raise<value_error>(where, std::string(name) + " holds a non-finite value (" + std::to_string(p[i]) +
                                    ") at flat index " + std::to_string(i));
  }
}

DIFFUSE_END_NAMESPACE
