#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""How k-diffusion's second-order samplers behave at very few steps, on exact data (issue 10, 4.4).

The samplers are re-implemented here in numpy from k-diffusion's `sample_heun`, `sample_dpm_2`,
`sample_dpm_2_ancestral` and `sample_dpm_fast` (its `DPMSolver.dpm_solver_fast`, eps form, eta 0), and
run with the closed-form denoiser of one-dimensional Gaussian data x0 ~ N(0, v) (v = 0.25, the variance of
an image in [-1, 1]; diffuse's `GaussianDenoiser`): D(x, sigma) = v / (v + sigma^2) x. Every step is then
linear in x plus independent Gaussian noise, so the law of the final sample is computed exactly (no
sampling): x_T ~ N(0, v + sigma_max^2) and each step maps (gain g, variance s2) to (a g, a^2 s2 + up^2).
The exact answer is std(x_final) = sqrt(v); the script prints std(x_final) / sqrt(v): 1 is exact, well
above 1 is an image of noise, below 1 a blurred one.

The sigmas are the ones `diffuse generate` uses on the shipped models:
  - models/digits-unet (DDPM, VP, linear betas): karras between 0.01000133 and 157.407 (the pipeline's
    default VP schedule), then 0;
  - models/digits-dit (rectified flow, shift 1): diffusers' FlowMatchEuler sigmas linspace(1, 1/N, n),
    then 0, mapped to VE (s / (1 - s), s capped at 1 - 1/N) for the samplers that work in VE.

It also runs them on a mixture of four narrow Gaussians (the exact, nonlinear denoiser of diffuse's
GaussianMixtureDenoiser) from fixed start points with fixed per-step noise, and with `--write` stores the
results as tests/data/few_step_samplers.json: tests/sample/few_step_samplers_test.cpp checks that
diffuse's samplers give the same numbers (so a few-step failure is the algorithm's, not a bug).

Run:  python3 tools/few_step_samplers.py [--write]   (numpy only)
"""
import math

import numpy as np

V = 0.25
N_TRAIN = 1000


def karras(n, smin=0.01000133, smax=157.407257, rho=7.0):
    ramp = np.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return list(s) + [0.0]


def dit_ve(n):
    s = list(np.linspace(1.0, 1.0 / N_TRAIN, n)) + [0.0]
    cap = 1.0 - 1.0 / N_TRAIN
    return [min(v, cap) / (1.0 - min(v, cap)) for v in s]


def gaussian_den(x, sigma):
    return V / (V + sigma * sigma) * x


def mixture_den(means, var):
    """The exact denoiser of an equal-weight mixture of N(mu_k, var), one-dimensional: diffuse's
    GaussianMixtureDenoiser. Nonlinear in x, unlike the single Gaussian."""
    mu = np.asarray(means, dtype=np.float64)

    def den(x, sigma):
        x = np.asarray(x, dtype=np.float64)
        tot = var + sigma * sigma
        logw = -((x[..., None] - mu) ** 2) / (2 * tot)
        logw -= logw.max(axis=-1, keepdims=True)
        w = np.exp(logw)
        comp = mu + var / tot * (x[..., None] - mu)
        return (w * comp).sum(-1) / w.sum(-1)

    return den


def ancestral(s, sn):
    up = min(sn, math.sqrt(max(0.0, sn * sn * (s * s - sn * sn) / (s * s))))
    return math.sqrt(max(0.0, sn * sn - up * up)), up


# k-diffusion's samplers, eta 0 / s_churn 0, on a denoiser D(x, sigma); `noise(i)` gives step i's z.
def euler(x, sig, D, noise=None):
    for s, sn in zip(sig[:-1], sig[1:]):
        x = x + (x - D(x, s)) / s * (sn - s)
    return x


def heun(x, sig, D, noise=None):
    for s, sn in zip(sig[:-1], sig[1:]):
        d = (x - D(x, s)) / s
        dt = sn - s
        if sn == 0:
            x = x + d * dt
            continue
        x2 = x + d * dt
        d2 = (x2 - D(x2, sn)) / sn
        x = x + (d + d2) / 2 * dt
    return x


def dpm_2(x, sig, D, noise=None):
    for s, sn in zip(sig[:-1], sig[1:]):
        d = (x - D(x, s)) / s
        if sn == 0:
            x = x + d * (sn - s)
            continue
        sm = math.exp(0.5 * (math.log(s) + math.log(sn)))
        x2 = x + d * (sm - s)
        x = x + (x2 - D(x2, sm)) / sm * (sn - s)
    return x


def dpm_2_a(x, sig, D, noise):
    for i, (s, sn) in enumerate(zip(sig[:-1], sig[1:])):
        down, up = ancestral(s, sn)
        d = (x - D(x, s)) / s
        if down == 0:
            x = x + d * (down - s)
        else:
            sm = math.exp(0.5 * (math.log(s) + math.log(down)))
            x2 = x + d * (sm - s)
            x = x + (x2 - D(x2, sm)) / sm * (down - s)
        x = x + noise(i) * up
    return x


def dpm_fast(x, sig, D, noise=None):
    """k-diffusion dpm_solver_fast with nfe = len(sig) - 1, t = -log sigma, eps form, eta 0."""
    nfe = len(sig) - 1
    smin = min(v for v in sig if v > 0)
    t0, t1 = -math.log(sig[0]), -math.log(smin)
    m = nfe // 3 + 1
    ts = np.linspace(t0, t1, m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    sg = lambda t: math.exp(-t)
    ep = lambda x, t: (x - D(x, sg(t))) / sg(t)
    for i, order in enumerate(orders):
        t, tn = ts[i], ts[i + 1]
        h = tn - t
        e = ep(x, t)
        if order == 1:
            x = x - sg(tn) * math.expm1(h) * e
        elif order == 2:
            r1 = 0.5
            s1 = t + r1 * h
            u1 = x - sg(s1) * math.expm1(r1 * h) * e
            x = x - sg(tn) * math.expm1(h) * e - sg(tn) / (2 * r1) * math.expm1(h) * (ep(u1, s1) - e)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = t + r1 * h, t + r2 * h
            u1 = x - sg(s1) * math.expm1(r1 * h) * e
            e1 = ep(u1, s1)
            u2 = x - sg(s2) * math.expm1(r2 * h) * e - sg(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e)
            e2 = ep(u2, s2)
            x = x - sg(tn) * math.expm1(h) * e - sg(tn) / r2 * (math.expm1(h) / h - 1) * (e2 - e)
    return x


SAMPLERS = {"euler": euler, "heun": heun, "dpm_2": dpm_2, "dpm_2_a": dpm_2_a, "dpm_fast": dpm_fast}


def gaussian_std_ratio(f, sig):
    """std(x_final) / sqrt(v) for Gaussian data, exactly: every step is linear in x and the noise."""
    steps = len(sig) - 1
    zero = lambda i: 0.0
    g = f(1.0, sig, gaussian_den, zero)  # gain of x_T
    var = g * g * (V + sig[0] ** 2)
    if f is dpm_2_a:
        for k in range(steps):  # gain of step k's noise
            h = f(0.0, sig, gaussian_den, lambda i, k=k: 1.0 if i == k else 0.0)
            var += h * h
    return math.sqrt(var / V)


# The cross-check fixture: a mixture, start points and per-step noise, and k-diffusion's result.
POINTS = [-0.9, -0.3, 0.5, 0.9]
MIX_VAR = 0.01
STARTS = [-1.5, -1.0, -0.5, -0.1, 0.2, 0.7, 1.1, 1.8]  # x_T = z * sigma_max


def fixture_noise(step):
    return np.array([math.sin(1.0 + 0.7 * step + 1.3 * j) for j in range(len(STARTS))])


def fixture():
    D = mixture_den(POINTS, MIX_VAR)
    cases = []
    for label, make in (("unet", karras), ("dit", dit_ve)):
        for n in (3, 4, 8):
            sig = make(n)
            for name, f in SAMPLERS.items():
                x = f(np.array(STARTS) * sig[0], sig, D, fixture_noise)
                cases.append({"schedule": label, "steps": n, "sampler": name, "sigmas": [float(v) for v in sig],
                              "final": [float(v) for v in x]})
    return {"means": POINTS, "var": MIX_VAR, "starts": STARTS,
            "noise": [list(fixture_noise(k)) for k in range(9)], "cases": cases}


def main():
    import json
    import pathlib
    import sys
    for label, make in (("digits-unet (karras)", karras), ("digits-dit (flow, VE)", dit_ve)):
        print(f"\n{label}: Gaussian data, std(x_final) / std(data), 1 = exact")
        print("steps    " + "".join(f"{n:>8d}" for n in (2, 3, 4, 5, 6, 8, 10, 15, 25)))
        for name, f in SAMPLERS.items():
            print(f"{name:9s}" + "".join(f"{gaussian_std_ratio(f, make(n)):8.3g}" for n in (2, 3, 4, 5, 6, 8, 10, 15, 25)))
    fx = fixture()
    print(f"\nmixture of N(mu, {MIX_VAR}), mu in {POINTS}: max |x_final| (data lies within 1.2)")
    for c in fx["cases"]:
        print(f"  {c['schedule']:5s} {c['steps']:2d} steps {c['sampler']:9s} {max(abs(v) for v in c['final']):.3g}")
    if "--write" in sys.argv:
        out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "few_step_samplers.json"
        out.write_text(json.dumps(fx, indent=0))
        print("wrote", out)


if __name__ == "__main__":
    main()
