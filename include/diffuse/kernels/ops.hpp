// SPDX-License-Identifier: MIT
/** @file ops.hpp
 *  The network kernels besides GEMM (which is in kernels.hpp): convolution, normalisation,
 *  activations, softmax, fused attention, upsampling, embeddings and the adaLN helpers that
 *  UNet2DModel and DiT are built from.
 *
 *  **Conventions** (every function here):
 *  - Activations are f32, row-major, contiguous unless a stride is given. Images are NCHW,
 *    token sequences are [B, N, D], exactly as in PyTorch, so fixtures compare element by element.
 *  - Arguments are checked at this entry point (shape_error / value_error naming the function and
 *    the offending size); the variant behind it never throws, allocates or starts a thread.
 *  - Threads: work is split over `ctx.pool()` by contiguous ranges whose boundaries depend only on
 *    the sizes and the thread count, and each output element is computed by the same sequence of
 *    operations whatever range it falls in, so results are bit-identical for 1, 2 or N threads.
 *  - Variants: each op has a scalar reference and, where it pays, AVX2 and AVX-512 versions, all
 *    listed in one table (src/kernels/ops.inc). `op_variants()` exposes the rows so that tests
 *    compare every variant with the scalar one and benchmarks time each. The public functions use
 *    the row of `isa_level()`. SIMD variants may differ from the scalar reference by a few ulp
 *    (polynomial exp/erf/tanh, reassociated sums); each test states its bound.
 *  - In place: `y == x` is allowed where the comment says so; otherwise x and y must not overlap.
 *
 *  **Example**
 *  @code
 *  diffuse::kernels::Context ctx(2);
 *  diffuse::kernels::group_norm({.x = h, .y = h, .batch = 1, .channels = 128, .spatial = 32 * 32,
 *                                .groups = 32, .eps = 1e-6f, .gamma = w, .beta = b, .silu = true}, ctx);
 *  @endcode */
#pragma once

#include <cstddef>
#include <span>

#include "diffuse/config.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/kernels/parallel.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

// ---------------------------------------------------------------------------------------------
// Convolution

/** 2-D cross-correlation as torch.nn.functional.conv2d with zero padding (groups = 1, dilation 1):
 *
 *      y[b, o, i, j] = bias[o] + sum_{c, p, q} w[o, c, p, q] * x[b, c, i*s + p - pad_top, j*s + q - pad_left]
 *
 *  H_out = (H + pad_top + pad_bottom - kh) / stride + 1 (likewise W). Asymmetric padding covers the
 *  right/bottom-only `F.pad(x, (0, 1, 0, 1))` of diffusers' Downsample2D with padding 0.
 *  `residual` (optional, [B, C_out, H_out, W_out], may equal y) is added after the bias:
 *  y = conv + bias + residual, so a ResNet skip costs no extra pass. Weights are [C_out, C_in, kh, kw]
 *  in f32, f16 or bf16 (`weight_type`): an f16/bf16 weight is used as stored (a model file's
 *  mapping) and converted exactly to f32 for each call, into the context's scratch (C_out x C_in x
 *  kh x kw floats, a few ms against the convolution's own time), so such a model keeps no f32 copy. */
struct Conv2dArgs {
  const float* x = nullptr;  ///< [batch, in_channels, height, width]
  std::size_t batch = 0, in_channels = 0, height = 0, width = 0;
  const void* weight = nullptr;  ///< [out_channels, in_channels, kh, kw] of `weight_type`
  DType weight_type = DType::F32;  ///< F32, F16 or BF16
  const float* bias = nullptr;    ///< [out_channels] or null
  std::size_t out_channels = 0, kh = 1, kw = 1, stride = 1;
  std::size_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  const float* residual = nullptr;  ///< [batch, out_channels, H_out, W_out] or null
  float* y = nullptr;               ///< [batch, out_channels, H_out, W_out]; must not overlap x
  /// Optional: `weight` transformed by conv2d_winograd_transform_weights ([16, out, in]). With it,
  /// an eligible conv (conv2d_winograd_eligible) on an image with enough 2x2 output tiles runs
  /// as Winograd F(2x2, 3x3); without it conv2d always uses im2col + GEMM.
  const float* winograd_weight = nullptr;
};

/// Output height and width of `a` (throws shape_error when the kernel does not fit).
DIFFUSE_API std::size_t conv2d_out_height(const Conv2dArgs& a);
DIFFUSE_API std::size_t conv2d_out_width(const Conv2dArgs& a);

/// Runs the convolution (im2col or direct into the GEMM, or Winograd; scratch comes from `ctx`).
DIFFUSE_API void conv2d(const Conv2dArgs& a, Context& ctx);

/** Winograd F(2x2, 3x3) (Lavin & Gray 2016): 16 instead of 36 multiply-adds per 2x2 output tile
 *  and channel pair, as 16 GEMMs on transformed weights and inputs. Eligible: 3x3 kernel,
 *  stride 1, every pad <= 1 (sizes only; the image size decides at call time). Transform the
 *  weights once at load time and pass them as Conv2dArgs::winograd_weight. The result differs
 *  from im2col by rounding only (bound in docs/kernels.md). */
DIFFUSE_API bool conv2d_winograd_eligible(const Conv2dArgs& a);
/// conv2d runs Winograd only when both channel counts reach this (measured crossover, docs/kernels.md),
/// so layers with fewer channels need no transformed weights.
inline constexpr std::size_t kWinogradMinChannels = 128;
/// Floats of the transformed weights: 16 * out_channels * in_channels.
DIFFUSE_API std::size_t conv2d_winograd_weight_floats(std::size_t out_channels, std::size_t in_channels);
/// u[xi][o][c] = (G w[o, c] G^T)[xi / 4, xi % 4] for weights w [out, in, 3, 3] (computed in
/// double, rounded once); u holds conv2d_winograd_weight_floats(out, in) floats.
DIFFUSE_API void conv2d_winograd_transform_weights(const float* weight, std::size_t out_channels,
                                                   std::size_t in_channels, float* u);

/** Nearest-neighbour upsampling as F.interpolate(mode="nearest"): for each of `planes` = B*C
 *  planes, y[i, j] = x[floor(i * H / H_out), floor(j * W / W_out)] (exact integer form).
 *  The usual case is H_out = 2H, W_out = 2W. */
DIFFUSE_API void upsample_nearest(const float* x, std::size_t planes, std::size_t height, std::size_t width,
                                  float* y, std::size_t out_height, std::size_t out_width, Context& ctx);

// ---------------------------------------------------------------------------------------------
// Normalisation

/** torch.nn.GroupNorm on x [batch, channels, spatial] (spatial = H*W, or 1): per (b, group) the
 *  mean and biased variance over (channels/groups) * spatial values, computed in double
 *  accumulation, then y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c], then SiLU when
 *  `silu` (GroupNorm -> SiLU is how every ResNet block and conv_norm_out use it). In place allowed.
 *  `transpose_out`: write y as [batch, spatial, channels] (tokens for attention) instead. */
struct GroupNormArgs {
  const float* x = nullptr;
  float* y = nullptr;
  std::size_t batch = 0, channels = 0, spatial = 0, groups = 1;
  float eps = 1e-5f;
  const float* gamma = nullptr;  ///< [channels] or null (= 1)
  const float* beta = nullptr;   ///< [channels] or null (= 0)
  bool silu = false;
  bool transpose_out = false;  ///< y is [batch, spatial, channels]; must not overlap x
};
DIFFUSE_API void group_norm(const GroupNormArgs& a, Context& ctx);

/** torch.nn.LayerNorm over the last dimension of x [rows, dim] (biased variance, double
 *  accumulation), with optional affine gamma/beta [dim], and optional adaLN modulation:
 *
 *      y = LN(x) * gamma + beta                                  (affine, either may be null)
 *      y = y * (1 + scale[r / rows_per_batch]) + shift[r / rows_per_batch]   (when scale/shift)
 *
 *  scale and shift are [rows / rows_per_batch, dim] with a row stride of `mod_stride` floats (so
 *  they can point into the chunked output of an adaLN linear). In place allowed. */
struct LayerNormArgs {
  const float* x = nullptr;
  float* y = nullptr;
  std::size_t rows = 0, dim = 0;
  float eps = 1e-5f;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* shift = nullptr;  ///< adaLN shift or null
  const float* scale = nullptr;  ///< adaLN scale or null
  std::size_t rows_per_batch = 1;
  std::size_t mod_stride = 0;  ///< row stride of shift/scale (0 = dim)
};
DIFFUSE_API void layer_norm(const LayerNormArgs& a, Context& ctx);

// ---------------------------------------------------------------------------------------------
// Element-wise

/// Activation functions, as in torch: silu x*sigmoid(x); gelu_erf 0.5x(1+erf(x/sqrt2));
/// gelu_tanh 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))); quick_gelu x*sigmoid(1.702x); relu
/// max(x, 0) (NaN propagates, as torch.relu).
enum class Activation { identity, silu, gelu_erf, gelu_tanh, quick_gelu, relu };

/// "silu"/"swish", "gelu", "gelu-approximate"/"gelu_tanh"/"gelu_pytorch_tanh", "quick_gelu",
/// "relu", "identity"/"linear"; value_error naming the string otherwise.
DIFFUSE_API Activation parse_activation(const char* name);

/// y[i] = act(x[i] + (bias ? bias[(i / inner) % bias_len] : 0)) for i < n. In place allowed.
/// `inner` = 1 and bias_len = D for a row-major [rows, D] tensor with a per-column bias;
/// inner = H*W, bias_len = C for a per-channel bias on NCHW.
DIFFUSE_API void activation(Activation act, const float* x, float* y, std::size_t n, Context& ctx,
                            const float* bias = nullptr, std::size_t inner = 1, std::size_t bias_len = 0);

/** Broadcast add over NCHW: x[b, c, s] += v[b * v_stride + c] for s < spatial (the time
 *  embedding added inside a ResNet block). */
DIFFUSE_API void add_channel_bias(float* x, std::size_t batch, std::size_t channels, std::size_t spatial,
                                  const float* v, std::size_t v_stride, Context& ctx);

/** adaLN-Zero gated residual: x[b, n, d] += gate[b * gate_stride + d] * y[b, n, d]. */
DIFFUSE_API void gated_add(float* x, const float* y, std::size_t batch, std::size_t tokens, std::size_t dim,
                           const float* gate, std::size_t gate_stride, Context& ctx);

/// Softmax over each row of x [rows, cols], in place, in f32 with max subtraction.
DIFFUSE_API void softmax(float* x, std::size_t rows, std::size_t cols, Context& ctx);

// ---------------------------------------------------------------------------------------------
// Attention

/** Scaled dot-product attention, softmax(Q K^T * scale) V, per (batch, head), as
 *  F.scaled_dot_product_attention without dropout, unmasked or with the causal mask. Element (b, h, n, i) of q lives at
 *  `q[b * q_batch_stride + h * q_head_stride + n * q_row_stride + i]` (i < head_dim contiguous);
 *  k, v and o likewise with their own strides. For [B, N, heads*d] tokens: batch stride N*heads*d,
 *  head stride d, row stride heads*d.
 *
 *  Fused and tiled (the FlashAttention-2 recurrence, Dao 2023, arXiv:2307.08691): key/value blocks
 *  are streamed with a running max and sum per query row, so memory is O(block) per thread and the
 *  [Nq, Nk] score matrix is never stored. The split over threads is by (batch, head, query block). */
struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* o = nullptr;
  std::size_t batch = 0, heads = 0, q_len = 0, kv_len = 0, head_dim = 0;
  std::size_t q_batch_stride = 0, q_head_stride = 0, q_row_stride = 0;
  std::size_t k_batch_stride = 0, k_head_stride = 0, k_row_stride = 0;
  std::size_t v_batch_stride = 0, v_head_stride = 0, v_row_stride = 0;
  std::size_t o_batch_stride = 0, o_head_stride = 0, o_row_stride = 0;
  float scale = 0.0f;  ///< 0 means 1/sqrt(head_dim)
  /// Causal mask (F.scaled_dot_product_attention(is_causal=True), top-left aligned): query n sees
  /// keys 0..n only; key blocks wholly past a query block are skipped. (SIMD rows give a masked
  /// key the weight 2^-126 of the row maximum, as their exp2 clamp gives any score that far below
  /// it: invisible in f32.)
  bool causal = false;
};
DIFFUSE_API void attention(const AttentionArgs& a, Context& ctx);

/// AttentionArgs for contiguous [batch, len, heads * head_dim] q, k, v and o.
DIFFUSE_API AttentionArgs attention_bnd(const float* q, const float* k, const float* v, float* o, std::size_t batch,
                                        std::size_t heads, std::size_t q_len, std::size_t kv_len,
                                        std::size_t head_dim);

// ---------------------------------------------------------------------------------------------
// Embeddings

/** diffusers get_timestep_embedding: half = dim / 2, freq_k = exp(-ln(max_period) * k /
 *  (half - downscale_freq_shift)) computed in f32, arg = scale * t[b] * freq_k, emb = [sin, cos]
 *  (or [cos, sin] with flip_sin_to_cos), zero-padded when dim is odd. out is [batch, dim]. */
DIFFUSE_API void timestep_embedding(const float* t, std::size_t batch, std::size_t dim, bool flip_sin_to_cos,
                                    float downscale_freq_shift, float* out, float scale = 1.0f,
                                    float max_period = 10000.0f);

/** The fixed 2-D sin-cos position table of DiT/MAE (diffusers get_2d_sincos_pos_embed), computed
 *  in double and rounded to f32: out is [grid_h * grid_w, dim], token n = row * grid_w + col,
 *  coordinates = index / (grid_size / base_size) / interpolation_scale, first half of each row
 *  from the column coordinate, second half from the row coordinate. */
DIFFUSE_API void sincos_pos_embed_2d(std::size_t dim, std::size_t grid_h, std::size_t grid_w, float* out,
                                     double base_size, double interpolation_scale = 1.0);

// ---------------------------------------------------------------------------------------------
// The variant table (tests and benchmarks)

/// The function types of the op bodies of a variant. Each works on the range `[begin, end)` of
/// its op's parallel items (named below), for arguments already checked; it never throws,
/// allocates or starts a thread.
namespace op_body {
/// Items: planes (b * C + c) of x and y.
using Upsample = void(const float* x, std::size_t height, std::size_t width, float* y, std::size_t out_height,
                      std::size_t out_width, std::size_t begin, std::size_t end);
/// Items: (batch, group) pairs, b * groups + g.
using GroupNorm = void(const GroupNormArgs& a, std::size_t begin, std::size_t end);
/// Items: rows.
using LayerNorm = void(const LayerNormArgs& a, std::size_t begin, std::size_t end);
/// Items: elements (the caller splits in blocks; every element is computed the same way).
using Act = void(Activation act, const float* x, float* y, std::size_t begin, std::size_t end, const float* bias,
                 std::size_t inner, std::size_t bias_len);
/// Items: planes (b * channels + c).
using ChannelBias = void(float* x, std::size_t channels, std::size_t spatial, const float* v, std::size_t v_stride,
                         std::size_t begin, std::size_t end);
/// Items: token rows (b * tokens + n).
using GatedAdd = void(float* x, const float* y, std::size_t tokens, std::size_t dim, const float* gate,
                      std::size_t gate_stride, std::size_t begin, std::size_t end);
/// Items: rows.
using Softmax = void(float* x, std::size_t cols, std::size_t begin, std::size_t end);
/// Items: (batch, head, query block of `attention_q_block` rows), in that nesting order;
/// `workspace` holds attention_workspace(head_dim) floats, 64-byte aligned.
using Attention = void(const AttentionArgs& a, std::size_t begin, std::size_t end, float* workspace);
/// Floats of per-thread attention workspace for a head dimension.
using AttentionWorkspace = std::size_t(std::size_t head_dim);
}  // namespace op_body

/// One row of the table: every op's body for one instruction-set level. The bodies work on a
/// range of their op's parallel items and never throw; the public functions above check the
/// arguments and split the work. Members are opaque to users; tests and benchmarks select a row
/// with `ScopedOpVariant`.
struct OpVariant {
  const char* name;  ///< "scalar", "avx2", "avx512"
  IsaLevel isa;
  op_body::Upsample* upsample_nearest;
  op_body::GroupNorm* group_norm;
  op_body::LayerNorm* layer_norm;
  op_body::Act* activation;
  op_body::ChannelBias* add_channel_bias;
  op_body::GatedAdd* gated_add;
  op_body::Softmax* softmax;
  op_body::Attention* attention;
  op_body::AttentionWorkspace* attention_workspace;
  std::size_t attention_q_block;  ///< query rows per attention item
};

/// Every row compiled into this build (scalar first) that this CPU can run.
DIFFUSE_API std::span<const OpVariant> op_variants();

/// The row the public functions use (the highest within isa_level()).
DIFFUSE_API const OpVariant& active_op_variant();

/// While alive, the public functions of this file use `v` instead of the active row (tests and
/// benchmarks; not thread-safe against concurrent kernel calls).
class DIFFUSE_API ScopedOpVariant {
 public:
  explicit ScopedOpVariant(const OpVariant& v);
  ~ScopedOpVariant();
  ScopedOpVariant(const ScopedOpVariant&) = delete;
  ScopedOpVariant& operator=(const ScopedOpVariant&) = delete;

 private:
  const OpVariant* previous_;
};

}  // namespace kernels
DIFFUSE_END_NAMESPACE
