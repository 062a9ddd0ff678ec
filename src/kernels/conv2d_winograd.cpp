// SPDX-License-Identifier: MIT
// conv2d (ops.hpp) for stride-1 3x3 convolutions as Winograd minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2016, arXiv:1509.09308).
//
// The output is cut into 2x2 tiles (partial at the right/bottom edge); tile (ty, tx) reads the
// 4x4 input patch d at padded rows 2ty .. 2ty+3 and columns 2tx .. 2tx+3 (zero outside x). With
//
//     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
//           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
//           [0 -1  1  0]         [1/2 -1/2  1/2]
//           [0  1  0 -1]         [ 0    0    1 ]
//
// each output tile is  Y = A^T [ sum_c (G g_oc G^T) ⊙ (B^T d_c B) ] A,  i.e. for each of the 16
// positions xi of the 4x4 transformed tile one matrix product
//
//     M[xi][C_out, tiles] = U[xi][C_out, C_in] x V[xi][C_in, tiles]
//
// through the ordinary GEMM: 16 multiply-adds per tile and channel pair instead of 36.
// U = G g G^T is computed once (conv2d_winograd_transform_weights, in double, rounded once) and
// handed in through Conv2dArgs::winograd_weight, laid out [16][C_out][C_in].
//
// Tiles of the whole batch are numbered t = (b * tiles_y + ty) * tiles_x + tx, so small images
// with batch > 1 still give the GEMM wide N. They are processed in blocks (block_tiles: V and M
// blocks near block_floats floats), each in three passes on the pool:
//   1. input transform, split over input channels: per tile row, the 4 padded input rows are
//      copied into a per-thread buffer, combined down the rows (B^T d, contiguous and
//      vectorizable), then across the columns of each tile into the 16 rows V[xi][c][.];
//   2. the 16 GEMMs, split over xi: each thread runs its GEMMs inline on its own packing space;
//   3. output transform, split over output channels: A^T M A for all tiles of the block into a
//      per-thread buffer (vectorizable), then y = (conv + bias) + residual at the tile's pixels.
// Every output element is computed by the same operations whatever the thread count (the
// splits change who computes an element, never how; the GEMM's K order is fixed), so results are
// bit-identical for 1, 2 or N threads and any block size.
//
// Scratch: one ctx.workspace() span holds per-thread GEMM packing space, the V and M blocks and
// per-thread transform buffers; the GEMMs get their part explicitly.
#include "conv2d_winograd.hpp"

#include <algorithm>
#include <cstddef>
#include <span>

#include "diffuse/core/error.hpp"
#include "diffuse/kernels/kernels.hpp"
#include "diffuse/kernels/ops.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace kernels {

namespace {

using std::size_t;

constexpr size_t round16(size_t n) { return (n + 15) / 16 * 16; }

/// Sizes of one Winograd call.
struct Plan {
  size_t C = 0, O = 0, H = 0, W = 0;
  size_t h_out = 0, w_out = 0;
  size_t tiles_y = 0, tiles_x = 0, per_image = 0, total = 0;
  size_t nb = 0;  // tiles per block
  size_t wp = 0;  // padded row width a tile row needs: 2 * tiles_x + 2
};

/// Pass 1 for channels [c0, c1) and tiles [t0, t1): V[xi][c][t - t0], 16 rows of `cols` floats.
/// `buf` holds 8 * p.wp floats.
void input_transform(const Plan& p, const Conv2dArgs& a, size_t c0, size_t c1, size_t t0, size_t t1, float* v,
                     float* buf) {
  const size_t cols = t1 - t0, xi_stride = p.C * cols, wp = p.wp;
  float* d[4] = {buf, buf + wp, buf + 2 * wp, buf + 3 * wp};
  float* e[4] = {buf + 4 * wp, buf + 5 * wp, buf + 6 * wp, buf + 7 * wp};
  for (size_t c = c0; c < c1; ++c) {
    for (size_t t = t0; t < t1;) {
      const size_t img = t / p.per_image, rem = t % p.per_image;
      const size_t ty = rem / p.tiles_x, tx0 = rem % p.tiles_x;
      const size_t tx1 = std::min(p.tiles_x, tx0 + (t1 - t));
      const float* plane = a.x + (img * p.C + c) * p.H * p.W;
      // Padded columns [u0, u1) of this run of tiles; padded column u is x column u - pad_left.
      const size_t u0 = 2 * tx0, u1 = 2 * tx1 + 2;
      const size_t in0 = std::clamp(a.pad_left, u0, u1), in1 = std::clamp(a.pad_left + p.W, u0, u1);
      for (size_t r = 0; r < 4; ++r) {
        float* row = d[r];
        const size_t pr = 2 * ty + r;  // padded row; x row pr - pad_top
        if (pr < a.pad_top || pr - a.pad_top >= p.H) {
          for (size_t u = u0; u < u1; ++u) row[u] = 0.0f;
          continue;
        }
        const float* src = plane + (pr - a.pad_top) * p.W;
        for (size_t u = u0; u < in0; ++u) row[u] = 0.0f;
        for (size_t u = in0; u < in1; ++u) row[u] = src[u - a.pad_left];
        for (size_t u = in1; u < u1; ++u) row[u] = 0.0f;
      }
      for (size_t u = u0; u < u1; ++u) {  // B^T d, down the rows
        e[0][u] = d[0][u] - d[2][u];
        e[1][u] = d[1][u] + d[2][u];
        e[2][u] = d[2][u] - d[1][u];
        e[3][u] = d[1][u] - d[3][u];
      }
      float* out = v + c * cols + (t - t0) - tx0;  // + xi * xi_stride + tx
      for (size_t k = 0; k < 4; ++k) {             // (B^T d) B, across the columns of each tile
        const float* ek = e[k];
        float* o0 = out + (4 * k + 0) * xi_stride;
        float* o1 = out + (4 * k + 1) * xi_stride;
        float* o2 = out + (4 * k + 2) * xi_stride;
        float* o3 = out + (4 * k + 3) * xi_stride;
        for (size_t tx = tx0; tx < tx1; ++tx) {
          const float* q = ek + 2 * tx;
          o0[tx] = q[0] - q[2];
          o1[tx] = q[1] + q[2];
          o2[tx] = q[2] - q[1];
          o3[tx] = q[1] - q[3];
        }
      }
      t += tx1 - tx0;
    }
  }
}

/// Pass 3 for output channels [o0, o1) and tiles [t0, t1): y = (A^T M A + bias) + residual.
/// `buf` holds 4 * cols floats.
void output_transform(const Plan& p, const Conv2dArgs& a, size_t o0, size_t o1, size_t t0, size_t t1,
                      const float* m, float* buf) {
  const size_t cols = t1 - t0, xi_stride = p.O * cols, plane = p.h_out * p.w_out;
  float* y00 = buf;
  float* y01 = buf + cols;
  float* y10 = buf + 2 * cols;
  float* y11 = buf + 3 * cols;
  for (size_t o = o0; o < o1; ++o) {
    const float* mo = m + o * cols;
    for (size_t i = 0; i < cols; ++i) {
      float s[2][4];
      for (size_t k = 0; k < 4; ++k) {  // A^T M, down the rows
        const float m0 = mo[(0 + k) * xi_stride + i], m1 = mo[(4 + k) * xi_stride + i];
        const float m2 = mo[(8 + k) * xi_stride + i], m3 = mo[(12 + k) * xi_stride + i];
        s[0][k] = m0 + m1 + m2;
        s[1][k] = m1 - m2 - m3;
      }
      y00[i] = s[0][0] + s[0][1] + s[0][2];
      y01[i] = s[0][1] - s[0][2] - s[0][3];
      y10[i] = s[1][0] + s[1][1] + s[1][2];
      y11[i] = s[1][1] - s[1][2] - s[1][3];
    }
    const float bias = a.bias ? a.bias[o] : 0.0f;
    for (size_t t = t0; t < t1; ++t) {
      const size_t img = t / p.per_image, rem = t % p.per_image;
      const size_t i0 = 2 * (rem / p.tiles_x), j0 = 2 * (rem % p.tiles_x);
      const size_t base = (img * p.O + o) * plane;
      float* yp = a.y + base;
      const float* rp = a.residual ? a.residual + base : nullptr;
      const float vals[2][2] = {{y00[t - t0], y01[t - t0]}, {y10[t - t0], y11[t - t0]}};
      for (size_t di = 0; di < 2 && i0 + di < p.h_out; ++di) {
        for (size_t dj = 0; dj < 2 && j0 + dj < p.w_out; ++dj) {
          const size_t at = (i0 + di) * p.w_out + j0 + dj;
          float r = vals[di][dj];
          if (a.bias) r += bias;
          if (rp) r += rp[at];  // may be y itself: read before the write of the same element
          yp[at] = r;
        }
      }
    }
  }
}

}  // namespace

bool conv2d_winograd_eligible(const Conv2dArgs& a) {
  return a.kh == 3 && a.kw == 3 && a.stride == 1 && a.pad_top <= 1 && a.pad_left <= 1 && a.pad_bottom <= 1 &&
         a.pad_right <= 1;
}

size_t conv2d_winograd_weight_floats(size_t out_channels, size_t in_channels) {
  return 16 * out_channels * in_channels;
}

void conv2d_winograd_transform_weights(const float* weight, size_t out_channels, size_t in_channels, float* u) {
  if (out_channels == 0 || in_channels == 0) return;
  if (weight == nullptr || u == nullptr)
    raise<value_error>("kernels::conv2d_winograd_transform_weights", "weight or output is null");
  static constexpr double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  const size_t xi_stride = out_channels * in_channels;
  for (size_t oc = 0; oc < xi_stride; ++oc) {  // oc = o * in_channels + c
    const float* g = weight + oc * 9;
    double gg[4][3];  // G g
    for (size_t r = 0; r < 4; ++r)
      for (size_t q = 0; q < 3; ++q)
        gg[r][q] = kG[r][0] * g[q] + kG[r][1] * g[3 + q] + kG[r][2] * g[6 + q];
    for (size_t r = 0; r < 4; ++r)
      for (size_t s = 0; s < 4; ++s)  // (G g) G^T
        u[(r * 4 + s) * xi_stride + oc] =
            static_cast<float>(gg[r][0] * kG[s][0] + gg[r][1] * kG[s][1] + gg[r][2] * kG[s][2]);
  }
}

bool conv2d_winograd_pays(const Conv2dArgs& a, size_t h_out, size_t w_out) {
  return a.winograd_weight != nullptr && conv2d_winograd_eligible(a) && a.in_channels >= kWinogradMinChannels &&
         a.out_channels >= kWinogradMinChannels && a.batch * ((h_out + 1) / 2) * ((w_out + 1) / 2) >= kWinogradMinTiles;
}

size_t conv2d_winograd_block_tiles(size_t in_channels, size_t out_channels, size_t tiles, size_t block_floats) {
  const size_t per_tile = 16 * (in_channels + out_channels);
  const size_t budget = std::max<size_t>(block_floats / per_tile, 1);
  if (tiles <= budget) return tiles;
  const size_t blocks = (tiles + budget - 1) / budget;
  size_t nb = (tiles + blocks - 1) / blocks;  // even blocks rather than full ones and a sliver
  if (nb > 32) nb = (nb + 31) / 32 * 32;      // whole GEMM register tiles
  return std::min(std::max<size_t>(nb, 1), tiles);
}

namespace detail {

void conv2d_winograd_run(const GemmKernel& kernel, const Conv2dArgs& a, size_t h_out, size_t w_out, Context& ctx,
                         size_t block_floats) {
  ThreadPool& pool = ctx.pool();
  const size_t threads = pool.size();
  Plan p;
  p.C = a.in_channels, p.O = a.out_channels, p.H = a.height, p.W = a.width;
  p.h_out = h_out, p.w_out = w_out;
  p.tiles_y = (h_out + 1) / 2, p.tiles_x = (w_out + 1) / 2;
  p.per_image = p.tiles_y * p.tiles_x;
  p.total = a.batch * p.per_image;
  p.nb = conv2d_winograd_block_tiles(p.C, p.O, p.total, block_floats);
  p.wp = 2 * p.tiles_x + 2;

  const size_t gemm_floats = round16(gemm_workspace_floats(kernel, 1));  // per thread, GEMMs run inline
  const size_t v_floats = round16(16 * p.C * p.nb), m_floats = round16(16 * p.O * p.nb);
  const size_t buf_floats = round16(std::max(8 * p.wp, 4 * p.nb));  // per thread
  const std::span<float> ws = ctx.workspace(threads * gemm_floats + v_floats + m_floats + threads * buf_floats);
  float* v = ws.data() + threads * gemm_floats;
  float* m = v + v_floats;
  float* bufs = m + m_floats;

  GemmArgs ga;
  ga.M = p.O, ga.K = p.C;
  ga.lda = p.C;
  ga.b_type = DType::F32;
  ga.beta = 0.0f;
  for (size_t t0 = 0; t0 < p.total; t0 += p.nb) {
    const size_t t1 = std::min(p.total, t0 + p.nb), cols = t1 - t0;
    pool.parallel_for(p.C, [&](size_t begin, size_t end, size_t t) {
      input_transform(p, a, begin, end, t0, t1, v, bufs + t * buf_floats);
    });
    pool.parallel_for(16, [&](size_t begin, size_t end, size_t t) {
      GemmArgs g = ga;
      g.N = cols, g.ldb = cols, g.ldc = cols;
      const std::span<float> gws = ws.subspan(t * gemm_floats, gemm_floats);
      for (size_t xi = begin; xi < end; ++xi) {
        g.A = a.winograd_weight + xi * p.O * p.C;
        g.B = v + xi * p.C * cols;
        g.C = m + xi * p.O * cols;
        gemm(kernel, g, nullptr, gws);
      }
    });
    pool.parallel_for(p.O, [&](size_t begin, size_t end, size_t t) {
      output_transform(p, a, begin, end, t0, t1, m, bufs + t * buf_floats);
    });
  }
}

}  // namespace detail

}  // namespace kernels
DIFFUSE_END_NAMESPACE
