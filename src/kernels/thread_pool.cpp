// SPDX-License-Identifier: MIT
// The thread pool behind diffuse/kernels/parallel.hpp. Workers sleep on a condition variable and
// wake once per parallel_for (a generation counter tells them a new job arrived); the caller
// runs chunk 0 itself and then waits for the others. No work stealing: chunk t always goes to
// worker t, so the split never depends on timing.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

struct ThreadPool::State {
  std::mutex mutex;
  std::condition_variable wake;  // workers wait here for a new generation (or stop)
  std::condition_variable done;  // the caller waits here for pending == 0
  std::uint64_t generation = 0;
  bool stop = false;
  // The current job; written under the mutex before the generation is bumped.
  Trampoline call = nullptr;
  void* ctx = nullptr;
  std::size_t n_items = 0;
  std::size_t n_chunks = 0;
  std::size_t pending = 0;
  std::exception_ptr error;
  std::vector<std::thread> workers;
};

namespace {
std::size_t resolve_threads(std::size_t n) {
  if (n != 0) return n;
  return std::max<std::size_t>(1, std::thread::hardware_concurrency());
}
}  // namespace

ThreadPool::ThreadPool(std::size_t n_threads) : n_threads_(resolve_threads(n_threads)) {
  if (n_threads_ == 1) return;
  state_ = std::make_unique<State>();
  State* s = state_.get();
  s->workers.reserve(n_threads_ - 1);
  for (std::size_t w = 1; w < n_threads_; ++w) {
    s->workers.emplace_back([s, w] {
      std::uint64_t seen = 0;
      for (;;) {
        Trampoline call;
        void* ctx;
        std::size_t n_items, n_chunks;
        {
          std::unique_lock lock(s->mutex);
          s->wake.wait(lock, [&] { return s->stop || s->generation != seen; });
          if (s->stop) return;
          seen = s->generation;
          call = s->call;
          ctx = s->ctx;
          n_items = s->n_items;
          n_chunks = s->n_chunks;
        }
        if (w >= n_chunks) continue;  // fewer items than threads: this worker sits this one out
        std::exception_ptr err;
        const auto [b, e] = chunk(n_items, n_chunks, w);
        try {
          call(ctx, b, e, w);
        } catch (...) {
          err = std::current_exception();
        }
        std::lock_guard lock(s->mutex);
        if (err && !s->error) s->error = err;
        if (--s->pending == 0) s->done.notify_one();
      }
    });
  }
}

ThreadPool::~ThreadPool() {
  if (!state_) return;
  {
    std::lock_guard lock(state_->mutex);
    state_->stop = true;
  }
  state_->wake.notify_all();
  for (auto& t : state_->workers) t.join();
}

void ThreadPool::run(std::size_t n_items, Trampoline call, void* ctx) {
  if (n_items == 0) return;
  const std::size_t n_chunks = std::min(n_items, n_threads_);
  if (n_chunks == 1) {  // inline: no synchronisation at all
    call(ctx, 0, n_items, 0);
    return;
  }
  State* s = state_.get();
  {
    std::lock_guard lock(s->mutex);
    s->call = call;
    s->ctx = ctx;
    s->n_items = n_items;
    s->n_chunks = n_chunks;
    s->pending = n_chunks - 1;
    s->error = nullptr;
    ++s->generation;
  }
  s->wake.notify_all();
  std::exception_ptr err;
  const auto [b, e] = chunk(n_items, n_chunks, 0);
  try {
    call(ctx, b, e, 0);
  } catch (...) {
    err = std::current_exception();
  }
  std::unique_lock lock(s->mutex);
  s->done.wait(lock, [&] { return s->pending == 0; });
  if (!err) err = s->error;
  s->error = nullptr;
  lock.unlock();
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
