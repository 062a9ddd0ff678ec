// SPDX-License-Identifier: MIT
// The SIMD bodies of the network kernels, written once against a vector type `Simd` (W f32
// lanes, masks, double accumulators; defined by ops_avx2.cpp and ops_avx512.cpp) and compiled
// once per ISA into kernels::DIFFUSE_OPS_ISA, like Highway's per-target re-inclusion. Not a
// normal header: included exactly once, at the end of a per-ISA file, after `Simd`.
//
// Determinism: every element is computed by lane-independent operations, and tails use masked
// loads and stores instead of a scalar loop, so an element's value never depends on where a
// thread's range starts or ends (bit-identical for any thread count).
#ifndef DIFFUSE_OPS_ISA
#error "ops_simd-inl.hpp is included by ops_avx2.cpp / ops_avx512.cpp only"
#endif

#include <type_traits>

DIFFUSE_BEGIN_NAMESPACE
namespace kernels::DIFFUSE_OPS_ISA {
namespace {

using std::size_t;
using V = Simd::V;
using M = Simd::M;
constexpr size_t W = Simd::W;

size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Vector math

/// e^x: Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2, the split constant exact in f32),
/// degree-7 Taylor polynomial (truncation < 6e-9), times 2^n. x is clamped to [-87.3, 88.3] so
/// 2^n stays normal (results below 2^-126 become ~1e-38 instead of a subnormal or 0). NaN
/// propagates (max/min return their second operand, x, when it is NaN). Within 2 ulp.
V vexp(V x) {
  x = Simd::min(Simd::set1(88.3f), Simd::max(Simd::set1(-87.3f), x));
  const V n = Simd::round(Simd::mul(x, Simd::set1(1.44269504088896341f)));
  V r = Simd::fnma(n, Simd::set1(0.693145751953125f), x);  // ln2 high part: 16 significant bits
  r = Simd::fnma(n, Simd::set1(1.42860682030941723e-6f), r);
  V p = Simd::set1(1.0f / 5040.0f);
  p = Simd::fma(p, r, Simd::set1(1.0f / 720.0f));
  p = Simd::fma(p, r, Simd::set1(1.0f / 120.0f));
  p = Simd::fma(p, r, Simd::set1(1.0f / 24.0f));
  p = Simd::fma(p, r, Simd::set1(1.0f / 6.0f));
  p = Simd::fma(p, r, Simd::set1(0.5f));
  p = Simd::fma(p, r, Simd::set1(1.0f));
  p = Simd::fma(p, r, Simd::set1(1.0f));
  return Simd::mul(p, Simd::pow2i(n));
}

/// 2^x for x <= 0 mostly (attention scores are pre-scaled by log2 e): exact reduction
/// x = n + r, |r| <= 1/2, degree-7 polynomial of 2^r = e^(r ln2) (truncation < 2e-9).
V vexp2(V x) {
  x = Simd::min(Simd::set1(127.0f), Simd::max(Simd::set1(-126.0f), x));
  const V n = Simd::round(x);
  const V r = Simd::sub(x, n);
  V p = Simd::set1(1.5252733804059841e-05f);  // ln2^k / k!
  p = Simd::fma(p, r, Simd::set1(1.5403530393381609e-04f));
  p = Simd::fma(p, r, Simd::set1(1.3333558146428443e-03f));
  p = Simd::fma(p, r, Simd::set1(9.6181291076284772e-03f));
  p = Simd::fma(p, r, Simd::set1(5.5504108664821580e-02f));
  p = Simd::fma(p, r, Simd::set1(2.4022650695910071e-01f));
  p = Simd::fma(p, r, Simd::set1(6.9314718055994531e-01f));
  p = Simd::fma(p, r, Simd::set1(1.0f));
  return Simd::mul(p, Simd::pow2i(n));
}

/// x * sigmoid(k x) = x / (1 + e^(-k x)). x is first raised to at least -100: vexp saturates at
/// e^88.3, so a huge negative x (-1e30) would otherwise give x / 2e38 = -5e-9 instead of -0; from
/// -100 the result is below 5e-37 in magnitude, as the exact one is (NaN passes through max).
V vsigmoid_mul(V x, float k) {
  x = Simd::max(Simd::set1(-100.0f), x);
  return Simd::div(x, Simd::add(Simd::set1(1.0f), vexp(Simd::mul(Simd::set1(-k), x))));
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), the formula PyTorch's vectorised
/// erf uses too.
V verf(V x) {
  const V ax = Simd::abs(x);
  const V t = Simd::div(Simd::set1(1.0f), Simd::fma(Simd::set1(0.3275911f), ax, Simd::set1(1.0f)));
  V p = Simd::set1(1.061405429f);
  p = Simd::fma(p, t, Simd::set1(-1.453152027f));
  p = Simd::fma(p, t, Simd::set1(1.421413741f));
  p = Simd::fma(p, t, Simd::set1(-0.284496736f));
  p = Simd::fma(p, t, Simd::set1(0.254829592f));
  p = Simd::mul(p, t);
  const V e = vexp(Simd::mul(Simd::sub(Simd::zero(), ax), ax));
  return Simd::copysign(Simd::fnma(p, e, Simd::set1(1.0f)), x);
}

struct ActIdentity {
  V operator()(V x) const { return x; }
};
/// max(0, x): the max returns its second operand when either is NaN, so NaN propagates (as the
/// scalar x < 0 ? 0 : x and torch.relu).
struct ActRelu {
  V operator()(V x) const { return Simd::max(Simd::zero(), x); }
};
struct ActSilu {
  V operator()(V x) const { return vsigmoid_mul(x, 1.0f); }
};
struct ActQuickGelu {
  V operator()(V x) const { return vsigmoid_mul(x, 1.702f); }
};
struct ActGeluErf {
  V operator()(V x) const {
    const V e = verf(Simd::mul(x, Simd::set1(0.70710678118654752f)));
    return Simd::mul(Simd::mul(Simd::set1(0.5f), x), Simd::add(Simd::set1(1.0f), e));
  }
};
/// 0.5 x (1 + tanh(u)) = x sigmoid(2u) = x / (1 + e^(-2u)): no cancellation for negative x.
struct ActGeluTanh {
  V operator()(V x) const {
    x = Simd::max(Simd::set1(-100.0f), x);  // as in vsigmoid_mul: -1e30 gives -0, not x / e^88.3
    const V x3 = Simd::mul(Simd::mul(x, x), x);
    const V u = Simd::mul(Simd::set1(0.79788456080286536f), Simd::fma(Simd::set1(0.044715f), x3, x));
    return Simd::div(x, Simd::add(Simd::set1(1.0f), vexp(Simd::mul(Simd::set1(-2.0f), u))));
  }
};

/// y[i] = f(x[i] + b[i]) over n elements, b a vector pointer (stride 1), a broadcast value, or none.
template <class F>
void map_plain(F f, const float* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + W <= n; i += W) Simd::store(y + i, f(Simd::load(x + i)));
  if (i < n) {
    const M m = Simd::mask(n - i);
    Simd::storem(y + i, m, f(Simd::loadm(x + i, m)));
  }
}
template <class F>
void map_vec_bias(F f, const float* x, const float* b, float* y, size_t n) {
  size_t i = 0;
  for (; i + W <= n; i += W) Simd::store(y + i, f(Simd::add(Simd::load(x + i), Simd::load(b + i))));
  if (i < n) {
    const M m = Simd::mask(n - i);
    Simd::storem(y + i, m, f(Simd::add(Simd::loadm(x + i, m), Simd::loadm(b + i, m))));
  }
}
template <class F>
void map_scalar_bias(F f, const float* x, float b, float* y, size_t n) {
  const V bv = Simd::set1(b);
  size_t i = 0;
  for (; i + W <= n; i += W) Simd::store(y + i, f(Simd::add(Simd::load(x + i), bv)));
  if (i < n) {
    const M m = Simd::mask(n - i);
    Simd::storem(y + i, m, f(Simd::add(Simd::loadm(x + i, m), bv)));
  }
}

template <class F>
void activation_range(F f, const float* x, float* y, size_t begin, size_t end, const float* bias, size_t inner,
                      size_t bias_len) {
  if (!bias) {
    map_plain(f, x + begin, y + begin, end - begin);
  } else if (inner == 1) {  // runs of consecutive columns
    for (size_t i = begin; i < end;) {
      const size_t c = i % bias_len, n = min_sz(end - i, bias_len - c);
      map_vec_bias(f, x + i, bias + c, y + i, n);
      i += n;
    }
  } else {  // runs of one channel
    for (size_t i = begin; i < end;) {
      const size_t n = min_sz(end - i, inner - i % inner);
      map_scalar_bias(f, x + i, bias[(i / inner) % bias_len], y + i, n);
      i += n;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// Mean and 1/sqrt(var + eps) of x[0, n): two passes with double accumulators (as the scalar
/// reference; only the summation order differs).
void moments(const float* x, size_t n, float eps, float& mean_out, float& rstd_out) {
  Simd::D s = Simd::dzero();
  size_t i = 0;
  for (; i + W <= n; i += W) Simd::dadd(s, Simd::load(x + i));
  double sum = Simd::dsum(s);
  for (size_t j = i; j < n; ++j) sum += x[j];
  const double mean = sum / static_cast<double>(n);
  Simd::D q = Simd::dzero();
  for (i = 0; i + W <= n; i += W) Simd::dsq(q, Simd::load(x + i), mean);
  double var = Simd::dsum(q);
  for (size_t j = i; j < n; ++j) var += (x[j] - mean) * (x[j] - mean);
  var /= static_cast<double>(n);
  mean_out = static_cast<float>(mean);
  rstd_out = static_cast<float>(1.0 / __builtin_sqrt(var + static_cast<double>(eps)));
}

/// One channel of a group: y = (x - mean) * scale + shift (then SiLU), n = spatial values.
template <bool Silu>
void norm_channel(const float* x, float* y, size_t n, float mean, float scale, float shift) {
  const V vm = Simd::set1(mean), vs = Simd::set1(scale), vb = Simd::set1(shift);
  auto f = [&](V v) {
    v = Simd::fma(Simd::sub(v, vm), vs, vb);
    return Silu ? vsigmoid_mul(v, 1.0f) : v;
  };
  map_plain(f, x, y, n);
}

// ---------------------------------------------------------------------------------------------
// Attention (see attention_body)

constexpr size_t kQB = W * Simd::kQueryVectors;  // queries per block
constexpr size_t kKB = kAttentionKvBlock;        // keys per block
static_assert(kQB == attention_q_block, "ops.inc q_block must match the vector layout");
static_assert(kQB % Simd::kOutRowsNarrow == 0, "narrow P V tiles must divide the query block");

constexpr size_t round16(size_t n) { return (n + 15) / 16 * 16; }
constexpr size_t dpad(size_t d) { return (d + W - 1) / W * W; }

/// St[j][0:kQB] = sum_t k_j[t] Qt[t][0:kQB] * c for keys j in [0, nk): kScoreKeys keys at a time;
/// the last group repeats key nk-1 for its missing keys and drops their rows.
void scores(const float* Qt, const float* k0, size_t k_stride, size_t nk, size_t d, float c, float* St) {
  constexpr int R = Simd::kScoreKeys;
  constexpr size_t QV = Simd::kQueryVectors;
  const V vc = Simd::set1(c);
  for (size_t j = 0; j < nk; j += R) {
    const float* kr[R];
    for (int r = 0; r < R; ++r) kr[r] = k0 + min_sz(j + r, nk - 1) * k_stride;
    V acc[R][QV];
    for (int r = 0; r < R; ++r)
      for (size_t v = 0; v < QV; ++v) acc[r][v] = Simd::zero();
    for (size_t t = 0; t < d; ++t) {
      V q[QV];
      for (size_t v = 0; v < QV; ++v) q[v] = Simd::load(Qt + t * kQB + v * W);
      for (int r = 0; r < R; ++r) {
        const V kb = Simd::set1(kr[r][t]);
        for (size_t v = 0; v < QV; ++v) acc[r][v] = Simd::fma(kb, q[v], acc[r][v]);
      }
    }
    const size_t nr = min_sz(R, nk - j);
    for (size_t r = 0; r < nr; ++r)
      for (size_t v = 0; v < QV; ++v) Simd::store(St + (j + r) * kQB + v * W, Simd::mul(acc[r][v], vc));
  }
}

/// O[i][c0*W : (c0+C)*W] = O[i][..] * alpha[i] + sum_j P[j][i] V[j][..] for rows i0..i0+RO of
/// the block and C vectors of the head dimension starting at vector c0 (the last one masked).
template <int RO, int C, bool Tail>
void pv_tile(const float* P, const float* v0, size_t v_stride, size_t nk, size_t c0, size_t d, const float* alpha,
             size_t i0, float* O, size_t ldo) {
  const M mk = Simd::mask(d - (c0 + C - 1) * W);  // lanes of the last vector (Tail only)
  V acc[RO][C];
  for (int r = 0; r < RO; ++r) {
    const V a = Simd::set1(alpha[i0 + r]);
    for (int c = 0; c < C; ++c) acc[r][c] = Simd::mul(Simd::load(O + (i0 + r) * ldo + (c0 + c) * W), a);
  }
  for (size_t j = 0; j < nk; ++j) {
    const float* vr = v0 + j * v_stride + c0 * W;
    V vv[C];
    for (int c = 0; c < C; ++c) {
      vv[c] = Tail && c == C - 1 ? Simd::loadm(vr + c * W, mk) : Simd::load(vr + c * W);
      // Keep the row of V in a register: otherwise GCC folds the load into each of the RO
      // FMAs, and RO x C vector loads per key make the loop load-bound on Zen 4 (one zmm load
      // per cycle) instead of FMA-bound.
      __asm__("" : "+v"(vv[c]));
    }
    const float* pr = P + j * kQB + i0;
    for (int r = 0; r < RO; ++r) {
      const V p = Simd::set1(pr[r]);
      for (int c = 0; c < C; ++c) acc[r][c] = Simd::fma(p, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RO; ++r)
    for (int c = 0; c < C; ++c) Simd::store(O + (i0 + r) * ldo + (c0 + c) * W, acc[r][c]);
}

template <int RO>
void pv_rows(const float* P, const float* v0, size_t v_stride, size_t nk, size_t d, const float* alpha, size_t i0,
             float* O, size_t ldo) {
  constexpr int C = Simd::kOutVectors;
  const size_t nv = (d + W - 1) / W;
  const bool tail = d % W != 0;
  size_t c0 = 0;
  for (; c0 + C < nv || (c0 + C == nv && !tail); c0 += C)
    pv_tile<RO, C, false>(P, v0, v_stride, nk, c0, d, alpha, i0, O, ldo);
  const size_t rest = nv - c0;  // 0..C vectors, the last one partial when `tail`
  auto run = [&](auto c_tag) {
    constexpr int Cn = decltype(c_tag)::value;
    if (tail)
      pv_tile<RO, Cn, true>(P, v0, v_stride, nk, c0, d, alpha, i0, O, ldo);
    else
      pv_tile<RO, Cn, false>(P, v0, v_stride, nk, c0, d, alpha, i0, O, ldo);
  };
  switch (rest) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    default: break;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The bodies of the ops table

void upsample_nearest_body(const float* x, size_t height, size_t width, float* y, size_t out_height, size_t out_width,
                           size_t begin, size_t end) {
  if (out_width != 2 * width) {  // general factors: the index arithmetic dominates, scalar is as good
    scalar::upsample_nearest_body(x, height, width, y, out_height, out_width, begin, end);
    return;
  }
  // Width doubled (the UNet Upsample2D case): every output row is expanded from its source row
  // with lane-doubling permutes. (Copying the previous output row instead was slower on AVX-512:
  // reloading a just-stored, cache-line-splitting zmm defeats store forwarding.)
  for (size_t p = begin; p < end; ++p) {
    const float* src = x + p * height * width;
    float* dst = y + p * out_height * out_width;
    for (size_t i = 0; i < out_height; ++i) {
      const float* row = src + (i * height / out_height) * width;
      float* out = dst + i * out_width;
      size_t j = 0;
      for (; j + W <= width; j += W) {
        const V v = Simd::load(row + j);
        Simd::store(out + 2 * j, Simd::dup_lo(v));
        Simd::store(out + 2 * j + W, Simd::dup_hi(v));
      }
      for (; j < width; ++j) out[2 * j] = out[2 * j + 1] = row[j];  // < W values: plain copies
    }
  }
}

void group_norm_body(const GroupNormArgs& a, size_t begin, size_t end) {
  const size_t cpg = a.channels / a.groups;
  float tmp[256];  // transpose_out: values of one channel, scattered from here
  for (size_t item = begin; item < end; ++item) {
    const size_t b = item / a.groups, g = item % a.groups;
    const float* x = a.x + (b * a.channels + g * cpg) * a.spatial;
    float mean, rstd;
    moments(x, cpg * a.spatial, a.eps, mean, rstd);
    for (size_t cc = 0; cc < cpg; ++cc) {
      const size_t c = g * cpg + cc;
      const float scale = rstd * (a.gamma ? a.gamma[c] : 1.0f);
      const float shift = a.beta ? a.beta[c] : 0.0f;
      const float* xc = x + cc * a.spatial;
      if (!a.transpose_out) {
        float* yc = a.y + (b * a.channels + c) * a.spatial;
        if (a.silu)
          norm_channel<true>(xc, yc, a.spatial, mean, scale, shift);
        else
          norm_channel<false>(xc, yc, a.spatial, mean, scale, shift);
        continue;
      }
      for (size_t s0 = 0; s0 < a.spatial; s0 += 256) {
        const size_t n = min_sz(256, a.spatial - s0);
        if (a.silu)
          norm_channel<true>(xc + s0, tmp, n, mean, scale, shift);
        else
          norm_channel<false>(xc + s0, tmp, n, mean, scale, shift);
        float* yc = a.y + (b * a.spatial + s0) * a.channels + c;
        for (size_t s = 0; s < n; ++s) yc[s * a.channels] = tmp[s];
      }
    }
  }
}

void layer_norm_body(const LayerNormArgs& a, size_t begin, size_t end) {
  const size_t ms = a.mod_stride ? a.mod_stride : a.dim;
  const size_t n = a.dim;
  const V one = Simd::set1(1.0f);
  for (size_t r = begin; r < end; ++r) {
    const float* x = a.x + r * n;
    float* y = a.y + r * n;
    float mean, rstd;
    moments(x, n, a.eps, mean, rstd);
    const size_t mb = r / a.rows_per_batch;
    const float* shift = a.shift ? a.shift + mb * ms : nullptr;
    const float* scale = a.scale ? a.scale + mb * ms : nullptr;
    const V vm = Simd::set1(mean), vr = Simd::set1(rstd);
    // The same operations as the scalar row, per lane; full vectors, then one masked tail
    // (AVX2's masked stores are slow, so they are kept out of the main loop).
    auto lane_op = [&](size_t i, auto ld) {
      V v = Simd::mul(Simd::sub(ld(x + i), vm), vr);
      if (a.gamma) v = Simd::mul(v, ld(a.gamma + i));
      if (a.beta) v = Simd::add(v, ld(a.beta + i));
      if (scale) v = Simd::mul(v, Simd::add(one, ld(scale + i)));
      if (shift) v = Simd::add(v, ld(shift + i));
      return v;
    };
    size_t i = 0;
    for (; i + W <= n; i += W) Simd::store(y + i, lane_op(i, [](const float* p) { return Simd::load(p); }));
    if (i < n) {
      const M m = Simd::mask(n - i);
      Simd::storem(y + i, m, lane_op(i, [m](const float* p) { return Simd::loadm(p, m); }));
    }
  }
}

void activation_body(Activation act, const float* x, float* y, size_t begin, size_t end, const float* bias,
                     size_t inner, size_t bias_len) {
  switch (act) {
    case Activation::identity: activation_range(ActIdentity{}, x, y, begin, end, bias, inner, bias_len); break;
    case Activation::silu: activation_range(ActSilu{}, x, y, begin, end, bias, inner, bias_len); break;
    case Activation::gelu_erf: activation_range(ActGeluErf{}, x, y, begin, end, bias, inner, bias_len); break;
    case Activation::gelu_tanh: activation_range(ActGeluTanh{}, x, y, begin, end, bias, inner, bias_len); break;
    case Activation::quick_gelu: activation_range(ActQuickGelu{}, x, y, begin, end, bias, inner, bias_len); break;
    case Activation::relu: activation_range(ActRelu{}, x, y, begin, end, bias, inner, bias_len); break;
  }
}

void add_channel_bias_body(float* x, size_t channels, size_t spatial, const float* v, size_t v_stride, size_t begin,
                           size_t end) {
  for (size_t p = begin; p < end; ++p)
    map_scalar_bias(ActIdentity{}, x + p * spatial, v[(p / channels) * v_stride + p % channels], x + p * spatial, spatial);
}

void gated_add_body(float* x, const float* y, size_t tokens, size_t dim, const float* gate, size_t gate_stride,
                    size_t begin, size_t end) {
  for (size_t r = begin; r < end; ++r) {
    const float* g = gate + (r / tokens) * gate_stride;
    float* xr = x + r * dim;
    const float* yr = y + r * dim;
    size_t d = 0;
    for (; d + W <= dim; d += W) Simd::store(xr + d, Simd::fma(Simd::load(g + d), Simd::load(yr + d), Simd::load(xr + d)));
    if (d < dim) {
      const M m = Simd::mask(dim - d);
      Simd::storem(xr + d, m, Simd::fma(Simd::loadm(g + d, m), Simd::loadm(yr + d, m), Simd::loadm(xr + d, m)));
    }
  }
}

void softmax_body(float* x, size_t cols, size_t begin, size_t end) {
  for (size_t r = begin; r < end; ++r) {
    float* row = x + r * cols;
    V vm = Simd::set1(row[0]);
    size_t j = 0;
    for (; j + W <= cols; j += W) vm = Simd::max(vm, Simd::load(row + j));
    float m = Simd::hmax(vm);
    for (size_t t = j; t < cols; ++t) m = row[t] > m ? row[t] : m;
    const V mv = Simd::set1(m);
    V vs = Simd::zero();
    for (j = 0; j + W <= cols; j += W) {
      const V e = vexp(Simd::sub(Simd::load(row + j), mv));
      Simd::store(row + j, e);
      vs = Simd::add(vs, e);
    }
    if (j < cols) {
      const M mk = Simd::mask(cols - j);
      const V e = Simd::zero_masked(vexp(Simd::sub(Simd::loadm(row + j, mk), mv)), mk);
      Simd::storem(row + j, mk, e);
      vs = Simd::add(vs, e);
    }
    const V inv = Simd::set1(1.0f / Simd::hsum(vs));
    for (j = 0; j + W <= cols; j += W) Simd::store(row + j, Simd::mul(Simd::load(row + j), inv));
    if (j < cols) {
      const M mk = Simd::mask(cols - j);
      Simd::storem(row + j, mk, Simd::mul(Simd::loadm(row + j, mk), inv));
    }
  }
}

size_t attention_workspace_body(size_t head_dim) {
  // Qt [d][kQB], P [kKB][kQB], O [kQB][dpad], m / l / alpha [kQB]
  return round16(head_dim * kQB) + round16(kKB * kQB) + round16(kQB * dpad(head_dim)) + 3 * round16(kQB);
}

// One block of kQB queries of one (batch, head) per item, FlashAttention-2 style, computed
// transposed so that the vector lanes run over queries: the block's queries are packed once as
// Qt [d][kQB]; for each block of kKB keys, S^T = K Q^T (broadcast k[j][t] x Qt rows), the
// running max per query is a lane-wise max over key rows, P^T = 2^(S^T - m) with scores
// pre-scaled by scale * log2(e), l += column sums, and O = O * alpha + P V (broadcast P^T[j][i]
// x rows of V) with the rescale folded into the load of the O tile. Padded query lanes compute
// on zeros and are never written out.
void attention_body(const AttentionArgs& a, size_t begin, size_t end, float* ws) {
  const size_t d = a.head_dim, ldo = dpad(d);
  float* Qt = ws;
  float* P = Qt + round16(d * kQB);
  float* O = P + round16(kKB * kQB);
  float* mrow = O + round16(kQB * ldo);
  float* lrow = mrow + round16(kQB);
  float* alpha = lrow + round16(kQB);
  const size_t q_blocks = (a.q_len + kQB - 1) / kQB;
  const float c = a.scale * 1.44269504088896341f;
  constexpr size_t QV = Simd::kQueryVectors;
  constexpr int RO = Simd::kOutRows;
  for (size_t item = begin; item < end; ++item) {
    const size_t bh = item / q_blocks, blk = item % q_blocks;
    const size_t b = bh / a.heads, h = bh % a.heads;
    const float* q0 = a.q + b * a.q_batch_stride + h * a.q_head_stride + blk * kQB * a.q_row_stride;
    const float* k0 = a.k + b * a.k_batch_stride + h * a.k_head_stride;
    const float* v0 = a.v + b * a.v_batch_stride + h * a.v_head_stride;
    float* o0 = a.o + b * a.o_batch_stride + h * a.o_head_stride + blk * kQB * a.o_row_stride;
    const size_t nq = min_sz(kQB, a.q_len - blk * kQB);
    for (size_t t = 0; t < d; ++t)
      for (size_t i = 0; i < kQB; ++i) Qt[t * kQB + i] = i < nq ? q0[i * a.q_row_stride + t] : 0.0f;
    for (size_t i = 0; i < kQB * ldo; ++i) O[i] = 0.0f;
    V m[QV], l[QV];
    for (size_t v = 0; v < QV; ++v) m[v] = Simd::set1(-__builtin_inff()), l[v] = Simd::zero();
    const size_t rows = (nq + RO - 1) / RO * RO;  // O rows computed (<= kQB + RO - 1: see below)
    // Causal: keys past the block's last query are skipped; in blocks reaching past its first
    // query the scores of keys after each query are set to -inf (weight 2^-126 after the exp2
    // clamp, as for any score that far below the maximum; key 0 is always seen, so m is finite).
    const size_t q_first = blk * kQB;
    const size_t kv_end = a.causal ? min_sz(a.kv_len, q_first + nq) : a.kv_len;
    for (size_t j0 = 0; j0 < kv_end; j0 += kKB) {
      const size_t nk = min_sz(kKB, kv_end - j0);
      scores(Qt, k0 + j0 * a.k_row_stride, a.k_row_stride, nk, d, c, P);
      if (a.causal && j0 + nk > q_first + 1)
        for (size_t j = 0; j < nk; ++j)
          for (size_t i = 0; i < nq && q_first + i < j0 + j; ++i) P[j * kQB + i] = -__builtin_inff();
      for (size_t v = 0; v < QV; ++v) {
        V bm = Simd::load(P + v * W);
        for (size_t j = 1; j < nk; ++j) bm = Simd::max(bm, Simd::load(P + j * kQB + v * W));
        const V m_new = Simd::max(m[v], bm);
        const V al = vexp2(Simd::sub(m[v], m_new));  // -inf - finite clamps to 2^-126: O, l are 0 then
        V s = Simd::zero();
        for (size_t j = 0; j < nk; ++j) {
          const V p = vexp2(Simd::sub(Simd::load(P + j * kQB + v * W), m_new));
          Simd::store(P + j * kQB + v * W, p);
          s = Simd::add(s, p);
        }
        l[v] = Simd::fma(l[v], al, s);
        m[v] = m_new;
        Simd::store(alpha + v * W, al);
      }
      const float* vb = v0 + j0 * a.v_row_stride;
      if (d <= 2 * W) {  // narrow heads (d <= 32 / 16): more rows per tile to keep enough accumulators
        constexpr int RN = Simd::kOutRowsNarrow;
        for (size_t i0 = 0; i0 < nq; i0 += RN) pv_rows<RN>(P, vb, a.v_row_stride, nk, d, alpha, i0, O, ldo);
      } else {
        for (size_t i0 = 0; i0 < rows; i0 += RO) {
          if (i0 + RO <= kQB)
            pv_rows<RO>(P, vb, a.v_row_stride, nk, d, alpha, i0, O, ldo);
          else  // kQB not a multiple of RO: the last rows one at a time
            for (size_t i = i0; i < kQB; ++i) pv_rows<1>(P, vb, a.v_row_stride, nk, d, alpha, i, O, ldo);
        }
      }
    }
    for (size_t v = 0; v < QV; ++v) Simd::store(lrow + v * W, Simd::div(Simd::set1(1.0f), l[v]));
    for (size_t i = 0; i < nq; ++i) {
      const V inv = Simd::set1(lrow[i]);
      float* o = o0 + i * a.o_row_stride;
      size_t t = 0;
      for (; t + W <= d; t += W) Simd::store(o + t, Simd::mul(Simd::load(O + i * ldo + t), inv));
      if (t < d) Simd::storem(o + t, Simd::mask(d - t), Simd::mul(Simd::load(O + i * ldo + t), inv));
    }
  }
}

}  // namespace kernels::DIFFUSE_OPS_ISA
DIFFUSE_END_NAMESPACE
