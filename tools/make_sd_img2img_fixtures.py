#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Image-to-image generations run by diffusers' own StableDiffusionImg2ImgPipeline on the committed tiny SD folder
(tests/data/pipelines/sd_tiny, written by tools/make_sd_pipeline_fixtures.py), for tests/pipeline/img2img_test.cpp.

    .venv-ref/bin/python tools/make_sd_img2img_fixtures.py

Writes, next to the folder:
- sd_tiny_img2img_init.png: the init image, a deterministic 64x64 RGB picture (gradients, a disc, a square, a
  stripe) drawn here with numpy; the CLI tests start from it too.
- sd_tiny_img2img.safetensors: `init.image` (what diffusers' VaeImageProcessor made of the PNG's pixels and gave
  vae.encode: [1, 3, 64, 64] in [-1, 1]), `init.flipped` (the same, mirrored left-right: the second image of the
  two_images case), and per case `CASE.latents` (the final latents before the VAE decode, times scaling_factor)
  and for some (WITH_IMAGES) `CASE.images` (output_type "np": [B, H, W, 3] in [0, 1]).
- sd_tiny_img2img.json: each case's settings, the timesteps diffusers' loop walked (after get_timesteps' cut), and, for the deterministic samplers,
  torch's own float32 error (the same generation with every network in float64 and the same float32 draws of the
  generator: the posterior noise, the added noise).

The pipeline is loaded with from_pretrained from the folder (float32); the cases swap the scheduler with
`Class.from_config` of the folder's scheduler_config.json as written (absent keys take the class's defaults), as the
text-to-image fixtures do.
"""
import contextlib
import copy
import importlib
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "pipelines")
FOLDER = os.path.join(OUT, "sd_tiny")
INIT_PNG = os.path.join(OUT, "sd_tiny_img2img_init.png")

# Each case: diffusers class, prompts (the batch), the number of init images (1: repeated for every prompt, as
# diffusers does; 2: the image and its mirror), strength, seed, guidance, steps.
CASES = {}
for cls, short in [("EulerDiscreteScheduler", "euler"), ("DDIMScheduler", "ddim"),
                   ("DPMSolverMultistepScheduler", "dpmpp_2m")]:
    for strength, tag in [(0.5, "050"), (0.75, "075"), (1.0, "100")]:
        CASES[f"{short}_{tag}"] = dict(cls=cls, prompt=["a red apple on a wooden table"], images=1, strength=strength,
                                       seed=3, guidance=7.5, steps=5)
CASES["batch_one_image"] = dict(cls="EulerDiscreteScheduler", prompt=["a photo of a cat", "a lighthouse at night"],
                                images=1, strength=0.6, seed=7, guidance=5.0, steps=5)
CASES["two_images"] = dict(cls="DDIMScheduler", prompt=["a photo of a cat", "a lighthouse at night"], images=2,
                           strength=0.8, seed=9, guidance=7.5, steps=5)
CASES["euler_a"] = dict(cls="EulerAncestralDiscreteScheduler", prompt=["an astronaut riding a horse"], images=1,
                        strength=0.7, seed=11, guidance=7.5, steps=6)
# PNDM (the folder's own scheduler): PNDMScheduler.timesteps repeat the second timestep (the warm-up's two
# evaluations, diffusers issue #9090), so the pipeline's cut timesteps[t_start:] starts one distinct timestep early
# and, after the warm-up, feeds each step the next step's timestep (the U-Net and the transfer at a timestep the
# sample is not at). The reference here is diffusers' own PNDM step on the consistent list instead: the distinct
# timesteps from t_start on with the warm-up's repeat, `pndm_timesteps` (what diffuse runs; docs/img2img.md).
CASES["pndm_060"] = dict(cls="PNDMScheduler", prompt=["a cozy cabin in a snowy forest"], images=1, strength=0.6,
                         seed=21, guidance=7.5, steps=5, consistent_pndm=True)
# The cases whose decoded images are stored too (the others keep their latents only: the decode is the text-to-image
# pipeline's, checked there; the fixture stays small).
WITH_IMAGES = {"euler_075", "batch_one_image", "two_images", "euler_a", "pndm_060"}
# Euler-family classes call the U-Net at fractional timesteps (249.75), which diffuse passes as the schedule has
# them. `CASE.latents_log_t` is a control: the same generation with the U-Net given the timesteps diffusers'
# _sigma_to_t (log-sigma interpolation) finds for those noise levels (249.75036); it differs from the plain
# reference by up to 5e-5 x max|ref| at these strengths, so a pipeline that derived t from sigma would show.
EULER_FAMILY = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"}
DETERMINISTIC = {"EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler"}


def init_pixels():
    """A 64x64 RGB picture: red and green gradients, a blue disc, a white square, a dark diagonal stripe."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    r = 40 + 3 * x
    g = 30 + 2.5 * y
    b = 60 + 120 * (((x - 40) ** 2 + (y - 22) ** 2) < 14 ** 2)
    img = np.stack([r, g, b], axis=-1)
    img[40:56, 8:24] = 235
    img[np.abs(x - y - 5) < 3] *= 0.3
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def init_images():
    """The init PNG as diffusers.utils.load_image reads a file, and its left-right mirror (PIL RGB images)."""
    pil = [Image.open(INIT_PNG).convert("RGB")]
    return pil + [pil[0].transpose(Image.FLIP_LEFT_RIGHT)]


def folder_scheduler(cls_name):
    """`Class.from_config` of the folder's scheduler_config.json as written (absent keys take the class's defaults)."""
    import diffusers

    with open(os.path.join(FOLDER, "scheduler", "scheduler_config.json")) as f:
        return getattr(diffusers, cls_name).from_config(json.load(f))


def pndm_timesteps(pipe, steps, strength):
    """PNDM's timesteps for img2img without the misalignment: distinct[t_start:] with the second one repeated."""
    full = [int(t) for t in pipe.scheduler.timesteps]
    distinct = [t for i, t in enumerate(full) if i == 0 or t != full[i - 1]]
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    cut = distinct[t_start:]
    ts = cut[:2] + cut[1:] if len(cut) > 1 else cut
    return torch.tensor(ts, dtype=pipe.scheduler.timesteps.dtype), steps - t_start


def max_rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


class Capture:
    """Wraps a module's method to keep its first argument."""

    def __init__(self, fn):
        self.fn, self.x = fn, None

    def __call__(self, x, *a, **k):
        self.x = x.detach().clone()
        return self.fn(x, *a, **k)


def f32_draws():
    """randn_tensor drawn in float32 whatever the dtype asked (the f64 run sees the f32 run's generator draws)."""
    import diffusers.utils.torch_utils as tu

    orig = tu.randn_tensor

    def draw(shape, generator=None, device=None, dtype=None, **k):
        return orig(shape, generator=generator, device=device, dtype=torch.float32, **k).to(dtype)

    return orig, draw


@contextlib.contextmanager
def patching_randn(module_names, replacement):
    """Within the block, each named module's randn_tensor is replacement(module name, its randn_tensor)."""
    patched = []
    try:
        for name in module_names:
            mod = importlib.import_module(name)
            patched.append((mod, mod.randn_tensor))
            mod.randn_tensor = replacement(name, mod.randn_tensor)
        yield
    finally:
        for mod, fn in patched:
            mod.randn_tensor = fn


def drawing_f32(module_names):
    """Within the block, randn_tensor as the named modules call it draws in float32 (f32_draws)."""
    _, draw = f32_draws()
    return patching_randn(module_names, lambda name, inner: draw)


RANDN_USERS = ["diffusers.models.autoencoders.vae",
               "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img"]


def log_sigma_timesteps(unet, sched):
    """Wraps unet.forward so that it gets _sigma_to_t(sigma) for each of the scheduler's timesteps."""
    import diffusers

    ac = sched.alphas_cumprod.numpy().astype(np.float64)
    log_sigmas = np.log(((1 - ac) / ac) ** 0.5)
    inner = unet.forward

    def forward(x, t, *a, **k):
        i = int((sched.timesteps - t).abs().argmin())
        sigma = np.array([float(sched.sigmas[i])])
        t_log = diffusers.EulerDiscreteScheduler._sigma_to_t(sched, sigma, log_sigmas)[0]  # (Euler ancestral has none)
        return inner(x, torch.tensor(float(t_log), dtype=torch.float32), *a, **k)

    unet.forward = forward
    return inner


@torch.no_grad()
def run(base, case, pil_images, double=False, log_t=False):
    from diffusers import StableDiffusionImg2ImgPipeline

    unet, vae, text_encoder = base.unet, base.vae, base.text_encoder
    if double:
        unet, vae, text_encoder = (copy.deepcopy(m).double() for m in (unet, vae, text_encoder))
    else:
        vae = copy.deepcopy(vae)
    sched = folder_scheduler(case["cls"])
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=base.tokenizer, unet=unet,
                                          scheduler=sched, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    if log_t:
        unet = copy.deepcopy(unet)
        log_sigma_timesteps(unet, sched)
        pipe.unet = unet
    enc, dec = Capture(vae.encode), Capture(vae.decode)
    vae.encode, vae.decode = enc, dec
    image = pil_images[:case["images"]]
    kwargs = dict(prompt=case["prompt"], image=image if len(image) > 1 else image[0], strength=case["strength"],
                  num_inference_steps=case["steps"], guidance_scale=case["guidance"], output_type="np",
                  generator=torch.Generator().manual_seed(case["seed"]))
    if case.get("consistent_pndm"):
        pipe.get_timesteps = lambda n, strength, device: pndm_timesteps(pipe, n, strength)
    with drawing_f32(RANDN_USERS if double else []):
        images = pipe(**kwargs).images
    dtype = torch.float64 if double else torch.float32
    latents = (dec.x * vae.config.scaling_factor).to(dtype)
    ran, _ = pipe.get_timesteps(case["steps"], case["strength"], "cpu")  # the timesteps the loop walked
    return torch.from_numpy(np.asarray(images)).to(dtype), latents, [float(t) for t in ran], enc.x.float()


def main():
    from diffusers import StableDiffusionImg2ImgPipeline

    torch.set_num_threads(2)
    pixels = init_pixels()
    Image.fromarray(pixels, "RGB").save(INIT_PNG)
    pil = init_images()
    base = StableDiffusionImg2ImgPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32, safety_checker=None,
                                                          requires_safety_checker=False)

    tensors, info = {}, {}
    for name, case in CASES.items():
        images, latents, timesteps, encoded = run(base, case, pil)
        if name == "euler_050":
            tensors["init.image"] = encoded[:1].contiguous()
        if case["images"] == 2:
            tensors["init.flipped"] = encoded[1:2].contiguous()
        if name in WITH_IMAGES:
            tensors[name + ".images"] = images.contiguous()
        tensors[name + ".latents"] = latents.float().contiguous()
        entry = dict(case, timesteps=timesteps, image_max=float(images.abs().max()))
        if case["cls"] in EULER_FAMILY:
            _, latents_t, _, _ = run(base, case, pil, log_t=True)
            tensors[name + ".latents_log_t"] = latents_t.float().contiguous()
        if case["cls"] in DETERMINISTIC:
            images64, latents64, _, _ = run(base, case, pil, double=True)
            entry["torch_f32_vs_f64_images"] = max_rel(images, images64)
            entry["torch_f32_vs_f64_latents"] = max_rel(latents, latents64)
        info[name] = entry
        print(f"sd_tiny img2img {name}: timesteps {timesteps}, f32 vs f64 latents "
              f"{entry.get('torch_f32_vs_f64_latents')}")
    save_file(tensors, os.path.join(OUT, "sd_tiny_img2img.safetensors"))
    os.chmod(os.path.join(OUT, "sd_tiny_img2img.safetensors"), 0o644)
    with open(os.path.join(OUT, "sd_tiny_img2img.json"), "w") as f:
        json.dump(dict(cases=info, versions=dict(torch=torch.__version__,
                                                 diffusers=__import__("diffusers").__version__,
                                                 transformers=__import__("transformers").__version__)),
                  f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
