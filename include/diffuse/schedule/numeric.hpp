// SPDX-License-Identifier: MIT
/** @file numeric.hpp
 *  The numpy and torch primitives that diffusers builds its schedules from, reproduced to the bit.
 *
 *  diffusers mixes two arithmetics (see docs `schedulers.md` §0):
 *  - torch CPU float32 kernels for the training arrays (`torch.linspace`, `torch.cumprod`), and
 *  - numpy float64 host code for everything built in `set_timesteps` (`np.linspace`, `np.arange`,
 *    `np.round`, `np.interp`), cast to float32 when stored.
 *
 *  Bit-exactness needs the same roundings in the same order. Header code is compiled with the
 *  consumer's flags, and GCC in GNU mode contracts `a*b + c` into an FMA under `-march=native`,
 *  which skips the rounding of the product. Every product that numpy or torch rounds is therefore
 *  passed through `detail::rounded`, which the compiler cannot fuse into the following addition. */
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "diffuse/config.hpp"

DIFFUSE_BEGIN_NAMESPACE

namespace detail {

/// Returns `v` after it has been stored: the value is rounded to `T` and cannot be contracted
/// with a neighbouring operation into an FMA.
template <class T>
inline T rounded(T v) noexcept {
  volatile T x = v;
  return x;
}

/// `np.linspace(start, stop, num, endpoint)` in float64: `y[i] = i*step + start` with
/// `step = (stop - start)/div`, and `y[-1] = stop` exactly when `endpoint` (numpy
/// `function_base.py`). `num == 0` gives an empty vector.
inline std::vector<double> np_linspace(double start, double stop, std::int64_t num, bool endpoint = true) {
  std::vector<double> y(static_cast<std::size_t>(num < 0 ? 0 : num));
  if (num <= 0) return y;
  const std::int64_t div = endpoint ? num - 1 : num;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    if (step == 0.0) {
      // numpy divides first, then multiplies, when the step underflows to zero.
      for (std::int64_t i = 0; i < num; ++i)
        y[static_cast<std::size_t>(i)] = rounded(static_cast<double>(i) / static_cast<double>(div) * delta) + start;
    } else {
      for (std::int64_t i = 0; i < num; ++i)
        y[static_cast<std::size_t>(i)] = rounded(static_cast<double>(i) * step) + start;
    }
  } else {
    y[0] = start;  // num == 1: 0 * delta + start
  }
  if (endpoint && num > 1) y.back() = stop;
  return y;
}

/// `np.arange(start, stop, step)` for float64: length `ceil((stop - start)/step)`; values
/// `start + i*d` with `d = (start + step) - start`, as numpy's `DOUBLE_fill` computes them.
inline std::vector<double> np_arange(double start, double stop, double step) {
  const double len_d = std::ceil((stop - start) / step);
  const std::size_t len = len_d > 0 ? static_cast<std::size_t>(len_d) : 0;
  std::vector<double> y(len);
  if (len == 0) return y;
  y[0] = start;
  if (len == 1) return y;
  y[1] = start + step;
  const double d = y[1] - start;
  for (std::size_t i = 2; i < len; ++i) y[i] = rounded(static_cast<double>(i) * d) + start;
  return y;
}

/// `np.round`: round half to even (the default IEEE rounding mode).
inline double np_round(double v) noexcept { return std::nearbyint(v); }

/// `np.interp(x, arange(fp.size()), fp)` for one point, in float64 (numpy `arr_interp`):
/// exact at the knots, clamped outside, `slope*(x - j) + fp[j]` inside.
template <class F>
inline double np_interp_index(double x, std::span<const F> fp) noexcept {
  const std::size_t n = fp.size();
  if (n == 0) return std::nan("");
  if (std::isnan(x)) return x;
  if (x <= 0.0 || n == 1) return static_cast<double>(fp[0]);
  if (x >= static_cast<double>(n - 1)) return static_cast<double>(fp[n - 1]);
  const auto j = static_cast<std::size_t>(std::floor(x));
  const double yj = static_cast<double>(fp[j]);
  if (static_cast<double>(j) == x) return yj;
  const double yk = static_cast<double>(fp[j + 1]);
  const double slope = yk - yj;  // (fp[j+1]-fp[j]) / (xp[j+1]-xp[j]) with unit spacing
  double r = rounded(slope * (x - static_cast<double>(j))) + yj;
  if (std::isnan(r)) {
    r = rounded(slope * (x - static_cast<double>(j + 1))) + yk;
    if (std::isnan(r) && yj == yk) r = yj;
  }
  return r;
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU (torch 2.x `linspace_kernel`):
/// `step = f32((f32(end) - f32(start)) / f32(steps-1))`; the first half counts up from start, the
/// second half down from end, each value computed in double and rounded once to float32.
inline std::vector<float> torch_linspace_f32(double start, double end, std::int64_t steps) {
  std::vector<float> y(static_cast<std::size_t>(steps < 0 ? 0 : steps));
  if (steps <= 0) return y;
  const float s = static_cast<float>(start);
  const float e = static_cast<float>(end);
  if (steps == 1) {
    y[0] = s;
    return y;
  }
  const float step = rounded(rounded(e - s) / static_cast<float>(steps - 1));
  const std::int64_t halfway = steps / 2;
  for (std::int64_t i = 0; i < steps; ++i) {
    // A float32 step times an index below 2^24 is exact in double: only the sum rounds.
    const double v = i < halfway ? static_cast<double>(s) + static_cast<double>(step) * static_cast<double>(i)
                                 : static_cast<double>(e) - static_cast<double>(step) * static_cast<double>(steps - 1 - i);
    y[static_cast<std::size_t>(i)] = static_cast<float>(v);
  }
  return y;
}

/// `torch.cumprod(x, 0)` for float32 on the CPU: the running product is kept in double
/// (`acc_type<float, false>`) and rounded to float32 at each output.
inline std::vector<float> torch_cumprod_f32(std::span<const float> x) {
  std::vector<float> y(x.size());
  double acc = 1.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    acc = rounded(acc * static_cast<double>(x[i]));
    y[i] = static_cast<float>(acc);
  }
  return y;
}

}  // namespace detail

DIFFUSE_END_NAMESPACE
