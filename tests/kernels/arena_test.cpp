// SPDX-License-Identifier: MIT
// The activation arena: stack discipline, alignment, spill and consolidation, peak tracking.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "diffuse/kernels/parallel.hpp"

namespace {

using diffuse::kernels::Arena;

bool aligned64(const float* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

TEST(Arena, AllocationsAreAlignedAndDisjoint) {
  Arena a;
  float* p = a.alloc(3);
  float* q = a.alloc(17);
  float* r = a.alloc(1);
  EXPECT_TRUE(aligned64(p) && aligned64(q) && aligned64(r));
  for (int i = 0; i < 3; ++i) p[i] = 1.0f;
  for (int i = 0; i < 17; ++i) q[i] = 2.0f;
  r[0] = 3.0f;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p[i], 1.0f);
  for (int i = 0; i < 17; ++i) EXPECT_EQ(q[i], 2.0f);
  EXPECT_EQ(r[0], 3.0f);
  EXPECT_EQ(a.peak_bytes(), (16 + 32 + 16) * sizeof(float));  // rounded up to 64-byte lines
}

TEST(Arena, ReleaseReusesMemoryInStackOrder) {
  Arena a;
  float* keep = a.alloc(100);
  const std::size_t m = a.mark();
  float* tmp = a.alloc(50);
  a.release(m);
  float* again = a.alloc(50);
  EXPECT_EQ(tmp, again);
  EXPECT_NE(keep, again);
}

TEST(Arena, SpillsThenConsolidatesSoTheSecondPassDoesNotAllocate) {
  Arena a;
  auto pass = [&] {
    a.reset();
    std::vector<float*> ptrs;
    for (int i = 0; i < 6; ++i) {
      float* p = a.alloc(std::size_t{1} << 16);  // each fills a minimum-size chunk: forces spills
      p[0] = static_cast<float>(i);
      p[(std::size_t{1} << 16) - 1] = static_cast<float>(i);
      ptrs.push_back(p);
    }
    for (int i = 0; i < 6; ++i) {  // earlier buffers survive later spills
      EXPECT_EQ(ptrs[i][0], static_cast<float>(i));
      EXPECT_EQ(ptrs[i][(std::size_t{1} << 16) - 1], static_cast<float>(i));
    }
    return ptrs;
  };
  pass();
  const std::size_t peak = a.peak_bytes();
  EXPECT_EQ(peak, 6 * (std::size_t{1} << 16) * sizeof(float));
  const auto second = pass();
  const std::size_t capacity = a.capacity_bytes();
  EXPECT_EQ(capacity, peak);  // one block of the peak size
  const auto third = pass();
  EXPECT_EQ(second, third);  // same plan, same addresses
  EXPECT_EQ(a.capacity_bytes(), capacity);
}

TEST(Arena, ReleaseBelowASpilledChunkKeepsEarlierData) {
  Arena a;
  float* first = a.alloc(std::size_t{1} << 16);
  first[0] = 42.0f;
  const std::size_t m = a.mark();
  a.alloc(std::size_t{1} << 17);  // new chunk
  a.release(m);
  float* next = a.alloc(8);  // goes into a new chunk again (the first is full)
  next[0] = 1.0f;
  EXPECT_EQ(first[0], 42.0f);
}

TEST(Arena, ContextOwnsOne) {
  diffuse::kernels::Context ctx(1);
  float* p = ctx.arena().alloc(10);
  ASSERT_NE(p, nullptr);
  ctx.arena().reset();
  EXPECT_EQ(ctx.arena().mark(), 0u);
}

}  // namespace
