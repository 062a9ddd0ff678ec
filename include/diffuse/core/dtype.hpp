// SPDX-License-Identifier: MIT
/** @file dtype.hpp
 *  Element types of stored tensors: every dtype the safetensors format defines, with its name
 *  as written in a safetensors header and its size in bits. Computation in diffuse is f32 (or
 *  f64 in the samplers); the other dtypes are storage formats converted on load
 *  (see `diffuse/core/convert.hpp`). */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// A stored element type. The order is the safetensors reference's (increasing alignment), which
/// its writer uses to lay tensors out: larger alignments first.
enum class DType : std::uint8_t {
  BOOL,
  F4,           ///< MXFP4 e2m1, two per byte
  F6_E2M3,      ///< 6-bit float
  F6_E3M2,      ///< 6-bit float
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,      ///< torch.float8_e4m3fn
  F8_E8M0,      ///< exponent-only scale format
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,          ///< IEEE 754 binary16
  BF16,         ///< bfloat16: the top 16 bits of an f32
  I32,
  U32,
  F32,
  C64,          ///< complex of two f32
  F64,
  I64,
  U64,
};

/// Number of DType values.
inline constexpr std::size_t kDTypeCount = 22;

namespace detail {
struct DTypeInfo {
  DType type;
  std::string_view name;
  std::size_t bits;
};
inline constexpr std::array<DTypeInfo, kDTypeCount> kDTypeTable{{
    {DType::BOOL, "BOOL", 8},          {DType::F4, "F4", 4},
    {DType::F6_E2M3, "F6_E2M3", 6},    {DType::F6_E3M2, "F6_E3M2", 6},
    {DType::U8, "U8", 8},              {DType::I8, "I8", 8},
    {DType::F8_E5M2, "F8_E5M2", 8},    {DType::F8_E4M3, "F8_E4M3", 8},
    {DType::F8_E8M0, "F8_E8M0", 8},    {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {DType::I16, "I16", 16},
    {DType::U16, "U16", 16},           {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},         {DType::I32, "I32", 32},
    {DType::U32, "U32", 32},           {DType::F32, "F32", 32},
    {DType::C64, "C64", 64},           {DType::F64, "F64", 64},
    {DType::I64, "I64", 64},           {DType::U64, "U64", 64},
}};
}  // namespace detail

/// All dtypes, in enum order.
inline constexpr std::array<DType, kDTypeCount> all_dtypes() {
  std::array<DType, kDTypeCount> out{};
  for (std::size_t i = 0; i < kDTypeCount; ++i) out[i] = detail::kDTypeTable[i].type;
  return out;
}

/// The name as written in a safetensors header, e.g. "BF16".
constexpr std::string_view dtype_name(DType t) {
  return detail::kDTypeTable[static_cast<std::size_t>(t)].name;
}

/// Size of one element in bits (4 for F4, 6 for the F6 types, otherwise a multiple of 8).
constexpr std::size_t dtype_bits(DType t) { return detail::kDTypeTable[static_cast<std::size_t>(t)].bits; }

/// The dtype a safetensors header names, or nothing for an unknown name (names are case-sensitive).
constexpr std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : detail::kDTypeTable)
    if (info.name == name) return info.type;
  return std::nullopt;
}

/// True for dtypes diffuse can convert to f32 (everything but the sub-byte and complex ones).
constexpr bool dtype_convertible_to_f32(DType t) {
  return t != DType::F4 && t != DType::F6_E2M3 && t != DType::F6_E3M2 && t != DType::C64;
}

DIFFUSE_END_NAMESPACE
