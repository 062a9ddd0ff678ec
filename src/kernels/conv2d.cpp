// SPDX-License-Identifier: MIT
// conv2d (ops.hpp) as im2col + GEMM, and its double-precision direct reference.
//
// Per batch item the convolution is one matrix product
//
//     y[C_out, H_out*W_out] = W[C_out, C_in*kh*kw] x col[C_in*kh*kw, H_out*W_out]
//
// where column n = (i, j) of `col` is the receptive field of output pixel (i, j), zero where it
// falls into the padding. The weights are A (row-major as stored), `col` is B in its normal
// [K, N] layout, and y is C with ldc = H_out*W_out, so the GEMM writes NCHW directly.
//
// - 1x1, stride 1, no padding: col is x itself, no copy.
// - Otherwise col is built in blocks of output pixels (conv2d_block_pixels: about
//   kConv2dBlockFloats floats per block), so the scratch does not grow with the image. Each block
//   is filled by the pool (split over input channels), then multiplied by the GEMM (which splits
//   itself). Per channel, the input rows a block needs are copied once into a small per-thread
//   buffer with their zero border, and every col row segment is then a branch-free (strided)
//   copy from it (conv2d_im2col.hpp). With an AVX-512 GEMM row the copies are masked AVX-512
//   loads/stores (conv2d_avx512.cpp), otherwise plain loops.
// - Bias (per output channel, i.e. per row of C, which the GEMM's per-column bias cannot express)
//   and residual: y is first set to bias[o] + residual (or either alone), then the GEMM runs with
//   beta = 1. Without either, beta = 0. So every element is
//       y = ((bias + residual) + P_0) + P_1 + ...   (P_k: the GEMM's partial sums over its fixed
//                                                     K blocks, each one FMA chain)
//   and the sequence of operations depends only on the sizes, never on the thread count or the
//   pixel blocking: results are bit-identical for 1, 2 or N threads.
//
// Scratch: one ctx.workspace() span holds the GEMM's packing space (first, 64-byte aligned, sized
// for the pool) and the col block after it; the GEMM is handed its part explicitly.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "conv2d_im2col.hpp"
#include "conv2d_impl.hpp"
#include "conv2d_winograd.hpp"
#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

using std::size_t;
using std::to_string;

constexpr const char* kWhere = "kernels::conv2d";

/// Sizes derived from checked arguments.
struct Geometry {
  size_t h_out = 0, w_out = 0;
  size_t pixels = 0;  // h_out * w_out
  size_t k_rows = 0;  // in_channels * kh * kw
};

std::string dims(const Conv2dArgs& a) {
  return "(x " + to_string(a.batch) + "x" + to_string(a.in_channels) + "x" + to_string(a.height) + "x" +
         to_string(a.width) + ", weight " + to_string(a.out_channels) + "x" + to_string(a.in_channels) + "x" +
         to_string(a.kh) + "x" + to_string(a.kw) + ", stride " + to_string(a.stride) + ", pad t/l/b/r " +
         to_string(a.pad_top) + "/" + to_string(a.pad_left) + "/" + to_string(a.pad_bottom) + "/" +
         to_string(a.pad_right) + ")";
}

/// Size checks only (no pointers): what conv2d_out_height/width need.
Geometry check_sizes(const Conv2dArgs& a) {
  if (a.stride == 0) raise<value_error>(kWhere, "stride 0 " + dims(a));
  if (a.in_channels == 0) raise<shape_error>(kWhere, "in_channels 0 " + dims(a));
  if (a.out_channels == 0) raise<shape_error>(kWhere, "out_channels 0 " + dims(a));
  if (a.height == 0 || a.width == 0)
    raise<shape_error>(kWhere, "empty image " + to_string(a.height) + "x" + to_string(a.width) + " " + dims(a));
  if (a.kh == 0 || a.kw == 0)
    raise<shape_error>(kWhere, "empty kernel " + to_string(a.kh) + "x" + to_string(a.kw) + " " + dims(a));
  const size_t ph = a.height + a.pad_top + a.pad_bottom, pw = a.width + a.pad_left + a.pad_right;
  if (a.kh > ph || a.kw > pw)
    raise<shape_error>(kWhere, "kernel " + to_string(a.kh) + "x" + to_string(a.kw) + " larger than the padded input " +
                                   to_string(ph) + "x" + to_string(pw) + " " + dims(a));
  Geometry g;
  g.h_out = (ph - a.kh) / a.stride + 1;
  g.w_out = (pw - a.kw) / a.stride + 1;
  g.pixels = g.h_out * g.w_out;
  g.k_rows = a.in_channels * a.kh * a.kw;
  return g;
}

bool overlap(const float* p, size_t n, const float* q, size_t m) {
  const auto a = reinterpret_cast<std::uintptr_t>(p), b = reinterpret_cast<std::uintptr_t>(q);
  return a < b + m * sizeof(float) && b < a + n * sizeof(float);
}

/// Every check of the entry point: sizes, then pointers and overlaps (when batch > 0).
Geometry check(const Conv2dArgs& a) {
  const Geometry g = check_sizes(a);
  if (a.batch == 0) return g;  // nothing is read or written
  if (a.x == nullptr) raise<value_error>(kWhere, "x is null " + dims(a));
  if (a.weight == nullptr) raise<value_error>(kWhere, "weight is null " + dims(a));
  if (a.weight_type != DType::F32 && a.weight_type != DType::F16 && a.weight_type != DType::BF16)
    raise<value_error>(kWhere, "weight_type must be F32, F16 or BF16, got " + std::string(dtype_name(a.weight_type)) +
                                   " " + dims(a));
  if (a.y == nullptr) raise<value_error>(kWhere, "y is null " + dims(a));
  const size_t nx = a.batch * a.in_channels * a.height * a.width, ny = a.batch * a.out_channels * g.pixels;
  if (overlap(a.x, nx, a.y, ny)) raise<value_error>(kWhere, "x and y overlap " + dims(a));
  if (a.residual != nullptr && a.residual != a.y && overlap(a.residual, ny, a.y, ny))
    raise<value_error>(kWhere, "residual overlaps y without being equal to it " + dims(a));
  return g;
}

/// Plain loops (the scalar path; with DIFFUSE_NATIVE the compiler may vectorize them).
struct ScalarCopy {
  static void zero(float* d, size_t n) {
    for (size_t t = 0; t < n; ++t) d[t] = 0.0f;
  }
  static void copy(float* d, const float* src, size_t n) {
    for (size_t t = 0; t < n; ++t) d[t] = src[t];
  }
  static void gather(float* d, const float* src, size_t n, size_t s) {
    for (size_t t = 0; t < n; ++t) d[t] = src[t * s];
  }
};

/// y[o, :] = bias[o] + residual[o, :] (or either alone) for the rows of one image. Returns
/// whether C now holds a term the GEMM must add to (beta = 1).
bool prefill(const float* bias, const float* res, float* yb, size_t rows, size_t cols, ThreadPool& pool) {
  if (bias == nullptr && res == nullptr) return false;
  if (bias == nullptr && res == yb) return true;
  pool.parallel_for(rows, [&](size_t begin, size_t end, size_t) {
    for (size_t o = begin; o < end; ++o) {
      float* d = yb + o * cols;
      if (res == nullptr) {
        std::fill(d, d + cols, bias[o]);
      } else if (bias == nullptr) {
        std::memcpy(d, res + o * cols, cols * sizeof(float));
      } else {
        const float b = bias[o];
        const float* rr = res + o * cols;  // may be d itself: element-wise, read before write
        for (size_t j = 0; j < cols; ++j) d[j] = b + rr[j];
      }
    }
  });
  return true;
}

void run(const GemmKernel& kernel, const Conv2dArgs& a, Context& ctx, size_t block_floats) {
  const Geometry g = check(a);
  if (a.batch == 0) return;
  if (!kernel_supported(kernel))
    raise<value_error>(kWhere, std::string(kernel.name) + " needs instructions this CPU does not have");
  if (conv2d_winograd_pays(a, g.h_out, g.w_out)) {
    detail::conv2d_winograd_run(kernel, a, g.h_out, g.w_out, ctx, block_floats);
    return;
  }
  ThreadPool& pool = ctx.pool();
  const size_t M = a.out_channels, K = g.k_rows, N = g.pixels;
  const size_t in_image = a.in_channels * a.height * a.width, out_image = M * N;
  const bool pointwise = a.kh == 1 && a.kw == 1 && a.stride == 1 && a.pad_top == 0 && a.pad_left == 0 &&
                         a.pad_bottom == 0 && a.pad_right == 0;
  const size_t nb = pointwise ? 0 : conv2d_block_pixels(K, N, block_floats);
  const size_t gemm_floats = (gemm_workspace_floats(kernel, pool.size()) + 15) / 16 * 16;  // col stays aligned
  const size_t col_floats = (K * nb + 15) / 16 * 16;
  const size_t pad_floats = pointwise ? 0 : im2col_scratch_floats(a, g.w_out, nb);  // per thread
  const bool convert = a.weight_type != DType::F32;  // an f16 / bf16 weight: to f32 for this call
  const size_t w_floats = convert ? (M * K + 15) / 16 * 16 : 0;
  const std::span<float> ws = ctx.workspace(gemm_floats + col_floats + pool.size() * pad_floats + w_floats);
  const std::span<float> gemm_ws = ws.first(gemm_floats);
  float* col = ws.data() + gemm_floats;
  float* pad = col + col_floats;
  float* weight_f32 = pad + pool.size() * pad_floats;
  if (convert) {
    const size_t elem = dtype_bits(a.weight_type) / 8;
    pool.parallel_for(M, [&](size_t begin, size_t end, size_t) {
      to_f32(a.weight_type, static_cast<const std::byte*>(a.weight) + begin * K * elem, weight_f32 + begin * K,
             (end - begin) * K);
    });
  }

  using Im2col = void (*)(const Conv2dArgs&, size_t, const float*, size_t, size_t, size_t, size_t, float*, float*);
  Im2col im2col = &scalar::conv2d_im2col;
#if DIFFUSE_KERNELS_X86
  if (kernel.isa == IsaLevel::avx512) im2col = &avx512::conv2d_im2col;  // the CPU has it: kernel_supported
#endif

  GemmArgs ga;
  ga.M = M, ga.K = K;
  ga.A = convert ? weight_f32 : static_cast<const float*>(a.weight), ga.lda = K;
  ga.b_type = DType::F32;
  for (size_t b = 0; b < a.batch; ++b) {
    const float* xb = a.x + b * in_image;
    float* yb = a.y + b * out_image;
    const float* rb = a.residual ? a.residual + b * out_image : nullptr;
    ga.beta = prefill(a.bias, rb, yb, M, N, pool) ? 1.0f : 0.0f;
    if (pointwise) {
      ga.N = N, ga.B = xb, ga.ldb = N, ga.C = yb, ga.ldc = N;
      gemm(kernel, ga, &pool, gemm_ws);
      continue;
    }
    for (size_t n0 = 0; n0 < N; n0 += nb) {
      const size_t n1 = std::min(N, n0 + nb), cols = n1 - n0;
      pool.parallel_for(a.in_channels, [&](size_t begin, size_t end, size_t t) {
        im2col(a, g.w_out, xb, begin, end, n0, n1, col, pad + t * pad_floats);
      });
      ga.N = cols, ga.B = col, ga.ldb = cols, ga.C = yb + n0, ga.ldc = N;
      gemm(kernel, ga, &pool, gemm_ws);
    }
  }
}

}  // namespace

size_t conv2d_out_height(const Conv2dArgs& a) { return check_sizes(a).h_out; }
size_t conv2d_out_width(const Conv2dArgs& a) { return check_sizes(a).w_out; }

size_t conv2d_block_pixels(size_t k_rows, size_t pixels, size_t block_floats) {
  const size_t budget = std::max<size_t>(block_floats, 1);
  if (k_rows * pixels <= budget) return pixels;
  const size_t blocks = (k_rows * pixels + budget - 1) / budget;
  size_t nb = (pixels + blocks - 1) / blocks;  // even blocks rather than a full ones and a sliver
  if (nb > 64) nb = (nb + 63) / 64 * 64;       // whole GEMM register tiles
  return std::min(std::max<size_t>(nb, 1), pixels);
}

void scalar::conv2d_im2col(const Conv2dArgs& a, size_t w_out, const float* xb, size_t c_begin, size_t c_end,
                           size_t n0, size_t n1, float* col, float* pad) {
  im2col_channels<ScalarCopy>(a, w_out, xb, c_begin, c_end, n0, n1, col, pad);
}

void conv2d(const GemmKernel& kernel, const Conv2dArgs& a, Context& ctx, size_t block_floats) {
  run(kernel, a, ctx, block_floats);
}

void conv2d(const Conv2dArgs& a, Context& ctx) { run(active_gemm_kernel(), a, ctx, kConv2dBlockFloats); }

void conv2d_winograd(const GemmKernel& kernel, const Conv2dArgs& a, Context& ctx, size_t block_floats) {
  const Geometry g = check(a);
  if (!conv2d_winograd_eligible(a)) raise<value_error>(kWhere, "not eligible for Winograd " + dims(a));
  if (a.batch == 0) return;
  if (a.winograd_weight == nullptr) raise<value_error>(kWhere, "winograd_weight is null " + dims(a));
  if (!kernel_supported(kernel))
    raise<value_error>(kWhere, std::string(kernel.name) + " needs instructions this CPU does not have");
  detail::conv2d_winograd_run(kernel, a, g.h_out, g.w_out, ctx, block_floats);
}

void conv2d_reference(const Conv2dArgs& a) {
  const Geometry g = check(a);
  const size_t C = a.in_channels, H = a.height, W = a.width, M = a.out_channels;
  std::vector<float> wf(M * C * a.kh * a.kw);
  if (a.batch > 0) to_f32(a.weight_type, a.weight, wf.data(), wf.size());
  for (size_t b = 0; b < a.batch; ++b) {
    for (size_t o = 0; o < M; ++o) {
      for (size_t i = 0; i < g.h_out; ++i) {
        for (size_t j = 0; j < g.w_out; ++j) {
          double acc = 0.0;
          for (size_t c = 0; c < C; ++c) {
            for (size_t p = 0; p < a.kh; ++p) {
              const size_t ih = i * a.stride + p;  // + pad_top
              if (ih < a.pad_top || ih - a.pad_top >= H) continue;
              for (size_t q = 0; q < a.kw; ++q) {
                const size_t iw = j * a.stride + q;  // + pad_left
                if (iw < a.pad_left || iw - a.pad_left >= W) continue;
                acc += static_cast<double>(wf[((o * C + c) * a.kh + p) * a.kw + q]) *
                       static_cast<double>(a.x[((b * C + c) * H + ih - a.pad_top) * W + iw - a.pad_left]);
              }
            }
          }
          const size_t at = ((b * M + o) * g.h_out + i) * g.w_out + j;
          if (a.bias) acc += static_cast<double>(a.bias[o]);
          if (a.residual) acc += static_cast<double>(a.residual[at]);
          a.y[at] = static_cast<float>(acc);
        }
      }
    }
  }
}

}  // namespace kernels
DIFFUSE_END_NAMESPACE
