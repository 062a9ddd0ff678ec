// SPDX-License-Identifier: MIT
// Helpers shared by the test programs.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/core/error.hpp"
#include "diffuse/core/tensor.hpp"

namespace diffuse_test {

/// Runs `f`, expecting an exception of type E whose message contains every one of `parts`.
template <class E, class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << *parts.begin() << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

/// A JSON fixture file; io_error when it cannot be opened.
inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) diffuse::raise<diffuse::io_error>("read_json", "cannot open " + path.string());
  return nlohmann::json::parse(in);
}

/// max |a - b| / max |b| (a parity figure against a reference `b`); a shape mismatch is a test
/// failure and gives 1e9.
inline double rel_error(const diffuse::Tensor& a, const diffuse::Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return 1e9;
  double diff = 0, mag = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
    mag = std::max(mag, std::abs(static_cast<double>(b.data()[i])));
  }
  return diff / mag;
}

}  // namespace diffuse_test
