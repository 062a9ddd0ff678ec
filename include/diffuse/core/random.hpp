// SPDX-License-Identifier: MIT
/** @file random.hpp
 *  Initial noise that reproduces PyTorch bit for bit, so that a seed gives the same image in
 *  diffuse as in diffusers or A1111.
 *
 *  **`TorchGenerator`** is torch's CPU generator (`torch.Generator()`, `torch.manual_seed`): the
 *  32-bit Mersenne Twister MT19937 with torch's seeding (only the low 32 bits of the seed are
 *  used: `manual_seed(2**32 + 5)` draws the same numbers as `manual_seed(5)`) and its cached
 *  second Box–Muller sample. **`randn(gen, shape)`** reproduces
 *  `torch.manual_seed(s); torch.randn(shape)` (float32, CPU) exactly, element for element and bit
 *  for bit, as x86-64 torch computes it (checked against torch 2.15.0 on AVX-512 and AVX2 builds):
 *
 *  - **numel >= 16** (torch's `normal_fill`): every element first receives a uniform
 *    `(w & 0xFFFFFF)·2⁻²⁴` from one 32-bit word; each full block of 16 is then transformed by
 *    Box–Muller (`u1 = 1 − d[j]`, `u2 = d[j+8]`, `r = √(−2 ln u1)`, `θ = 2π·u2`,
 *    `d[j] = r cos θ`, `d[j+8] = r sin θ`). When numel is not a multiple of 16 the *last 16*
 *    elements are overwritten with 16 fresh uniforms (16 more words) and transformed again,
 *    which replaces outputs of the last full block. ln, sin and cos are not libm's: they are the
 *    Cephes-style polynomials of torch's `avx_mathfun.h` (`log256_ps`, `sincos256_ps`), which x86
 *    torch uses on AVX2 *and* AVX-512 machines (there is no AVX-512 kernel). Torch's wheels are
 *    built by GCC with floating-point contraction on, and GCC fused 20 of those functions'
 *    multiply/add pairs into FMAs; diffuse performs exactly those FMAs, explicitly. diffuse runs
 *    this either with AVX2 or with a scalar emulation that gives the same bits, so machines
 *    without AVX2 (and non-x86 ones, where `std::fma` is exact) produce x86 torch's noise.
 *  - **numel < 16** (torch's serial path): each element is `at::normal_distribution<double>`:
 *    two 53-bit uniforms from four words, `r = √(−2·log1p(−u2))`, `θ = 2π·u1`, return
 *    `r cos θ` and keep `r sin θ` in the generator; the next element (in this call *or a later
 *    one*: `torch.randn(3); torch.randn(1)`) takes the kept value instead of drawing. The double is
 *    rounded to float. This path uses the C library's double `log1p`, `sin` and `cos`, as torch
 *    does (glibc on Linux), so it is bit-exact wherever they are correctly rounded for the
 *    inputs met; both ends use the same libm here.
 *
 *  Calls in a row continue the stream as torch does: `torch.manual_seed(0); a = torch.randn(3);
 *  b = torch.randn(20)` is `TorchGenerator g(0); a = randn(g, {3}); b = randn(g, {20})`.
 *
 *  **Batches.** diffuse draws the noise of a batch in one call over the whole batch shape, which
 *  is what `torch.randn((B, C, H, W), generator=g)` does (diffusers `randn_tensor` with one
 *  generator). Sample b of a batch is therefore *not* `randn(g, {1, C, H, W})` after b earlier
 *  draws (the tail recompute and block boundaries differ). For diffusers' list-of-generators form
 *  (`generator=[g0, g1, …]`: one `torch.randn((1, C, H, W), generator=g_b)` per sample, then
 *  `torch.cat`), call `randn` once per sample with its own generator and concatenate.
 *
 *  **float16 / bfloat16.** torch 2.15 draws half noise with the *same f32 kernel* but in a
 *  different order: per block of 16 it draws 16 uniforms, transforms them in f32 and rounds to
 *  the half type (the tail block likewise draws 16 uniforms into the last 16 elements); below 16
 *  elements each double sample is rounded to float, then to half. `randn_f16` / `randn_bf16`
 *  reproduce this exactly (round to nearest even). Note that this is *not*
 *  `randn(f32)` converted to half: `torch.randn(shape, dtype=torch.float16)` and
 *  `torch.randn(shape).half()` differ, and so do the diffuse calls. (This is torch 2.15's
 *  behaviour, checked; older releases ran the kernel in half arithmetic and differ.)
 *
 *  **Other platforms' torch.** torch on aarch64, or with `ATEN_CPU_CAPABILITY=default`, uses libm
 *  `std::log/sin/cos` in float instead of the Cephes polynomials: its noise differs from x86's
 *  (and diffuse's) in the last bits of ~40% of the elements (at most ~2.3e-6 absolute, measured on
 *  2^20 samples with torch 2.15 `ATEN_CPU_CAPABILITY=default` on glibc).
 *
 *  **`PhiloxGenerator`** reproduces `torch.randn(..., device="cuda")` the way AUTOMATIC1111's
 *  `modules/rng_philox.py` does (its "NV" random source): Philox4x32-10 keyed by the seed, one
 *  counter per element, the first Box–Muller output in double precision, offset + 1 per call.
 *  It is bit-identical to A1111's numpy code. A1111's code is not bit-identical to CUDA itself
 *  (curand computes in float): the CUDA values printed in its docstring are within 3e-7.
 *
 *  **Example**
 *  @code
 *  diffuse::TorchGenerator gen(42);                           // torch.manual_seed(42)
 *  diffuse::Tensor x = diffuse::randn(gen, {1, 4, 64, 64});   // torch.randn(1, 4, 64, 64)
 *  const auto saved = gen.state();       // like gen.get_state() (diffuse's own format)
 *  diffuse::Tensor a = diffuse::randn(gen, {4});
 *  gen.set_state(saved);                 // like gen.set_state(...)
 *  diffuse::Tensor b = diffuse::randn(gen, {4});              // == a
 *  @endcode
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// torch's CPU generator: MT19937 plus the cached double normal sample of its serial path.
/// Copyable: a copy continues the same stream independently. Not thread-safe (torch locks a
/// mutex per call): use one generator per thread, or lock around it.
class DIFFUSE_API TorchGenerator {
 public:
  /// The seed of a fresh `torch.Generator()` (`c10::default_rng_seed_val`).
  static constexpr std::uint64_t kDefaultSeed = 67280421310721ull;
  /// Words of MT19937 state.
  static constexpr std::size_t kStateWords = 624;

  /// Everything the generator holds; compare, store and restore it freely.
  struct State {
    std::array<std::uint32_t, kStateWords> mt{};  ///< the twister's state words
    std::uint32_t index = kStateWords;            ///< next word to output; kStateWords = twist first
    std::uint64_t seed = kDefaultSeed;            ///< the seed as given to manual_seed (all 64 bits)
    std::optional<double> next_normal;            ///< cached `r sin θ` of the serial normal path
    bool operator==(const State&) const = default;
  };

  /// A generator seeded with `seed` (see manual_seed).
  explicit TorchGenerator(std::uint64_t seed = kDefaultSeed) { manual_seed(seed); }

  /// `torch.manual_seed(seed)`: MT19937 `init_genrand(seed & 0xffffffff)` and drops the cached
  /// normal. Negative Python seeds arrive as their two's complement, as in torch.
  void manual_seed(std::uint64_t seed);
  /// The seed last given to manual_seed (`Generator.initial_seed()`), all 64 bits of it.
  std::uint64_t initial_seed() const { return state_.seed; }

  /// One 32-bit output of MT19937 (torch `CPUGeneratorImpl::random`).
  std::uint32_t random() {
    if (state_.index >= kStateWords) twist();
    return temper(state_.mt[state_.index++]);
  }
  /// Two outputs, the first in the high half (torch `CPUGeneratorImpl::random64`).
  std::uint64_t random64() {
    const std::uint64_t hi = random();
    return (hi << 32) | random();
  }
  /// `at::uniform_real_distribution<float>(0, 1)`: `(random() & 0xFFFFFF)·2⁻²⁴`.
  float uniform_float() { return static_cast<float>(random() & 0xFFFFFFu) * 0x1p-24f; }
  /// `at::uniform_real_distribution<double>(0, 1)`: `(random64() & (2⁵³−1))·2⁻⁵³`.
  double uniform_double() { return static_cast<double>(random64() & ((std::uint64_t{1} << 53) - 1)) * 0x1p-53; }
  /// `at::normal_distribution<double>(0, 1)`: returns the cached sample if there is one, else
  /// draws two uniforms (4 words), caches `r sin θ` and returns `r cos θ`.
  double normal_double();
  /// Fills `out` with `n` float uniforms (n words), faster than calling uniform_float n times.
  void fill_uniform_float(float* out, std::size_t n);

  /// The cached normal sample, if any (`next_double_normal_sample`).
  std::optional<double> next_double_normal_sample() const { return state_.next_normal; }
  void set_next_double_normal_sample(std::optional<double> v) { state_.next_normal = v; }

  /// The whole state, to store (`Generator.get_state()`).
  const State& state() const { return state_; }
  /// Restores a state from state(); the stream continues exactly from where it was saved.
  void set_state(const State& s);

  /// Size of torch's CPU generator state (`torch.get_rng_state()`, `Generator.get_state()`).
  static constexpr std::size_t kTorchStateBytes = 5056;
  /// The state in torch's byte layout (`CPUGeneratorImplState`, little-endian x86-64): load it
  /// with `torch.set_rng_state(torch.tensor(list(bytes), dtype=torch.uint8))` to continue in
  /// torch. The float-normal cache torch also keeps is unused by randn and written as empty.
  std::vector<std::uint8_t> torch_state() const;
  /// Loads a state from `torch.get_rng_state().numpy().tobytes()` (5056 bytes; the 5048-byte
  /// legacy layout is accepted too). Throws format_error on another size or an invalid position.
  void set_torch_state(std::span<const std::uint8_t> bytes);

 private:
  void twist();
  static std::uint32_t temper(std::uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    return y ^ (y >> 18);
  }

  State state_;
};

/// `torch.randn(shape)` for float32 on the CPU, drawn from `gen` (see the file comment).
DIFFUSE_API Tensor randn(TorchGenerator& gen, const Shape& shape);
/// The same into a caller's buffer: `out.size()` is the numel, row-major.
DIFFUSE_API void randn(TorchGenerator& gen, std::span<float> out);
/// `torch.randn(shape, dtype=torch.float16)`: IEEE binary16 bits into `out`.
DIFFUSE_API void randn_f16(TorchGenerator& gen, std::span<std::uint16_t> out);
/// `torch.randn(shape, dtype=torch.bfloat16)`: bfloat16 bits into `out`.
DIFFUSE_API void randn_bf16(TorchGenerator& gen, std::span<std::uint16_t> out);
/// "avx2" or "scalar": the Box–Muller kernel randn uses on this machine (both give the same bits).
DIFFUSE_API std::string_view randn_isa();

/// torch's CUDA generator as reproduced by A1111 (`modules/rng_philox.py`, "NV" RNG source).
/// Element i of a call is Philox4x32-10 of counter (offset, 0, i, 0) and key (seed low, seed
/// high); outputs x, y give `u = x·2⁻³² + 2⁻³³`, `v = y·2π·2⁻³² + π·2⁻³²` (f32-rounded
/// constants, arithmetic in double) and `√(−2 ln u)·sin v` rounded to float. Each call uses the
/// current offset, then increments it by one. The offset enters the counter as 32 bits.
class DIFFUSE_API PhiloxGenerator {
 public:
  explicit PhiloxGenerator(std::uint64_t seed = 0, std::uint64_t offset = 0) : seed_(seed), offset_(offset) {}

  std::uint64_t seed() const { return seed_; }
  std::uint64_t offset() const { return offset_; }
  /// Sets seed and offset (a saved state, or A1111's generator after n calls: offset n).
  void manual_seed(std::uint64_t seed, std::uint64_t offset = 0) {
    seed_ = seed;
    offset_ = offset;
  }
  void set_offset(std::uint64_t offset) { offset_ = offset; }

  /// `randn(shape)`: fills `out` (at most 2³² elements; value_error beyond), then offset += 1.
  void randn(std::span<float> out);
  Tensor randn(const Shape& shape);

  /// The raw Philox4x32 block function with 10 rounds (A1111's `philox4_32`).
  static std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter,
                                                     std::array<std::uint32_t, 2> key);

 private:
  std::uint64_t seed_;
  std::uint64_t offset_;
};

DIFFUSE_END_NAMESPACE
