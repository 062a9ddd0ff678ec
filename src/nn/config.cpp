// SPDX-License-Identifier: MIT
// Bounded, typed config.json reads and checked size products (see nn/config.hpp).
#include "diffuse/nn/config.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

std::size_t checked_product(std::initializer_list<std::size_t> factors, std::string_view where, std::string_view what) {
  std::size_t n = 1;
  bool overflow = false;
  for (std::size_t f : factors) overflow = __builtin_mul_overflow(n, f, &n) || overflow;
  if (overflow) {
    std::string list;
    for (std::size_t f : factors) list += (list.empty() ? "" : " * ") + std::to_string(f);
    raise<format_error>(where, std::string(what) + " = " + list + " overflows 64 bits");
  }
  return n;
}

std::string short_json(const nlohmann::json& v, std::size_t max_chars) {
  std::string s = v.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars && max_chars > 3) s = s.substr(0, max_chars - 3) + "...";
  return s;
}

ConfigReader::ConfigReader(const nlohmann::json& config, std::string where) : j_(&config), where_(std::move(where)) {
  if (!config.is_object())
    raise<format_error>(where_, "the config is a JSON " + std::string(config.type_name()) + ", expected an object");
}

const nlohmann::json* ConfigReader::find(std::string_view key) const {
  const auto it = j_->find(key);
  if (it == j_->end() || it->is_null()) return nullptr;
  return &*it;
}

void ConfigReader::fail(std::string_view key, std::string_view what) const {
  raise<format_error>(where_, "\"" + std::string(key) + "\" " + std::string(what));
}

void ConfigReader::check(std::string_view key, std::size_t value, SizeRange range) const {
  if (value < range.min || value > range.max)
    fail(key, std::to_string(value) + " is out of range: expected " + std::to_string(range.min) + ".." +
                  std::to_string(range.max));
}

std::size_t ConfigReader::product(std::string_view what, std::initializer_list<std::size_t> factors) const {
  return checked_product(factors, where_, what);
}

std::size_t ConfigReader::to_size(std::string_view key, const nlohmann::json& v, SizeRange range) const {
  std::size_t out = 0;
  bool ok = false;
  if (v.is_number_unsigned()) {
    out = v.get<std::size_t>();
    ok = true;
  } else if (v.is_number_integer()) {
    ok = v.get<std::int64_t>() >= 0;
    out = ok ? static_cast<std::size_t>(v.get<std::int64_t>()) : 0;
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    ok = d >= 0 && d == std::floor(d) && d < 9.0e15;
    out = ok ? static_cast<std::size_t>(d) : 0;
  }
  if (!ok) fail(key, "must be a non-negative integer, got " + short_json(v));
  check(key, out, range);
  return out;
}

std::size_t ConfigReader::size(std::string_view key, std::size_t fallback, SizeRange range) const {
  const nlohmann::json* v = find(key);
  return v ? to_size(key, *v, range) : fallback;
}

std::optional<std::size_t> ConfigReader::optional_size(std::string_view key, std::optional<std::size_t> fallback,
                                                       SizeRange range) const {
  const auto it = j_->find(key);
  if (it == j_->end()) return fallback;
  if (it->is_null()) return std::nullopt;
  return to_size(key, *it, range);
}

std::vector<std::size_t> ConfigReader::sizes(std::string_view key, std::vector<std::size_t> fallback, SizeRange range,
                                             std::size_t max_count) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_array()) fail(key, "must be a list of integers, got " + short_json(*v));
  if (v->size() > max_count)
    fail(key, "has " + std::to_string(v->size()) + " entries, more than the " + std::to_string(max_count) + " allowed");
  std::vector<std::size_t> out;
  out.reserve(v->size());
  for (const auto& e : *v) out.push_back(to_size(key, e, range));
  return out;
}

double ConfigReader::number(std::string_view key, double fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_number()) fail(key, "must be a number, got " + short_json(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d)) fail(key, "must be a finite number, got " + short_json(*v));
  return d;
}

bool ConfigReader::boolean(std::string_view key, bool fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail(key, "must be true or false, got " + short_json(*v));
  return v->get<bool>();
}

std::string ConfigReader::string(std::string_view key, std::string fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_string()) fail(key, "must be a string, got " + short_json(*v));
  return v->get<std::string>();
}

std::optional<std::string> ConfigReader::optional_string(std::string_view key,
                                                         std::optional<std::string> fallback) const {
  const auto it = j_->find(key);
  if (it == j_->end()) return fallback;
  if (it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(key, "must be a string or null, got " + short_json(*it));
  return it->get<std::string>();
}

std::vector<std::string> ConfigReader::strings(std::string_view key, std::vector<std::string> fallback,
                                               std::size_t max_count) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_array()) fail(key, "must be a list of strings, got " + short_json(*v));
  if (v->size() > max_count)
    fail(key, "has " + std::to_string(v->size()) + " entries, more than the " + std::to_string(max_count) + " allowed");
  std::vector<std::string> out;
  for (const auto& e : *v) {
    if (!e.is_string()) fail(key, "must be a list of strings, got " + short_json(*v));
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace nn
DIFFUSE_END_NAMESPACE
