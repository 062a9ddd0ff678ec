// SPDX-License-Identifier: MIT
/** @file image_noise.hpp
 *  Per-image noise as AUTOMATIC1111's web UI draws it (`modules/rng.py`, `ImageRNG`), so that a
 *  seed gives the picture it gives there, and as stable-diffusion.cpp does for a batch:
 *
 *  - image b of a batch has its own generator seeded `seed + b` (A1111 writes that seed into each
 *    image's parameters), so an image does not depend on the batch it was made in;
 *  - the first noise of image b is its generator's `randn([C, h, w])`; each later request (an
 *    ancestral or SDE sampler's step noise) is the next `randn([C, h, w])` of the same generator;
 *  - A1111's "Eta noise seed delta" (ENSD, e.g. 31337): after the first noise, each image's
 *    generator is replaced by one seeded `seed + b + delta`, so the step noise comes from there;
 *  - the generator: `a1111_nv` is PhiloxGenerator (A1111's "NV" source, which reproduces
 *    `torch.randn(..., device="cuda")`, i.e. its default "GPU" source on an NVIDIA card within
 *    3e-7, and stable-diffusion.cpp's default `--rng cuda`); `a1111_cpu` is torch's CPU generator
 *    (A1111's "CPU" source).
 *
 *  diffusers (`NoiseRng::torch`, the pipeline's default) draws the whole batch from one CPU
 *  generator instead: `torch.randn([B, C, h, w])` for `seed` (see core/random.hpp).
 *
 *  **Example**
 *  @code
 *  diffuse::ImageNoise rng(diffuse::NoiseRng::a1111_nv, 42, 2);  // images of seeds 42 and 43
 *  diffuse::Tensor x = rng.first({2, 4, 64, 64});                 // each image's first randn
 *  auto noise = diffuse::image_noise_source<float>(rng);          // then their next ones
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/sample/sampler.hpp"

DIFFUSE_BEGIN_NAMESPACE

/// Which generator a seed means (see the file comment).
enum class NoiseRng {
  torch,      ///< diffusers: one torch CPU generator for the batch, torch.randn([B, C, h, w])
  a1111_cpu,  ///< A1111 "CPU": image b's torch CPU generator seeded seed + b
  a1111_nv,   ///< A1111 "NV" / "GPU" on NVIDIA, stable-diffusion.cpp `--rng cuda`: Philox, seed + b
};

/// "torch", "a1111_cpu", "a1111_nv".
constexpr std::string_view noise_rng_name(NoiseRng r) {
  return r == NoiseRng::torch ? "torch" : r == NoiseRng::a1111_cpu ? "a1111_cpu" : "a1111_nv";
}

/// A1111's ImageRNG: one generator per image (NoiseRng::a1111_cpu or a1111_nv).
class ImageNoise {
 public:
  ImageNoise(NoiseRng kind, std::uint64_t seed, std::size_t batch, std::uint64_t seed_delta = 0)
      : kind_(kind), seed_(seed), delta_(seed_delta) {
    if (kind == NoiseRng::torch)
      raise<value_error>("ImageNoise", "NoiseRng::torch draws the batch from one generator: use TorchGenerator");
    if (batch == 0) raise<value_error>("ImageNoise", "batch must be at least 1");
    reseed(0, batch);
  }

  NoiseRng kind() const { return kind_; }
  std::size_t batch() const { return gens_.size(); }
  /// Image b's seed (seed + b, wrapping as the 64-bit sum does).
  std::uint64_t seed(std::size_t b) const { return seed_ + b; }

  /// The first noise [batch, C, h, w] (`shape`): image b's randn([C, h, w]); then the ENSD
  /// re-seeding, when a delta was given.
  Tensor first(const Shape& shape) {
    Tensor out(shape);
    fill(out.values(), shape);
    if (delta_ != 0) reseed(delta_, gens_.size());
    return out;
  }
  /// The next noise of every image into `out` [batch, C, h, w] (a step's noise).
  void next(std::span<float> out, const Shape& shape) { fill(out, shape); }

 private:
  using Gen = std::variant<TorchGenerator, PhiloxGenerator>;
  void reseed(std::uint64_t delta, std::size_t batch) {
    gens_.clear();
    for (std::size_t b = 0; b < batch; ++b) {
      const std::uint64_t s = seed_ + b + delta;
      if (kind_ == NoiseRng::a1111_cpu) gens_.emplace_back(TorchGenerator(s));
      else gens_.emplace_back(PhiloxGenerator(s));
    }
  }
  void fill(std::span<float> out, const Shape& shape) {
    if (shape.empty() || shape[0] != gens_.size())
      raise<value_error>("ImageNoise", "the noise's first dimension must be the batch, " + std::to_string(gens_.size()) +
                                           ", got " + shape_string(shape));
    const std::size_t row = out.size() / gens_.size();
    for (std::size_t b = 0; b < gens_.size(); ++b) {
      const std::span<float> dst = out.subspan(b * row, row);
      std::visit(
          [&](auto& g) {
            if constexpr (std::is_same_v<std::decay_t<decltype(g)>, TorchGenerator>) randn(g, dst);
            else g.randn(dst);
          },
          gens_[b]);
    }
  }

  NoiseRng kind_;
  std::uint64_t seed_, delta_;
  std::vector<Gen> gens_;
};

/** A NoiseSource asking `rng` (which it refers to: it must outlive the source) for each step's
 *  noise, image by image, as A1111's sampler noise does. */
template <class T>
NoiseSource<T> image_noise_source(ImageNoise& rng) {
  return NoiseSource<T>([r = &rng, buf = std::vector<float>()](std::size_t, T, T, BasicTensor<T>& out) mutable {
    if constexpr (std::is_same_v<T, float>) {
      r->next(out.values(), out.shape());
    } else {
      buf.resize(out.size());
      r->next(std::span<float>(buf), out.shape());
      for (std::size_t i = 0; i < buf.size(); ++i) out[i] = static_cast<T>(buf[i]);
    }
  });
}

DIFFUSE_END_NAMESPACE
