// SPDX-License-Identifier: MIT
// ThreadPool: static contiguous splits, every item exactly once, inline for one thread,
// exceptions carried back to the caller, and the Context's growing workspace.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "diffuse/kernels/parallel.hpp"

namespace {

namespace dk = diffuse::kernels;

TEST(ThreadPool, SplitIsStaticAndContiguous) {
  for (std::size_t threads : {1u, 2u, 3u, 5u}) {
    dk::ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (std::size_t n : {0u, 1u, 2u, 7u, 100u}) {
      std::vector<int> hits(n, 0);
      std::vector<std::size_t> owner(n, 99);
      pool.parallel_for(n, [&](std::size_t b, std::size_t e, std::size_t t) {
        for (std::size_t i = b; i < e; ++i) {
          ++hits[i];
          owner[i] = t;
        }
      });
      const std::size_t chunks = std::min(n, threads);
      for (std::size_t i = 0; i < n; ++i) {
        EXPECT_EQ(hits[i], 1);
        // item i belongs to the chunk [n*t/T, n*(t+1)/T) that contains it
        const auto [b, e] = dk::ThreadPool::chunk(n, chunks, owner[i]);
        EXPECT_TRUE(b <= i && i < e) << "item " << i << " ran on thread " << owner[i];
      }
    }
  }
}

TEST(ThreadPool, OneThreadRunsInline) {
  dk::ThreadPool pool(1);
  const auto me = std::this_thread::get_id();
  std::thread::id seen;
  pool.parallel_for(10, [&](std::size_t, std::size_t, std::size_t) { seen = std::this_thread::get_id(); });
  EXPECT_EQ(seen, me);
}

TEST(ThreadPool, UsesOtherThreadsAndIsReusable) {
  dk::ThreadPool pool(2);
  for (int round = 0; round < 200; ++round) {
    std::atomic<int> sum{0};
    std::thread::id ids[2];
    pool.parallel_for(2, [&](std::size_t b, std::size_t, std::size_t t) {
      sum += static_cast<int>(b) + 1;
      ids[t] = std::this_thread::get_id();
    });
    ASSERT_EQ(sum.load(), 3);
    ASSERT_NE(ids[0], ids[1]);
    ASSERT_EQ(ids[0], std::this_thread::get_id());  // the caller runs chunk 0
  }
}

TEST(ThreadPool, RethrowsAfterAllChunksFinish) {
  dk::ThreadPool pool(2);
  std::atomic<int> finished{0};
  EXPECT_THROW(pool.parallel_for(2,
                                 [&](std::size_t b, std::size_t, std::size_t) {
                                   if (b == 1) throw std::runtime_error("worker");
                                   ++finished;
                                 }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), 1);
  // still usable afterwards
  int calls = 0;
  pool.parallel_for(1, [&](std::size_t, std::size_t, std::size_t) { ++calls; });
  EXPECT_EQ(calls, 1);
}

TEST(Context, WorkspaceIsAlignedAndStopsGrowing) {
  dk::Context ctx(2);
  EXPECT_EQ(ctx.threads(), 2u);
  const float* first = ctx.workspace(1000).data();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 64, 0u);
  const auto big = ctx.workspace(5000);
  EXPECT_EQ(big.size(), 5000u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big.data()) % 64, 0u);
  EXPECT_EQ(ctx.workspace(100).data(), big.data());  // no reallocation for smaller requests
  EXPECT_EQ(ctx.workspace(5000).data(), big.data());
}

}  // namespace
