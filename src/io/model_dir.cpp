// SPDX-License-Identifier: MIT
#include "diffuse/io/model_dir.hpp"

#include <set>
#include <utility>

#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "ModelDir";

json read_json(const fs::path& p, std::string_view what) { return read_json_file(p, kWhere, what); }

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A shard path from an index must name a file inside `dir`, also after resolving symlinks.
fs::path shard_path(const fs::path& dir, const fs::path& index, const std::string& shard) {
  const fs::path rel(shard);
  auto reject = [&](const std::string& why) {
    raise<format_error>(kWhere, index.string() + ": shard '" + shard + "' " + why);
  };
  if (shard.empty()) reject("is an empty path");
  if (rel.is_absolute() || rel.has_root_name() || rel.has_root_directory()) reject("is an absolute path");
  for (const auto& part : rel)
    if (part == "..") reject("leaves the model folder ('..')");
  const fs::path full = dir / rel;
  std::error_code ec1, ec2;
  const fs::path base = fs::weakly_canonical(dir, ec1);
  const fs::path target = fs::weakly_canonical(full, ec2);
  if (!ec1 && !ec2) {
    auto b = base.begin(), t = target.begin();
    for (; b != base.end(); ++b, ++t)
      if (t == target.end() || *b != *t) reject("resolves outside the model folder");
  }
  return full;
}

}  // namespace

ModelDir::ModelDir(ModelDir&&) noexcept = default;
ModelDir& ModelDir::operator=(ModelDir&&) noexcept = default;
ModelDir::~ModelDir() = default;

ModelDir ModelDir::open(const fs::path& path, std::string_view variant) {
  ModelDir m;
  m.path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) raise<io_error>(kWhere, path.string() + ": no such file or folder");

  if (!fs::is_directory(path, ec)) {  // a single weights file or an index
    if (ends_with(path.filename().string(), ".json")) {
      m.open_index(path);
    } else {
      m.files_.push_back(SafetensorsFile::open(path));
      for (const auto& t : m.files_.back().tensors()) m.where_.emplace(t.name, 0);
    }
    return m;
  }

  const fs::path config = path / "config.json";
  if (!fs::exists(config, ec)) raise<io_error>(kWhere, path.string() + ": no config.json");
  m.config_ = read_json(config, "config");
  if (!m.config_.is_object())
    raise<format_error>(kWhere, config.string() + ": config is a JSON " + std::string(m.config_.type_name()) +
                                    ", expected an object");

  std::string v;  // ".fp16" (built with += : gcc 12 warns falsely on "." + std::string)
  if (!variant.empty()) v.append(".").append(variant);
  std::vector<std::string> tried;
  for (const char* base : {"diffusion_pytorch_model", "model"}) {
    const std::string b(base);
    const std::string single = b + v + ".safetensors";
    tried.push_back(single);
    if (is_file(path / single)) {
      m.files_.push_back(SafetensorsFile::open(path / single));
      for (const auto& t : m.files_.back().tensors()) m.where_.emplace(t.name, 0);
      return m;
    }
    std::vector<std::string> indexes{b + ".safetensors.index" + v + ".json"};
    if (!v.empty()) indexes.push_back(b + v + ".safetensors.index.json");
    for (const auto& idx : indexes) {
      tried.push_back(idx);
      if (is_file(path / idx)) {
        m.open_index(path / idx);
        return m;
      }
    }
  }
  std::string list;
  for (const auto& t : tried) list += (list.empty() ? "" : ", ") + t;
  raise<io_error>(kWhere, path.string() + ": no weights" +
                              (variant.empty() ? std::string() : " of variant '" + std::string(variant) + "'") +
                              " found (looked for " + list + ")");
}

void ModelDir::open_index(const fs::path& index_path) {
  sharded_ = true;
  const std::string label = index_path.string();
  auto bad = [&](const std::string& what) { raise<format_error>(kWhere, label + ": " + what); };
  const json index = read_json(index_path, "index");
  if (!index.is_object()) bad("index is a JSON " + std::string(index.type_name()) + ", expected an object");
  if (index.contains("metadata")) {
    index_metadata_ = index["metadata"];
    if (!index_metadata_.is_object() && !index_metadata_.is_null())
      bad("\"metadata\" is a JSON " + std::string(index_metadata_.type_name()) + ", expected an object");
  }
  if (!index.contains("weight_map")) bad("no \"weight_map\"");
  const json& map = index["weight_map"];
  if (!map.is_object()) bad("\"weight_map\" is a JSON " + std::string(map.type_name()) + ", expected an object");

  // Open each shard once, in order of first mention.
  const fs::path dir = index_path.parent_path().empty() ? fs::path(".") : index_path.parent_path();
  std::map<std::string, std::size_t> shard_ids;
  std::vector<std::string> shard_names;
  for (const auto& [key, value] : map.items()) {
    if (!value.is_string())
      bad("weight_map entry for tensor '" + key + "' is a JSON " + std::string(value.type_name()) +
          ", expected a file name");
    const std::string& shard = value.get_ref<const std::string&>();
    if (shard_ids.count(shard)) continue;
    const fs::path p = shard_path(dir, index_path, shard);
    if (!is_file(p)) raise<io_error>(kWhere, label + ": shard '" + shard + "' does not exist");
    shard_ids.emplace(shard, files_.size());
    shard_names.push_back(shard);
    files_.push_back(SafetensorsFile::open(p));
  }

  // The index and the shards must agree exactly.
  for (std::size_t i = 0; i < files_.size(); ++i) {
    for (const auto& t : files_[i].tensors()) {
      auto [it, inserted] = where_.emplace(t.name, i);
      if (!inserted)
        bad("tensor '" + t.name + "' is in two shards, '" + shard_names[it->second] + "' and '" + shard_names[i] +
            "'");
      if (!map.contains(t.name)) bad("tensor '" + t.name + "' of shard '" + shard_names[i] + "' is not in weight_map");
      const std::string& listed = map[t.name].get_ref<const std::string&>();
      if (listed != shard_names[i])
        bad("tensor '" + t.name + "' is in shard '" + shard_names[i] + "' but weight_map says '" + listed + "'");
    }
  }
  for (const auto& [key, value] : map.items())
    if (!where_.count(key))
      bad("weight_map puts tensor '" + key + "' in shard '" + value.get<std::string>() + "', which does not hold it");
}

std::vector<fs::path> ModelDir::weight_files() const {
  std::vector<fs::path> out;
  for (const auto& f : files_) out.emplace_back(f.label());
  return out;
}

std::vector<std::string> ModelDir::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

const TensorView* ModelDir::find(std::string_view name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second].find(name);
}

const SafetensorsFile& ModelDir::file_of(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) raise<format_error>(kWhere, path_.string() + ": no tensor '" + std::string(name) + "'");
  return files_[it->second];
}

const TensorView& ModelDir::tensor(std::string_view name) const { return file_of(name).tensor(name); }

Tensor ModelDir::to_f32(std::string_view name) const { return file_of(name).to_f32(name); }

}  // namespace io
DIFFUSE_END_NAMESPACE
