// SPDX-License-Identifier: MIT
/** @file torch_noise.hpp
 *  Sampler noise from torch's CPU generator, so that stochastic samplers (euler_a, the SDE
 *  variants, ddpm, lcm, ...) draw exactly the noise diffusers draws with
 *  `torch.Generator().manual_seed(seed)`: each step asks for `torch.randn(x.shape)`.
 *
 *  Needs the compiled library (`diffuse::diffuse`) for `randn`.
 *
 *  **Example**
 *  @code
 *  diffuse::TorchGenerator gen(42);
 *  diffuse::Tensor x = diffuse::randn(gen, {1, 4, 64, 64});   // initial noise, as torch.randn
 *  auto noise = diffuse::torch_noise<float>(gen);              // continues the same stream
 *  @endcode
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

namespace detail {
/// out = torch.randn(out.shape) from `gen`; for T = double the f32 draws are widened via `buf`.
template <class T>
void fill_torch_randn(TorchGenerator& gen, std::vector<float>& buf, BasicTensor<T>& out) {
  if constexpr (std::is_same_v<T, float>) {
    randn(gen, out.values());
  } else {
    buf.resize(out.size());
    randn(gen, std::span<float>(buf));
    for (std::size_t i = 0; i < buf.size(); ++i) out[i] = static_cast<T>(buf[i]);
  }
}
}  // namespace detail

/** A NoiseSource drawing from `gen`, which it refers to (the generator must outlive it). Sharing the
 *  generator between the initial noise and the per-step noise reproduces a diffusers pipeline that
 *  passes one generator to both. */
template <class T>
NoiseSource<T> torch_noise(TorchGenerator& gen) {
  return NoiseSource<T>([g = &gen, buf = std::vector<float>()](std::size_t, T, T, BasicTensor<T>& out) mutable {
    detail::fill_torch_randn(*g, buf, out);
  });
}

/** A NoiseSource owning a generator seeded with `seed`. Copying the source copies the generator
 *  state, so a copied sampler + source pair replays the rest of a run exactly. */
template <class T>
NoiseSource<T> torch_noise(std::uint64_t seed) {
  return NoiseSource<T>([g = TorchGenerator(seed), buf = std::vector<float>()](std::size_t, T, T,
                                                                               BasicTensor<T>& out) mutable {
    detail::fill_torch_randn(g, buf, out);
  });
}

DIFFUSE_END_NAMESPACE
