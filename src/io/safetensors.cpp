// SPDX-License-Identifier: MIT
// safetensors reader and writer. The reader validates in the reference implementation's order
// (huggingface/safetensors, SafeTensors::read_metadata + Metadata::validate) so that a file
// either reads the same everywhere or is rejected everywhere.
#include "diffuse/io/safetensors.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace io {

namespace {

using nlohmann::json;

constexpr std::string_view kWhere = "safetensors";
constexpr std::size_t kMaxJsonDepth = 128;  // serde_json's recursion limit; the schema needs 3

[[noreturn]] void bad(const std::string& label, const std::string& what) {
  raise<format_error>(kWhere, label + ": " + what);
}

[[noreturn]] void bad_tensor(const std::string& label, const std::string& name, const std::string& what) {
  raise<format_error>(kWhere, label + ": tensor '" + name + "': " + what);
}

std::uint64_t read_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

// Offset of the first byte that breaks UTF-8 (as Rust's str::from_utf8 judges it: no overlong
// forms, no surrogates, nothing above U+10FFFF), or npos.
std::size_t find_invalid_utf8(const unsigned char* s, std::size_t n) {
  std::size_t i = 0;
  auto cont = [&](std::size_t k) { return k < n && (s[k] & 0xC0u) == 0x80u; };
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80u) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2u && c <= 0xDFu) {
      len = 2;
    } else if (c >= 0xE0u && c <= 0xEFu) {
      len = 3;
      if (c == 0xE0u) lo = 0xA0;
      if (c == 0xEDu) hi = 0x9F;
    } else if (c >= 0xF0u && c <= 0xF4u) {
      len = 4;
      if (c == 0xF0u) lo = 0x90;
      if (c == 0xF4u) hi = 0x8F;
    } else {
      return i;
    }
    if (i + 1 >= n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if (!cont(i + k)) return i;
    i += len;
  }
  return std::string::npos;
}

std::string json_type(const json& j) { return j.type_name(); }

// A non-negative JSON integer (usize in the reference), or nothing.
bool get_size(const json& j, std::size_t& out) {
  if (j.is_number_unsigned()) {
    out = static_cast<std::size_t>(j.get<std::uint64_t>());
    return true;
  }
  if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (v < 0) return false;
    out = static_cast<std::size_t>(v);
    return true;
  }
  return false;
}

std::string short_dump(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  std::size_t begin, end;
};

Entry parse_entry(const std::string& label, const std::string& name, const json& v) {
  if (!v.is_object()) bad_tensor(label, name, "entry is a JSON " + json_type(v) + ", expected an object");
  for (const auto& [key, _] : v.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      bad_tensor(label, name, "unknown field '" + key + "' (expected dtype, shape, data_offsets)");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key)) bad_tensor(label, name, std::string("missing field '") + key + "'");

  Entry e{name, DType::F32, {}, 0, 0};
  const json& dt = v["dtype"];
  if (!dt.is_string()) bad_tensor(label, name, "dtype is a JSON " + json_type(dt) + ", expected a string");
  const auto dtype = dtype_from_name(dt.get_ref<const std::string&>());
  if (!dtype) bad_tensor(label, name, "unknown dtype '" + dt.get<std::string>() + "'");
  e.dtype = *dtype;

  const json& sh = v["shape"];
  if (!sh.is_array()) bad_tensor(label, name, "shape is a JSON " + json_type(sh) + ", expected an array");
  e.shape.reserve(sh.size());
  for (const json& d : sh) {
    std::size_t x = 0;
    if (!get_size(d, x))
      bad_tensor(label, name, "shape entry " + short_dump(d) + " is not a non-negative integer");
    e.shape.push_back(x);
  }

  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    bad_tensor(label, name, "data_offsets " + short_dump(off) + " is not a [begin, end] pair");
  if (!get_size(off[0], e.begin) || !get_size(off[1], e.end))
    bad_tensor(label, name, "data_offsets " + short_dump(off) + " are not non-negative integers");
  return e;
}

std::string offsets_string(const Entry& e) {
  return "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
}

std::string typed_shape(DType t, const Shape& s) { return std::string(dtype_name(t)) + " " + shape_string(s); }

// numel * bits / 8, or nothing on overflow; `bits` receives the bit count when it fits.
bool checked_nbits(const Shape& shape, DType t, std::size_t& bits) {
  std::size_t n = 1;
  for (auto d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  return !__builtin_mul_overflow(n, dtype_bits(t), &bits);
}

}  // namespace


// ---- reader ------------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.label_ = path.string();
  f.mapping_ = std::make_unique<MappedFile>(path);
  f.base_ = f.mapping_->data();
  f.file_size_ = f.mapping_->size();
  f.parse();
  return f;
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<std::byte> bytes, std::string label) {
  SafetensorsFile f;
  f.label_ = std::move(label);
  f.owned_ = std::move(bytes);
  f.base_ = f.owned_.data();
  f.file_size_ = f.owned_.size();
  f.parse();
  return f;
}

SafetensorsFile SafetensorsFile::from_bytes(std::span<const std::byte> bytes, std::string label) {
  return from_bytes(std::vector<std::byte>(bytes.begin(), bytes.end()), std::move(label));
}

std::string_view SafetensorsFile::header() const noexcept {
  if (file_size_ < 8) return {};
  return {reinterpret_cast<const char*>(base_) + 8, header_size_};
}

void SafetensorsFile::parse() {
  const std::string& label = label_;
  // 1. The 8-byte little-endian header length.
  if (file_size_ < 8)
    bad(label, "file is " + std::to_string(file_size_) + " bytes, too small to hold the 8-byte header length");
  const std::uint64_t n = read_le64(base_);
  if (n > kMaxHeaderSize)
    bad(label, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderSize) +
                   " bytes");
  std::size_t data_start = 0;
  if (__builtin_add_overflow(static_cast<std::size_t>(n), std::size_t{8}, &data_start) || data_start > file_size_)
    bad(label, "header length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(file_size_) + " bytes)");
  header_size_ = static_cast<std::size_t>(n);

  // 2. UTF-8, then JSON (duplicate keys rejected), then the schema.
  const auto* hdr = reinterpret_cast<const unsigned char*>(base_) + 8;
  if (const std::size_t bad_at = find_invalid_utf8(hdr, header_size_); bad_at != std::string::npos)
    bad(label, "header is not valid UTF-8 (byte " + std::to_string(bad_at) + " of the header)");
  const json root = parse_json_strict(header(), kWhere, label, "header", JsonLimits{kMaxJsonDepth, kMaxHeaderSize});
  if (!root.is_object()) bad(label, "header is a JSON " + json_type(root) + ", expected an object");

  std::vector<Entry> entries;
  entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) bad(label, "__metadata__ is a JSON " + json_type(value) + ", expected an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          bad(label, "__metadata__ value of '" + mk + "' is a JSON " + json_type(mv) + ", expected a string");
        metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    entries.push_back(parse_entry(label, key, value));
  }

  // 3. Offsets: sorted by (begin, end), they must tile [0, total) exactly.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::size_t pos = 0;
  std::string prev;
  for (const Entry& e : entries) {
    if (e.end < e.begin) bad_tensor(label, e.name, offsets_string(e) + " end before begin");
    if (e.begin != pos) {
      if (&e == &entries.front())
        bad_tensor(label, e.name, offsets_string(e) + ": the first tensor must start at offset 0");
      bad_tensor(label, e.name,
                 offsets_string(e) + (e.begin > pos ? " leave a gap after" : " overlap") + " tensor '" + prev +
                     "', which ends at " + std::to_string(pos));
    }
    std::size_t bits = 0;
    if (!checked_nbits(e.shape, e.dtype, bits))
      bad_tensor(label, e.name, "size of " + typed_shape(e.dtype, e.shape) + " overflows");
    if (bits % 8 != 0)
      bad_tensor(label, e.name, typed_shape(e.dtype, e.shape) + " is " + std::to_string(bits) +
                                    " bits, not a whole number of bytes");
    if (e.end - e.begin != bits / 8)
      bad_tensor(label, e.name, offsets_string(e) + " hold " + std::to_string(e.end - e.begin) + " bytes but " +
                                    typed_shape(e.dtype, e.shape) + " needs " + std::to_string(bits / 8));
    pos = e.end;
    prev = e.name;
  }
  // 4. The data buffer must be exactly as long as the tensors (no trailing bytes).
  const std::size_t buffer = file_size_ - data_start;
  if (pos != buffer)
    bad(label, "the tensors cover " + std::to_string(pos) + " bytes but the data buffer holds " +
                   std::to_string(buffer) + (pos < buffer ? " (trailing bytes)" : " (file truncated)"));

  tensors_.reserve(entries.size());
  for (Entry& e : entries) {
    index_.emplace(e.name, tensors_.size());
    tensors_.push_back(TensorView{std::move(e.name), e.dtype, std::move(e.shape), base_ + data_start + e.begin,
                                  e.end - e.begin});
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::tensor(std::string_view name) const {
  if (const TensorView* t = find(name)) return *t;
  raise<format_error>(kWhere, label_ + ": no tensor '" + std::string(name) + "'");
}

Tensor SafetensorsFile::to_f32(std::string_view name) const { return tensor_view_to_f32(tensor(name), label_); }

Tensor tensor_view_to_f32(const TensorView& view, std::string_view label) {
  const std::string where = std::string(label) + ": tensor '" + view.name + "': ";
  if (!dtype_convertible_to_f32(view.dtype))
    raise<value_error>(kWhere, where + "cannot convert " + std::string(dtype_name(view.dtype)) + " to f32");
  // xtensor computes strides in ptrdiff_t: refuse shapes whose extents would overflow it even
  // when another extent is 0 (a valid safetensors shape such as [0, 2^62, 4]).
  constexpr auto kMax = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());
  std::size_t prod = 1;
  for (auto d : view.shape) {
    if (d == 0) continue;
    if (d > kMax || __builtin_mul_overflow(prod, d, &prod) || prod > kMax)
      raise<value_error>(kWhere, where + "shape " + shape_string(view.shape) + " is too large to index");
  }
  // Uninitialised storage (xarray::from_shape): every element is written by the conversion.
  Tensor out(Tensor::array_type::from_shape(view.shape));
  const std::size_t n = out.size();
  if (n != 0) diffuse::to_f32(view.dtype, view.data, out.data(), n);
  return out;
}

// ---- writer ------------------------------------------------------------------------------

namespace {

std::string json_string(const std::string& s, std::string_view what) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    raise<value_error>("save_safetensors", std::string(what) + " is not valid UTF-8");
  }
}

// The header (padded) and the order in which the tensors' bytes follow it.
std::pair<std::string, std::vector<std::size_t>> prepare(std::span<const TensorData> tensors,
                                                         const SafetensorsMetadata& metadata) {
  constexpr std::string_view where = "save_safetensors";
  std::set<std::string_view> seen;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") raise<value_error>(where, "'__metadata__' is reserved, not a tensor name");
    if (!seen.insert(t.name).second) raise<value_error>(where, "duplicate tensor name '" + t.name + "'");
    std::size_t bits = 0;
    if (!checked_nbits(t.shape, t.dtype, bits))
      raise<value_error>(where, "tensor '" + t.name + "': size of " + typed_shape(t.dtype, t.shape) + " overflows");
    if (bits % 8 != 0)
      raise<value_error>(where, "tensor '" + t.name + "': " + typed_shape(t.dtype, t.shape) +
                                    " is not a whole number of bytes");
    if (t.data.size() != bits / 8)
      raise<value_error>(where, "tensor '" + t.name + "': " + typed_shape(t.dtype, t.shape) + " needs " +
                                    std::to_string(bits / 8) + " bytes, got " + std::to_string(t.data.size()));
  }
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  // The reference writer: larger alignment (later in the enum) first, then by name.
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto& x = tensors[a];
    const auto& y = tensors[b];
    if (x.dtype != y.dtype) return x.dtype > y.dtype;
    return x.name < y.name;
  });

  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_string(k, "metadata key '" + k + "'");
      h += ':';
      h += json_string(v, "metadata value of '" + k + "'");
    }
    h += '}';
    first = false;
  }
  std::size_t offset = 0;
  for (std::size_t i : order) {
    const auto& t = tensors[i];
    if (!first) h += ',';
    first = false;
    h += json_string(t.name, "tensor name '" + t.name + "'");
    h += ":{\"dtype\":\"";
    h += dtype_name(t.dtype);
    h += "\",\"shape\":[";
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      if (d) h += ',';
      h += std::to_string(t.shape[d]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + t.data.size()) + "]}";
    offset += t.data.size();
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return {std::move(h), std::move(order)};
}

void put_le64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFu);
}

}  // namespace

std::vector<std::byte> serialize_safetensors(std::span<const TensorData> tensors, const SafetensorsMetadata& metadata) {
  auto [header, order] = prepare(tensors, metadata);
  std::size_t total = 8 + header.size();
  for (const auto& t : tensors) total += t.data.size();
  std::vector<std::byte> out(total);
  put_le64(out.data(), header.size());
  std::memcpy(out.data() + 8, header.data(), header.size());
  std::size_t pos = 8 + header.size();
  for (std::size_t i : order) {
    const auto& d = tensors[i].data;
    if (!d.empty()) std::memcpy(out.data() + pos, d.data(), d.size());
    pos += d.size();
  }
  return out;
}

void save_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                      const SafetensorsMetadata& metadata) {
  constexpr std::string_view where = "save_safetensors";
  auto [header, order] = prepare(tensors, metadata);

  static std::atomic<unsigned> counter{0};
  std::filesystem::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  auto fail = [&](const char* what, int err) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    raise<io_error>(where, path.string() + ": " + what + ": " + std::strerror(err));
  };

  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) fail("cannot create", errno);
  std::byte len[8];
  put_le64(len, header.size());
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (std::size_t i : order) {
    if (!ok) break;
    const auto& d = tensors[i].data;
    ok = d.empty() || std::fwrite(d.data(), 1, d.size(), f) == d.size();
  }
  const int write_errno = errno;
  if (!ok) {
    std::fclose(f);
    fail("cannot write", write_errno);
  }
  if (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0) {
    const int e = errno;
    std::fclose(f);
    fail("cannot write", e);
  }
  if (std::fclose(f) != 0) fail("cannot close", errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename the temporary file into place", errno);
}

void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                      const SafetensorsMetadata& metadata, DType storage) {
  if (storage != DType::F32 && storage != DType::F16 && storage != DType::BF16)
    raise<value_error>("save_safetensors", "storage dtype must be F32, F16 or BF16, got " +
                                               std::string(dtype_name(storage)));
  std::vector<std::vector<std::uint16_t>> converted;
  converted.reserve(tensors.size());
  std::vector<TensorData> list;
  list.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    std::span<const std::byte> bytes;
    if (storage == DType::F32) {
      bytes = std::as_bytes(t.values());
    } else {
      auto& buf = converted.emplace_back(t.size());
      if (storage == DType::F16)
        f32_to_f16(t.data(), buf.data(), t.size());
      else
        f32_to_bf16(t.data(), buf.data(), t.size());
      bytes = std::as_bytes(std::span<const std::uint16_t>(buf));
    }
    list.push_back(TensorData{name, storage, t.shape(), bytes});
  }
  save_safetensors(path, list, metadata);
}

}  // namespace io
DIFFUSE_END_NAMESPACE
