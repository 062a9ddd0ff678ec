#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/schedules/*.json: the timesteps and sigmas that diffusers' schedulers build in
set_timesteps, for a matrix of scheduler classes and configs, plus the float32 alphas_cumprod arrays.

Run with the reference venv (torch and diffusers are never needed at test time):

    .venv-ref/bin/python tools/make_schedule_fixtures.py

Layout of diffusers_schedules.json:
    {"versions": {...},
     "alphas_cumprod": {"<key>": ["3f7ff972", ...]},        # float32 bits, hex
     "groups": [{"class": "EulerDiscreteScheduler",
                 "config": {...},                            # scheduler.to_json_string(), non-finite dropped
                 "alphas_cumprod": "<key>" | null,
                 "runs": [{"n": 10, "mu": null,
                           "timesteps": [...],               # exact (int64, or float32 widened to double)
                           "timesteps_dtype": "int64" | "float32",
                           "sigmas": ["4169d66a", ...] | null}   # float32 bits, hex
                          | {"n": 1, "mu": null, "nan": true}]}]}     # diffusers gives NaN here
"""
import hashlib
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

import diffusers

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "schedules")
STEPS = [1, 2, 10, 25, 50]


def f32_hex(t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))
    return [format(int(v), "08x") for v in a.view(np.uint32)]


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    # As pipelines/flux/pipeline_flux.py::calculate_shift.
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def clean_config(cfg):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, float) and not math.isfinite(v):
            continue  # JSON has no infinities; the parser's default for these keys is -inf
        out[k] = v
    return out


ac_table = {}
groups = []


def add(cls_name, steps=STEPS, mu=None, store_ac=True, **kw):
    cls = getattr(diffusers, cls_name)
    sched = cls(**kw)
    config = clean_config(json.loads(sched.to_json_string()))
    ac_key = None
    if store_ac and hasattr(sched, "alphas_cumprod"):
        bits = f32_hex(sched.alphas_cumprod)
        ac_key = hashlib.sha1("".join(bits).encode()).hexdigest()[:12]
        ac_table.setdefault(ac_key, bits)
    runs = []
    for n in steps:
        s = cls.from_config(config)
        if mu is not None:
            s.set_timesteps(n, mu=mu)
        else:
            s.set_timesteps(n)
        ts = s.timesteps
        if ts.dtype == torch.int64:
            tl, tdt = [int(v) for v in ts.tolist()], "int64"
        else:
            assert ts.dtype == torch.float32, ts.dtype
            tl, tdt = [float(v) for v in ts.tolist()], "float32"
        sig = getattr(s, "sigmas", None)
        if cls_name in ("DDPMScheduler", "DDIMScheduler", "LCMScheduler"):
            sig = None
        if any(math.isnan(v) for v in tl) or (sig is not None and torch.isnan(sig).any()):
            # e.g. shift_terminal with n=1 divides 0 by 0 upstream; diffuse raises value_error instead.
            runs.append({"n": n, "mu": mu, "nan": True})
            continue
        runs.append({"n": n, "mu": mu, "timesteps": tl, "timesteps_dtype": tdt,
                     "sigmas": f32_hex(sig) if sig is not None else None})
    groups.append({"class": cls_name, "config": config, "alphas_cumprod": ac_key, "runs": runs})


BETAS = {
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}
SPACINGS = [dict(timestep_spacing="linspace"), dict(timestep_spacing="leading"),
            dict(timestep_spacing="leading", steps_offset=1), dict(timestep_spacing="trailing")]

SPACED = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
          "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
          "UniPCMultistepScheduler", "DEISMultistepScheduler"]

# 1. Every spaced scheduler x beta schedule x spacing x steps.
for cls_name in SPACED:
    for b in BETAS.values():
        for sp in SPACINGS:
            add(cls_name, **b, **sp)
for b in BETAS.values():
    add("DPMSolverSinglestepScheduler", **b)
add("LCMScheduler")
add("LCMScheduler", **BETAS["linear"], original_inference_steps=100)

# 2. Sigma conversions.
SIGMA_KINDS = [dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True), dict(use_beta_sigmas=True)]
for cls_name in ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler"]:
    for kind in SIGMA_KINDS:
        for bname in ["scaled_linear", "squaredcos_cap_v2"]:
            add(cls_name, store_ac=False, **BETAS[bname], **kind)
for cls_name in ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                 "UniPCMultistepScheduler"]:
    add(cls_name, store_ac=False, **BETAS["scaled_linear"], final_sigmas_type="sigma_min")
    for kind in SIGMA_KINDS:
        add(cls_name, store_ac=False, **BETAS["scaled_linear"], final_sigmas_type="sigma_min", **kind)
add("EulerDiscreteScheduler", store_ac=False, **BETAS["scaled_linear"], use_karras_sigmas=True,
    sigma_min=0.05, sigma_max=10.0)
add("UniPCMultistepScheduler", store_ac=False, **BETAS["scaled_linear"], use_karras_sigmas=True,
    sigma_min=0.05, sigma_max=10.0)
add("EulerDiscreteScheduler", store_ac=False, **BETAS["scaled_linear"], interpolation_type="log_linear")
add("EulerDiscreteScheduler", store_ac=False, **BETAS["scaled_linear"], timestep_type="continuous",
    prediction_type="v_prediction")
add("DPMSolverMultistepScheduler", store_ac=False, **BETAS["scaled_linear"], use_lu_lambdas=True)
add("DPMSolverMultistepScheduler", **BETAS["squaredcos_cap_v2"], lambda_min_clipped=-5.1)
add("DPMSolverSinglestepScheduler", store_ac=False, **BETAS["squaredcos_cap_v2"], lambda_min_clipped=-5.1)
add("DPMSolverMultistepScheduler", store_ac=False, **BETAS["linear"], num_train_timesteps=1100)
add("EulerDiscreteScheduler", **BETAS["linear"], num_train_timesteps=1100)

# 3. Zero terminal SNR.
for cls_name in ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"]:
    add(cls_name, **BETAS["scaled_linear"], rescale_betas_zero_snr=True, timestep_spacing="trailing")
add("EulerDiscreteScheduler", store_ac=False, **BETAS["scaled_linear"], rescale_betas_zero_snr=True,
    timestep_spacing="linspace")

# 4. Other beta schedules and user betas.
add("DDPMScheduler", beta_schedule="sigmoid")
add("HeunDiscreteScheduler", beta_schedule="exp")
tb = np.linspace(0.001, 0.05, 100).tolist()
add("DDIMScheduler", num_train_timesteps=100, trained_betas=tb, steps=[1, 10, 50])
add("EulerDiscreteScheduler", num_train_timesteps=100, trained_betas=tb, steps=[1, 10, 50])

# 5. Flow sigmas in the DPM family.
for cls_name in ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler"]:
    add(cls_name, store_ac=False, use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
add("DPMSolverMultistepScheduler", store_ac=False, use_flow_sigmas=True, prediction_type="flow_prediction",
    use_dynamic_shifting=True, mu=calculate_shift(4096))
add("UniPCMultistepScheduler", store_ac=False, use_flow_sigmas=True, prediction_type="flow_prediction",
    use_dynamic_shifting=True, mu=calculate_shift(1024))
add("UniPCMultistepScheduler", store_ac=False, use_flow_sigmas=True, flow_shift=1.0,
    prediction_type="flow_prediction")
add("UniPCMultistepScheduler", store_ac=False, use_flow_sigmas=True, flow_shift=3.0, final_sigmas_type="sigma_min",
    prediction_type="flow_prediction")
add("UniPCMultistepScheduler", store_ac=False, use_flow_sigmas=True, flow_shift=3.0, shift_terminal=0.05,
    prediction_type="flow_prediction")
add("UniPCMultistepScheduler", store_ac=False, use_flow_sigmas=True, use_karras_sigmas=True,
    prediction_type="flow_prediction")

# 6. Flow matching.
FM = "FlowMatchEulerDiscreteScheduler"
for shift in [1.0, 3.0]:
    add(FM, shift=shift)
    add("FlowMatchHeunDiscreteScheduler", shift=shift)
for seq in [256, 1024, 4096]:
    add(FM, use_dynamic_shifting=True, mu=calculate_shift(seq))
add(FM, use_dynamic_shifting=True, time_shift_type="linear", mu=0.8)
add(FM, shift=3.0, shift_terminal=0.02)
add(FM, use_dynamic_shifting=True, shift_terminal=0.1, mu=calculate_shift(4096))
add(FM, shift=3.0, invert_sigmas=True)
for kind in SIGMA_KINDS:
    add(FM, shift=3.0, **kind)
add(FM, num_train_timesteps=500, shift=2.0)

doc = {
    "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    "calculate_shift": {str(s): calculate_shift(s) for s in [256, 1024, 4096]},
    "alphas_cumprod": ac_table,
    "groups": groups,
}
os.makedirs(OUT, exist_ok=True)
path = os.path.join(OUT, "diffusers_schedules.json")
with open(path, "w") as f:
    json.dump(doc, f, separators=(",", ":"))
print(f"{path}: {len(groups)} groups, {sum(len(g['runs']) for g in groups)} runs, "
      f"{len(ac_table)} alphas_cumprod arrays, {os.path.getsize(path)} bytes", file=sys.stderr)
