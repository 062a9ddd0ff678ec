// SPDX-License-Identifier: MIT
// Tests of diffuse/core/random.hpp: torch's CPU noise and A1111's Philox noise, bit for bit,
// against fixtures written by tools/make_noise_fixtures.py (torch 2.15.0), on every Box–Muller
// path the CPU has; the scalar emulation against the AVX2 kernel on every possible uniform;
// generator state copy and restore.
#include "diffuse/core/random.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "diffuse/core/cpu.hpp"
#include "core/random_impl.hpp"

namespace {

using diffuse::PhiloxGenerator;
using diffuse::TorchGenerator;
using Kernel = void (*)(float*, std::size_t);

std::string data_path(const std::string& name) { return std::string(DIFFUSE_TEST_DATA_DIR) + "/noise/" + name; }

template <class T>
std::vector<T> read_raw(const std::string& name) {
  std::ifstream f(data_path(name), std::ios::binary);
  EXPECT_TRUE(f.good()) << data_path(name);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));  // fixtures are little-endian, as x86
  return v;
}

const nlohmann::json& manifest() {
  static const nlohmann::json j = [] {
    std::ifstream f(data_path("noise.json"));
    return nlohmann::json::parse(f);
  }();
  return j;
}

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

/// Compares bit patterns; reports the first few differing indices.
template <class A, class B>
void expect_bits_equal(const A& got, const B& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      ++bad;
      if (reported++ < 5) ADD_FAILURE() << what << ": element " << i << ": got 0x" << std::hex << got[i] << ", torch 0x" << want[i] << std::dec;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements differ";
}

std::vector<std::uint32_t> to_bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) b[i] = bits_of(v[i]);
  return b;
}

/// The kernels this CPU can run, by name.
std::vector<std::pair<std::string, Kernel>> kernels() {
  std::vector<std::pair<std::string, Kernel>> k = {{"scalar", diffuse::kernels::scalar::torch_box_muller_16}};
#if DIFFUSE_RANDOM_X86
  if (diffuse::cpu_features().avx2 && diffuse::cpu_features().fma)
    k.emplace_back("avx2", diffuse::kernels::avx2::torch_box_muller_16);
#endif
  return k;
}

/// torch.randn(n) through the public API (kernel == nullptr) or with a given Box–Muller kernel
/// (the same driver as randn, so that the scalar emulation is checked end to end on AVX2 CPUs).
std::vector<float> draw(TorchGenerator& gen, std::size_t n, Kernel kernel) {
  std::vector<float> out(n);
  if (kernel == nullptr || n < 16) {
    diffuse::randn(gen, out);
    return out;
  }
  gen.fill_uniform_float(out.data(), n);
  kernel(out.data(), n / 16);
  if (n % 16 != 0) {
    gen.fill_uniform_float(out.data() + n - 16, 16);
    kernel(out.data() + n - 16, 1);
  }
  return out;
}

std::vector<std::pair<std::string, Kernel>> paths() {
  auto p = kernels();
  p.insert(p.begin(), {std::string("randn (") + std::string(diffuse::randn_isa()) + ")", nullptr});
  return p;
}

// ---- MT19937 --------------------------------------------------------------------------------

TEST(TorchGenerator, WordsMatchMt19937) {
  for (const auto& [seed, words] : manifest()["mt19937_words"].items()) {
    TorchGenerator g(std::stoull(seed));
    for (std::size_t i = 0; i < words.size(); ++i) ASSERT_EQ(g.random(), words[i].get<std::uint32_t>()) << seed << " " << i;
  }
  TorchGenerator g(0);
  EXPECT_EQ(g.random(), 2357136044u);  // std::mt19937(0)
}

TEST(TorchGenerator, Random64IsHighWordFirst) {
  TorchGenerator a(42), b(42);
  const std::uint64_t hi = a.random(), lo = a.random();
  EXPECT_EQ(b.random64(), (hi << 32) | lo);
}

TEST(TorchGenerator, SeedUsesLow32Bits) {
  TorchGenerator a((std::uint64_t{1} << 32) + 5), b(5);
  EXPECT_EQ(a.initial_seed(), (std::uint64_t{1} << 32) + 5);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(a.random(), b.random());
  EXPECT_EQ(TorchGenerator().initial_seed(), 67280421310721ull);
}

TEST(TorchGenerator, UniformsAreTorchs) {
  TorchGenerator a(3), b(3);
  EXPECT_EQ(a.uniform_float(), static_cast<float>(b.random() & 0xFFFFFF) / 16777216.0f);
  EXPECT_EQ(a.uniform_double(), static_cast<double>(b.random64() & ((std::uint64_t{1} << 53) - 1)) / 9007199254740992.0);
  std::vector<float> bulk(2000);
  a.fill_uniform_float(bulk.data(), bulk.size());  // crosses twists
  for (float u : bulk) ASSERT_EQ(u, b.uniform_float());
}

// ---- torch.randn float32 ----------------------------------------------------------------------

TEST(TorchRandn, EverySizeUpTo100) {
  for (std::uint64_t seed : manifest()["seeds"].get<std::vector<std::uint64_t>>()) {
    const auto want = read_raw<std::uint32_t>("randn_sizes_seed" + std::to_string(seed) + ".f32");
    ASSERT_EQ(want.size(), 5050u);
    for (const auto& [name, kernel] : paths()) {
      std::vector<std::uint32_t> got;
      for (std::size_t n = 1; n <= 100; ++n) {
        TorchGenerator g(seed);
        const auto v = to_bits(draw(g, n, kernel));
        got.insert(got.end(), v.begin(), v.end());
      }
      expect_bits_equal(got, want, name + " seed " + std::to_string(seed));
    }
  }
}

TEST(TorchRandn, LatentShapes) {
  struct Case {
    const char* file;
    std::uint64_t seed;
    diffuse::Shape shape;
  };
  for (const Case& c : {Case{"randn_1x4x64x64_seed0.f32", 0, {1, 4, 64, 64}}, Case{"randn_1x4x64x64_seed42.f32", 42, {1, 4, 64, 64}},
                        Case{"randn_2x4x128x128_seed0.f32", 0, {2, 4, 128, 128}}}) {
    const auto want = read_raw<std::uint32_t>(c.file);
    for (const auto& [name, kernel] : paths()) {
      TorchGenerator g(c.seed);
      if (kernel == nullptr) {
        const diffuse::Tensor t = diffuse::randn(g, c.shape);
        EXPECT_EQ(t.shape(), c.shape);
        expect_bits_equal(to_bits(std::vector<float>(t.begin(), t.end())), want, name + " " + c.file);
      } else {
        expect_bits_equal(to_bits(draw(g, want.size(), kernel)), want, name + " " + c.file);
      }
    }
  }
}

TEST(TorchRandn, CallsInARowShareTheStreamAndTheCache) {
  for (const auto& s : manifest()["sequences"]) {
    for (const auto& [name, kernel] : paths()) {
      TorchGenerator g(s["seed"].get<std::uint64_t>());
      const auto sizes = s["sizes"].get<std::vector<std::size_t>>();
      for (std::size_t c = 0; c < sizes.size(); ++c)
        expect_bits_equal(to_bits(draw(g, sizes[c], kernel)), s["bits"][c].get<std::vector<std::uint32_t>>(),
                          name + " seed " + std::to_string(s["seed"].get<std::uint64_t>()) + " call " + std::to_string(c));
    }
  }
  const auto& gc = manifest()["generator_calls"];
  TorchGenerator g(gc["seed"].get<std::uint64_t>());
  for (std::size_t c = 0; c < 2; ++c) {
    const auto n = gc["sizes"][c].get<std::size_t>();
    expect_bits_equal(to_bits(draw(g, n, nullptr)), gc["bits"][c].get<std::vector<std::uint32_t>>(), "torch.Generator");
  }
}

TEST(TorchRandn, ReseedDropsTheCachedNormal) {
  TorchGenerator g(0);
  std::vector<float> three(3), one(1), fresh(1);
  diffuse::randn(g, three);  // leaves r sin θ cached
  ASSERT_TRUE(g.next_double_normal_sample().has_value());
  g.manual_seed(0);
  EXPECT_FALSE(g.next_double_normal_sample().has_value());
  diffuse::randn(g, one);
  EXPECT_EQ(bits_of(one[0]), bits_of(three[0]));
}

TEST(TorchRandn, BatchWithListOfGenerators) {
  // diffusers randn_tensor(generator=[g0, g1]): one draw per sample with its own generator.
  const auto& b = manifest()["batch_list_of_generators"];
  for (std::size_t i = 0; i < 2; ++i) {
    TorchGenerator g(b["seeds"][i].get<std::uint64_t>());
    const diffuse::Tensor t = diffuse::randn(g, {1, 4, 4, 4});
    expect_bits_equal(to_bits(std::vector<float>(t.begin(), t.end())), b["bits"][i].get<std::vector<std::uint32_t>>(), "batch sample");
  }
}

// The check values of models.md section 8 (4 decimals, as published for torch).
TEST(TorchRandn, ReferenceCheckValues) {
  const auto near = [](const std::vector<float>& got, std::size_t from, const std::vector<double>& want) {
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[from + i], want[i], 0.5e-4) << i;
  };
  TorchGenerator g(0);
  near(draw(g, 6, nullptr), 0, {1.5410, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986});
  g.manual_seed(0);
  near(draw(g, 16, nullptr), 0,
       {-1.1258, -1.1524, -0.2506, -0.4339, 0.8487, 0.6920, -0.3160, -2.1152, 0.3223, -1.2633, 0.3500, 0.3081, 0.1198, 1.2377,
        1.1168, -0.2473});
  g.manual_seed(0);
  const auto v20 = draw(g, 20, nullptr);
  near(v20, 0, {-1.1258, -1.1524, -0.2506, -0.4339});
  near(v20, 4, {0.5988, -1.5551, -0.3414, 1.8530, 0.4681, -0.1577, 1.4437, 0.2660, 1.3894, 1.5863, 0.9463, -0.8437, 0.9318, 1.2590, 2.0050, 0.0537});
  g.manual_seed(0);
  near(draw(g, 48, nullptr), 16, {-1.3527, -1.6959, 0.5667, 0.7935, 0.5988, -1.5551, -0.3414, 1.8530});
  // schedulers.md section 6: randn(16)[:4] to 7 decimals.
  g.manual_seed(0);
  near(draw(g, 16, nullptr), 0, {-1.1258398, -1.1523602, -0.2505786, -0.4338788});
}

// ---- float16 / bfloat16 -----------------------------------------------------------------------

TEST(TorchRandn, HalfTypes) {
  for (const char* tag : {"f16", "bf16"}) {
    const auto want = read_raw<std::uint16_t>(std::string("randn_") + tag + "_sizes_seed0.u16");
    ASSERT_EQ(want.size(), 5050u);
    std::vector<std::uint16_t> got;
    for (std::size_t n = 1; n <= 100; ++n) {
      TorchGenerator g(0);
      std::vector<std::uint16_t> v(n);
      if (tag[0] == 'f')
        diffuse::randn_f16(g, v);
      else
        diffuse::randn_bf16(g, v);
      got.insert(got.end(), v.begin(), v.end());
    }
    expect_bits_equal(got, want, tag);
  }
  const auto want = read_raw<std::uint16_t>("randn_f16_1x4x64x64_seed0.u16");
  TorchGenerator g(0);
  std::vector<std::uint16_t> v(want.size());
  diffuse::randn_f16(g, v);
  expect_bits_equal(v, want, "f16 1x4x64x64");
}

// ---- the kernels against each other -----------------------------------------------------------

// Every one of the 2^24 possible uniforms goes through the u1 (log) and the u2 (sincos) lanes.
TEST(TorchBoxMuller, ScalarEmulationEqualsAvx2OnEveryUniform) {
  const auto k = kernels();
  if (k.size() < 2) GTEST_SKIP() << "no AVX2 on this CPU";
  constexpr std::size_t kValues = std::size_t{1} << 24, kBatch = std::size_t{1} << 16;
  std::vector<float> a(kBatch * 2), b(kBatch * 2);
  std::size_t bad = 0;
  for (std::size_t base = 0; base < kValues; base += kBatch) {
    for (std::size_t i = 0; i < kBatch; ++i) {
      const std::size_t v = base + i, blk = i / 8, lane = i % 8;
      a[blk * 16 + lane] = static_cast<float>(v) * 0x1p-24f;                                  // u1
      a[blk * 16 + 8 + lane] = static_cast<float>((v * 2654435761u) & (kValues - 1)) * 0x1p-24f;  // u2 (a bijection)
    }
    b = a;
    k[0].second(a.data(), a.size() / 16);
    k[1].second(b.data(), b.size() / 16);
    for (std::size_t i = 0; i < a.size(); ++i) bad += bits_of(a[i]) != bits_of(b[i]);
  }
  EXPECT_EQ(bad, 0u);
}

// ---- state -----------------------------------------------------------------------------------------

TEST(TorchGenerator, CopyAndRestoreReproduceTheStream) {
  TorchGenerator g(1234);
  std::vector<float> warm(5);
  diffuse::randn(g, warm);  // odd count: a cached normal is pending
  ASSERT_TRUE(g.next_double_normal_sample().has_value());
  const TorchGenerator copy = g;
  const TorchGenerator::State saved = g.state();

  const auto first = draw(g, 1, nullptr);
  const auto big = draw(g, 1000, nullptr);
  const auto tail = draw(g, 7, nullptr);

  TorchGenerator c = copy;
  EXPECT_EQ(to_bits(draw(c, 1, nullptr)), to_bits(first));
  EXPECT_EQ(to_bits(draw(c, 1000, nullptr)), to_bits(big));
  EXPECT_EQ(to_bits(draw(c, 7, nullptr)), to_bits(tail));

  TorchGenerator r(99);
  r.set_state(saved);
  EXPECT_EQ(r.state(), saved);
  EXPECT_EQ(r.initial_seed(), 1234u);
  EXPECT_EQ(to_bits(draw(r, 1, nullptr)), to_bits(first));
  EXPECT_EQ(to_bits(draw(r, 1000, nullptr)), to_bits(big));
  EXPECT_NE(r.state(), saved);

  TorchGenerator::State broken = saved;
  broken.index = 625;
  EXPECT_THROW(r.set_state(broken), diffuse::value_error);
}

TEST(TorchGenerator, TorchStateBytesRoundTrip) {
  struct Case {
    const char* file;
    std::uint64_t seed;
    std::vector<std::size_t> draws;
  };
  for (const Case& c : {Case{"torch_state_seed0_randn3.bin", 0, {3}}, Case{"torch_state_seed42_randn700_16.bin", 42, {700, 16}}}) {
    const auto want = read_raw<std::uint8_t>(c.file);
    ASSERT_EQ(want.size(), TorchGenerator::kTorchStateBytes);
    TorchGenerator g(c.seed);
    for (std::size_t n : c.draws) draw(g, n, nullptr);
    const auto got = g.torch_state();
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      if ((i >= 5044 && i < 5048) || i >= 5053) continue;  // struct padding, uninitialised in torch
      ASSERT_EQ(got[i], want[i]) << c.file << " byte " << i;
    }
    TorchGenerator loaded(7);
    loaded.set_torch_state(want);
    EXPECT_EQ(loaded.state(), g.state()) << c.file;
    EXPECT_EQ(to_bits(draw(loaded, 37, nullptr)), to_bits(draw(g, 37, nullptr)));
  }
  TorchGenerator g(0);
  EXPECT_THROW(g.set_torch_state(std::vector<std::uint8_t>(100)), diffuse::format_error);
  auto bad = g.torch_state();
  bad[8] = 0;  // left = 0
  EXPECT_THROW(g.set_torch_state(bad), diffuse::format_error);
}

// ---- Philox (A1111) ------------------------------------------------------------------------------

TEST(Philox, MatchesA1111Reimplementation) {
  for (const auto& p : manifest()["philox"]) {
    PhiloxGenerator g(p["seed"].get<std::uint64_t>());
    const auto sizes = p["sizes"].get<std::vector<std::size_t>>();
    for (std::size_t c = 0; c < sizes.size(); ++c) {
      EXPECT_EQ(g.offset(), c);
      std::vector<float> v(sizes[c]);
      g.randn(v);
      expect_bits_equal(to_bits(v), p["bits"][c].get<std::vector<std::uint32_t>>(),
                        "philox seed " + std::to_string(p["seed"].get<std::uint64_t>()) + " call " + std::to_string(c));
    }
  }
}

TEST(Philox, A1111DocstringValues) {
  // modules/rng_philox.py: Generator(seed=0).randn(shape=(3, 4)), as printed there. Those digits
  // are torch CUDA's own output (float32 curand arithmetic); A1111's numpy code, which diffuse
  // follows bit for bit, computes in float64 and lands within 3 float32 ulp (< 3e-7) of them.
  PhiloxGenerator g(0);
  const diffuse::Tensor t = g.randn({3, 4});
  const auto want = manifest()["a1111_docstring_seed0_3x4"].get<std::vector<double>>();
  for (std::size_t i = 0; i < 12; ++i) EXPECT_NEAR(t[i], want[i], 3e-7) << i;
  EXPECT_EQ(g.offset(), 1u);
  g.set_offset(0);
  EXPECT_EQ(bits_of(g.randn({3, 4})[5]), bits_of(t[5]));
}

TEST(Philox, BlockFunctionKnownAnswer) {
  // Random123's published known-answer vectors for philox4x32_10.
  using A4 = std::array<std::uint32_t, 4>;
  EXPECT_EQ(PhiloxGenerator::philox4x32_10({0, 0, 0, 0}, {0, 0}), (A4{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  EXPECT_EQ(PhiloxGenerator::philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}),
            (A4{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  EXPECT_EQ(PhiloxGenerator::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}),
            (A4{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

}  // namespace
