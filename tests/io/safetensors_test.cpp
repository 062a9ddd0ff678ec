// SPDX-License-Identifier: MIT
#include "diffuse/io/safetensors.hpp"

#include <gtest/gtest.h>

#include "temp_dir.hpp"
#include "test_util.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"

namespace fs = std::filesystem;
using diffuse::DType;
using diffuse::Shape;
using diffuse::io::SafetensorsFile;
using diffuse::io::TensorData;

namespace {

const fs::path kData = fs::path(DIFFUSE_TEST_DATA_DIR) / "safetensors";

std::vector<std::byte> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
  return out;
}

std::uint64_t le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFFu);
  return v;
}

// A fresh, empty folder under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           ("diffuse_st_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

using diffuse_test::expect_error;

// Shapes to try for a dtype: scalars, zero-sized dims, several ranks (whole bytes only).
std::vector<Shape> shapes_for(DType t) {
  std::vector<Shape> all{{}, {0}, {3, 0, 2}, {1}, {5}, {2, 3}, {2, 3, 4}, {1, 1, 1, 1, 7}, {4, 6}};
  std::vector<Shape> out;
  for (auto& s : all)
    if (diffuse::shape_numel(s) * diffuse::dtype_bits(t) % 8 == 0) out.push_back(s);
  return out;
}

}  // namespace

// ---- round trips ----------------------------------------------------------------------------

TEST(Safetensors, RoundTripEveryDtypeAndShape) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<TensorData> list;
  std::uint32_t seed = 1;
  for (DType t : diffuse::all_dtypes()) {
    int k = 0;
    for (const Shape& s : shapes_for(t)) {
      const std::size_t nbytes = diffuse::shape_numel(s) * diffuse::dtype_bits(t) / 8;
      storage.push_back(random_bytes(nbytes, seed++));
      list.push_back({std::string(diffuse::dtype_name(t)) + "." + std::to_string(k++), t, s, storage.back()});
    }
  }
  ASSERT_GT(list.size(), 150u);
  const diffuse::io::SafetensorsMetadata meta{{"format", "pt"}, {"note", "ünïcödé \"quoted\"\n"}, {"", ""}};
  const auto bytes = diffuse::io::serialize_safetensors(list, meta);

  const auto f = SafetensorsFile::from_bytes(bytes);
  EXPECT_EQ(f.label(), "<memory>");
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.size(), list.size());
  for (const auto& want : list) {
    const auto* got = f.find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->dtype, want.dtype) << want.name;
    EXPECT_EQ(got->shape, want.shape) << want.name;
    ASSERT_EQ(got->nbytes, want.data.size()) << want.name;
    EXPECT_TRUE(std::equal(want.data.begin(), want.data.end(), got->data)) << want.name;
  }

  // Layout: header padded to 8 with spaces; tensors by dtype descending then name, packed.
  const std::uint64_t n = le64(bytes.data());
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(f.header_size(), n);
  const std::string_view header = f.header();
  EXPECT_EQ(header.substr(0, 16), "{\"__metadata__\":");
  const auto last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u);
  ASSERT_TRUE(std::equal(bytes.begin(), bytes.end(), f.file_bytes().begin(), f.file_bytes().end()));
  const std::byte* base = f.file_bytes().data();  // from_bytes keeps its own copy
  const std::byte* data = base + 8 + n;
  std::size_t pos = 0;
  for (std::size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& v = f.tensors()[i];
    EXPECT_EQ(v.data, data + pos) << v.name;
    pos += v.nbytes;
    if (i > 0) {
      const auto& p = f.tensors()[i - 1];
      if (p.nbytes != 0 && v.nbytes != 0) {  // zero-sized tensors tie on offsets
        EXPECT_TRUE(p.dtype > v.dtype || (p.dtype == v.dtype && p.name < v.name)) << p.name << " then " << v.name;
      }
    }
  }
  EXPECT_EQ(8 + n + pos, bytes.size());
  // Every tensor of a whole-byte dtype is naturally aligned relative to the file start.
  for (const auto& v : f.tensors()) {
    const std::size_t align = std::max<std::size_t>(diffuse::dtype_bits(v.dtype) / 8, 1);
    if (v.nbytes != 0) {
      EXPECT_EQ(static_cast<std::size_t>(v.data - base) % align, 0u) << v.name;
    }
  }
}

TEST(Safetensors, ExactHeaderLayout) {
  const std::vector<std::byte> a(4, std::byte{1}), b(4, std::byte{2}), c(4, std::byte{3}), d(2, std::byte{4});
  std::vector<TensorData> list{{"b", DType::F16, {2}, b},
                               {"a", DType::F32, {1}, a},
                               {"c", DType::F32, {}, c},
                               {"u", DType::U8, {1, 2}, d}};
  const auto bytes = diffuse::io::serialize_safetensors(list, {{"format", "pt"}});
  const std::string expected =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"c\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]},"
      "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
      "\"u\":{\"dtype\":\"U8\",\"shape\":[1,2],\"data_offsets\":[12,14]}}";
  const std::size_t padded = (expected.size() + 7) / 8 * 8;
  ASSERT_EQ(le64(bytes.data()), padded);
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8, padded);
  EXPECT_EQ(header, expected + std::string(padded - expected.size(), ' '));
  ASSERT_EQ(bytes.size(), 8 + padded + 14);
  const std::vector<std::byte> data(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(padded), bytes.end());
  std::vector<std::byte> want;
  for (const auto* part : {&a, &c, &b, &d}) want.insert(want.end(), part->begin(), part->end());
  EXPECT_EQ(data, want);
  // No metadata: no __metadata__ key at all.
  const auto bare = diffuse::io::serialize_safetensors(list);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bare.data()) + 8, 5), "{\"a\":");
  // No tensors at all.
  const auto empty = diffuse::io::serialize_safetensors({});
  EXPECT_EQ(empty.size(), 16u);
  EXPECT_EQ(SafetensorsFile::from_bytes(empty).size(), 0u);
}

TEST(Safetensors, LargeTensorThroughFile) {
  TempDir dir;
  const Shape shape{512, 1024};
  diffuse::Tensor big(shape);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i) * 0.25f - 1000.0f;
  diffuse::Tensor small({3}, 7.0f);
  const fs::path p = dir.path / "big.safetensors";
  diffuse::io::save_safetensors(p, {{"big", big}, {"small", small}}, {{"format", "pt"}});
  // Only the final file remains (the temporary was renamed).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 1);

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f.label(), p.string());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"big", "small"}));
  const auto& v = f.tensor("big");
  EXPECT_EQ(v.shape, shape);
  EXPECT_EQ(v.nbytes, 512u * 1024u * 4u);
  EXPECT_EQ(std::memcmp(v.data, big.data(), v.nbytes), 0);
  // Views stay valid after moving the file object.
  SafetensorsFile moved = std::move(f);
  const diffuse::Tensor back = moved.to_f32("big");
  EXPECT_EQ(back.shape(), shape);
  EXPECT_EQ(back[12345], 12345 * 0.25f - 1000.0f);
  EXPECT_EQ(moved.to_f32("small")[2], 7.0f);
}

TEST(Safetensors, SaveNamedTensorsAsF16AndBF16) {
  TempDir dir;
  diffuse::Tensor t({2, 2});
  const float values[4] = {1.0f, -2.5f, 0.1f, 70000.0f};
  std::copy(values, values + 4, t.data());
  diffuse::io::save_safetensors(dir.path / "h.safetensors", {{"t", t}}, {}, DType::F16);
  diffuse::io::save_safetensors(dir.path / "b.safetensors", {{"t", t}}, {}, DType::BF16);
  const auto h = SafetensorsFile::open(dir.path / "h.safetensors");
  const auto b = SafetensorsFile::open(dir.path / "b.safetensors");
  EXPECT_EQ(h.tensor("t").dtype, DType::F16);
  EXPECT_EQ(b.tensor("t").dtype, DType::BF16);
  const auto hf = h.to_f32("t");
  const auto bf = b.to_f32("t");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(hf[i], diffuse::f16_to_f32_scalar(diffuse::f32_to_f16_scalar(values[i])));
    EXPECT_EQ(bf[i], diffuse::bf16_to_f32_scalar(diffuse::f32_to_bf16_scalar(values[i])));
  }
  EXPECT_EQ(hf[0], 1.0f);
  EXPECT_EQ(hf[1], -2.5f);
  EXPECT_EQ(hf[2], 0.0999755859375f);
  EXPECT_TRUE(std::isinf(hf[3]));
  EXPECT_EQ(bf[3], 70144.0f);
  expect_error<diffuse::value_error>(
      [&] { diffuse::io::save_safetensors(dir.path / "x.safetensors", {{"t", t}}, {}, DType::I8); },
      {"[save_safetensors]", "F32, F16 or BF16", "I8"});
}

// ---- writer errors ------------------------------------------------------------------------

TEST(Safetensors, WriterRejectsBadInput) {
  const std::vector<std::byte> four(4);
  using diffuse::io::serialize_safetensors;
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"a", DType::F32, {1}, four}, {"a", DType::F32, {1}, four}}); },
      {"duplicate tensor name 'a'"});
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"w", DType::F32, {2}, four}}); },
      {"tensor 'w'", "F32 [2] needs 8 bytes, got 4"});
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"__metadata__", DType::U8, {4}, four}}); },
      {"reserved"});
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"f", DType::F4, {3}, four}}); },
      {"tensor 'f'", "not a whole number of bytes"});
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"bad\xff", DType::U8, {4}, four}}); },
      {"not valid UTF-8"});
  expect_error<diffuse::value_error>(
      [&] { serialize_safetensors(std::vector<TensorData>{{"o", DType::F32, {1ull << 62, 8}, four}}); },
      {"overflows"});
  expect_error<diffuse::value_error>([&] { serialize_safetensors({}, {{"k", "\xc0\xaf"}}); }, {"not valid UTF-8"});
  const diffuse_test::TempDir scratch("st_nowhere");
  const fs::path nowhere = scratch / "no_such_dir" / "a.safetensors";
  expect_error<diffuse::io_error>(
      [&] { diffuse::io::save_safetensors(nowhere, std::vector<TensorData>{{"a", DType::U8, {4}, four}}); },
      {"[save_safetensors]", nowhere.string(), "No such file or directory"});
}

// ---- file written by the reference Python package ------------------------------------------

TEST(Safetensors, ReadsFileWrittenByPythonSafetensors) {
  const fs::path p = kData / "python_written.safetensors";
  const auto f = SafetensorsFile::open(p);
  std::ifstream js(kData / "python_written.json");
  const auto expected = nlohmann::json::parse(js);
  EXPECT_EQ(f.metadata(), (diffuse::io::SafetensorsMetadata{{"format", "pt"}}));
  const std::map<std::string, DType> torch_to_st{
      {"float32", DType::F32}, {"float16", DType::F16},     {"bfloat16", DType::BF16},
      {"int64", DType::I64},   {"float64", DType::F64},     {"bool", DType::BOOL},
      {"uint8", DType::U8},    {"int32", DType::I32},       {"float8_e4m3fn", DType::F8_E4M3}};
  ASSERT_EQ(f.size(), expected["tensors"].size());
  for (const auto& [name, e] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    const auto& v = f.tensor(name);
    EXPECT_EQ(v.dtype, torch_to_st.at(e["dtype"].get<std::string>()));
    EXPECT_EQ(v.shape, e["shape"].get<Shape>());
    const std::string hex = e["hex"];
    ASSERT_EQ(v.nbytes * 2, hex.size());
    for (std::size_t i = 0; i < v.nbytes; ++i)
      EXPECT_EQ(static_cast<unsigned>(v.data[i]), std::stoul(hex.substr(2 * i, 2), nullptr, 16)) << "byte " << i;
    const auto got = f.to_f32(name);
    const auto bits = e["f32_bits"].get<std::vector<std::int32_t>>();
    ASSERT_EQ(got.size(), bits.size());
    for (std::size_t i = 0; i < bits.size(); ++i) {
      std::int32_t b;
      std::memcpy(&b, &got[i], 4);
      EXPECT_EQ(b, bits[i]) << "element " << i;
    }
  }
  // Spot checks that do not depend on the JSON.
  EXPECT_EQ(f.to_f32("half")[1], -2.0f);
  EXPECT_EQ(f.to_f32("half")[2], 0.0999755859375f);
  EXPECT_EQ(f.to_f32("bf16")[1], -3.140625f);
  EXPECT_EQ(f.to_f32("position_ids")[0], -5.0f);
  EXPECT_EQ(f.to_f32("position_ids").shape(), (Shape{1, 77}));
  EXPECT_EQ(f.to_f32("scalar").shape(), Shape{});
  EXPECT_EQ(f.to_f32("scalar")[0], 2.5f);
  EXPECT_EQ(f.to_f32("f8")[1], -448.0f);
  EXPECT_EQ(f.to_f32("mask")[1], 0.0f);
  EXPECT_EQ(f.to_f32("empty").shape(), (Shape{0, 4}));
  // The reference writer's order: I64, F64, F32 (by name), I32, BF16, F16, F8, U8, BOOL.
  EXPECT_EQ(f.names(), (std::vector<std::string>{"position_ids", "scalar", "empty", "unet.conv_in.bias",
                                                 "unet.conv_in.weight", "i32", "bf16", "half", "half_special", "f8",
                                                 "bytes", "mask"}));
}

TEST(Safetensors, WriterIsByteIdenticalToPythonSafetensors) {
  const auto original = read_bytes(kData / "python_written.safetensors");
  const auto f = SafetensorsFile::from_bytes(original, "python_written");
  std::vector<TensorData> list;
  for (const auto& v : f.tensors()) list.push_back({v.name, v.dtype, v.shape, v.bytes()});
  std::reverse(list.begin(), list.end());  // input order must not matter
  EXPECT_EQ(diffuse::io::serialize_safetensors(list, f.metadata()), original);
}

// ---- malformed files --------------------------------------------------------------------

namespace {
struct Malformed {
  const char* file;
  std::vector<std::string> parts;  // every one must be in the message
};

const std::vector<Malformed> kMalformed{
    {"empty", {"file is 0 bytes, too small to hold the 8-byte header length"}},
    {"short", {"file is 5 bytes, too small"}},
    {"header_too_large", {"header length 100000001 exceeds the limit of 100000000 bytes"}},
    {"header_len_max_u64", {"header length 18446744073709551615 exceeds the limit"}},
    {"header_past_eof", {"header length 100 runs past the end of the file (10 bytes)"}},
    {"not_utf8", {"header is not valid UTF-8 (byte 3 of the header)"}},
    {"utf8_overlong", {"header is not valid UTF-8 (byte 2 of the header)"}},
    {"utf8_surrogate", {"header is not valid UTF-8 (byte 2 of the header)"}},
    {"not_json", {"header is not valid JSON", "parse_error"}},
    {"truncated_json", {"header is not valid JSON", "unexpected end of input"}},
    {"empty_header", {"header is not valid JSON", "line 1, column 1", "unexpected end of input"}},
    {"nul_in_header", {"header is not valid JSON"}},
    {"json_comment", {"header is not valid JSON"}},
    {"header_array", {"header is a JSON array, expected an object"}},
    {"header_null", {"header is a JSON null, expected an object"}},
    {"deep_nesting", {"header: nesting deeper than 128 levels"}},
    {"entry_not_object", {"tensor 'a': entry is a JSON number, expected an object"}},
    {"unknown_dtype", {"tensor 'a': unknown dtype 'F33'"}},
    {"dtype_lowercase", {"tensor 'a': unknown dtype 'f32'"}},
    {"dtype_not_string", {"tensor 'a': dtype is a JSON number, expected a string"}},
    {"missing_shape", {"tensor 'a': missing field 'shape'"}},
    {"missing_offsets", {"tensor 'a': missing field 'data_offsets'"}},
    {"extra_field", {"tensor 'a': unknown field 'strides'"}},
    {"negative_shape", {"tensor 'a': shape entry -1 is not a non-negative integer"}},
    {"float_shape", {"tensor 'a': shape entry 1.0 is not a non-negative integer"}},
    {"shape_not_array", {"tensor 'a': shape is a JSON string, expected an array"}},
    {"shape_too_big_integer", {"tensor 'a': shape entry", "is not a non-negative integer"}},
    {"offsets_three", {"tensor 'a': data_offsets [0,4,8] is not a [begin, end] pair"}},
    {"offsets_negative", {"tensor 'a': data_offsets [-4,0] are not non-negative integers"}},
    {"offsets_strings", {"tensor 'a': data_offsets [\"0\",\"4\"] are not non-negative integers"}},
    {"metadata_not_object", {"__metadata__ is a JSON array, expected an object"}},
    {"metadata_null", {"__metadata__ is a JSON null, expected an object"}},
    {"metadata_non_string", {"__metadata__ value of 'format' is a JSON number, expected a string"}},
    {"duplicate_tensor", {"header: duplicate key 'a'"}},
    {"duplicate_metadata_key", {"header: duplicate key 'format'"}},
    {"duplicate_field", {"header: duplicate key 'dtype'"}},
    {"gap", {"tensor 'b': data_offsets [8, 12] leave a gap after tensor 'a', which ends at 4"}},
    {"overlap", {"tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8"}},
    {"not_from_zero", {"tensor 'a': data_offsets [4, 8]: the first tensor must start at offset 0"}},
    {"end_before_begin", {"tensor 'b': data_offsets [4, 0] end before begin"}},
    {"size_mismatch", {"tensor 'conv.weight': data_offsets [0, 12] hold 12 bytes but F32 [2, 2] needs 16"}},
    {"shape_overflow", {"tensor 'a': size of F32 [4294967296, 4294967296, 2] overflows"}},
    {"bits_overflow", {"tensor 'a': size of F32 [4611686018427387904] overflows"}},
    {"subbyte_f4", {"tensor 'a': F4 [3] is 12 bits, not a whole number of bytes"}},
    {"subbyte_f6", {"tensor 'a': F6_E2M3 [1] is 6 bits, not a whole number of bytes"}},
    {"trailing_bytes", {"the tensors cover 4 bytes but the data buffer holds 8 (trailing bytes)"}},
    {"truncated_data", {"the tensors cover 16 bytes but the data buffer holds 8 (file truncated)"}},
    {"zero_tensors_trailing", {"the tensors cover 0 bytes but the data buffer holds 1 (trailing bytes)"}},
};
}  // namespace

TEST(Safetensors, MalformedCorpusRaisesSpecificErrors) {
  std::set<std::string> on_disk;
  for (const auto& e : fs::directory_iterator(kData / "malformed")) on_disk.insert(e.path().stem().string());
  std::set<std::string> listed;
  for (const auto& m : kMalformed) listed.insert(m.file);
  EXPECT_EQ(on_disk, listed) << "every corpus file needs an expected error here (tools/make_malformed_safetensors.py)";
  EXPECT_GE(listed.size(), 30u);

  for (const auto& m : kMalformed) {
    SCOPED_TRACE(m.file);
    const fs::path p = kData / "malformed" / (std::string(m.file) + ".safetensors");
    ASSERT_TRUE(fs::exists(p));
    // From disk: the message names the file.
    try {
      (void)SafetensorsFile::open(p);
      ADD_FAILURE() << "accepted";
    } catch (const diffuse::format_error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("[safetensors] " + p.string() + ": ", 0), 0u) << msg;
      for (const auto& part : m.parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a format_error: " << e.what();
    }
    // From memory: the same error, naming "<memory>".
    try {
      (void)SafetensorsFile::from_bytes(read_bytes(p));
      ADD_FAILURE() << "accepted from memory";
    } catch (const diffuse::format_error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("[safetensors] <memory>: ", 0), 0u) << msg;
      for (const auto& part : m.parts) EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
  }
}

// ---- unusual but valid files --------------------------------------------------------------

TEST(Safetensors, ValidCorpus) {
  const fs::path d = kData / "valid";
  EXPECT_EQ(SafetensorsFile::open(d / "empty_header_object.safetensors").size(), 0u);
  for (const char* name : {"leading_whitespace", "trailing_whitespace"}) {
    SCOPED_TRACE(name);
    const auto f = SafetensorsFile::open(d / (std::string(name) + ".safetensors"));
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f.to_f32("a")[0], 1.0f);
  }
  {
    const auto f = SafetensorsFile::open(d / "zero_sized.safetensors");
    EXPECT_EQ(f.tensor("z").shape, (Shape{0, 3}));
    EXPECT_EQ(f.tensor("z").nbytes, 0u);
    EXPECT_EQ(f.tensor("y").shape, (Shape{2, 0}));
    EXPECT_EQ(f.tensor("s").shape, Shape{});
    EXPECT_EQ(f.to_f32("s")[0], 1.0f);
    EXPECT_EQ(f.to_f32("z").size(), 0u);
    EXPECT_EQ(f.to_f32("y").shape(), (Shape{2, 0}));
  }
  {
    const auto f = SafetensorsFile::open(d / "unsorted_json.safetensors");
    EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b"}));  // data order, not JSON order
    EXPECT_EQ(f.metadata().at("k"), "v");
    EXPECT_EQ(f.to_f32("b")[0], -7.0f);
    EXPECT_EQ(f.to_f32("a")[3], 4.0f);
  }
  {
    // Header not padded: the F32 tensor sits at an odd address. Must still read right.
    const auto f = SafetensorsFile::open(d / "unpadded_unaligned.safetensors");
    EXPECT_NE(f.header_size() % 8, 0u);
    const auto x = f.to_f32("f");
    EXPECT_EQ(x[0], 2.0f);
    EXPECT_EQ(x[1], -3.0f);
    EXPECT_EQ(f.to_f32("h")[0], 1.0f);
  }
  {
    const auto f = SafetensorsFile::open(d / "subbyte_f4_even.safetensors");
    EXPECT_EQ(f.tensor("a").nbytes, 2u);
    expect_error<diffuse::value_error>([&] { (void)f.to_f32("a"); },
                                       {"[safetensors]", "tensor 'a'", "cannot convert F4 to f32"});
  }
}

// ---- other errors -------------------------------------------------------------------------

TEST(Safetensors, IoAndLookupErrors) {
  const fs::path missing = kData / "does_not_exist.safetensors";
  expect_error<diffuse::io_error>([&] { (void)SafetensorsFile::open(missing); },
                                  {"[MappedFile] " + missing.string(), "cannot open", "No such file or directory"});
  expect_error<diffuse::io_error>([&] { (void)SafetensorsFile::open(kData); }, {kData.string(), "Is a directory"});
  const auto f = SafetensorsFile::open(kData / "python_written.safetensors");
  expect_error<diffuse::format_error>([&] { (void)f.tensor("nope"); },
                                      {"[safetensors] ", "python_written.safetensors: no tensor 'nope'"});
  expect_error<diffuse::format_error>([&] { (void)f.to_f32("nope"); }, {"no tensor 'nope'"});
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_TRUE(f.contains("half"));
}

TEST(Safetensors, HugeZeroSizedShapeDoesNotOverflowTensor) {
  // Valid per the format (0 elements) but not indexable: to_f32 refuses instead of overflowing.
  const std::string h = R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})";
  std::vector<std::byte> bytes(8 + h.size());
  bytes[0] = static_cast<std::byte>(h.size());
  std::memcpy(bytes.data() + 8, h.data(), h.size());
  const auto f = SafetensorsFile::from_bytes(bytes);
  EXPECT_EQ(f.tensor("a").nbytes, 0u);
  expect_error<diffuse::value_error>([&] { (void)f.to_f32("a"); }, {"tensor 'a'", "too large to index"});
}

namespace {
/// Resident pages of this process (/proc/self/statm, second field), in bytes.
std::uint64_t resident_bytes() {
  std::ifstream in("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
}  // namespace

// release_pages (LoadOptions::stream_weights): the pages read leave the process's resident set and
// the contents read again are the file's.
TEST(MappedFile, ReleasedPagesLeaveTheResidentSetAndReadBackTheSame) {
  TempDir dir;
  const fs::path p = dir.path / "pages.bin";
  constexpr std::size_t kBytes = std::size_t{32} << 20;
  {
    std::vector<unsigned char> buf(kBytes);
    for (std::size_t i = 0; i < kBytes; ++i) buf[i] = static_cast<unsigned char>((i * 2654435761u) >> 13);
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  diffuse::io::MappedFile m(p);
  auto checksum = [&] {
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < kBytes; i += 64) sum = sum * 31 + static_cast<std::uint64_t>(m.data()[i]);
    return sum;
  };
  const std::uint64_t first = checksum();  // every page touched
  const std::uint64_t touched = resident_bytes();
  m.release_pages();
  const std::uint64_t released = resident_bytes();
  EXPECT_GE(touched, released + kBytes * 3 / 4) << "resident " << touched << " -> " << released;
  EXPECT_EQ(checksum(), first);
  diffuse::io::MappedFile empty;
  empty.release_pages();  // nothing to drop
}

TEST(MappedFile, EmptyFileAndErrors) {
  TempDir dir;
  const fs::path p = dir.path / "empty.bin";
  std::ofstream(p).close();
  diffuse::io::MappedFile m(p);
  EXPECT_EQ(m.size(), 0u);
  EXPECT_TRUE(m.bytes().empty());
  EXPECT_EQ(m.path(), p);
  {
    std::ofstream out(p, std::ios::binary);
    out << "hello";
  }
  diffuse::io::MappedFile m2(p);
  ASSERT_EQ(m2.size(), 5u);
  EXPECT_EQ(std::memcmp(m2.data(), "hello", 5), 0);
  diffuse::io::MappedFile m3 = std::move(m2);
  EXPECT_EQ(m3.size(), 5u);
  expect_error<diffuse::io_error>([&] { diffuse::io::MappedFile x(dir.path / "nope"); },
                                  {"[MappedFile]", "nope", "No such file or directory"});
}
