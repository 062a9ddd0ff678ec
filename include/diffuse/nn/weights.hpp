// SPDX-License-Identifier: MIT
/** @file weights.hpp
 *  Binding a network's parameters by their published names. A model asks for each parameter with
 *  the shape its config implies; the store checks the shape, and hands out a pointer:
 *
 *  - `f32(name, shape)`: f32 data. f32 tensors are used in place from the file mapping; f16/bf16
 *    tensors are converted once and the copy is owned by the store.
 *  - `matrix(name, shape)`: a weight read by a kernel (Linear weights [out, in], the GEMM B operand;
 *    Conv2d weights [out, in, kh, kw]). F32, F16 and BF16 are used in place (the GEMM converts
 *    while packing, conv2d per call into its scratch), unless `LoadOptions::matrix_dtype` asks for
 *    a conversion (e.g. bf16 to halve memory traffic), which is done once here.
 *
 *  Errors name the model folder and the parameter: a missing parameter (with the shape expected),
 *  a wrong shape (expected vs found), a dtype that is not a float. After binding, `check_all_used()`
 *  rejects tensors no module asked for (an extra parameter means the config does not describe the
 *  file), except names matched by `ignore()`.
 *
 *  **Example**
 *  @code
 *  auto dir = diffuse::io::ModelDir::open("models/digits-unet");
 *  diffuse::nn::WeightStore w(dir, "UNet2DModel");
 *  const float* b = w.f32("conv_in.bias", {32});
 *  w.check_all_used();
 *  @endcode */
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/config.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/core/tensor.hpp"
#include "diffuse/io/model_dir.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace nn {

/// How weights are loaded.
struct LoadOptions {
  /// Storage of GEMM weights: nullopt keeps the file's dtype (F32/F16/BF16 used in place);
  /// F32, F16 or BF16 converts once at load.
  std::optional<DType> matrix_dtype;
  /// Safetensors variant of the weights file ("fp16" -> *.fp16.safetensors); empty = default.
  std::string variant;
  /// nn::Linear keeps an f32 copy of its weight packed for the GEMM kernel, made on its first
  /// call with many rows (costs 4 bytes per weight of such linears). Off by default: measured
  /// 1-2 % faster DiT-S/2 and DiT-B/2 forwards for +65 % weight memory (docs/kernels.md).
  bool prepack = false;
  /// nn::Conv2d keeps Winograd-transformed weights of its stride-1 3x3 convs with at least
  /// kernels::kWinogradMinChannels channels in and out (16/9 of those weights in extra memory,
  /// e.g. +250 MB for ddpm-cifar10-32; about 1.2x faster forwards). Off: im2col only.
  bool winograd = true;
  /// Low memory: the network drops the resident pages of its weights files' mappings after each
  /// of its blocks (a U-Net's down, mid and up blocks; a VAE's and a text encoder's whole pass),
  /// so only the weights in use stay resident; the next use reads them again from the page cache
  /// (or the disk). Weights used in place only: f16 / bf16 / f32 tensors read by the kernels, not
  /// the copies (norm parameters, fused q/k/v, Winograd weights: turn `winograd` off with it).
  bool stream_weights = false;
  /// Bytes the load may allocate: converted weights (f16/bf16 -> f32, matrix_dtype), fused q/k/v,
  /// Winograd weights and tables computed from the config (DiT's position table). The weights
  /// file's mapping is not counted (the kernel pages it in and out as needed). 0: the default,
  /// 3/4 of the physical memory (core/memory.hpp). A load that would exceed it is refused with a
  /// memory_error saying how much it needs and for what, before the allocation.
  std::uint64_t memory_limit = 0;
};

/// A GEMM B operand: the weight as stored (or converted), with its dtype.
struct MatrixRef {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::size_t rows = 0, cols = 0;  ///< [out, in] for Linear weights
};

/// Parameters of one network, looked up by name (see the file comment).
class DIFFUSE_API WeightStore {
 public:
  /// `model` names the architecture in error messages ("UNet2DModel").
  WeightStore(const io::ModelDir& dir, std::string model, LoadOptions options = {});

  /// True when the file has `name`.
  bool contains(std::string_view name) const;
  /// The first of `names` present in the file, or the first one when none is (so the error for
  /// the missing parameter names the current spelling). For legacy names, e.g.
  /// `pick({"to_q.weight", "query.weight"})`.
  std::string pick(std::initializer_list<std::string_view> names) const;
  /// The stored shape of `name` (format_error when missing).
  Shape shape_of(std::string_view name) const;

  /// f32 data of `name`, checked against `shape`.
  const float* f32(std::string_view name, const Shape& shape);
  /// A GEMM B operand [shape[0], prod(shape[1:])], checked against `shape`.
  MatrixRef matrix(std::string_view name, const Shape& shape);

  /// Maps each name a network asks for (its diffusers spelling) to the name in the file, for
  /// checkpoints saved under other names (an LDM single file's `first_stage_model.decoder.up.3.block.0.norm1.weight`
  /// for the VAE's `decoder.up_blocks.0.resnets.0.norm1.weight`). Every lookup (contains, pick,
  /// shape_of, f32, matrix) goes through it; errors name the file's spelling and the asked one.
  /// Set it before binding. Null: names are used as they are.
  using NameMap = std::function<std::string(std::string_view)>;
  void set_name_map(NameMap map) { map_ = std::move(map); }
  /// Restricts check_all_used() to the file's tensors whose names start with `prefix` (a single
  /// file holds several networks: `first_stage_model.` is the VAE's part). Empty: every tensor.
  void set_scope(std::string prefix) { scope_ = std::move(prefix); }

  /// Serves `name` (as a network asks for it, before the name map) as the rows [begin, begin +
  /// rows) of the file's tensor `file_name` (its first dimension), in place: a fused weight
  /// such as OpenCLIP's `attn.in_proj_weight` [3D, D] gives q_proj, k_proj and v_proj without a
  /// copy. Every lookup of `name` (contains, shape_of, f32, matrix) sees the view; binding it
  /// marks the whole file tensor used. Set it before binding.
  void add_row_view(std::string name, std::string file_name, std::size_t begin, std::size_t rows);

  /// Names (exact, or prefixes ending in '.') that check_all_used() does not report.
  void ignore(std::string_view name_or_prefix);
  /// format_error listing (up to 10 of) the tensors that were neither bound nor ignored.
  void check_all_used() const;

  /// Number of scalars in the tensors bound so far.
  std::size_t parameters() const noexcept { return parameters_; }
  /// The folder or file the weights came from.
  const io::ModelDir& dir() const noexcept { return *dir_; }
  /// With LoadOptions::stream_weights, drops the resident pages of the weights files' mappings
  /// (io::ModelDir::release_pages), as a network does after each of its blocks; else nothing.
  void release_streamed_pages() const noexcept {
    if (options_.stream_weights) dir_->release_pages();
  }
  const std::string& model() const noexcept { return model_; }
  /// The options the store was made with.
  const LoadOptions& options() const noexcept { return options_; }

  /// Accounts `bytes` the load is about to allocate for `what` ("the position table"), or
  /// raises memory_error when the total would exceed LoadOptions::memory_limit.
  void reserve(std::uint64_t bytes, std::string_view what);
  /// Bytes accounted by reserve() so far (converted copies included).
  std::uint64_t allocated_bytes() const noexcept { return allocated_; }

 private:
  struct RowView {
    std::string file_name;
    std::size_t begin = 0, rows = 0;
  };
  const io::TensorView* find(std::string_view name) const;  // the file's tensor, or a row view
  const io::TensorView& checked(std::string_view name, const Shape& shape);
  std::string file_name(std::string_view name) const { return map_ ? map_(name) : std::string(name); }
  std::string describe(std::string_view name) const;

  const io::ModelDir* dir_;
  std::string model_;
  LoadOptions options_;
  std::set<std::string, std::less<>> used_;
  std::vector<std::string> ignored_;
  NameMap map_;
  std::string scope_;
  std::map<std::string, RowView, std::less<>> row_views_;
  std::set<std::string, std::less<>> views_bound_;
  // The row views resolved so far (a cache of a function of the file, hence mutable; stable addresses).
  mutable std::deque<io::TensorView> view_tensors_;
  mutable std::map<std::string, const io::TensorView*, std::less<>> resolved_views_;
  std::deque<std::vector<float>> f32_copies_;
  std::deque<std::vector<std::uint16_t>> half_copies_;
  std::size_t parameters_ = 0;
  std::uint64_t allocated_ = 0;
  std::uint64_t limit_ = 0;
};

}  // namespace nn
DIFFUSE_END_NAMESPACE
