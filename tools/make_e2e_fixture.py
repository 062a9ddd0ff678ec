#!/usr/bin/env python3
"""End-to-end parity fixtures: whole generations of the shipped models run in diffusers.

Each case runs one shipped model with a diffusers scheduler, a seed and classifier-free guidance the
way diffuse's pipeline does it (src/pipeline/generate.cpp), and saves what tests/pipeline/e2e_test.cpp
compares against:

  noise      torch.randn((B, C, H, W), generator=torch.Generator().manual_seed(seed)) on the CPU
  CFG        one forward of the batch [uncond; cond] (uncond = null class 10), then
             out = out_u + scale * (out_c - out_u) on the raw model output (eps or velocity)
  loop       for t in scheduler.timesteps: x = scheduler.step(out, t, x).prev_sample (no clamp)

Saved per case (tests/data/e2e/<case>.safetensors, all float32):
  final      the last sample [B, C, H, W], before any clamp or 8-bit quantisation
  latents    [K, B, C, H, W]: the sample after the steps listed in `after_steps` (1-based)
  after_steps, timesteps, labels (float32 holding integers)
metadata: model, scheduler class and the config overrides, seed, steps, cfg scale.

Cases:
  dit_flow_euler        digits-dit, FlowMatchEulerDiscreteScheduler from its config, 25 steps, cfg 2
  unet_ddim             digits-unet, DDIMScheduler from its DDPM config (eta 0), 25 steps, cfg 2
  unet_ddim_noclip      the same with clip_sample=False (what the pipeline's ddim reproduces exactly; see e2e_test.cpp)
  unet_dpmpp_2m_karras  digits-unet, DPMSolverMultistepScheduler from its DDPM config with
                        use_karras_sigmas=True (the pipeline's default sampler and schedule), 25 steps, cfg 2

torch's own float32 error (--torch-f64, rewrites only tests/data/e2e/torch_f32_vs_f64.json): each case run again
with the network (its float32 weights upcast) and the sample in float64, the same float32 noise upcast; per case
the max |committed f32 - f64| over the final sample and over the latents. tests/pipeline/e2e_test.cpp bounds the
C++ error at a stated multiple of it.

Usage: .venv-ref/bin/python tools/make_e2e_fixture.py [--out tests/data/e2e] [--torch-f64]
"""
import argparse
import json
import os

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
NULL_CLASS = 10

CASES = {
    "dit_flow_euler": dict(model="digits-dit", scheduler="FlowMatchEulerDiscreteScheduler", overrides={},
                           seed=42, labels=[3, 7], steps=25, cfg=2.0),
    "unet_ddim": dict(model="digits-unet", scheduler="DDIMScheduler", overrides={},
                      seed=7, labels=[0, 5], steps=25, cfg=2.0),
    "unet_ddim_noclip": dict(model="digits-unet", scheduler="DDIMScheduler", overrides={"clip_sample": False},
                             seed=7, labels=[0, 5], steps=25, cfg=2.0),
    "unet_dpmpp_2m_karras": dict(model="digits-unet", scheduler="DPMSolverMultistepScheduler",
                                 overrides={"use_karras_sigmas": True}, seed=11, labels=[2, 8], steps=25, cfg=2.0),
}
AFTER_STEPS = [1, 5, 12, 20]


def load_network(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if cfg["_class_name"] == "UNet2DModel":
        from diffusers import UNet2DModel
        return UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval(), "unet"
    from diffusers import DiTTransformer2DModel
    return DiTTransformer2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval(), "dit"


def make_scheduler(model_dir, class_name, overrides):
    import diffusers
    config = json.load(open(os.path.join(model_dir, "scheduler_config.json")))
    return getattr(diffusers, class_name).from_config(config, **overrides)


@torch.no_grad()
def run_case(case, dtype=torch.float32):
    model_dir = os.path.join(ROOT, "models", case["model"])
    net, kind = load_network(model_dir)
    net = net.to(dtype)
    sched = make_scheduler(model_dir, case["scheduler"], case["overrides"])
    sched.set_timesteps(case["steps"])
    labels = torch.tensor(case["labels"], dtype=torch.int64)
    b = len(labels)
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn((b, net.config.in_channels, net.config.sample_size, net.config.sample_size), generator=gen)
    x = x.to(dtype)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    both = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
    latents = []
    for i, t in enumerate(sched.timesteps):
        xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        tt = t.expand(2 * b)
        if kind == "unet":
            out = net(torch.cat([xin, xin]), tt, class_labels=both).sample
        else:
            out = net(torch.cat([xin, xin]), timestep=tt, class_labels=both).sample
        ou, oc = out.chunk(2)
        guided = ou + case["cfg"] * (oc - ou)
        x = sched.step(guided, t, x, generator=gen).prev_sample
        if i + 1 in AFTER_STEPS:
            latents.append(x.clone())
    if dtype != torch.float32:
        return {"final": x, "latents": torch.stack(latents)}
    return {
        "final": x.float().contiguous(),
        "latents": torch.stack(latents).float().contiguous(),
        "after_steps": torch.tensor(AFTER_STEPS, dtype=torch.float32),
        "timesteps": sched.timesteps.float().contiguous(),
        "labels": labels.float(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "e2e"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--torch-f64", action="store_true", help="only record torch's f32-vs-f64 difference")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from safetensors.torch import load_file, save_file
    import diffusers
    os.makedirs(a.out, exist_ok=True)
    if a.torch_f64:
        path = os.path.join(a.out, "torch_f32_vs_f64.json")
        record = json.load(open(path)) if os.path.exists(path) else {}
        for name in a.cases.split(","):
            committed = load_file(os.path.join(a.out, name + ".safetensors"))
            here = run_case(CASES[name])
            same = torch.equal(here["final"], committed["final"]) and torch.equal(here["latents"], committed["latents"])
            r64 = run_case(CASES[name], torch.float64)
            fin = float((committed["final"].double() - r64["final"]).abs().max())
            lat = float((committed["latents"].double() - r64["latents"]).abs().max())
            record[name] = {"final_max_abs": fin, "latents_max_abs": lat}
            print(f"{name:22s} torch f32 vs f64: final {fin:.3g}, latents {lat:.3g}   (this machine's f32 run vs "
                  f"committed: {'identical' if same else 'differs'})")
        with open(path, "w") as f:
            json.dump(dict(sorted(record.items())), f, indent=1)
            f.write("\n")
        return
    for name in a.cases.split(","):
        case = CASES[name]
        tensors = run_case(case)
        meta = {"model": "models/" + case["model"], "scheduler": case["scheduler"],
                "overrides": json.dumps(case["overrides"]), "seed": str(case["seed"]), "steps": str(case["steps"]),
                "cfg_scale": str(case["cfg"]), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "note": "CFG batch [uncond; cond], guidance on the raw model output; final = last prev_sample, unclamped"}
        path = os.path.join(a.out, name + ".safetensors")
        save_file(tensors, path, metadata=meta)
        f = tensors["final"]
        print(f"wrote {os.path.relpath(path, ROOT)}: final min {f.min():.4f} max {f.max():.4f} mean {f.mean():.4f}; "
              f"timesteps {tensors['timesteps'][:3].tolist()} ...")


if __name__ == "__main__":
    main()
