// SPDX-License-Identifier: MIT
// The activation arena of a network forward (see parallel.hpp): a stack of floats over one or
// more chunks; reset() merges spilled chunks into one block of the peak size.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <new>
#include <string>

#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

constexpr std::size_t kAlignFloats = 16;  // 64 bytes
constexpr std::size_t kMinChunk = std::size_t{1} << 16;

float* allocate(std::size_t floats) {
  return static_cast<float*>(::operator new(floats * sizeof(float), std::align_val_t{64}));
}
void deallocate(float* p) noexcept { ::operator delete(p, std::align_val_t{64}); }

}  // namespace

Arena::~Arena() {
  for (const Chunk& c : chunks_) deallocate(c.data);
}

float* Arena::alloc(std::size_t n) {
  constexpr std::size_t kMaxFloats = (std::numeric_limits<std::size_t>::max() / 4) / sizeof(float);
  if (n > kMaxFloats)
    raise<memory_error>("kernels::Arena", "an activation buffer of " + std::to_string(n) + " floats cannot be allocated");
  n = (std::max<std::size_t>(n, 1) + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  if (chunks_.empty() || used_ + n > chunks_.back().begin + chunks_.back().size) {
    // Spill: a new chunk starting at the current top; the old chunk's tail stays unused until
    // the stack is released below this chunk.
    const std::size_t size = std::max({n, kMinChunk, peak_ > used_ ? peak_ - used_ : std::size_t{0}});
    if (limit_ && capacity_bytes() + std::uint64_t{size} * sizeof(float) > limit_)
      raise<memory_error>("kernels::Arena",
                          "the network's activations need more than the memory limit of " + format_bytes(limit_) +
                              ": " + format_bytes(std::uint64_t{n} * sizeof(float)) + " more wanted on top of the " +
                              format_bytes(capacity_bytes()) + " held");
    chunks_.push_back({allocate(size), used_, size});
  }
  const Chunk& c = chunks_.back();
  float* p = c.data + (used_ - c.begin);
  used_ += n;
  peak_ = std::max(peak_, used_);
  return p;
}

void Arena::release(std::size_t m) noexcept {
  if (m >= used_) return;
  used_ = m;
  // Chunks that start above the new top hold nothing live any more.
  while (chunks_.size() > 1 && chunks_.back().begin > used_) {
    deallocate(chunks_.back().data);
    chunks_.pop_back();
  }
}

void Arena::reset() {
  used_ = 0;
  if (chunks_.size() == 1 && chunks_.front().size >= peak_) return;
  for (const Chunk& c : chunks_) deallocate(c.data);
  chunks_.clear();
  if (peak_ > 0) chunks_.push_back({allocate(peak_), 0, peak_});
}

std::size_t Arena::capacity_bytes() const noexcept {
  std::size_t n = 0;
  for (const Chunk& c : chunks_) n += c.size;
  return n * sizeof(float);
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
