// SPDX-License-Identifier: MIT
// f16/bf16 <-> f32 with AVX-512 F/BW/VL, 16 lanes (compiled with -mavx512f/bw/vl/dq; runs only
// after the CPUID check in convert.cpp). Tails use masked loads and stores, which do not touch
// (or fault on) the masked-off elements, so every length is handled in vector code. Nothing here
// may instantiate an inline function shared with other files: only <immintrin.h> (always-inline
// intrinsics) and convert_impl.hpp (declarations) are included.
#include "avx512_intrin.hpp"

#include <cstddef>
#include <cstdint>

#include "convert_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx512 {

namespace {

constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // not MXCSR.RC

inline __mmask16 tail_mask(std::size_t count) {  // count in 1..15
  return static_cast<__mmask16>((1u << count) - 1u);
}

/// f32 -> bf16 on 16 lanes, integer ops only (vcvtneps2bf16 would flush subnormals): round to
/// nearest even by adding 0x7FFF plus the lowest kept bit; NaN -> quiet, sign and payload kept.
/// The bf16 results are the high 16 bits of each 32-bit lane.
inline __m512i f32_to_bf16_lanes(__m512i x) {
  const __mmask16 is_nan =
      _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), lsb);
  return _mm512_mask_or_epi32(rounded, is_nan, x, _mm512_set1_epi32(0x00400000));
}

}  // namespace

void f16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    const __m512 b = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 16)));
    const __m512 c = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32)));
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 48)));
    _mm512_storeu_ps(dst + i, a);
    _mm512_storeu_ps(dst + i + 16, b);
    _mm512_storeu_ps(dst + i + 32, c);
    _mm512_storeu_ps(dst + i + 48, d);
  }
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
  }
}

void f32_to_f16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m256i a = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRound);
    const __m256i b = _mm512_cvtps_ph(_mm512_loadu_ps(src + i + 16), kRound);
    const __m256i c = _mm512_cvtps_ph(_mm512_loadu_ps(src + i + 32), kRound);
    const __m256i e = _mm512_cvtps_ph(_mm512_loadu_ps(src + i + 48), kRound);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 16), b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 32), c);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 48), e);
  }
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRound));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm256_mask_storeu_epi16(d + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), kRound));
  }
}

void bf16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 16)));
    _mm512_storeu_si512(dst + i, _mm512_slli_epi32(a, 16));
    _mm512_storeu_si512(dst + i + 16, _mm512_slli_epi32(b, 16));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : tail_mask(n - i);
    const __m512i a = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
    _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(a, 16));
  }
}

void f32_to_bf16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  // the odd 16-bit words (the high halves) of a, then of b: one vpermt2w narrows 32 lanes
  const __m512i high_halves = _mm512_set_epi16(
      63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
      31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i a = f32_to_bf16_lanes(_mm512_loadu_si512(src + i));
    const __m512i b = f32_to_bf16_lanes(_mm512_loadu_si512(src + i + 16));
    _mm512_storeu_si512(d + i, _mm512_permutex2var_epi16(a, high_halves, b));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : tail_mask(n - i);
    const __m512i a = f32_to_bf16_lanes(_mm512_maskz_loadu_epi32(m, src + i));
    _mm256_mask_storeu_epi16(d + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(a, 16)));
  }
}

}  // namespace kernels::avx512
DIFFUSE_END_NAMESPACE
