// SPDX-License-Identifier: MIT
// Opening and reading a ~1 GiB safetensors file (64 tensors of 16 MiB: F32, F16 and BF16). The
// file is written to /tmp on first use (DIFFUSE_BENCH_SAFETENSORS overrides the path). Numbers
// are for a warm page cache: each iteration maps the file afresh, so the page-touch benchmark
// measures mmap + page-fault throughput and to_f32 measures conversion from mapped memory.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/core/dtype.hpp"
#include "diffuse/io/safetensors.hpp"

namespace {

constexpr std::size_t kTensors = 64;
constexpr std::size_t kTensorBytes = std::size_t{16} << 20;

const std::filesystem::path& bench_file() {
  static const std::filesystem::path path = [] {
    const char* env = std::getenv("DIFFUSE_BENCH_SAFETENSORS");
    std::filesystem::path p = env ? env : "/tmp/diffuse_bench_1g.safetensors";
    const std::uintmax_t want = kTensors * kTensorBytes;
    std::error_code ec;
    const auto size = std::filesystem::file_size(p, ec);
    if (ec || size < want || size > want + 65536) {
      // One 16 MiB buffer of finite values, shared by every tensor: the layout is what matters.
      std::vector<std::uint16_t> buf(kTensorBytes / 2);
      for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::uint16_t>(0x3C00u + (i % 0x0400u));
      const auto bytes = std::as_bytes(std::span<const std::uint16_t>(buf));
      const diffuse::DType types[3] = {diffuse::DType::F32, diffuse::DType::F16, diffuse::DType::BF16};
      std::vector<diffuse::io::TensorData> list;
      for (std::size_t i = 0; i < kTensors; ++i) {
        const auto t = types[i % 3];
        const std::size_t n = kTensorBytes * 8 / diffuse::dtype_bits(t);
        list.push_back({"blocks." + std::to_string(i) + ".weight", t, {n / 1024, 1024}, bytes});
      }
      diffuse::io::save_safetensors(p, list, {{"format", "pt"}});
    }
    return p;
  }();
  return path;
}

void set_rate(benchmark::State& state, double bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Map + validate the header only.
void BM_SafetensorsOpen(benchmark::State& state) {
  const auto& p = bench_file();
  for (auto _ : state) {
    auto f = diffuse::io::SafetensorsFile::open(p);
    benchmark::DoNotOptimize(f.size());
  }
  state.counters["tensors"] = static_cast<double>(kTensors);
}
BENCHMARK(BM_SafetensorsOpen)->Unit(benchmark::kMicrosecond);

// Map, validate, and read one byte of every 4 KiB page of tensor data.
void BM_SafetensorsTouchPages(benchmark::State& state) {
  const auto& p = bench_file();
  double total = 0;
  for (auto _ : state) {
    auto f = diffuse::io::SafetensorsFile::open(p);
    unsigned sum = 0;
    total = 0;
    for (const auto& t : f.tensors()) {
      for (std::size_t i = 0; i < t.nbytes; i += 4096) sum += static_cast<unsigned>(t.data[i]);
      total += static_cast<double>(t.nbytes);
    }
    benchmark::DoNotOptimize(sum);
  }
  set_rate(state, total);
}
BENCHMARK(BM_SafetensorsTouchPages)->Unit(benchmark::kMillisecond)->UseRealTime();

// Map, validate, and convert every tensor to f32 (GB/s counts the stored bytes read).
void BM_SafetensorsToF32(benchmark::State& state) {
  const auto& p = bench_file();
  double total = 0;
  for (auto _ : state) {
    auto f = diffuse::io::SafetensorsFile::open(p);
    total = 0;
    for (const auto& t : f.tensors()) {
      diffuse::Tensor x = f.to_f32(t.name);
      benchmark::DoNotOptimize(x.data());
      total += static_cast<double>(t.nbytes);
    }
  }
  set_rate(state, total);
}
BENCHMARK(BM_SafetensorsToF32)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
