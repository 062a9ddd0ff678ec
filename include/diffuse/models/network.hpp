// SPDX-License-Identifier: MIT
/** @file network.hpp
 *  The interface every reference network implements, and loading one from a diffusers folder.
 *
 *  A `Network` is the raw model: `forward(x, timesteps, labels)` returns what the network was
 *  trained to output (epsilon, v, x0 or flow velocity; which one is a property of the scheduler
 *  config, see pipeline/). It owns no sampler logic. A loaded network is immutable: `forward` is
 *  const and keeps its activations in the caller's `kernels::Context` (its Arena), so one network
 *  can serve several jobs on different threads at once, each with its own Context.
 *
 *  **Example**
 *  @code
 *  auto net = diffuse::models::load_network("models/digits-unet");
 *  diffuse::kernels::Context ctx(2);
 *  diffuse::Tensor x({1, 1, 16, 16});
 *  float t = 999;
 *  std::int64_t label = 3;
 *  diffuse::Tensor eps = net->forward(x, {&t, 1}, {&label, 1}, ctx);
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "diffuse/config.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/nn/weights.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace models {

/// What a caller needs to know to run a network.
struct NetworkInfo {
  std::string architecture;      ///< config `_class_name`, e.g. "UNet2DModel"
  std::size_t in_channels = 0;   ///< channels of x
  std::size_t out_channels = 0;  ///< channels forward() returns (learned-sigma halves dropped)
  std::size_t sample_size = 0;   ///< native height = width (config sample_size)
  std::size_t size_multiple = 1; ///< height and width must be multiples of this
  std::size_t num_classes = 0;   ///< class labels accepted: 0 .. num_classes-1 (0 = unconditional)
  std::optional<std::int64_t> null_class;  ///< the "no class" label used for guidance, if any
  /// Width of the text states the network attends to (cross_attention_dim); 0: no text input.
  std::size_t text_dim = 0;
  /// SDXL's added conditions ("text_time"): the width of the pooled text embedding and the count
  /// of size/crop numbers (6); 0 when the network takes none.
  std::size_t pooled_dim = 0;
  std::size_t time_ids = 0;
  std::size_t parameters = 0;    ///< scalars bound from the weights file
  std::map<std::string, std::size_t> dtypes;  ///< dtype name -> number of tensors in the file
};

/** The conditioning of one forward beyond x and t: class labels, or a text-conditional network's
 *  text states (and SDXL's pooled embedding and size numbers). Pointers are borrowed for the call. */
struct Conditioning {
  std::span<const std::int64_t> labels;    ///< size B or 1 (broadcast); empty when unconditional
  const Tensor* text = nullptr;            ///< [B, tokens, text_dim] (text networks)
  const Tensor* pooled = nullptr;          ///< [B, pooled_dim] (networks with pooled_dim > 0)
  const Tensor* time_ids = nullptr;        ///< [B, time_ids] (networks with time_ids > 0)
};

/// A network loaded from weights (see the file comment).
class DIFFUSE_API Network {
 public:
  virtual ~Network();

  virtual const NetworkInfo& info() const noexcept = 0;

  /** out = net(x, t, labels) with x [B, in_channels, H, W], `timesteps` of size B (or 1, broadcast;
   *  model time, fractional values allowed), `labels` of size B (or 1, broadcast; empty when
   *  unconditional). Returns [B, out_channels, H, W]. Throws shape_error / value_error naming the
   *  argument for a wrong shape or a label out of range. */
  virtual Tensor forward(const Tensor& x, std::span<const float> timesteps, std::span<const std::int64_t> labels,
                         kernels::Context& ctx) const = 0;

  /** The same with any conditioning: labels go to forward() above (text refused with a
   *  value_error, by default); a text-conditional network (info().text_dim > 0) overrides this
   *  and takes c.text (and c.pooled / c.time_ids when it needs them). */
  virtual Tensor forward_conditioned(const Tensor& x, std::span<const float> timesteps, const Conditioning& c,
                                     kernels::Context& ctx) const;

  /** An estimate of the bytes one forward of [batch, in_channels, height, width] allocates (the
   *  activations it keeps from the context's arena at its peak, and its output), saturating at
   *  UINT64_MAX; 0 when the network cannot tell (the default). The pipeline refuses a generation
   *  whose estimate exceeds its memory limit before allocating anything. */
  virtual std::uint64_t forward_bytes(std::size_t batch, std::size_t height, std::size_t width) const {
    (void)batch, (void)height, (void)width;
    return 0;
  }
};

/** Loads the network of a diffusers folder (config.json + safetensors), picking the class from the
 *  config's `_class_name`: UNet2DModel, DiTTransformer2DModel (also the legacy "Transformer2DModel"
 *  with norm_type ada_norm_zero). Original facebookresearch/DiT files (keys `x_embedder.*`,
 *  `blocks.*`) are recognised by their names. Throws format_error naming the folder for an unknown
 *  class. */
DIFFUSE_API std::unique_ptr<Network> load_network(const std::filesystem::path& dir, const nn::LoadOptions& options = {});

}  // namespace models
DIFFUSE_END_NAMESPACE
