// SPDX-License-Identifier: MIT
// Parameter binding by name (see nn/weights.hpp).
#include "diffuse/nn/weights.hpp"

#include <cstdint>
#include <cstring>
#include <string>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

}  // namespace

WeightStore::WeightStore(const io::ModelDir& dir, std::string model, LoadOptions options)
    : dir_(&dir), model_(std::move(model)), options_(std::move(options)) {
  if (options_.matrix_dtype && *options_.matrix_dtype != DType::F32 && *options_.matrix_dtype != DType::F16 &&
      *options_.matrix_dtype != DType::BF16)
    raise<value_error>(model_, "matrix_dtype must be F32, F16 or BF16, got " +
                                   std::string(dtype_name(*options_.matrix_dtype)));
  limit_ = resolve_memory_limit(options_.memory_limit);
}

void WeightStore::reserve(std::uint64_t bytes, std::string_view what) {
  std::uint64_t total = 0;
  if (__builtin_add_overflow(allocated_, bytes, &total) || total > limit_)
    raise<memory_error>(model_, "loading " + dir_->path().string() + " needs more than " + format_bytes(limit_) +
                                    ": " + std::string(what) + " needs " + format_bytes(bytes) + " on top of the " +
                                    format_bytes(allocated_) + " already allocated; the memory limit is " +
                                    format_bytes(limit_) +
                                    (options_.memory_limit ? " (LoadOptions::memory_limit)"
                                                           : " (3/4 of the physical memory; set LoadOptions::memory_limit)"));
  allocated_ = total;
}

void WeightStore::add_row_view(std::string name, std::string file_name, std::size_t begin, std::size_t rows) {
  row_views_[std::move(name)] = RowView{std::move(file_name), begin, rows};
}

const io::TensorView* WeightStore::find(std::string_view name) const {
  const auto it = row_views_.find(name);
  if (it == row_views_.end()) return dir_->find(file_name(name));
  if (const auto r = resolved_views_.find(name); r != resolved_views_.end()) return r->second;
  const RowView& rv = it->second;
  const io::TensorView* whole = dir_->find(rv.file_name);
  if (!whole) return nullptr;
  if (whole->shape.empty() || rv.begin > whole->shape[0] || rv.rows > whole->shape[0] - rv.begin)
    raise<shape_error>(model_, "'" + rv.file_name + "' of shape " + shape_string(whole->shape) + " has no rows [" +
                                   std::to_string(rv.begin) + ", " + std::to_string(rv.begin + rv.rows) + ") for '" +
                                   std::string(name) + "'");
  const std::size_t row_bytes = whole->shape[0] ? whole->nbytes / whole->shape[0] : 0;
  io::TensorView v;
  v.name = rv.file_name;
  v.dtype = whole->dtype;
  v.shape = whole->shape;
  v.shape[0] = rv.rows;
  v.data = whole->data + rv.begin * row_bytes;
  v.nbytes = rv.rows * row_bytes;
  const io::TensorView* stored = &view_tensors_.emplace_back(std::move(v));
  resolved_views_.emplace(std::string(name), stored);
  return stored;
}

// A row view is described by its file tensor and rows.
bool WeightStore::contains(std::string_view name) const { return find(name) != nullptr; }

std::string WeightStore::pick(std::initializer_list<std::string_view> names) const {
  for (std::string_view n : names)
    if (contains(n)) return std::string(n);
  return names.size() ? std::string(*names.begin()) : std::string();
}

// 'file name' (or 'file name' (asked as 'name') when a name map renamed it).
std::string WeightStore::describe(std::string_view name) const {
  if (const auto it = row_views_.find(name); it != row_views_.end())
    return "'" + it->second.file_name + "' rows [" + std::to_string(it->second.begin) + ", " +
           std::to_string(it->second.begin + it->second.rows) + ") (asked as '" + std::string(name) + "')";
  const std::string f = file_name(name);
  return "'" + f + "'" + (f == name ? std::string() : " (asked as '" + std::string(name) + "')");
}

Shape WeightStore::shape_of(std::string_view name) const {
  const io::TensorView* v = find(name);
  if (!v) raise<format_error>(model_, "missing parameter " + describe(name) + " in " + dir_->path().string());
  return v->shape;
}

const io::TensorView& WeightStore::checked(std::string_view name, const Shape& shape) {
  const io::TensorView* v = find(name);
  if (!v)
    raise<format_error>(model_, "missing parameter " + describe(name) + " (expected shape " + shape_string(shape) +
                                    ") in " + dir_->path().string());
  if (v->shape != shape)
    raise<shape_error>(model_, "parameter " + describe(name) + " has shape " + shape_string(v->shape) +
                                   ", expected " + shape_string(shape) + " (from config.json) in " +
                                   dir_->path().string());
  if (!is_float(v->dtype))
    raise<format_error>(model_, "parameter " + describe(name) + " has dtype " + std::string(dtype_name(v->dtype)) +
                                    ", expected F32, F16, BF16 or F64");
  if (row_views_.count(name)) {  // counted per view, the file tensor marked used
    if (views_bound_.insert(std::string(name)).second) parameters_ += v->numel();
    used_.insert(v->name);
  } else if (used_.insert(file_name(name)).second) {
    parameters_ += v->numel();
  }
  return *v;
}

const float* WeightStore::f32(std::string_view name, const Shape& shape) {
  const io::TensorView& v = checked(name, shape);
  if (v.dtype == DType::F32 && reinterpret_cast<std::uintptr_t>(v.data) % alignof(float) == 0)
    return reinterpret_cast<const float*>(v.data);  // in place from the mapping
  reserve(std::uint64_t{v.numel()} * sizeof(float), "parameter '" + std::string(name) + "' converted to f32");
  std::vector<float>& copy = f32_copies_.emplace_back(v.numel());
  to_f32(v.dtype, v.data, copy.data(), copy.size());
  return copy.data();
}

MatrixRef WeightStore::matrix(std::string_view name, const Shape& shape) {
  if (shape.empty()) raise<value_error>(model_, "matrix '" + std::string(name) + "' needs at least one dimension");
  const io::TensorView& v = checked(name, shape);
  MatrixRef m;
  m.rows = shape[0];
  m.cols = m.rows ? v.numel() / m.rows : 0;
  const DType want = options_.matrix_dtype.value_or(v.dtype == DType::F64 ? DType::F32 : v.dtype);
  const bool aligned = reinterpret_cast<std::uintptr_t>(v.data) % (dtype_bits(v.dtype) / 8) == 0;
  if (want == v.dtype && aligned) {
    m.data = v.data;
    m.dtype = v.dtype;
    return m;
  }
  // Convert once: through f32 (exact for f16/bf16 sources), then to the wanted storage.
  reserve(std::uint64_t{v.numel()} * (sizeof(float) + (want == DType::F32 ? 0 : 2)),
          "parameter '" + std::string(name) + "' converted to " + std::string(dtype_name(want)));
  std::vector<float>& f = f32_copies_.emplace_back(v.numel());
  to_f32(v.dtype, v.data, f.data(), f.size());
  m.dtype = want;
  if (want == DType::F32) {
    m.data = f.data();
    return m;
  }
  std::vector<std::uint16_t>& h = half_copies_.emplace_back(f.size());
  if (want == DType::F16)
    f32_to_f16(f.data(), h.data(), f.size());
  else
    f32_to_bf16(f.data(), h.data(), f.size());
  f32_copies_.pop_back();
  m.data = h.data();
  return m;
}

void WeightStore::ignore(std::string_view name_or_prefix) { ignored_.emplace_back(name_or_prefix); }

void WeightStore::check_all_used() const {
  std::vector<std::string> extra;
  for (const std::string& n : dir_->names()) {
    if (used_.count(n) || n.compare(0, scope_.size(), scope_) != 0) continue;
    bool skip = false;
    for (const std::string& ig : ignored_)
      if (n == ig || (!ig.empty() && ig.back() == '.' && n.compare(0, ig.size(), ig) == 0)) skip = true;
    if (!skip) extra.push_back(n);
  }
  if (extra.empty()) return;
  std::string msg = std::to_string(extra.size()) + " parameter(s) in " + dir_->path().string() +
                    " that the config does not describe (extra or misnamed): ";
  for (std::size_t i = 0; i < extra.size() && i < 10; ++i) msg += (i ? ", '" : "'") + extra[i] + "'";
  if (extra.size() > 10) msg += ", ...";
  raise<format_error>(model_, msg);
}

}  // namespace nn
DIFFUSE_END_NAMESPACE
