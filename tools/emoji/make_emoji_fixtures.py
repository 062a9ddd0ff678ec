#!/usr/bin/env python3
"""Generations of the shipped emoji model (models/emoji) by diffusers' StableDiffusionPipeline, for
tests/pipeline/emoji_model_test.cpp: the model diffuse ships gives diffusers' images for the same seed.

    .venv-ref/bin/python tools/emoji/make_emoji_fixtures.py

Writes tests/data/pipelines/emoji_generations.safetensors (per case `CASE.images`, [B, 64, 64, 3] in [0, 1] as
output_type "np", and `CASE.latents`, the final latents times scaling_factor) and the "emoji" entry of
tests/data/pipelines/summary.json: each case's settings, timesteps, the sha256 of the weights they came from,
and torch's own float32 error (the same generation with every network in float64 and the same float32 noise).
The folder's weights are f16; both runs compute in f32 (f64) on exactly those values.
"""
import copy
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import REPO, weights_sha256  # noqa: E402
import make_pipeline_fixtures as mpf  # noqa: E402
from train_sd import sd_pipeline  # noqa: E402

MODEL = os.path.join(REPO, "models", "emoji")
OUT = os.path.join(REPO, "tests", "data", "pipelines")

# "default": `diffuse generate -p "red apple"` as shipped (the folder's DPM-Solver++ 2M, 25 steps, CFG 7.5);
# "euler_batch": two prompts with a negative prompt, Euler on the folder's betas.
CASES = {
    "default": dict(cls=None, prompt=["red apple"], negative=None, seed=0, guidance=7.5, steps=25),
    "euler_batch": dict(cls="EulerDiscreteScheduler", prompt=["rocket", "cat face"], negative=["blurry", ""],
                        seed=3, guidance=5.0, steps=8),
}


@torch.no_grad()
def run(base, case, double=False):
    import diffusers
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as psd

    cls = getattr(diffusers, case["cls"]) if case["cls"] else type(base.scheduler)
    unet, vae, text = base.unet, base.vae, base.text_encoder
    if double:
        unet, vae, text = (copy.deepcopy(m).double() for m in (unet, vae, text))
    pipe = sd_pipeline(unet, vae, text, base.tokenizer, cls.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    cap = mpf.LatentCapture(pipe.vae)
    pipe.vae.decode = cap
    factor = pipe.vae_scale_factor
    shape = (len(case["prompt"]), pipe.unet.config.in_channels, 64 // factor, 64 // factor)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(case["seed"]))
    orig = psd.randn_tensor
    # the same float32 noise for both runs (randn_tensor would draw float64 noise for the float64 run)
    psd.randn_tensor = lambda shape_, generator=None, device=None, dtype=None, **k: noise.to(dtype)
    try:
        images = pipe(prompt=case["prompt"], negative_prompt=case["negative"], height=64, width=64,
                      num_inference_steps=case["steps"], guidance_scale=case["guidance"], output_type="np").images
    finally:
        psd.randn_tensor = orig
        pipe.vae.decode = cap.inner
    latents = cap.z * pipe.vae.config.scaling_factor
    dtype = torch.float64 if double else torch.float32
    return (torch.from_numpy(np.asarray(images)).to(dtype), latents.to(dtype),
            [float(t) for t in pipe.scheduler.timesteps], type(pipe.scheduler).__name__)


def main():
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(2)
    base = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    base.set_progress_bar_config(disable=True)
    tensors, info = {}, {}
    for name, case in CASES.items():
        images, latents, timesteps, cls = run(base, case)
        images64, latents64, _, _ = run(base, case, double=True)
        tensors[name + ".images"] = images.float().contiguous()
        tensors[name + ".latents"] = latents.float().contiguous()
        info[name] = dict(case, cls=cls, timesteps=timesteps, image_max=float(images.abs().max()),
                          torch_f32_vs_f64_images=mpf.max_rel(images, images64),
                          torch_f32_vs_f64_latents=mpf.max_rel(latents, latents64))
        print(f"emoji {name}: {cls} timesteps {timesteps[:3]}..., f32 vs f64 latents "
              f"{info[name]['torch_f32_vs_f64_latents']:.3g} images {info[name]['torch_f32_vs_f64_images']:.3g}")
    save_file(tensors, os.path.join(OUT, "emoji_generations.safetensors"))
    mpf.update_summary("emoji", cases=info, weights_sha256=weights_sha256(MODEL))

if __name__ == "__main__":
    main()
