// SPDX-License-Identifier: MIT
// Tests of diffuse/core/convert.hpp: the scalar references against known values and an
// independent rounding check, every vector path against the scalar reference (exhaustively where
// the input space allows), tails and unaligned pointers, to_f32 for every dtype, the 8-bit float
// decoders against a torch fixture (tools/make_f8_fixture.py).
#include "diffuse/core/convert.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/convert_impl.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/core/error.hpp"

#if DIFFUSE_CONVERT_X86
#include <immintrin.h>
#endif

namespace {

using diffuse::DType;
using diffuse::kernels::ConvertKernels;
using diffuse::kernels::ConvertPath;

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Every path compiled in and runnable on this CPU.
std::vector<const ConvertKernels*> supported_paths() {
  std::vector<const ConvertKernels*> out;
  for (ConvertPath p : {ConvertPath::scalar, ConvertPath::f16c, ConvertPath::avx512})
    if (diffuse::kernels::convert_path_supported(p)) out.push_back(&diffuse::kernels::convert_kernels(p));
  return out;
}

/// The fastest path the CPU has (ignoring DIFFUSE_ISA).
const ConvertKernels& fastest_path() { return *supported_paths().back(); }

// ---- the scalar references themselves ----------------------------------------------------------

TEST(ConvertScalar, F16KnownValues) {
  struct Case {
    std::uint16_t h;
    std::uint32_t f;
  };
  const Case cases[] = {
      {0x3C00, 0x3F800000},  // 1
      {0xC000, 0xC0000000},  // -2
      {0x3555, 0x3EAAA000},  // 0.333251953125
      {0x7BFF, 0x477FE000},  // 65504, the largest half
      {0x0400, 0x38800000},  // 2^-14, the smallest normal
      {0x0001, 0x33800000},  // 2^-24, the smallest subnormal
      {0x03FF, 0x387FC000},  // the largest subnormal
      {0x8001, 0xB3800000},  // -2^-24
      {0x0000, 0x00000000},  {0x8000, 0x80000000},  // +-0
      {0x7C00, 0x7F800000},  {0xFC00, 0xFF800000},  // +-inf
      {0x7E00, 0x7FC00000},                          // quiet NaN
      {0x7C01, 0x7FC02000},  // signalling NaN: quieted, payload kept (vcvtph2ps, torch)
      {0xFD00, 0xFFE00000},  // negative signalling NaN
      {0x7FFF, 0x7FFFE000},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(bits_of(diffuse::f16_to_f32_scalar(c.h)), c.f) << std::hex << c.h;
    if (c.h != 0x7C01 && c.h != 0xFD00) {  // (signalling f16 NaNs do not come back: they were quieted)
      EXPECT_EQ(diffuse::f32_to_f16_scalar(from_bits(c.f)), c.h) << std::hex << c.f;
    }
  }
}

TEST(ConvertScalar, F32ToF16Boundaries) {
  struct Case {
    std::uint32_t f;
    std::uint16_t h;
  };
  const Case cases[] = {
      {0x477FE000, 0x7BFF},  // 65504
      {0x477FEFFF, 0x7BFF},  // just below 65520
      {0x477FF000, 0x7C00},  // 65520: ties to even, which is inf
      {0x477FF001, 0x7C00},
      {0xC77FF000, 0xFC00},
      {0x7F7FFFFF, 0x7C00},  // FLT_MAX
      {0x33800000, 0x0001},  // 2^-24
      {0x33000000, 0x0000},  // 2^-25: a tie, to the even 0
      {0xB3000000, 0x8000},  // -2^-25 -> -0
      {0x33000001, 0x0001},  // just above 2^-25
      {0x32FFFFFF, 0x0000},
      {0x33C00000, 0x0002},  // 3 * 2^-25 = 1.5 ulp: tie, to even 2
      {0x34200000, 0x0002},  // 5 * 2^-25 = 2.5 ulp: tie, to even 2
      {0x34200001, 0x0003},
      {0x387FE000, 0x0400},  // the largest subnormal + half an ulp: tie, rounds up into the normals
      {0x3F801000, 0x3C00},  // 1 + 2^-11: tie, to even 1
      {0x3F803000, 0x3C02},  // 1 + 3 * 2^-11: tie, to even 1 + 2^-9
      {0x3F801001, 0x3C01},
      {0x00000001, 0x0000},  // f32 subnormal
      {0x80000001, 0x8000},
      {0x7F800000, 0x7C00},  {0xFF800000, 0xFC00},
      {0x7F800001, 0x7E00},  // NaN with payload only in the dropped bits: still NaN
      {0x7FA00000, 0x7F00},  // signalling NaN, payload kept and quieted
      {0xFFC00001, 0xFE00},
      {0x7F802000, 0x7E01},
  };
  for (const Case& c : cases) EXPECT_EQ(diffuse::f32_to_f16_scalar(from_bits(c.f)), c.h) << std::hex << c.f;
}

TEST(ConvertScalar, BF16KnownValues) {
  struct Case {
    std::uint32_t f;
    std::uint16_t b;
  };
  const Case cases[] = {
      {0x3F800000, 0x3F80},  // 1
      {0x3F808000, 0x3F80},  // tie -> even
      {0x3F818000, 0x3F82},  // tie -> even (up)
      {0x3F808001, 0x3F81},
      {0x3F807FFF, 0x3F80},
      {0x7F7FFFFF, 0x7F80},  // FLT_MAX rounds to inf
      {0x7F7F7FFF, 0x7F7F},
      {0xFF7FFFFF, 0xFF80},
      {0x00008000, 0x0000},  // subnormal tie -> even 0 (not flushed: 0x00018000 below)
      {0x00018000, 0x0002},
      {0x00010000, 0x0001},  // smallest bf16 subnormal
      {0x807FFFFF, 0x8080},  // largest negative subnormal rounds up to -FLT_MIN
      {0x80000000, 0x8000},
      {0x7F800000, 0x7F80},
      {0x7F800001, 0x7FC0},  // NaN with payload only in the dropped bits: still NaN
      {0xFF810000, 0xFFC1},
      {0x7FFFFFFF, 0x7FFF},
  };
  for (const Case& c : cases) EXPECT_EQ(diffuse::f32_to_bf16_scalar(from_bits(c.f)), c.b) << std::hex << c.f;
  EXPECT_EQ(bits_of(diffuse::bf16_to_f32_scalar(0x3F80)), 0x3F800000u);
  EXPECT_EQ(bits_of(diffuse::bf16_to_f32_scalar(0x7F81)), 0x7F810000u);  // kept as stored
}

// Independent check of f16_to_f32_scalar: every finite half from its definition with ldexp.
TEST(ConvertScalar, F16DecodeMatchesDefinition) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const int e = static_cast<int>((h >> 10) & 0x1F);
    const int m = static_cast<int>(h & 0x3FF);
    if (e == 31) continue;
    const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    const float want = static_cast<float>((h & 0x8000) ? -mag : mag);
    ASSERT_EQ(bits_of(diffuse::f16_to_f32_scalar(static_cast<std::uint16_t>(h))), bits_of(want)) << std::hex << h;
  }
}

// Independent check of the f32 -> f16/bf16 rounding: between each pair of neighbouring finite
// values a < b, the midpoint goes to the one with an even code, and the floats just inside go to
// the nearer one. Covers every binade, subnormals, and overflow past the largest finite value.
template <class Decode, class Encode>
void check_rounding(Decode decode, Encode encode, std::uint16_t max_finite, std::uint16_t inf) {
  for (std::uint32_t code = 0; code <= max_finite; ++code) {
    const float a = decode(static_cast<std::uint16_t>(code));
    ASSERT_EQ(encode(a), code) << "round trip " << std::hex << code;
    ASSERT_EQ(encode(-a), code | 0x8000u) << "round trip -" << std::hex << code;
    // next code up; past the largest finite value, the midpoint is to the would-be next binade
    const double b = code < max_finite ? static_cast<double>(decode(static_cast<std::uint16_t>(code + 1)))
                                       : 2.0 * a - static_cast<double>(decode(static_cast<std::uint16_t>(code - 1)));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(a) + b) / 2) << "midpoint not exact";
    const std::uint32_t up = code + 1 <= max_finite ? code + 1 : inf;
    const std::uint32_t even = (code & 1u) ? up : code;
    ASSERT_EQ(encode(mid), even) << "tie above " << std::hex << code;
    ASSERT_EQ(encode(std::nextafter(mid, 0.0f)), code) << "below tie above " << std::hex << code;
    ASSERT_EQ(encode(std::nextafter(mid, INFINITY)), up) << "above tie above " << std::hex << code;
  }
}

TEST(ConvertScalar, F32ToF16RoundingMatchesDefinition) {
  check_rounding(diffuse::f16_to_f32_scalar, diffuse::f32_to_f16_scalar, 0x7BFF, 0x7C00);
}

TEST(ConvertScalar, F32ToBF16RoundingMatchesDefinition) {
  check_rounding(diffuse::bf16_to_f32_scalar, diffuse::f32_to_bf16_scalar, 0x7F7F, 0x7F80);
}

TEST(ConvertScalar, NaNsStayNaNWithSign) {
  for (std::uint32_t payload = 1; payload < (1u << 23); payload += 97) {
    for (std::uint32_t sign : {0u, 0x80000000u}) {
      const float nan = from_bits(sign | 0x7F800000u | payload);
      const std::uint16_t h = diffuse::f32_to_f16_scalar(nan);
      ASSERT_EQ(h & 0x7E00u, 0x7E00u);  // quiet NaN
      ASSERT_EQ(h & 0x8000u, sign >> 16);
      ASSERT_EQ(h & 0x1FFu, (payload >> 13) & 0x1FFu);
      const std::uint16_t b = diffuse::f32_to_bf16_scalar(nan);
      ASSERT_EQ(b & 0x7FC0u, 0x7FC0u);
      ASSERT_EQ(b & 0x8000u, sign >> 16);
      ASSERT_EQ(b & 0x3Fu, (payload >> 16) & 0x3Fu);
    }
  }
}

// ---- every path against the scalar reference -------------------------------------------------

TEST(ConvertPaths, ReportsWhatRuns) {
  for (const ConvertKernels* k : supported_paths()) std::printf("convert path available: %s\n", k->name);
  std::printf("dispatched: %s\n", diffuse::convert_isa().data());
  EXPECT_EQ(diffuse::convert_isa(), diffuse::kernels::active_convert_kernels().name);
  if (std::getenv("DIFFUSE_ISA") == nullptr) {
    EXPECT_EQ(diffuse::convert_isa(), fastest_path().name);
  }
}

TEST(ConvertPaths, AllF16AndBF16ToF32) {
  std::vector<std::uint16_t> codes(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) codes[i] = static_cast<std::uint16_t>(i);
  std::vector<float> got(65536), want(65536);
  for (const ConvertKernels* k : supported_paths()) {
    for (int bf = 0; bf < 2; ++bf) {
      (bf ? k->bf16_to_f32 : k->f16_to_f32)(codes.data(), got.data(), codes.size());
      for (std::uint32_t i = 0; i < 65536; ++i) {
        const auto c = static_cast<std::uint16_t>(i);
        want[i] = bf ? diffuse::bf16_to_f32_scalar(c) : diffuse::f16_to_f32_scalar(c);
        ASSERT_EQ(bits_of(got[i]), bits_of(want[i])) << k->name << (bf ? " bf16 " : " f16 ") << std::hex << i;
      }
    }
  }
  // the public entry points
  diffuse::f16_to_f32(codes.data(), got.data(), codes.size());
  for (std::uint32_t i = 0; i < 65536; ++i)
    ASSERT_EQ(bits_of(got[i]), bits_of(diffuse::f16_to_f32_scalar(static_cast<std::uint16_t>(i))));
  diffuse::bf16_to_f32(codes.data(), got.data(), codes.size());
  for (std::uint32_t i = 0; i < 65536; ++i)
    ASSERT_EQ(bits_of(got[i]), bits_of(diffuse::bf16_to_f32_scalar(static_cast<std::uint16_t>(i))));
}

/// Runs `k`'s f32 -> f16 and f32 -> bf16 on the f32 bit patterns [first, last] (stepping by
/// `step`) in blocks and compares with the scalar reference. Returns false at the first mismatch.
bool check_from_f32(const ConvertKernels& k, std::uint64_t first, std::uint64_t last, std::uint64_t step) {
  constexpr std::size_t kBlock = 1 << 16;
  std::vector<float> in(kBlock);
  std::vector<std::uint16_t> h(kBlock), b(kBlock);
  for (std::uint64_t base = first; base <= last;) {
    std::size_t n = 0;
    for (; n < kBlock && base <= last; ++n, base += step) in[n] = from_bits(static_cast<std::uint32_t>(base));
    k.f32_to_f16(in.data(), h.data(), n);
    k.f32_to_bf16(in.data(), b.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint16_t wh = diffuse::f32_to_f16_scalar(in[i]);
      const std::uint16_t wb = diffuse::f32_to_bf16_scalar(in[i]);
      if (h[i] != wh || b[i] != wb) {
        ADD_FAILURE() << k.name << ": f32 0x" << std::hex << bits_of(in[i]) << " -> f16 0x" << h[i] << " (want 0x" << wh
                      << "), bf16 0x" << b[i] << " (want 0x" << wb << ")";
        return false;
      }
    }
  }
  return true;
}

// Every exponent with a dense set of mantissas (all low-bit patterns around the rounding
// position of both formats), both signs, on every path.
TEST(ConvertPaths, F32ToF16AndBF16DenseSample) {
  std::vector<float> in;
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t e = 0; e < 256; ++e) {
      for (std::uint32_t low = 0; low < (1u << 14); ++low) {  // all bits at and below f16's rounding position
        in.push_back(from_bits(sign | (e << 23) | low));
        in.push_back(from_bits(sign | (e << 23) | (0x7FFFFFu - low)));
      }
      for (std::uint32_t hi = 0; hi < 512; ++hi)  // bf16's rounding position with every top pattern
        for (std::uint32_t low : {0x0000u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu})
          in.push_back(from_bits(sign | (e << 23) | ((hi * 0x3FFFu) & 0x7F0000u) | low));
    }
  for (const ConvertKernels* k : supported_paths()) {
    std::vector<std::uint16_t> h(in.size()), b(in.size());
    k->f32_to_f16(in.data(), h.data(), in.size());
    k->f32_to_bf16(in.data(), b.data(), in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
      ASSERT_EQ(h[i], diffuse::f32_to_f16_scalar(in[i])) << k->name << " f16 " << std::hex << bits_of(in[i]);
      ASSERT_EQ(b[i], diffuse::f32_to_bf16_scalar(in[i])) << k->name << " bf16 " << std::hex << bits_of(in[i]);
    }
  }
}

// A stride through all 2^32 patterns (odd stride: every residue class is hit) on every path.
TEST(ConvertPaths, F32ToF16AndBF16StridedSample) {
  for (const ConvertKernels* k : supported_paths()) ASSERT_TRUE(check_from_f32(*k, 0, 0xFFFFFFFFull, 4099));
}

#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
constexpr bool kFastBuild = true;
#else
constexpr bool kFastBuild = false;
#endif

// All 2^32 f32 bit patterns on the fastest path: about 9 s in Release on one core. Runs by default
// in optimised builds without sanitizers; DIFFUSE_CONVERT_EXHAUSTIVE=1 forces it, =0 skips it.
TEST(ConvertPaths, F32ToF16AndBF16Exhaustive) {
  const char* env = std::getenv("DIFFUSE_CONVERT_EXHAUSTIVE");
  const bool run = env != nullptr ? std::string(env) != "0" : kFastBuild;
  if (!run) GTEST_SKIP() << "exhaustive f32 test off (DIFFUSE_CONVERT_EXHAUSTIVE=1 to force)";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(check_from_f32(fastest_path(), 0, 0xFFFFFFFFull, 1));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("all 2^32 f32 -> f16 and bf16 on %s: %.1f s\n", fastest_path().name, s);
}

// Lengths 0..67 on every path, with the 16-bit side one byte off any alignment and the float side
// one float off the vector width; nothing outside [0, n) may be written.
TEST(ConvertPaths, TailsAndUnalignedPointers) {
  constexpr std::size_t kMax = 67, kGuard = 8;
  std::vector<float> fin(kMax + 1);
  std::vector<unsigned char> hin(2 * kMax + 1);
  for (std::size_t i = 0; i < fin.size(); ++i) fin[i] = static_cast<float>(i) * 1.37f - 20.0f + 1.0f / 3.0f;
  for (std::size_t i = 0; i < hin.size(); ++i) hin[i] = static_cast<unsigned char>(i * 37 + 11);
  for (const ConvertKernels* k : supported_paths()) {
    for (std::size_t n = 0; n <= kMax; ++n) {
      for (std::size_t off : {0u, 1u}) {
        const unsigned char* hsrc = hin.data() + off;
        const float* fsrc = fin.data() + off;
        for (int bf = 0; bf < 2; ++bf) {
          // 16-bit -> f32
          std::vector<float> fout(n + 1 + 2 * kGuard, from_bits(0xDEADBEEF));
          (bf ? k->bf16_to_f32 : k->f16_to_f32)(hsrc, fout.data() + kGuard + off, n);
          for (std::size_t i = 0; i < fout.size(); ++i) {
            if (i >= kGuard + off && i < kGuard + off + n) {
              std::uint16_t c;
              std::memcpy(&c, hsrc + 2 * (i - kGuard - off), 2);
              const float want = bf ? diffuse::bf16_to_f32_scalar(c) : diffuse::f16_to_f32_scalar(c);
              ASSERT_EQ(bits_of(fout[i]), bits_of(want)) << k->name << " n=" << n << " off=" << off << " i=" << i;
            } else {
              ASSERT_EQ(bits_of(fout[i]), 0xDEADBEEFu) << k->name << " wrote outside, n=" << n << " i=" << i;
            }
          }
          // f32 -> 16-bit, destination one byte off
          std::vector<unsigned char> hout(2 * (n + 2 * kGuard) + 1, 0xA5);
          (bf ? k->f32_to_bf16 : k->f32_to_f16)(fsrc, hout.data() + 2 * kGuard + off, n);
          for (std::size_t i = 0; i < hout.size(); ++i) {
            const std::size_t start = 2 * kGuard + off;
            if (i < start || i >= start + 2 * n) {
              ASSERT_EQ(hout[i], 0xA5) << k->name << " wrote outside, n=" << n << " byte " << i;
            }
          }
          for (std::size_t i = 0; i < n; ++i) {
            std::uint16_t c;
            std::memcpy(&c, hout.data() + 2 * kGuard + off + 2 * i, 2);
            ASSERT_EQ(c, bf ? diffuse::f32_to_bf16_scalar(fsrc[i]) : diffuse::f32_to_f16_scalar(fsrc[i]))
                << k->name << " n=" << n << " off=" << off << " i=" << i;
          }
        }
      }
    }
  }
}

#if DIFFUSE_CONVERT_X86
// The results must not depend on MXCSR: a caller may have set flush-to-zero and
// denormals-are-zero (as some inference code does for speed), or another rounding mode.
TEST(ConvertPaths, IndependentOfMxcsr) {
  std::vector<std::uint16_t> codes(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) codes[i] = static_cast<std::uint16_t>(i);
  std::vector<float> in;
  for (std::uint32_t u = 0; u < 0x00800000u; u += 511) in.push_back(from_bits(u));      // f32 subnormals
  for (std::uint32_t u = 0x33000000u; u < 0x38900000u; u += 3) in.push_back(from_bits(u));  // f16 subnormal range
  for (std::uint32_t u = 0x477F0000u; u < 0x47800000u; ++u) in.push_back(from_bits(u));    // overflow edge
  const unsigned saved = _mm_getcsr();
  for (unsigned mode : {0x8040u /* FTZ | DAZ */, 0x8040u | 0x6000u /* and round toward zero */, 0x2000u}) {
    _mm_setcsr((saved & ~0xE040u) | mode);
    std::vector<float> f(65536);
    std::vector<std::uint16_t> h(in.size()), b(in.size());
    std::vector<const ConvertKernels*> paths = supported_paths();
    std::vector<std::string> failures;
    for (const ConvertKernels* k : paths) {
      for (int bf = 0; bf < 2; ++bf) {
        (bf ? k->bf16_to_f32 : k->f16_to_f32)(codes.data(), f.data(), codes.size());
        for (std::uint32_t i = 0; i < 65536 && failures.empty(); ++i) {
          const auto c = static_cast<std::uint16_t>(i);
          if (bits_of(f[i]) != bits_of(bf ? diffuse::bf16_to_f32_scalar(c) : diffuse::f16_to_f32_scalar(c)))
            failures.push_back(std::string(k->name) + (bf ? " bf16->f32 " : " f16->f32 ") + std::to_string(i));
        }
      }
      k->f32_to_f16(in.data(), h.data(), in.size());
      k->f32_to_bf16(in.data(), b.data(), in.size());
      for (std::size_t i = 0; i < in.size() && failures.empty(); ++i)
        if (h[i] != diffuse::f32_to_f16_scalar(in[i]) || b[i] != diffuse::f32_to_bf16_scalar(in[i]))
          failures.push_back(std::string(k->name) + " f32->16 " + std::to_string(bits_of(in[i])));
    }
    _mm_setcsr(saved);  // before any gtest output
    for (const std::string& s : failures) ADD_FAILURE() << "MXCSR 0x" << std::hex << mode << ": " << s;
  }
}
#endif

// ---- to_f32 ------------------------------------------------------------------------------------

template <class T>
std::vector<float> convert_values(DType type, const std::vector<T>& values) {
  // one byte off alignment, as a tensor in a safetensors file may be
  std::vector<unsigned char> raw(1, 0);
  for (const T& v : values) {
    unsigned char bytes[sizeof(T)];
    std::memcpy(bytes, &v, sizeof(T));
    raw.insert(raw.end(), bytes, bytes + sizeof(T));
  }
  std::vector<float> out(values.size(), -12345.0f);
  diffuse::to_f32(type, raw.data() + 1, out.data(), values.size());
  return out;
}

TEST(ToF32, Integers) {
  using L8 = std::numeric_limits<std::int8_t>;
  EXPECT_EQ(convert_values<std::uint8_t>(DType::U8, {0, 1, 200, 255}), (std::vector<float>{0, 1, 200, 255}));
  EXPECT_EQ(convert_values<std::int8_t>(DType::I8, {L8::min(), -1, 0, L8::max()}), (std::vector<float>{-128, -1, 0, 127}));
  EXPECT_EQ(convert_values<std::int16_t>(DType::I16, {-32768, -1, 12345, 32767}),
            (std::vector<float>{-32768, -1, 12345, 32767}));
  EXPECT_EQ(convert_values<std::uint16_t>(DType::U16, {0, 65535}), (std::vector<float>{0, 65535}));
  // 2^24 + 1 ties to even 2^24; 2^24 + 3 ties to 2^24 + 4; extremes round to powers of two
  EXPECT_EQ(convert_values<std::int32_t>(DType::I32, {16777217, 16777219, -16777217, INT32_MIN, INT32_MAX}),
            (std::vector<float>{16777216.0f, 16777220.0f, -16777216.0f, -2147483648.0f, 2147483648.0f}));
  EXPECT_EQ(convert_values<std::uint32_t>(DType::U32, {0, 16777217, 4294967295u}),
            (std::vector<float>{0.0f, 16777216.0f, 4294967296.0f}));
  EXPECT_EQ(convert_values<std::int64_t>(DType::I64, {INT64_MIN, INT64_MAX, -3, (1LL << 40) + 1}),
            (std::vector<float>{-9223372036854775808.0f, 9223372036854775808.0f, -3.0f, 1099511627776.0f}));
  // 2^63 + 2^39 is a tie between 2^63 and 2^63 + 2^40: to even 2^63; one more goes up
  EXPECT_EQ(convert_values<std::uint64_t>(
                DType::U64, {UINT64_MAX, 0, (1ULL << 63) + (1ULL << 39), (1ULL << 63) + (1ULL << 39) + 1}),
            (std::vector<float>{18446744073709551616.0f, 0.0f, 9223372036854775808.0f, 9223373136366403584.0f}));
  EXPECT_EQ(convert_values<std::uint8_t>(DType::BOOL, {0, 1, 1, 0}), (std::vector<float>{0, 1, 1, 0}));
}

TEST(ToF32, FloatTypes) {
  const std::vector<float> f{1.5f, -0.0f, INFINITY, 1e-45f};
  const std::vector<float> got = convert_values<float>(DType::F32, f);
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(bits_of(got[i]), bits_of(f[i]));

  const double tie = 1.0 + std::ldexp(1.0, -24);  // halfway between 1 and the next float
  const std::vector<float> d = convert_values<double>(
      DType::F64, {0.1, -0.0, 1e300, -1e300, tie, std::nextafter(tie, 2.0), 1e-50, std::ldexp(1.0, -149)});
  EXPECT_EQ(d[0], 0.1f);
  EXPECT_EQ(bits_of(d[1]), 0x80000000u);
  EXPECT_EQ(d[2], INFINITY);
  EXPECT_EQ(d[3], -INFINITY);
  EXPECT_EQ(d[4], 1.0f);
  EXPECT_EQ(d[5], std::nextafter(1.0f, 2.0f));
  EXPECT_EQ(d[6], 0.0f);
  EXPECT_EQ(bits_of(d[7]), 0x00000001u);
  EXPECT_TRUE(std::isnan(convert_values<double>(DType::F64, {std::nan("")})[0]));

  EXPECT_EQ(convert_values<std::uint16_t>(DType::F16, {0x3C00, 0xC000, 0x7BFF}), (std::vector<float>{1, -2, 65504}));
  EXPECT_EQ(convert_values<std::uint16_t>(DType::BF16, {0x3F80, 0xC040}), (std::vector<float>{1, -3}));
}

TEST(ToF32, LongInputsUseTheBulkPath) {
  std::vector<std::uint16_t> codes(1000);
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint16_t>(i * 61);
  const std::vector<float> h = convert_values<std::uint16_t>(DType::F16, codes);
  const std::vector<float> b = convert_values<std::uint16_t>(DType::BF16, codes);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    ASSERT_EQ(bits_of(h[i]), bits_of(diffuse::f16_to_f32_scalar(codes[i])));
    ASSERT_EQ(bits_of(b[i]), bits_of(diffuse::bf16_to_f32_scalar(codes[i])));
  }
}

TEST(ToF32, F8MatchesTorch) {
  std::ifstream file(std::string(DIFFUSE_TEST_DATA_DIR) + "/f8_to_f32.json");
  ASSERT_TRUE(file) << "missing tests/data/f8_to_f32.json (tools/make_f8_fixture.py)";
  const nlohmann::json doc = nlohmann::json::parse(file);
  const auto& codes = doc.at("codes");
  int checked = 0;
  for (DType t : {DType::F8_E4M3, DType::F8_E5M2, DType::F8_E8M0, DType::F8_E4M3FNUZ, DType::F8_E5M2FNUZ}) {
    const std::string name(diffuse::dtype_name(t));
    ASSERT_TRUE(codes.contains(name)) << name;
    const auto& want = codes.at(name);
    ASSERT_EQ(want.size(), 256u);
    std::vector<std::uint8_t> all(256);
    for (int i = 0; i < 256; ++i) all[i] = static_cast<std::uint8_t>(i);
    const std::vector<float> got = convert_values<std::uint8_t>(t, all);
    for (int i = 0; i < 256; ++i) {
      EXPECT_EQ(bits_of(got[i]), want[i].get<std::uint32_t>()) << name << " code 0x" << std::hex << i;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 5 * 256);
  // a few values from the format definitions, independent of torch
  const std::vector<float> e4 = convert_values<std::uint8_t>(DType::F8_E4M3, {0x38, 0x7E, 0xFE, 0x01, 0x7F});
  EXPECT_EQ(e4[0], 1.0f);
  EXPECT_EQ(e4[1], 448.0f);
  EXPECT_EQ(e4[2], -448.0f);
  EXPECT_EQ(e4[3], std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(e4[4]));
  const std::vector<float> e8 = convert_values<std::uint8_t>(DType::F8_E8M0, {0, 127, 254, 255});
  EXPECT_EQ(e8[0], std::ldexp(1.0f, -127));
  EXPECT_EQ(e8[1], 1.0f);
  EXPECT_EQ(e8[2], std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(e8[3]));
  const std::vector<float> uz = convert_values<std::uint8_t>(DType::F8_E4M3FNUZ, {0x80, 0x7F, 0xFF});
  EXPECT_TRUE(std::isnan(uz[0]));
  EXPECT_EQ(uz[1], 240.0f);
  EXPECT_EQ(uz[2], -240.0f);
}

TEST(ToF32, RejectsSubByteAndComplex) {
  float out[2] = {};
  const unsigned char raw[16] = {};
  for (DType t : diffuse::all_dtypes()) {
    if (diffuse::dtype_convertible_to_f32(t)) {
      EXPECT_NO_THROW(diffuse::to_f32(t, raw, out, 1)) << diffuse::dtype_name(t);
      EXPECT_NO_THROW(diffuse::to_f32(t, nullptr, nullptr, 0)) << diffuse::dtype_name(t);
      continue;
    }
    try {
      diffuse::to_f32(t, raw, out, 1);
      ADD_FAILURE() << "no error for " << diffuse::dtype_name(t);
    } catch (const diffuse::value_error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(diffuse::dtype_name(t)), std::string::npos) << msg;
      EXPECT_EQ(msg.rfind("[to_f32]", 0), 0u) << msg;
    }
  }
  EXPECT_THROW(diffuse::to_f32(DType::C64, raw, out, 0), diffuse::value_error);  // even when empty
}

}  // namespace
