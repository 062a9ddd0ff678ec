// SPDX-License-Identifier: MIT
/** @file convert.hpp
 *  Conversion of stored element types to and from f32.
 *
 *  f16 and bf16 conversions are exact: f32 -> f16/bf16 rounds to nearest, ties to even; infinities
 *  and subnormals are preserved (whatever the MXCSR DAZ/FTZ bits say). The bulk functions pick the
 *  fastest path the CPU has at run time (AVX-512, F16C, or scalar) and give bit-identical results
 *  on every path. Source pointers need no alignment: safetensors data is only 8-byte aligned at
 *  best, and older files not at all.
 *
 *  **NaNs** keep their sign and as much payload as fits:
 *  - f16 -> f32: the NaN is returned *quiet* (bit 22 set), payload shifted up. This is what the
 *    F16C instruction vcvtph2ps does and what torch's vectorised CPU copy produces (torch 2.15:
 *    0x7C01 -> 0x7FC02000), so a signalling f16 NaN never reaches f32 code.
 *  - f32 -> f16: quiet NaN with the top 10 payload bits (as vcvtps2ph and torch).
 *  - bf16 -> f32: the bits shifted up unchanged (a signalling bf16 NaN stays signalling).
 *  - f32 -> bf16: quiet NaN with the top 7 payload bits. (torch's AVX-512 path writes 0xFFFF for
 *    every NaN instead; diffuse keeps sign and payload.)
 *
 *  The 8-bit float types (`to_f32`) decode bit-identically to torch 2.15, NaN codes included:
 *  F8_E4M3 (e4m3fn, bias 7, no inf, S.1111.111 = NaN), F8_E5M2 (bias 15, IEEE-like: f16's top
 *  byte), F8_E8M0 (2^(e-127), 0xFF = NaN), F8_E4M3FNUZ (bias 8) and F8_E5M2FNUZ (bias 16), both
 *  with 0x80 = NaN and no negative zero or infinity.
 *
 *  The `*_scalar` functions are the reference every vector path is tested against; they are
 *  inline so that header-only users have them too.
 *
 *  **Example**
 *  @code
 *  std::vector<std::uint16_t> half = ...;
 *  std::vector<float> out(half.size());
 *  diffuse::f16_to_f32(half.data(), out.data(), half.size());
 *  @endcode
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "diffuse/config.hpp"
#include "diffuse/core/dtype.hpp"

DIFFUSE_BEGIN_NAMESPACE

// ---- scalar reference ---------------------------------------------------------------------

/// binary16 bits -> f32, exact.
inline float f16_to_f32_scalar(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0x1F) {  // inf, or NaN: sign and payload kept, quiet bit set (as vcvtph2ps does)
    bits = sign | 0x7F800000u | (mant << 13) | (mant != 0 ? 0x00400000u : 0u);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: normalise
    std::uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// f32 -> binary16 bits, round to nearest even; overflow gives inf, NaN gives a quiet NaN.
inline std::uint16_t f32_to_f16_scalar(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t absx = x & 0x7FFFFFFFu;
  if (absx > 0x7F800000u)  // NaN: keep the top payload bits, force quiet
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((absx >> 13) & 0x3FFu));
  if (absx >= 0x477FF000u)  // >= 65520 rounds to inf (and inf itself)
    return static_cast<std::uint16_t>(sign | 0x7C00u);
  if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (absx < 0x33000000u) return sign;  // < 2^-25 rounds to zero (2^-25 itself ties to even 0)
    const std::uint32_t e = absx >> 23;
    const std::uint32_t m = (absx & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // half subnormal = m * 2^(e-127-23) / 2^-24
    std::uint32_t h = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  // normal: rebias and round the 13 dropped bits to nearest even
  std::uint32_t h = ((absx >> 13) - (112u << 10));
  const std::uint32_t rem = absx & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

/// bfloat16 bits -> f32, exact.
inline float bf16_to_f32_scalar(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// f32 -> bfloat16 bits, round to nearest even; NaN gives a quiet NaN with the sign kept.
inline std::uint16_t f32_to_bf16_scalar(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  const std::uint32_t lsb = (x >> 16) & 1u;
  x += 0x7FFFu + lsb;
  return static_cast<std::uint16_t>(x >> 16);
}

// ---- bulk conversion (compiled, runtime-dispatched) -----------------------------------------

/// The instruction set the bulk conversions use on this CPU: "avx512", "f16c" or "scalar".
DIFFUSE_API std::string_view convert_isa();

/// `n` binary16 values at `src` (any alignment) to f32.
DIFFUSE_API void f16_to_f32(const void* src, float* dst, std::size_t n);
/// `n` f32 values to binary16 at `dst` (any alignment).
DIFFUSE_API void f32_to_f16(const float* src, void* dst, std::size_t n);
/// `n` bfloat16 values at `src` (any alignment) to f32.
DIFFUSE_API void bf16_to_f32(const void* src, float* dst, std::size_t n);
/// `n` f32 values to bfloat16 at `dst` (any alignment).
DIFFUSE_API void f32_to_bf16(const float* src, void* dst, std::size_t n);

/// `n` elements of type `type` at `src` (little-endian, any alignment) to f32. Integers and
/// BOOL convert by value, F64 rounds to nearest, the F8 types decode exactly. Throws
/// `value_error` for the dtypes that `dtype_convertible_to_f32` rejects.
DIFFUSE_API void to_f32(DType type, const void* src, float* dst, std::size_t n);

DIFFUSE_END_NAMESPACE
