#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes diffusers scheduler trajectories as test fixtures for diffuse's diffusers-compatible scheduler.

For each (scheduler class, config) case the script builds the scheduler, calls set_timesteps, and runs the
sampling loop with a deterministic dummy model whose output C++ can reproduce exactly in float32:

    model(x, t) = x * a(t) + e * b(t),   a(t) = f32(1 - t / 2000),   b(t) = f32(0.5 + t / 4000)

where t is the timestep diffusers passes to the model (as float64), `x` is the scaled model input, and `e`
is a fixed tensor stored in the fixture. Stochastic steps get a CPU torch.Generator seeded with `seed`, so
the fixture also pins down the noise stream. Everything stored is float32 (as Python floats, which round-trip).

The `i2i_*` cases (index "img2img") start part-way, as img2img does: set_begin_index(k), add_noise at
timesteps[k] (scale_noise for FlowMatch), then the steps from there; see run_img2img_case.

Run:  .venv-ref/bin/python tools/make_scheduler_trajectories.py  (writes tests/data/trajectories/*.json)
      .venv-ref/bin/python tools/make_scheduler_trajectories.py pndm  (only the cases whose name starts
      with one of the given prefixes; index.json still lists every case)
Needs torch and diffusers (only here, never at test time; LMSDiscreteScheduler also needs scipy).
"""
import inspect
import json
import pathlib
import sys

import diffusers
import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "trajectories"
SHAPE = (1, 2, 4, 4)
ONLY = ()  # name prefixes given on the command line: run only those cases


def selected(name):
    return not ONLY or any(name.startswith(p) for p in ONLY)


def f32_list(t):
    return [float(v) for v in t.detach().to(torch.float32).flatten().tolist()]


def dummy_model(x, t, e, learned_variance=False):
    tf = float(t)
    a = torch.tensor(1.0 - tf / 2000.0, dtype=torch.float32)
    b = torch.tensor(0.5 + tf / 4000.0, dtype=torch.float32)
    out = x * a + e * b
    if learned_variance:
        # Extra output channels for variance_type learned_range: v(t) = e * f32(t / 2000 - 0.25).
        out = torch.cat([out, e * torch.tensor(tf / 2000.0 - 0.25, dtype=torch.float32)], dim=1)
    return out


def run_case(name, cls_name, config, steps, seed=0, step_kwargs=None, set_kwargs=None, learned_variance=False):
    if not selected(name):
        return {"name": name, "skipped": True}
    cls = getattr(diffusers, cls_name)
    sched = cls(**config)
    set_kwargs = dict(set_kwargs or {})
    sched.set_timesteps(steps, **set_kwargs)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float32) * float(getattr(sched, "init_noise_sigma", 1.0))
    e = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    x0 = x.clone()
    gen = torch.Generator().manual_seed(seed)
    traj = []
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if hasattr(type(sched), "scale_model_input") else x
        out = dummy_model(inp, t, e, learned_variance)
        kwargs = dict(step_kwargs or {})
        if "generator" in inspect.signature(sched.step).parameters:
            kwargs["generator"] = gen
        x = sched.step(out, t, x, **kwargs).prev_sample
        traj.append(f32_list(x))
    case = {
        "name": name,
        "class": cls_name,
        "config": {k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
        "num_inference_steps": steps,
        "set_timesteps_kwargs": set_kwargs,
        "seed": seed,
        "step_kwargs": dict(step_kwargs or {}),
        "learned_variance": learned_variance,
        "shape": list(SHAPE),
        "init_noise_sigma": float(getattr(sched, "init_noise_sigma", 1.0)),
        "timesteps": [float(t) for t in sched.timesteps.tolist()],
        "sigmas": f32_list(sched.sigmas) if hasattr(sched, "sigmas") and sched.sigmas is not None else None,
        "x_init": f32_list(x0),
        "e": f32_list(e),
        "trajectory": traj,
    }
    return case


def run_img2img_case(name, cls_name, config, steps, begin, seed=0, use_begin_index=True):
    """img2img-style run: set_timesteps, optionally set_begin_index(begin), x = add_noise(x0, noise,
    timesteps[begin]) (scale_noise for the FlowMatch classes), then the steps from timesteps[begin].
    After the first step, `add_noise` at the next timestep is recorded too (the inpainting call,
    which uses the step index). Without `use_begin_index` the scheduler finds the start itself
    (index_for_timestep), as pipelines that do not call set_begin_index do."""
    if not selected(name):
        return {"name": name, "skipped": True}
    cls = getattr(diffusers, cls_name)
    sched = cls(**config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(4321)
    x_orig = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    e = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    if use_begin_index:
        sched.set_begin_index(begin)
    t0 = sched.timesteps[begin:begin + 1]
    flow = cls_name.startswith("FlowMatch")
    x = sched.scale_noise(x_orig, t0, noise) if flow else sched.add_noise(x_orig, noise, t0)
    noised = f32_list(x)
    gen = torch.Generator().manual_seed(seed)
    traj = []
    inpaint = None
    for k, t in enumerate(sched.timesteps[begin:]):
        inp = sched.scale_model_input(x, t) if hasattr(type(sched), "scale_model_input") else x
        out = dummy_model(inp, t, e)
        kwargs = {}
        if "generator" in inspect.signature(sched.step).parameters:
            kwargs["generator"] = gen
        x = sched.step(out, t, x, **kwargs).prev_sample
        traj.append(f32_list(x))
        if k == 0 and begin + 1 < len(sched.timesteps) and not flow:
            inpaint = f32_list(sched.add_noise(x_orig, noise, sched.timesteps[begin + 1:begin + 2]))
    return {
        "name": name,
        "class": cls_name,
        "config": {k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
        "num_inference_steps": steps,
        "begin_index": begin,
        "use_begin_index": use_begin_index,
        "seed": seed,
        "shape": list(SHAPE),
        "timesteps": [float(t) for t in sched.timesteps.tolist()],
        "x_orig": f32_list(x_orig),
        "noise": f32_list(noise),
        "e": f32_list(e),
        "noised": noised,
        "inpaint_noised": inpaint,
        "trajectory": traj,
    }


def img2img_cases():
    sd = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    yield run_img2img_case("i2i_lms", "LMSDiscreteScheduler", dict(sd), 10, 4)
    yield run_img2img_case("i2i_lms_no_begin", "LMSDiscreteScheduler", dict(sd), 10, 3, use_begin_index=False)
    yield run_img2img_case("i2i_euler", "EulerDiscreteScheduler", dict(sd, steps_offset=1), 10, 4)
    yield run_img2img_case("i2i_euler_a", "EulerAncestralDiscreteScheduler", dict(sd), 10, 4, seed=21)
    yield run_img2img_case("i2i_heun", "HeunDiscreteScheduler", dict(sd), 6, 4)
    yield run_img2img_case("i2i_ddpm", "DDPMScheduler", dict(sd), 10, 4, seed=22, use_begin_index=False)
    yield run_img2img_case("i2i_ddim", "DDIMScheduler", dict(sd, steps_offset=1, set_alpha_to_one=False), 10, 4,
                           use_begin_index=False)
    yield run_img2img_case("i2i_dpmpp_2m", "DPMSolverMultistepScheduler", dict(sd), 10, 4)
    yield run_img2img_case("i2i_dpmpp_3m_sde_karras", "DPMSolverMultistepScheduler",
                           dict(sd, solver_order=3, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 10, 3,
                           seed=23)
    yield run_img2img_case("i2i_dpm_singlestep", "DPMSolverSinglestepScheduler", dict(sd), 10, 3)
    yield run_img2img_case("i2i_unipc", "UniPCMultistepScheduler", dict(sd, solver_order=3), 10, 4)
    yield run_img2img_case("i2i_deis", "DEISMultistepScheduler", dict(sd, solver_order=3), 16, 5)
    yield run_img2img_case("i2i_lcm", "LCMScheduler", dict(sd), 4, 1, seed=24)
    yield run_img2img_case("i2i_flow_euler", "FlowMatchEulerDiscreteScheduler",
                           dict(num_train_timesteps=1000, shift=3.0), 10, 4)
    yield run_img2img_case("i2i_flow_heun", "FlowMatchHeunDiscreteScheduler",
                           dict(num_train_timesteps=1000, shift=1.0), 6, 4)


def cases():
    sd = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    lin = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    yield run_case("ddpm_fixed_small", "DDPMScheduler", dict(lin, variance_type="fixed_small"), 10, seed=1)
    yield run_case("ddpm_fixed_large_v", "DDPMScheduler",
                   dict(lin, variance_type="fixed_large", prediction_type="v_prediction"), 10, seed=2)
    yield run_case("ddpm_fixed_small_log_cos", "DDPMScheduler",
                   dict(lin, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small_log"), 10, seed=3)
    yield run_case("ddim_eta0", "DDIMScheduler", dict(sd, steps_offset=1, set_alpha_to_one=False), 20)
    yield run_case("ddim_eta1", "DDIMScheduler", dict(sd, steps_offset=1, set_alpha_to_one=False), 20, seed=4,
                   step_kwargs=dict(eta=1.0))
    yield run_case("ddim_trailing_zero_snr_v", "DDIMScheduler",
                   dict(sd, timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction"), 10)
    yield run_case("euler", "EulerDiscreteScheduler", dict(sd, steps_offset=1), 20)
    yield run_case("euler_karras_v", "EulerDiscreteScheduler",
                   dict(sd, use_karras_sigmas=True, prediction_type="v_prediction"), 15)
    yield run_case("euler_a", "EulerAncestralDiscreteScheduler", dict(sd, steps_offset=1), 20, seed=5)
    yield run_case("heun", "HeunDiscreteScheduler", dict(sd), 10)
    yield run_case("lms", "LMSDiscreteScheduler", dict(sd), 20)
    yield run_case("dpmpp_2m", "DPMSolverMultistepScheduler", dict(sd), 20)
    yield run_case("dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(sd, use_karras_sigmas=True), 20)
    yield run_case("dpmpp_3m", "DPMSolverMultistepScheduler", dict(sd, solver_order=3), 20)
    yield run_case("dpmpp_2m_sde", "DPMSolverMultistepScheduler",
                   dict(sd, algorithm_type="sde-dpmsolver++"), 20, seed=6)
    yield run_case("dpmpp_2m_heun", "DPMSolverMultistepScheduler", dict(sd, solver_type="heun"), 20)
    yield run_case("dpm_singlestep", "DPMSolverSinglestepScheduler", dict(sd), 20)
    yield run_case("unipc_bh2", "UniPCMultistepScheduler", dict(sd), 20)
    yield run_case("unipc_bh1", "UniPCMultistepScheduler", dict(sd, solver_type="bh1"), 20)
    yield run_case("deis", "DEISMultistepScheduler", dict(sd), 20)
    yield run_case("lcm", "LCMScheduler", dict(sd), 4, seed=7)
    yield run_case("flow_euler_shift3", "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0), 20)
    yield run_case("flow_heun", "FlowMatchHeunDiscreteScheduler", dict(num_train_timesteps=1000, shift=1.0), 10)
    # Added for the DiffusersScheduler facade: variance types, thresholding, DPM orders and finals.
    yield run_case("ddpm_learned_range", "DDPMScheduler", dict(lin, variance_type="learned_range"), 10, seed=8,
                   learned_variance=True)
    yield run_case("ddpm_threshold_sample", "DDPMScheduler",
                   dict(lin, prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=0.9,
                        sample_max_value=1.5), 10, seed=9)
    yield run_case("ddim_linspace_eta05_threshold", "DDIMScheduler",
                   dict(sd, timestep_spacing="linspace", thresholding=True, sample_max_value=2.0), 15, seed=10,
                   step_kwargs=dict(eta=0.5))
    yield run_case("dpmpp_1", "DPMSolverMultistepScheduler", dict(sd, solver_order=1), 12)
    yield run_case("dpmpp_3m_sde", "DPMSolverMultistepScheduler",
                   dict(sd, solver_order=3, algorithm_type="sde-dpmsolver++"), 20, seed=11)
    yield run_case("dpmpp_3m_10_sigma_min", "DPMSolverMultistepScheduler",
                   dict(sd, solver_order=3, final_sigmas_type="sigma_min"), 10)
    yield run_case("dpmpp_2m_euler_at_final_v", "DPMSolverMultistepScheduler",
                   dict(sd, final_sigmas_type="sigma_min", euler_at_final=True, prediction_type="v_prediction",
                        use_karras_sigmas=True), 16)
    yield run_case("dpmpp_2m_sde_heun", "DPMSolverMultistepScheduler",
                   dict(sd, algorithm_type="sde-dpmsolver++", solver_type="heun"), 12, seed=12)
    yield run_case("dpm_singlestep_9_sigma_min", "DPMSolverSinglestepScheduler",
                   dict(sd, final_sigmas_type="sigma_min"), 9)
    yield run_case("unipc_bh1_3_sigma_min", "UniPCMultistepScheduler",
                   dict(sd, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"), 12)
    yield run_case("deis_3", "DEISMultistepScheduler", dict(sd, solver_order=3), 12)
    # Karras sigmas with final_sigmas_type sigma_min: the last step has zero length (sigma repeated);
    # UniPC still applies its corrector there, DEIS' and DPM-Solver's step is the identity.
    yield run_case("unipc_karras_sigma_min", "UniPCMultistepScheduler",
                   dict(sd, use_karras_sigmas=True, final_sigmas_type="sigma_min"), 10)
    yield run_case("unipc_bh1_3_karras_sigma_min", "UniPCMultistepScheduler",
                   dict(sd, solver_type="bh1", solver_order=3, use_karras_sigmas=True, final_sigmas_type="sigma_min"), 8)
    yield run_case("deis_karras_20", "DEISMultistepScheduler", dict(sd, use_karras_sigmas=True), 20)
    # PNDMScheduler (PLMS, skip_prk_steps): Stable Diffusion 1.5's scheduler_config (its other keys,
    # clip_sample and trained_betas null, are not PNDM arguments), at 10, 20 and 50 steps; then
    # v-prediction (SD 2 style), and the linspace / trailing spacings, where diffusers' step goes to
    # t - N // n rather than to the next timestep.
    sd15 = dict(sd, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    yield run_case("pndm_sd15_10", "PNDMScheduler", sd15, 10)
    yield run_case("pndm_sd15_20", "PNDMScheduler", sd15, 20)
    yield run_case("pndm_sd15_50", "PNDMScheduler", sd15, 50)
    yield run_case("pndm_v_20", "PNDMScheduler", dict(sd15, prediction_type="v_prediction"), 20)
    yield run_case("pndm_linspace_10", "PNDMScheduler", dict(sd15, timestep_spacing="linspace"), 10)
    yield run_case("pndm_trailing_15_alpha_one", "PNDMScheduler",
                   dict(sd15, timestep_spacing="trailing", set_alpha_to_one=True), 15)
    yield run_case("pndm_2", "PNDMScheduler", sd15, 2)
    yield run_case("pndm_1", "PNDMScheduler", sd15, 1)


def main():
    global ONLY
    ONLY = tuple(sys.argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    index = []
    for case in cases():
        index.append(case["name"])
        if case.get("skipped"):
            continue
        path = OUT / f"{case['name']}.json"
        path.write_text(json.dumps(case, separators=(",", ":")))
        print(f"{case['name']:28s} {case['class']:34s} steps={case['num_inference_steps']}")
    img2img = []
    for case in img2img_cases():
        img2img.append(case["name"])
        if case.get("skipped"):
            continue
        path = OUT / f"{case['name']}.json"
        path.write_text(json.dumps(case, separators=(",", ":")))
        print(f"{case['name']:28s} {case['class']:34s} steps={case['num_inference_steps']} begin={case['begin_index']}")
    (OUT / "index.json").write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                                                "cases": index, "img2img": img2img}, indent=1))


if __name__ == "__main__":
    main()
