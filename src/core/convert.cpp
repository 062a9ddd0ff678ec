// SPDX-License-Identifier: MIT
// Bulk dtype conversions: the scalar loops, the run-time choice between the scalar, F16C and
// AVX-512 kernels, and to_f32 for every dtype. Compiled without ISA flags: nothing here may run
// an instruction the CPU lacks before the CPUID check.
#include "diffuse/core/convert.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "convert_impl.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/core/error.hpp"

DIFFUSE_BEGIN_NAMESPACE

// ---- scalar kernels ----------------------------------------------------------------------------

namespace kernels::scalar {

void f16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    dst[i] = f16_to_f32_scalar(h);
  }
}

void f32_to_f16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t h = f32_to_f16_scalar(src[i]);
    std::memcpy(d + 2 * i, &h, 2);
  }
}

void bf16_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, s + 2 * i, 2);
    dst[i] = bf16_to_f32_scalar(b);
  }
}

void f32_to_bf16(const float* src, void* dst, std::size_t n) {
  auto* d = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t b = f32_to_bf16_scalar(src[i]);
    std::memcpy(d + 2 * i, &b, 2);
  }
}

}  // namespace kernels::scalar

// ---- dispatch --------------------------------------------------------------------------------

namespace kernels {

namespace {

constexpr ConvertKernels kScalar{"scalar", scalar::f16_to_f32, scalar::f32_to_f16, scalar::bf16_to_f32,
                                 scalar::f32_to_bf16};
#if DIFFUSE_CONVERT_X86
constexpr ConvertKernels kF16c{"f16c", avx2::f16_to_f32, avx2::f32_to_f16, avx2::bf16_to_f32,
                               avx2::f32_to_bf16};
constexpr ConvertKernels kAvx512{"avx512", avx512::f16_to_f32, avx512::f32_to_f16, avx512::bf16_to_f32,
                                 avx512::f32_to_bf16};
#endif

const ConvertKernels& pick() {
  const IsaLevel level = isa_level();  // honours the DIFFUSE_ISA cap
  if (level >= IsaLevel::avx512 && convert_path_supported(ConvertPath::avx512))
    return convert_kernels(ConvertPath::avx512);
  if (level >= IsaLevel::avx2 && convert_path_supported(ConvertPath::f16c))
    return convert_kernels(ConvertPath::f16c);
  return kScalar;
}

}  // namespace

bool convert_path_supported(ConvertPath path) {
  const CpuFeatures& f = cpu_features();
  switch (path) {
    case ConvertPath::scalar: return true;
#if DIFFUSE_CONVERT_X86
    case ConvertPath::f16c: return f.avx2 && f.f16c;
    case ConvertPath::avx512: return f.avx512f && f.avx512bw && f.avx512vl && f.f16c;
#endif
    default: static_cast<void>(f); return false;
  }
}

const ConvertKernels& convert_kernels(ConvertPath path) {
  switch (path) {
#if DIFFUSE_CONVERT_X86
    case ConvertPath::f16c: return kF16c;
    case ConvertPath::avx512: return kAvx512;
#endif
    default: return kScalar;
  }
}

const ConvertKernels& active_convert_kernels() {
  static const ConvertKernels& active = pick();
  return active;
}

}  // namespace kernels

// ---- public API --------------------------------------------------------------------------------

std::string_view convert_isa() { return kernels::active_convert_kernels().name; }

void f16_to_f32(const void* src, float* dst, std::size_t n) {
  if (n != 0) kernels::active_convert_kernels().f16_to_f32(src, dst, n);
}

void f32_to_f16(const float* src, void* dst, std::size_t n) {
  if (n != 0) kernels::active_convert_kernels().f32_to_f16(src, dst, n);
}

void bf16_to_f32(const void* src, float* dst, std::size_t n) {
  if (n != 0) kernels::active_convert_kernels().bf16_to_f32(src, dst, n);
}

void f32_to_bf16(const float* src, void* dst, std::size_t n) {
  if (n != 0) kernels::active_convert_kernels().f32_to_bf16(src, dst, n);
}

namespace {

// ---- 8-bit floats ------------------------------------------------------------------------------

/// How a format spends its top codes.
enum class F8Special {
  ieee,       ///< all-ones exponent: inf (mantissa 0) or NaN (e5m2)
  fn,         ///< only S.1111.111 is NaN, no inf (e4m3fn)
  fnuz,       ///< 0x80 is the only NaN, no inf, no -0 (the *fnuz formats)
  exponent,   ///< no sign or mantissa: 2^(e - 127), 0xFF = NaN (e8m0)
};

/// f32 bits of an 8-bit float code with `mbits` mantissa bits (sign bit on top unless
/// `exponent`). NaN bit patterns are torch 2.15's: its e4m3fn/e5m2 decoders return a quiet NaN
/// with the mantissa shifted up, its fnuz and e8m0 decoders return 0x7F800001.
constexpr std::uint32_t f8_bits(unsigned code, unsigned mbits, int bias, F8Special kind) {
  if (kind == F8Special::exponent) {
    if (code == 0xFF) return 0x7F800001u;
    if (code == 0) return 0x00400000u;  // 2^-127, an f32 subnormal
    return static_cast<std::uint32_t>(code) << 23;
  }
  if (kind == F8Special::fnuz && code == 0x80) return 0x7F800001u;
  const std::uint32_t sign = (code & 0x80u) ? 0x80000000u : 0u;
  const unsigned ebits = 7 - mbits;
  const unsigned emax = (1u << ebits) - 1u;
  const unsigned e = (code >> mbits) & emax;
  const std::uint32_t m = code & ((1u << mbits) - 1u);
  if (kind == F8Special::ieee && e == emax)
    return m == 0 ? (sign | 0x7F800000u) : (sign | 0x7FC00000u | (m << (23 - mbits)));
  if (kind == F8Special::fn && e == emax && m == (1u << mbits) - 1u)
    return sign | 0x7FC00000u | (m << (23 - mbits));
  if (e != 0) return sign | (static_cast<std::uint32_t>(static_cast<int>(e) - bias + 127) << 23) | (m << (23 - mbits));
  if (m == 0) return sign;
  // subnormal: m * 2^(1 - bias - mbits); normalise on the top set bit p of m
  int p = static_cast<int>(mbits) - 1;
  while (((m >> p) & 1u) == 0) --p;
  const std::uint32_t frac = (m & ((1u << p) - 1u)) << (23 - p);
  return sign | (static_cast<std::uint32_t>(p + 1 - bias - static_cast<int>(mbits) + 127) << 23) | frac;
}

constexpr std::array<std::uint32_t, 256> f8_table(unsigned mbits, int bias, F8Special kind) {
  std::array<std::uint32_t, 256> t{};
  for (unsigned c = 0; c < 256; ++c) t[c] = f8_bits(c, mbits, bias, kind);
  return t;
}

constexpr auto kE4M3 = f8_table(3, 7, F8Special::fn);
constexpr auto kE5M2 = f8_table(2, 15, F8Special::ieee);
constexpr auto kE8M0 = f8_table(0, 127, F8Special::exponent);
constexpr auto kE4M3Fnuz = f8_table(3, 8, F8Special::fnuz);
constexpr auto kE5M2Fnuz = f8_table(2, 16, F8Special::fnuz);

// Spot checks against the format definitions (the full tables are tested against torch).
static_assert(kE4M3[0x38] == 0x3F800000u);  // 1.0
static_assert(kE4M3[0x7E] == 0x43E00000u);  // 448, the largest e4m3fn
static_assert(kE4M3[0x01] == 0x3B000000u);  // 2^-9, the smallest subnormal
static_assert(kE5M2[0x7B] == 0x47600000u);  // 57344
static_assert(kE5M2[0x7C] == 0x7F800000u);  // inf
static_assert(kE8M0[127] == 0x3F800000u);   // 2^0
static_assert(kE4M3Fnuz[0x40] == 0x3F800000u && kE4M3Fnuz[0x7F] == 0x43700000u);  // 1, 240
static_assert(kE5M2Fnuz[0x40] == 0x3F800000u && kE5M2Fnuz[0x80] == 0x7F800001u);

void f8_to_f32(const std::array<std::uint32_t, 256>& table, const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) std::memcpy(dst + i, &table[s[i]], 4);
}

/// Integers by value: the int -> float conversion rounds to nearest even.
template <class T>
void int_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, s + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

void f64_to_f32(const void* src, float* dst, std::size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    double v;
    std::memcpy(&v, s + i * sizeof(double), sizeof(double));
    dst[i] = static_cast<float>(v);
  }
}

}  // namespace

void to_f32(DType type, const void* src, float* dst, std::size_t n) {
  if (!dtype_convertible_to_f32(type)) {
    raise<value_error>("to_f32", "cannot convert dtype " + std::string(dtype_name(type)) + " to F32");
  }
  if (n == 0) return;
  switch (type) {
    case DType::BOOL: {
      const auto* s = static_cast<const unsigned char*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = s[i] != 0 ? 1.0f : 0.0f;
      return;
    }
    case DType::U8: return int_to_f32<std::uint8_t>(src, dst, n);
    case DType::I8: return int_to_f32<std::int8_t>(src, dst, n);
    case DType::I16: return int_to_f32<std::int16_t>(src, dst, n);
    case DType::U16: return int_to_f32<std::uint16_t>(src, dst, n);
    case DType::I32: return int_to_f32<std::int32_t>(src, dst, n);
    case DType::U32: return int_to_f32<std::uint32_t>(src, dst, n);
    case DType::I64: return int_to_f32<std::int64_t>(src, dst, n);
    case DType::U64: return int_to_f32<std::uint64_t>(src, dst, n);
    case DType::F16: return f16_to_f32(src, dst, n);
    case DType::BF16: return bf16_to_f32(src, dst, n);
    case DType::F32:
      if (src != dst) std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::F64: return f64_to_f32(src, dst, n);
    case DType::F8_E4M3: return f8_to_f32(kE4M3, src, dst, n);
    case DType::F8_E5M2: return f8_to_f32(kE5M2, src, dst, n);
    case DType::F8_E8M0: return f8_to_f32(kE8M0, src, dst, n);
    case DType::F8_E4M3FNUZ: return f8_to_f32(kE4M3Fnuz, src, dst, n);
    case DType::F8_E5M2FNUZ: return f8_to_f32(kE5M2Fnuz, src, dst, n);
    default: break;  // F4, F6_*, C64: rejected above
  }
}

DIFFUSE_END_NAMESPACE
