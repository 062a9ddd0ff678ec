// SPDX-License-Identifier: MIT
/** @file parallel.hpp
 *  An explicit thread pool. diffuse never starts a thread behind the caller's back: whoever wants
 *  threads creates a `ThreadPool` (or a `kernels::Context`, which owns one) and passes it to the
 *  kernels. Kernels themselves never start threads; they take a `[begin, end)` range.
 *
 *  `parallel_for(n_items, fn)` splits `[0, n_items)` into at most `size()` contiguous chunks, the
 *  same way on every call (chunk t is `[t*n/T, (t+1)*n/T)` with T = min(size(), n_items)), and
 *  calls `fn(begin, end, thread_index)` once per chunk. The split depends only on `n_items` and
 *  the pool size, never on timing, so a kernel whose per-item work is independent of the chunk
 *  gives bit-identical results for any thread count. The calling thread runs chunk 0; a pool of
 *  size 1 runs everything inline and owns no thread at all.
 *
 *  **Example**
 *  @code
 *  diffuse::kernels::ThreadPool pool(2);
 *  pool.parallel_for(rows, [&](std::size_t begin, std::size_t end, std::size_t) {
 *    for (std::size_t r = begin; r < end; ++r) process(r);
 *  });
 *  @endcode
 *
 *  The pool is not re-entrant: `fn` must not call `parallel_for` on the same pool, and only one
 *  thread may call `parallel_for` at a time. An exception thrown by `fn` in any chunk is rethrown
 *  to the caller after every chunk has finished (the first one wins). */
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

/// A fixed set of worker threads, created in the constructor and joined in the destructor.
class DIFFUSE_API ThreadPool {
 public:
  /// The largest pool: more threads than this only add spinning and stack memory.
  static constexpr std::size_t kMaxThreads = 256;

  /** A pool that runs `parallel_for` on `n_threads` threads: the caller plus `n_threads - 1`
   *  workers. `n_threads == 0` means `std::thread::hardware_concurrency()` (at least 1, at most
   *  kMaxThreads). Throws value_error for more than kMaxThreads, and resource_error when the
   *  system refuses to start a thread (its limit on threads or memory); the workers already
   *  started are then stopped and joined, so nothing is left running. */
  explicit ThreadPool(std::size_t n_threads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  /// Number of threads taking part in `parallel_for`, the caller included (>= 1).
  std::size_t size() const noexcept { return n_threads_; }

  /// Calls `fn(begin, end, thread_index)` on contiguous chunks of `[0, n_items)` (see the file
  /// comment for the split) and returns when all are done. `n_items == 0` calls nothing.
  template <class F>
  void parallel_for(std::size_t n_items, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run(n_items, [](void* ctx, std::size_t b, std::size_t e, std::size_t t) { (*static_cast<Fn*>(ctx))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(std::addressof(fn))));
  }

  /// The chunk of `[0, n_items)` that `parallel_for` gives to thread `t` of `n_chunks`.
  static constexpr std::pair<std::size_t, std::size_t> chunk(std::size_t n_items, std::size_t n_chunks,
                                                             std::size_t t) noexcept {
    return {n_items * t / n_chunks, n_items * (t + 1) / n_chunks};
  }

 private:
  using Trampoline = void (*)(void*, std::size_t, std::size_t, std::size_t);
  void run(std::size_t n_items, Trampoline call, void* ctx);

 public:
  struct State;  // defined in thread_pool.cpp

 private:
  std::size_t n_threads_;
  std::unique_ptr<State> state_;  // null when n_threads_ == 1
};

namespace testing {
/// Called before worker `w` (1-based; the caller is thread 0) is started; returning false makes
/// that start fail as if the system had refused it (EAGAIN). For tests of the failure path.
using ThreadStartHook = bool (*)(std::size_t w);
/// Installs `hook` for every pool constructed from now on (nullptr: none, the default).
DIFFUSE_API void set_thread_start_hook(ThreadStartHook hook) noexcept;
}  // namespace testing

/** Activation memory of a network forward, handed out as a stack. A forward calls `reset()`,
 *  then `alloc()`s its buffers in the same order on every call; `mark()` / `release()` free the
 *  temporaries of a block again. The first forward at a given input shape may spill into extra
 *  chunks; `reset()` then merges them into one block of the peak size, so every later forward of
 *  that shape allocates nothing (the plan is the call sequence itself). Buffers are 64-byte
 *  aligned and uninitialised. `peak_bytes()` is the high-water mark, for the memory benchmark. */
class DIFFUSE_API Arena {
 public:
  Arena() = default;
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /// `n` floats, 64-byte aligned, valid until reset() or a release() below it.
  float* alloc(std::size_t n);
  /// The current top of the stack, for release().
  std::size_t mark() const noexcept { return used_; }
  /// Frees everything allocated since `m` (stack order).
  void release(std::size_t m) noexcept;
  /// Frees everything; consolidates spilled chunks into one block of the peak size.
  void reset();
  /// Highest number of bytes in use at once since construction.
  std::size_t peak_bytes() const noexcept { return peak_ * sizeof(float); }
  /// Bytes currently reserved.
  std::size_t capacity_bytes() const noexcept;
  /// Caps the bytes the arena may reserve (0: no cap): an alloc() that would need a new chunk
  /// beyond it raises memory_error, before allocating. The pipeline sets it for each step from
  /// GenerateOptions::memory_limit.
  void set_limit(std::uint64_t bytes) noexcept { limit_ = bytes; }
  std::uint64_t limit() const noexcept { return limit_; }

 private:
  struct Chunk {
    float* data;
    std::size_t begin;  // stack offset (floats) of data[0]
    std::size_t size;   // floats
  };
  std::vector<Chunk> chunks_;
  std::size_t used_ = 0;  // floats, stack offset of the top
  std::size_t peak_ = 0;
  std::uint64_t limit_ = 0;
};

/// What a sequence of kernel calls shares: the thread pool, a scratch arena for packing, and the
/// activation arena of network forwards. The scratch only grows (to the largest request seen),
/// so after the first call of each shape a sampling loop allocates nothing. Not thread-safe: one
/// Context per calling thread.
class DIFFUSE_API Context {
 public:
  /// A context with a pool of `n_threads` threads (see ThreadPool).
  explicit Context(std::size_t n_threads = 1);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ThreadPool& pool() noexcept { return pool_; }
  std::size_t threads() const noexcept { return pool_.size(); }

  /// At least `n_floats` floats of scratch, 64-byte aligned; valid until the next call.
  std::span<float> workspace(std::size_t n_floats);

  /// The activation arena (see Arena).
  Arena& arena() noexcept { return activations_; }

 private:
  ThreadPool pool_;
  std::vector<float> arena_;
  Arena activations_;
};

}  // namespace kernels
DIFFUSE_END_NAMESPACE
