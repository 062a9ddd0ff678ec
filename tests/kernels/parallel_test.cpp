// SPDX-License-Identifier: MIT
// ThreadPool: static contiguous splits, every item exactly once, inline for one thread,
// exceptions carried back to the caller, and the Context's growing workspace.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <algorithm>
#include <vector>

#include "diffuse/core/error.hpp"
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

/// Threads of this process (entries of /proc/self/task).
std::size_t live_threads() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

/// The thread count once it has settled at `want`, or the last count after 2 s. A joined thread can
/// still be listed in /proc/self/task for a moment: pthread_join returns when the kernel clears the
/// thread's tid, which happens before the kernel removes its task entry. (Seen on a CI machine: one
/// extra entry right after the join.)
std::size_t live_threads_settled(std::size_t want) {
  std::size_t n = live_threads();
  for (int i = 0; i < 200 && n != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = live_threads();
  }
  return n;
}

std::atomic<std::size_t> g_fail_at{0};
bool fail_at_hook(std::size_t w) { return w != g_fail_at.load(); }

struct HookGuard {
  ~HookGuard() { dk::testing::set_thread_start_hook(nullptr); }
};

// A thread that cannot be started is a resource_error naming the thread, and the workers started
// before it are joined: no thread is left behind, and no std::terminate (a vector of joinable
// std::threads destroyed by the unwinding).
TEST(ThreadPool, ThreadStartFailureIsATypedErrorAndLeavesNoThread) {
  HookGuard guard;
  // ThreadSanitizer starts a background thread of its own at the process's first pthread_create: start
  // and join one thread first, so that it is in the baseline (ctest runs this test in a fresh process).
  std::thread([] {}).join();
  std::size_t before = live_threads();  // the joined thread may be listed a moment longer: the least of 0.2 s
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    before = std::min(before, live_threads());
  }
  for (std::size_t fail_at : {1u, 2u, 5u, 7u}) {
    g_fail_at = fail_at;
    dk::testing::set_thread_start_hook(fail_at_hook);
    try {
      dk::ThreadPool pool(8);
      ADD_FAILURE() << "no error when thread " << fail_at << " fails to start";
    } catch (const diffuse::resource_error& e) {
      const std::string want = "[ThreadPool] could not start thread " + std::to_string(fail_at + 1) + " of 8";
      EXPECT_EQ(std::string(e.what()).rfind(want, 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find("use fewer threads"), std::string::npos) << e.what();
    }
    EXPECT_EQ(live_threads_settled(before), before) << "threads left running after a failure at thread " << fail_at;
  }
  dk::testing::set_thread_start_hook(nullptr);
  dk::ThreadPool ok(8);  // the hook removed, pools start again
  EXPECT_EQ(live_threads_settled(before + 7), before + 7);
}

TEST(ThreadPool, ContextPropagatesTheStartFailure) {
  HookGuard guard;
  g_fail_at = 3;
  dk::testing::set_thread_start_hook(fail_at_hook);
  EXPECT_THROW(dk::Context ctx(4), diffuse::resource_error);
}

TEST(ThreadPool, RefusesMoreThanMaxThreads) {
  try {
    dk::ThreadPool pool(dk::ThreadPool::kMaxThreads + 1);
    ADD_FAILURE() << "no error";
  } catch (const diffuse::value_error& e) {
    EXPECT_STREQ(e.what(), "[ThreadPool] at most 256 threads, got 257");
  }
  dk::ThreadPool all(0);  // 0: the hardware's threads, capped
  EXPECT_GE(all.size(), 1u);
  EXPECT_LE(all.size(), dk::ThreadPool::kMaxThreads);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DIFFUSE_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DIFFUSE_TEST_SANITIZED 1
#endif
#endif

// The real failure, as `prlimit --as=...` gives it: in a child process whose address space is
// capped 256 MB above what it uses, 256 threads (8 MB of stack each) cannot all start.
TEST(ThreadPool, AddressSpaceLimitGivesResourceError) {
#ifdef DIFFUSE_TEST_SANITIZED
  GTEST_SKIP() << "sanitizers reserve terabytes of address space; the hook test covers this build";
#else
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::size_t vm_kb = 0;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stoul(line.substr(7));
    const rlim_t cap = static_cast<rlim_t>(vm_kb) * 1024 + (rlim_t{256} << 20);
    const rlimit rl{cap, cap};
    if (vm_kb == 0 || setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
    int code = 1;
    try {
      dk::ThreadPool pool(dk::ThreadPool::kMaxThreads);
      code = 2;  // all started: the limit did not bite
    } catch (const diffuse::resource_error&) {
      code = 0;
    } catch (...) {
      code = 1;
    }
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: another exception, 2: no error, 3: setrlimit failed";
#endif
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
