// SPDX-License-Identifier: MIT
// model_index.json of a diffusers pipeline folder, and class names by synonym (pipeline_index.hpp).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/pipeline/pipeline_index.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {
namespace {

constexpr std::int64_t kMaxClassId = 1'000'000;
constexpr std::size_t kMaxLabelBytes = 4096;
constexpr std::size_t kMaxNameBytes = 256;

/// A folder name a component may have: letters, digits, '_' and '-' (what diffusers writes).
bool plain_folder_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameBytes || s.front() == '.' || s.front() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isalnum(c) || c == '_' || c == '-'; });
}

std::string trim(std::string_view s) {
  std::size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

/// Lower-cased ASCII (labels are English; other bytes are kept as they are).
std::string fold(std::string_view s) {
  std::string r = trim(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

/// Levenshtein distance, capped: returns cap + 1 as soon as every entry of a row exceeds cap.
std::size_t edit_distance(std::string_view a, std::string_view b, std::size_t cap) {
  if (a.size() > b.size() + cap || b.size() > a.size() + cap) return cap + 1;
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    std::size_t row_min = cur[0];
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      row_min = std::min(row_min, cur[j]);
    }
    if (row_min > cap) return cap + 1;
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "'" : ", '") + n + "'";
  return s;
}

}  // namespace

const PipelineComponent* PipelineIndex::find(std::string_view name) const noexcept {
  for (const auto& c : components)
    if (c.name == name) return &c;
  return nullptr;
}

PipelineIndex PipelineIndex::parse(const nlohmann::json& j, std::string_view where, const std::string& label) {
  auto fail = [&](const std::string& what) { raise<format_error>(where, label + ": " + what); };
  if (!j.is_object()) fail("model_index.json must be a JSON object");
  PipelineIndex p;
  for (const auto& [key, v] : j.items()) {
    if (key == "_class_name") {
      if (!v.is_string() || v.get_ref<const std::string&>().size() > kMaxNameBytes)
        fail("'_class_name' must be a string of at most 256 bytes");
      p.class_name = v.get<std::string>();
      continue;
    }
    if (!key.empty() && key.front() == '_') continue;  // _diffusers_version, _name_or_path
    if (key == "id2label") {
      if (!v.is_object()) fail("'id2label' must be an object of class id -> name");
      for (const auto& [id_text, name] : v.items()) {
        const bool digits = !id_text.empty() && id_text.size() <= 7 &&
                            std::all_of(id_text.begin(), id_text.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                            (id_text.size() == 1 || id_text.front() != '0');
        if (!digits || std::stoll(id_text) >= kMaxClassId)
          fail("id2label key '" + id_text + "' is not a class id (a decimal number below " +
               std::to_string(kMaxClassId) + ")");
        if (!name.is_string() || name.get_ref<const std::string&>().empty() ||
            name.get_ref<const std::string&>().size() > kMaxLabelBytes)
          fail("id2label['" + id_text + "'] must be a non-empty string of at most 4096 bytes");
        const auto id = static_cast<std::size_t>(std::stoll(id_text));
        if (p.id2label.size() <= id) p.id2label.resize(id + 1);
        p.id2label[id] = name.get<std::string>();
      }
      continue;
    }
    if (v.is_array()) {
      if (!plain_folder_name(key))
        fail("component name '" + key + "' is not a plain folder name (letters, digits, '_' and '-')");
      if (v.size() != 2) fail("component '" + key + "' must be [library, class], got " + std::to_string(v.size()) + " entries");
      if (v[0].is_null() && v[1].is_null()) {
        p.absent.push_back(key);
        continue;
      }
      if (!v[0].is_string() || !v[1].is_string() || v[0].get_ref<const std::string&>().size() > kMaxNameBytes ||
          v[1].get_ref<const std::string&>().size() > kMaxNameBytes || v[1].get_ref<const std::string&>().empty())
        fail("component '" + key + "' must be [library, class] with two strings (or [null, null])");
      p.components.push_back({key, v[0].get<std::string>(), v[1].get<std::string>()});
      continue;
    }
    p.settings[key] = v;
  }
  return p;  // nlohmann's object iterates in key order, so components are sorted by name
}

PipelineIndex PipelineIndex::read(const std::filesystem::path& file) {
  return parse(read_json_file(file, "PipelineIndex", "pipeline index"), "PipelineIndex", file.string());
}

// ---- ClassNames ----

ClassNames::ClassNames(std::vector<std::string> labels) : labels_(std::move(labels)) {
  for (std::size_t id = 0; id < labels_.size(); ++id) {
    const std::string& l = labels_[id];
    for (std::size_t at = 0; at < l.size();) {
      const std::size_t comma = std::min(l.find(',', at), l.size());
      std::string syn = trim(std::string_view(l).substr(at, comma - at));
      at = comma + 1;
      if (syn.empty()) continue;
      auto& ids = by_name_[fold(syn)];
      if (ids.empty()) synonyms_.push_back(syn);
      if (std::find(ids.begin(), ids.end(), static_cast<std::int64_t>(id)) == ids.end())
        ids.push_back(static_cast<std::int64_t>(id));
    }
  }
}

const std::string& ClassNames::label(std::int64_t id) const noexcept {
  static const std::string none;
  if (id < 0 || static_cast<std::uint64_t>(id) >= labels_.size()) return none;
  return labels_[static_cast<std::size_t>(id)];
}

std::vector<std::string> ClassNames::nearest(std::string_view name, std::size_t n) const {
  const std::string want = fold(name);
  const std::size_t cap = std::max<std::size_t>(2, want.size() / 3);
  std::vector<std::pair<std::size_t, std::string>> scored;  // (distance, synonym)
  for (const auto& syn : synonyms_) {
    const std::string f = fold(syn);
    std::size_t d = edit_distance(want, f, cap);
    if (d > cap) {
      if (want.empty() || f.find(want) == std::string::npos) continue;
      d = cap + 1;  // contains the name: listed after the close spellings
    }
    scored.emplace_back(d, syn);
  }
  std::stable_sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> out;
  for (std::size_t i = 0; i < scored.size() && out.size() < n; ++i) out.push_back(scored[i].second);
  return out;
}

std::int64_t ClassNames::find(std::string_view name) const {
  constexpr std::string_view where = "ClassNames";
  if (labels_.empty()) raise<value_error>(where, "the model has no class names; give the class as a number");
  const auto it = by_name_.find(fold(name));
  if (it == by_name_.end()) {
    const auto near = nearest(name);
    raise<value_error>(where, "no class is called '" + std::string(name) + "'" +
                                  (near.empty() ? std::string(" (`diffuse info` lists the classes)")
                                                : "; the nearest names: " + quoted_list(near)));
  }
  if (it->second.size() > 1) {
    std::string which;
    for (std::int64_t id : it->second) which += (which.empty() ? "" : "; ") + std::to_string(id) + " (" + label(id) + ")";
    raise<value_error>(where, "'" + std::string(name) + "' names " + std::to_string(it->second.size()) +
                                  " classes: " + which + "; give the class number");
  }
  return it->second.front();
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
