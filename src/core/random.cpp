// SPDX-License-Identifier: MIT
// torch-compatible noise: MT19937 as torch's CPU generator, torch.randn's two float paths, the
// half-precision path, and A1111's Philox "NV" generator.
//
// This file is compiled with -ffp-contract=off (cmake/DiffuseSimd.cmake): the scalar emulation of
// torch's AVX2 kernel below must round every product and sum exactly where torch does, and fuse
// exactly where torch's GCC fused (written as std::fma, which is exact on every platform, with or
// without an FMA instruction). Compiled without ISA flags: the AVX2 kernel runs only after the
// CPUID check.
#include "diffuse/core/random.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/error.hpp"
#include "random_impl.hpp"

DIFFUSE_BEGIN_NAMESPACE

// ---- MT19937 ---------------------------------------------------------------------------------

void TorchGenerator::manual_seed(std::uint64_t seed) {
  // at::mt19937::init_with_uint32: init_genrand with the low 32 bits; the full seed is remembered.
  state_.seed = seed;
  state_.mt[0] = static_cast<std::uint32_t>(seed & 0xFFFFFFFFu);
  for (std::uint32_t j = 1; j < kStateWords; ++j)
    state_.mt[j] = 1812433253u * (state_.mt[j - 1] ^ (state_.mt[j - 1] >> 30)) + j;
  state_.index = kStateWords;
  state_.next_normal.reset();
}

void TorchGenerator::twist() {
  constexpr std::uint32_t kUpper = 0x80000000u, kLower = 0x7FFFFFFFu, kMatrixA = 0x9908B0DFu;
  constexpr std::size_t kN = kStateWords, kM = 397;
  auto& mt = state_.mt;
  const auto step = [&](std::size_t i, std::size_t next, std::size_t far) {
    const std::uint32_t y = (mt[i] & kUpper) | (mt[next] & kLower);
    mt[i] = mt[far] ^ (y >> 1) ^ ((y & 1u) != 0 ? kMatrixA : 0u);
  };
  std::size_t i = 0;
  for (; i < kN - kM; ++i) step(i, i + 1, i + kM);
  for (; i < kN - 1; ++i) step(i, i + 1, i + kM - kN);
  step(kN - 1, 0, kM - 1);
  state_.index = 0;
}

void TorchGenerator::set_state(const State& s) {
  if (s.index > kStateWords)
    raise<value_error>("TorchGenerator::set_state", "state index " + std::to_string(s.index) + " is past " +
                                                        std::to_string(kStateWords));
  state_ = s;
}

// torch's CPUGeneratorImplState: seed u64 @0, left i32 @8, seeded i32 @12, next u64 @16,
// state u64[624] @24, normal_x/y/rho f64 @5016/5024/5032, normal_is_valid i32 @5040, (pad),
// next_float_normal_sample f32 @5048, its valid flag u8 @5052, (pad) = 5056 bytes. torch's
// engine counts `left` down from 624 before each word (1 right after seeding), so our
// index = 625 - left.
namespace {
constexpr std::size_t kLegacyStateBytes = 5048;
template <class T>
void put(std::vector<std::uint8_t>& b, std::size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}
template <class T>
T get(std::span<const std::uint8_t> b, std::size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}
}  // namespace

std::vector<std::uint8_t> TorchGenerator::torch_state() const {
  std::vector<std::uint8_t> b(kTorchStateBytes, 0);
  put<std::uint64_t>(b, 0, state_.seed);
  put<std::int32_t>(b, 8, static_cast<std::int32_t>(kStateWords + 1 - state_.index));
  put<std::int32_t>(b, 12, 1);
  put<std::uint64_t>(b, 16, state_.index == kStateWords ? 0 : state_.index);
  for (std::size_t i = 0; i < kStateWords; ++i) put<std::uint64_t>(b, 24 + 8 * i, state_.mt[i]);
  if (state_.next_normal) {
    put<double>(b, 5024, *state_.next_normal);
    put<std::int32_t>(b, 5040, 1);
  }
  return b;
}

void TorchGenerator::set_torch_state(std::span<const std::uint8_t> bytes) {
  constexpr const char* kWhere = "TorchGenerator::set_torch_state";
  if (bytes.size() != kTorchStateBytes && bytes.size() != kLegacyStateBytes)
    raise<format_error>(kWhere, "expected " + std::to_string(kTorchStateBytes) + " bytes (torch.get_rng_state()), got " +
                                    std::to_string(bytes.size()));
  const auto left = get<std::int32_t>(bytes, 8);
  if (left < 1 || left > static_cast<std::int32_t>(kStateWords))
    raise<format_error>(kWhere, "MT19937 position 'left' = " + std::to_string(left) + " is outside [1, 624]");
  State s;
  s.seed = get<std::uint64_t>(bytes, 0);
  s.index = static_cast<std::uint32_t>(kStateWords + 1) - static_cast<std::uint32_t>(left);
  for (std::size_t i = 0; i < kStateWords; ++i) s.mt[i] = static_cast<std::uint32_t>(get<std::uint64_t>(bytes, 24 + 8 * i));
  if (get<std::int32_t>(bytes, 5040) != 0) s.next_normal = get<double>(bytes, 5024);
  state_ = s;
}

void TorchGenerator::fill_uniform_float(float* out, std::size_t n) {
  while (n > 0) {
    if (state_.index >= kStateWords) twist();
    const std::size_t m = std::min<std::size_t>(n, kStateWords - state_.index);
    const std::uint32_t* w = state_.mt.data() + state_.index;
    for (std::size_t k = 0; k < m; ++k) out[k] = static_cast<float>(temper(w[k]) & 0xFFFFFFu) * 0x1p-24f;
    state_.index += static_cast<std::uint32_t>(m);
    out += m;
    n -= m;
  }
}

double TorchGenerator::normal_double() {
  // at::normal_distribution<double>::operator() (torch >= 2.1 uses log1p(-u2)).
  if (state_.next_normal) {
    const double cached = *state_.next_normal;
    state_.next_normal.reset();
    return cached;
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * 3.14159265358979323846 * u1;
  state_.next_normal = r * std::sin(theta);
  return r * std::cos(theta);
}

// ---- scalar emulation of torch's AVX2 Box–Muller block ------------------------------------------

namespace kernels::scalar {

namespace {

// Constants as torch spells them: double literals rounded to float.
constexpr float f(double v) { return static_cast<float>(v); }

inline std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float from_bits(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
/// `_mm256_and_ps(x, mask)` with an all-ones/all-zeros lane mask.
inline float keep_if(bool m, float x) { return m ? x : 0.0f; }

/// One lane of log256_ps. The std::fma calls are the FMAs GCC made of torch's mul/add pairs.
float log_cephes(float x) {
  const bool invalid = x <= 0.0f;                // _CMP_LE_OS (false for NaN)
  const float min_norm = from_bits(0x00800000u);
  x = x > min_norm ? x : min_norm;               // maxps(x, min_norm): second operand unless x > it
  const std::uint32_t xb = bits_of(x);
  const auto k = static_cast<std::int32_t>((xb >> 23) - 0x7Fu);
  x = from_bits((xb & ~0x7F800000u) | bits_of(0.5f));
  float e = static_cast<float>(k) + 1.0f;
  const bool lt = x < f(0.707106781186547524);
  const float keep = keep_if(lt, x);
  x = x - 1.0f;
  e = e - keep_if(lt, 1.0f);
  x = x + keep;

  const float z = x * x;
  float y = f(7.0376836292E-2);
  y = std::fma(y, x, f(-1.1514610310E-1));
  y = std::fma(y, x, f(1.1676998740E-1));
  y = std::fma(y, x, f(-1.2420140846E-1));
  y = std::fma(y, x, f(1.4249322787E-1));
  y = std::fma(y, x, f(-1.6668057665E-1));
  y = std::fma(y, x, f(2.0000714765E-1));
  y = std::fma(y, x, f(-2.4999993993E-1));
  y = std::fma(y, x, f(3.3333331174E-1));
  y = y * x;
  y = std::fma(y, z, e * f(-2.12194440e-4));
  y = std::fma(-z, 0.5f, y);
  x = x + y;
  x = std::fma(e, f(0.693359375), x);
  return invalid ? from_bits(bits_of(x) | 0xFFFFFFFFu) : x;
}

/// One lane of sincos256_ps.
void sincos_cephes(float x, float* s, float* c) {
  std::uint32_t sign_sin = bits_of(x) & 0x80000000u;
  x = from_bits(bits_of(x) & 0x7FFFFFFFu);
  const float scaled = x * f(1.27323954473516);
  // cvttps2dq: truncation; out of range gives INT_MIN (0x80000000).
  std::uint32_t j = scaled < 2147483648.0f ? static_cast<std::uint32_t>(static_cast<std::int32_t>(scaled)) : 0x80000000u;
  j = (j + 1u) & ~1u;
  const float y = static_cast<float>(static_cast<std::int32_t>(j));
  const std::uint32_t swap_sign_sin = (j & 4u) << 29;
  const bool poly_mask = (j & 2u) == 0;
  x = std::fma(y, f(-0.78515625), x);
  x = std::fma(y, f(-2.4187564849853515625e-4), x);
  x = std::fma(y, f(-3.77489497744594108e-8), x);
  const std::uint32_t sign_cos = (~(j - 2u) & 4u) << 29;
  sign_sin ^= swap_sign_sin;

  const float z = x * x;
  float yc = std::fma(f(2.443315711809948E-005), z, f(-1.388731625493765E-003));
  yc = std::fma(yc, z, f(4.166664568298827E-002));
  yc = yc * z;
  yc = std::fma(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;

  float ys = std::fma(f(-1.9515295891E-4), z, f(8.3321608736E-3));
  ys = std::fma(ys, z, f(-1.6666654611E-1));
  ys = ys * z;
  ys = std::fma(ys, x, x);

  const float sin_from_s = keep_if(poly_mask, ys);
  const float sin_from_c = keep_if(!poly_mask, yc);
  ys = ys - sin_from_s;
  yc = yc - sin_from_c;
  *s = from_bits(bits_of(sin_from_c + sin_from_s) ^ sign_sin);
  *c = from_bits(bits_of(yc + ys) ^ sign_cos);
}

}  // namespace

void torch_box_muller_16(float* data, std::size_t blocks) {
  const float two_pi = f(2.0 * 3.14159265358979323846);
  for (std::size_t b = 0; b < blocks; ++b, data += 16) {
    for (std::size_t j = 0; j < 8; ++j) {
      const float u1 = 1.0f - data[j];
      const float u2 = data[j + 8];
      const float radius = std::sqrt(-2.0f * log_cephes(u1));
      float s, c;
      sincos_cephes(two_pi * u2, &s, &c);
      data[j] = std::fma(radius * c, 1.0f, 0.0f);  // torch: fmadd(r·cos, std, mean)
      data[j + 8] = std::fma(radius * s, 1.0f, 0.0f);
    }
  }
}

}  // namespace kernels::scalar

// ---- torch.randn -------------------------------------------------------------------------------

namespace {

using BoxMuller = void (*)(float*, std::size_t);

struct BoxMullerChoice {
  BoxMuller fn;
  std::string_view name;
};

BoxMullerChoice choose_box_muller() {
#if DIFFUSE_RANDOM_X86
  if (isa_level() >= IsaLevel::avx2) return {kernels::avx2::torch_box_muller_16, "avx2"};
#endif
  return {kernels::scalar::torch_box_muller_16, "scalar"};
}

const BoxMullerChoice& box_muller() {
  static const BoxMullerChoice choice = choose_box_muller();
  return choice;
}

/// One element of torch's serial path (numel < 16): `normal_distribution<double>`, then
/// `transformation::normal(v, mean 0, std 1)` = v·1 + 0, then the cast to float.
float serial_normal(TorchGenerator& gen) { return static_cast<float>(gen.normal_double() * 1.0 + 0.0); }

/// torch.randn in a 16-bit type: per block, 16 uniforms -> f32 kernel -> round to nearest even
/// (torch 2.15 `normal_fill` for reduced-precision types). `round_one` rounds one serial-path
/// float, `round_bulk` is the dispatched bulk conversion (bit-identical to it).
void randn_16bit(TorchGenerator& gen, std::span<std::uint16_t> out, std::uint16_t (*round_one)(float),
                 void (*round_bulk)(const float*, void*, std::size_t)) {
  const std::size_t n = out.size();
  if (n < 16) {  // torch: static_cast<Half>(double) goes through float
    for (std::size_t i = 0; i < n; ++i) out[i] = round_one(serial_normal(gen));
    return;
  }
  const BoxMuller kernel = box_muller().fn;
  constexpr std::size_t kChunk = 1024;  // uniforms are consumed block by block: chunking is invisible
  float buf[kChunk];
  const std::size_t full = n / 16 * 16;
  for (std::size_t i = 0; i < full; i += kChunk) {
    const std::size_t m = std::min(kChunk, full - i);
    gen.fill_uniform_float(buf, m);
    kernel(buf, m / 16);
    round_bulk(buf, out.data() + i, m);
  }
  if (n % 16 != 0) {  // the last 16 again, from 16 fresh uniforms
    gen.fill_uniform_float(buf, 16);
    kernel(buf, 1);
    round_bulk(buf, out.data() + n - 16, 16);
  }
}

}  // namespace

std::string_view randn_isa() { return box_muller().name; }

void randn(TorchGenerator& gen, std::span<float> out) {
  const std::size_t n = out.size();
  if (n < 16) {
    for (std::size_t i = 0; i < n; ++i) out[i] = serial_normal(gen);
    return;
  }
  const BoxMuller kernel = box_muller().fn;
  float* d = out.data();
  gen.fill_uniform_float(d, n);
  kernel(d, n / 16);
  if (n % 16 != 0) {  // torch recomputes the last 16 from fresh uniforms
    gen.fill_uniform_float(d + n - 16, 16);
    kernel(d + n - 16, 1);
  }
}

Tensor randn(TorchGenerator& gen, const Shape& shape) {
  Tensor t(shape);
  randn(gen, t.values());
  return t;
}

void randn_f16(TorchGenerator& gen, std::span<std::uint16_t> out) {
  randn_16bit(gen, out, f32_to_f16_scalar, f32_to_f16);
}

void randn_bf16(TorchGenerator& gen, std::span<std::uint16_t> out) {
  randn_16bit(gen, out, f32_to_bf16_scalar, f32_to_bf16);
}

// ---- Philox (A1111 "NV") -------------------------------------------------------------------------

std::array<std::uint32_t, 4> PhiloxGenerator::philox4x32_10(std::array<std::uint32_t, 4> c,
                                                             std::array<std::uint32_t, 2> key) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += 0x9E3779B9u;
      key[1] += 0xBB67AE85u;
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(c[0]) * 0xD2511F53u;
    const std::uint64_t p1 = static_cast<std::uint64_t>(c[2]) * 0xCD9E8D57u;
    c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ key[0], static_cast<std::uint32_t>(p1),
         static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ key[1], static_cast<std::uint32_t>(p0)};
  }
  return c;
}

void PhiloxGenerator::randn(std::span<float> out) {
  if (out.size() > (std::size_t{1} << 32))
    raise<value_error>("PhiloxGenerator::randn", "cannot draw " + std::to_string(out.size()) +
                                                     " values in one call (the element counter has 32 bits)");
  // A1111 keeps these as float32 arrays and computes in float64 (numpy promotes uint32 x float32).
  const double inv = static_cast<float>(2.3283064e-10);
  const double inv_2pi = static_cast<float>(2.3283064e-10 * 6.2831855);
  const std::array<std::uint32_t, 2> key = {static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)};
  const auto off = static_cast<std::uint32_t>(offset_);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto c = philox4x32_10({off, 0u, static_cast<std::uint32_t>(i), 0u}, key);
    const double u = static_cast<double>(c[0]) * inv + inv / 2;
    const double v = static_cast<double>(c[1]) * inv_2pi + inv_2pi / 2;
    out[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u)) * std::sin(v));
  }
  ++offset_;
}

Tensor PhiloxGenerator::randn(const Shape& shape) {
  Tensor t(shape);
  randn(t.values());
  return t;
}

DIFFUSE_END_NAMESPACE
