// SPDX-License-Identifier: MIT
// The thread pool behind diffuse/kernels/parallel.hpp. A network forward issues hundreds of short
// parallel_for calls back to back, so waking a sleeping thread each time (tens of microseconds)
// would cost more than the work: workers first spin on an atomic generation counter for a short
// while (kSpin) and only then sleep on a condition variable; the caller likewise spins before it
// sleeps waiting for the others. The caller runs chunk 0 itself. No work stealing: chunk t always
// goes to worker t, so the split never depends on timing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "diffuse/core/error.hpp"
#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

/// How long a thread spins for the next event before it goes to sleep.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

/// Spins until `ready()` or kSpin has passed; true when ready.
template <class F>
bool spin_until(F&& ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (unsigned i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if (i % 256 == 0 && std::chrono::steady_clock::now() > deadline) return ready();
  }
}

std::size_t resolve_threads(std::size_t n) {
  if (n != 0) return n;
  return std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, ThreadPool::kMaxThreads);
}

}  // namespace

struct ThreadPool::State {
  std::mutex mutex;
  std::condition_variable wake;  // sleeping workers wait here for a new generation (or stop)
  std::condition_variable done;  // a sleeping caller waits here for pending == 0
  std::atomic<std::uint64_t> generation{0};
  std::atomic<bool> stop{false};
  // The current job: written before `generation` is bumped (release), read after it is seen
  // (acquire); not rewritten before every worker has counted itself out of `pending`.
  Trampoline call = nullptr;
  void* ctx = nullptr;
  std::size_t n_items = 0;
  std::size_t n_chunks = 0;
  std::atomic<std::size_t> pending{0};  // workers (all of them) not yet done with this job
  std::exception_ptr error;             // under mutex
  std::vector<std::thread> workers;
};

namespace {

/// The body of worker `w`: waits for a generation, runs its chunk, counts itself out.
void worker_main(ThreadPool::State* s, std::size_t w);

/// Stops and joins every worker started so far (the destructor, and a constructor that failed).
void stop_and_join(ThreadPool::State& s) noexcept {
  {
    std::lock_guard lock(s.mutex);
    s.stop.store(true, std::memory_order_release);
  }
  s.wake.notify_all();
  for (auto& t : s.workers)
    if (t.joinable()) t.join();
  s.workers.clear();
}

std::atomic<testing::ThreadStartHook> g_thread_start_hook{nullptr};

}  // namespace

void testing::set_thread_start_hook(ThreadStartHook hook) noexcept {
  g_thread_start_hook.store(hook, std::memory_order_release);
}

ThreadPool::ThreadPool(std::size_t n_threads) : n_threads_(resolve_threads(n_threads)) {
  constexpr std::string_view where = "ThreadPool";
  if (n_threads_ > kMaxThreads)
    raise<value_error>(where, "at most " + std::to_string(kMaxThreads) + " threads, got " + std::to_string(n_threads_));
  if (n_threads_ == 1) return;
  auto state = std::make_unique<State>();
  State* s = state.get();
  s->workers.reserve(n_threads_ - 1);
  for (std::size_t w = 1; w < n_threads_; ++w) {
    std::string why;
    try {
      const auto hook = g_thread_start_hook.load(std::memory_order_acquire);
      if (hook && !hook(w)) throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
      s->workers.emplace_back(worker_main, s, w);
      continue;
    } catch (const std::system_error& e) {
      why = e.what();
    }
    // No half-built pool: the workers already running are stopped and joined before the error.
    stop_and_join(*s);
    raise<resource_error>(where, "could not start thread " + std::to_string(w + 1) + " of " + std::to_string(n_threads_) +
                                     " (" + why + "): the system's limit on threads or memory is reached; use fewer threads");
  }
  state_ = std::move(state);
}

namespace {

void worker_main(ThreadPool::State* s, std::size_t w) {
  std::uint64_t seen = 0;
  for (;;) {
    const auto fresh = [&] {
      return s->stop.load(std::memory_order_acquire) || s->generation.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(fresh)) {
      std::unique_lock lock(s->mutex);
      s->wake.wait(lock, fresh);
    }
    if (s->stop.load(std::memory_order_acquire)) return;
    seen = s->generation.load(std::memory_order_acquire);
    const auto call = s->call;
    void* const ctx = s->ctx;
    const std::size_t n_items = s->n_items, n_chunks = s->n_chunks;
    if (w < n_chunks) {  // with fewer items than threads, the last workers sit this one out
      std::exception_ptr err;
      const auto [b, e] = ThreadPool::chunk(n_items, n_chunks, w);
      try {
        call(ctx, b, e, w);
      } catch (...) {
        err = std::current_exception();
      }
      if (err) {
        std::lock_guard lock(s->mutex);
        if (!s->error) s->error = err;
      }
    }
    if (s->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(s->mutex);  // pairs with the caller's predicate check
      s->done.notify_one();
    }
  }
}

}  // namespace

ThreadPool::~ThreadPool() {
  if (state_) stop_and_join(*state_);
}

void ThreadPool::run(std::size_t n_items, Trampoline call, void* ctx) {
  if (n_items == 0) return;
  const std::size_t n_chunks = std::min(n_items, n_threads_);
  if (n_chunks == 1) {  // inline: no synchronisation at all
    call(ctx, 0, n_items, 0);
    return;
  }
  State* s = state_.get();
  s->call = call;
  s->ctx = ctx;
  s->n_items = n_items;
  s->n_chunks = n_chunks;
  s->error = nullptr;  // no worker touches it between jobs
  s->pending.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard lock(s->mutex);  // a worker about to sleep sees the new generation
    s->generation.fetch_add(1, std::memory_order_release);
  }
  s->wake.notify_all();
  std::exception_ptr err;
  const auto [b, e] = chunk(n_items, n_chunks, 0);
  try {
    call(ctx, b, e, 0);
  } catch (...) {
    err = std::current_exception();
  }
  const auto all_done = [&] { return s->pending.load(std::memory_order_acquire) == 0; };
  if (!spin_until(all_done)) {
    std::unique_lock lock(s->mutex);
    s->done.wait(lock, all_done);
  }
  {
    std::lock_guard lock(s->mutex);
    if (!err) err = s->error;
    s->error = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

Context::Context(std::size_t n_threads) : pool_(n_threads) {}
Context::~Context() = default;

std::span<float> Context::workspace(std::size_t n_floats) {
  constexpr std::size_t kAlignFloats = DIFFUSE_DEFAULT_ALIGNMENT / sizeof(float);
  if (arena_.size() < n_floats + kAlignFloats) arena_.resize(n_floats + kAlignFloats);
  const auto addr = reinterpret_cast<std::uintptr_t>(arena_.data());
  const std::size_t skip = (DIFFUSE_DEFAULT_ALIGNMENT - addr % DIFFUSE_DEFAULT_ALIGNMENT) % DIFFUSE_DEFAULT_ALIGNMENT /
                           sizeof(float);
  return {arena_.data() + skip, n_floats};
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
