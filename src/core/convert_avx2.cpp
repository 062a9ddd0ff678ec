// SPDX-License-Identifier: MIT
// f16/bf16 <-> f32 with F16C + AVX2, 8 lanes (compiled with -mavx2 -mfma -mf16c; runs only after
// the CPUID check in convert.cpp). Tails go to the scalar kernels, which live in a file compiled
// without ISA flags. Nothing here may instantiate an inline function shared with other files:
// only <immintrin.h> (always-inline intrinsics) and convert_impl.hpp (declarations) are included.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "convert_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::avx2 {

namespace {

/// f32 -> bf16 on 8 lanes, integer ops only (vcvtneps2bf16 would flush subnormals): round to
/// nearest even by adding 0x7FFF plus the lowest kept bit; NaN -> quiet, sign and payload kept.
/// Returns the 8 results in the low 16 bits of each 32-bit lane.
inline __m256i f32_to_bf16_lanes(__m256i x) {
  const __m256i abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb);
  const __m256i quiet = _mm256_or_si256(x, _mm256_set1_epi32(0x00400000));
  return _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, is_nan), 16);
}

}  // namespace

void f16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 8)));
    const __m256 c = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16)));
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 24)));
    _mm256_storeu_ps(dst + i, a);
    _mm256_storeu_ps(dst + i + 8, b);
    _mm256_storeu_ps(dst + i + 16, c);
    _mm256_storeu_ps(dst + i + 24, d);
  }
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  if (i < n) scalar::f16_to_f32(s + i, dst + i, n - i);
}

void f32_to_f16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // not MXCSR.RC
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound);
    const __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 8), kRound);
    const __m128i c = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 16), kRound);
    const __m128i e = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 24), kRound);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 8), b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 16), c);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 24), e);
  }
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound));
  if (i < n) scalar::f32_to_f16(src + i, d + i, n - i);
}

void bf16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    const __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(a, 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 8), _mm256_slli_epi32(b, 16));
  }
  if (i < n) scalar::bf16_to_f32(s + i, dst + i, n - i);
}

void f32_to_bf16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = f32_to_bf16_lanes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    const __m256i b = f32_to_bf16_lanes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8)));
    // packus works per 128-bit lane: [a0-3 b0-3 | a4-7 b4-7]; restore the order by 64-bit words.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), packed);
  }
  if (i < n) scalar::f32_to_bf16(src + i, d + i, n - i);
}

}  // namespace kernels::avx2
DIFFUSE_END_NAMESPACE
