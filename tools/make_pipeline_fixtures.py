#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/pipelines/: diffusers DiTPipeline folders and whole generations run by diffusers' own
DiTPipeline, for tests/pipeline/latent_pipeline_test.cpp (a latent model loaded from its pipeline folder,
sampled and decoded by the VAE, number for number with diffusers).

    .venv-ref/bin/python tools/make_pipeline_fixtures.py              # every case
    .venv-ref/bin/python tools/make_pipeline_fixtures.py dit_tiny     # some

Weights come from a seed as tools/make_network_fixtures.py makes them (every parameter overwritten in
state_dict order by torch.randn(shape, generator=g) * std + mean).

The scheduler folder holds the scheduler_config.json of the published facebook/DiT-XL-2-256 pipeline as that
file has it (a DDIMScheduler config saved without timestep_spacing), not the complete config a newer
diffusers would write, so that `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` (the usage
DiT's model card shows) takes DPMSolver's own defaults for the keys the file does not have, as it does for the
real folder.

Cases:
- dit_tiny: committed folder. transformer/: DiTTransformer2DModel with DiT-XL/2's structure in small (hidden 32,
  2 layers, 2 heads, patch 2, learned sigma, 1000 classes + the null class: DiTPipeline hard-codes the null class
  1000), latents 4 x 8 x 8; vae/: AutoencoderKL with four blocks (8, 8, 16, 16), so 8x like the real one (64x64
  images); weights rounded to float16 and stored as F16 (half the bytes; diffusers ran on exactly those values);
  model_index.json with id2label for ten classes (two of which share the synonym "crane", as ImageNet's
  134 and 517 do). Generations (generations.safetensors): for each sampler case, `images` = DiTPipeline's output
  with output_type "np" ([B, H, W, 3] in [0, 1] after its clamp) and `latents` = the final latents before the
  decode (captured from the VAE's decode input times scaling_factor).
- dit_xl2_recipe: the real DiT-XL/2-256 pipeline configuration: the transformer (749,826,464 parameters in the
  diffusers layout, keys checked against the reference list) as a weight recipe (manifest.json), the VAE as
  tests/data/models/vae_sd_recipe's recipe (same seed, so the test regenerates both); generations at 256x256 store
  the image at every 4th pixel, a full-resolution 32x32 patch and the final latents.

Every generation is batch 2, labels (3, 7) (dit_tiny) or (207, 360) (dit_xl2_recipe), seed 0, guidance 4
(DiTPipeline's default), 4 steps, with: "ddim" (the folder's DDIMScheduler, eta 0) and "dpmpp_2m"
(DPMSolverMultistepScheduler.from_config). summary.json records the timesteps each ran and torch's own float32
error (the same generation with the networks in float64, the f32 noise upcast) for the test's bound.
"""
import copy
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_network_fixtures as mnf  # noqa: E402
import make_vae_fixtures as mvf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "pipelines")

# facebook/DiT-XL-2-256 scheduler/scheduler_config.json, as published (diffusers 0.12.0.dev0).
DIT_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.12.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "trained_betas": None,
}

TINY_DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                sample_size=8, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                norm_type="ada_norm_zero", norm_elementwise_affine=False)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64, scaling_factor=0.18215)
TINY_LABELS = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark, white shark",
               "3": "golden retriever", "4": "crane", "5": "umbrella", "6": "tabby, tabby cat",
               "7": "crane, derrick", "8": "espresso", "9": "volcano"}
XL_DIT = mnf.dit_config(1152, 28, 16)
SAMPLERS = ["ddim", "dpmpp_2m"]
STEPS = 4
GUIDANCE = 4.0
SEED = 0
XL_TRANSFORMER_SEED = 20240610


def scheduler_for(name, config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    base = DDIMScheduler.from_config(config)
    if name == "ddim":
        return base
    return DPMSolverMultistepScheduler.from_config(base.config)


def make_dit(config, seed):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(**config).eval()
    plist = mnf.param_list(model)
    weights = mnf.generate(plist, seed)
    mnf.load_weights(model, weights)
    return model, plist, weights


class LatentCapture:
    """Wraps vae.decode to keep its input (the final latents / scaling_factor)."""

    def __init__(self, vae):
        self.vae, self.z = vae, None
        self.inner = vae.decode

    def __call__(self, z, *a, **k):
        self.z = z.detach().clone()
        return self.inner(z, *a, **k)


@torch.no_grad()
def run(transformer, vae, sampler, labels, double=False):
    from diffusers import DiTPipeline

    sched = scheduler_for(sampler, DIT_SCHEDULER)
    t = copy.deepcopy(transformer).double() if double else transformer
    v = copy.deepcopy(vae).double() if double else vae
    pipe = DiTPipeline(transformer=t, vae=v, scheduler=sched)
    cap = LatentCapture(v)
    v.decode = cap
    gen = torch.Generator().manual_seed(SEED)
    if double:  # the same float32 noise, upcast: randn_tensor draws in the transformer's dtype
        noise = torch.randn((len(labels), 4, t.config.sample_size, t.config.sample_size),
                            generator=torch.Generator().manual_seed(SEED))
        import diffusers.pipelines.dit.pipeline_dit as pd
        orig = pd.randn_tensor
        pd.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise.to(dtype)
        try:
            images = pipe(class_labels=labels, guidance_scale=GUIDANCE, generator=gen, num_inference_steps=STEPS,
                          output_type="np").images
        finally:
            pd.randn_tensor = orig
    else:
        images = pipe(class_labels=labels, guidance_scale=GUIDANCE, generator=gen, num_inference_steps=STEPS,
                      output_type="np").images
    latents = cap.z * vae.config.scaling_factor
    return torch.from_numpy(np.asarray(images)).double() if double else torch.from_numpy(np.asarray(images)).float(), \
        latents, [int(x) for x in sched.timesteps]


def to_f16_values(model):
    """Rounds every parameter to float16 (kept as float32), so that F16 files hold exactly what torch ran."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def save_f16(model, path):
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, path, metadata={"format": "pt"})


def save_pipeline_folder(folder, transformer, vae, labels, weights=True):
    """DiTPipeline.save_pretrained's layout; model_index.json gets the id2label the published file has (DiTPipeline
    reads it but does not write it back); weights (float16 values) stored as F16."""
    from diffusers import DiTPipeline

    sched = scheduler_for("ddim", DIT_SCHEDULER)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=sched)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub in ["transformer", "vae"]:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            shutil.copy(os.path.join(tmp, sub, "config.json"), os.path.join(folder, sub, "config.json"))
        with open(os.path.join(tmp, "model_index.json")) as f:
            index = json.load(f)
    if weights:
        save_f16(transformer, os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
        save_f16(vae, os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    index["id2label"] = labels
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(DIT_SCHEDULER, f, indent=2)
        f.write("\n")


def update_summary(key, **entry):
    """Sets tests/data/pipelines/summary.json[key] to `entry` with the torch / diffusers / transformers versions
    that made it (`versions`), keeping every other key; written sorted, one space of indent."""
    path = os.path.join(OUT, "summary.json")
    summary = json.load(open(path)) if os.path.exists(path) else {}
    summary[key] = dict(entry, versions=dict(torch=torch.__version__, diffusers=__import__("diffusers").__version__,
                                             transformers=__import__("transformers").__version__))
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")


def max_rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def write_tiny(summary):
    folder = os.path.join(OUT, "dit_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    transformer, _, _ = make_dit(TINY_DIT, 20240611)
    vae, _, _ = mvf.make(TINY_VAE, 20240612)
    to_f16_values(transformer)
    to_f16_values(vae)
    save_pipeline_folder(folder, transformer, vae, TINY_LABELS)
    labels = [3, 7]
    tensors, info = {}, {}
    for s in SAMPLERS:
        images, latents, timesteps = run(transformer, vae, s, labels)
        images64, latents64, _ = run(transformer, vae, s, labels, double=True)
        tensors[s + ".images"] = images.contiguous()
        tensors[s + ".latents"] = latents.float().contiguous()
        info[s] = dict(timesteps=timesteps, torch_f32_vs_f64_images=max_rel(images, images64),
                       torch_f32_vs_f64_latents=max_rel(latents, latents64), image_max=float(images.abs().max()))
        print(f"dit_tiny {s}: timesteps {timesteps}, f32 vs f64 images {info[s]['torch_f32_vs_f64_images']:.3g}, "
              f"latents {info[s]['torch_f32_vs_f64_latents']:.3g}")
    save_file(tensors, os.path.join(folder, "generations.safetensors"),
              metadata=dict(labels="3,7", seed=str(SEED), steps=str(STEPS), guidance=str(GUIDANCE)))
    summary["dit_tiny"] = dict(labels=labels, seed=SEED, steps=STEPS, guidance=GUIDANCE, samplers=info)


def write_xl(summary):
    from diffusers import DiTTransformer2DModel

    folder = os.path.join(OUT, "dit_xl2_recipe")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**XL_DIT).eval()
    mnf.check_reference_keys(transformer, "dit_xl2_256_diffusers.txt")
    plist = mnf.param_list(transformer)
    weights = mnf.generate(plist, XL_TRANSFORMER_SEED)
    mnf.load_weights(transformer, weights)
    del weights
    vae_manifest = json.load(open(os.path.join(ROOT, "tests", "data", "models", "vae_sd_recipe", "manifest.json")))
    vae, _, _ = mvf.make(mvf.SD_VAE, vae_manifest["seed"])
    labels = {"207": "golden retriever", "360": "otter"}
    save_pipeline_folder(folder, transformer, vae, labels, weights=False)
    # The transformer's recipe (the VAE's is tests/data/models/vae_sd_recipe/manifest.json).
    mvf.write_manifest(os.path.join(folder, "transformer"), transformer, plist, mnf.generate(plist, XL_TRANSFORMER_SEED),
                       XL_TRANSFORMER_SEED, "facebook/DiT-XL-2-256 transformer configuration (diffusers layout)")
    with open(os.path.join(folder, "transformer", "manifest.json")) as f:
        m = json.load(f)
    m["model"] = "DiTTransformer2DModel"
    with open(os.path.join(folder, "transformer", "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
        f.write("\n")
    lab = [207, 360]
    tensors, info = {}, {}
    for s in SAMPLERS:
        images, latents, timesteps = run(transformer, vae, s, lab)
        tensors[s + ".images_stride4"] = images[:, ::4, ::4, :].contiguous()
        tensors[s + ".images_patch"] = images[:, 96:128, 112:144, :].contiguous()
        tensors[s + ".latents"] = latents.float().contiguous()
        info[s] = dict(timesteps=timesteps, image_max=float(images.abs().max()))
        print(f"dit_xl2_recipe {s}: timesteps {timesteps}")
    if os.environ.get("DIFFUSE_XL_F64", "1") == "1":
        for s in SAMPLERS:
            images, latents, _ = run(transformer, vae, s, lab)
            images64, latents64, _ = run(transformer, vae, s, lab, double=True)
            info[s]["torch_f32_vs_f64_images"] = max_rel(images, images64)
            info[s]["torch_f32_vs_f64_latents"] = max_rel(latents, latents64)
            print(f"dit_xl2_recipe {s}: f32 vs f64 images {info[s]['torch_f32_vs_f64_images']:.3g}, "
                  f"latents {info[s]['torch_f32_vs_f64_latents']:.3g}")
    save_file(tensors, os.path.join(folder, "generations.safetensors"),
              metadata=dict(labels="207,360", seed=str(SEED), steps=str(STEPS), guidance=str(GUIDANCE),
                            patch="rows 96..127, columns 112..143"))
    summary["dit_xl2_recipe"] = dict(labels=lab, seed=SEED, steps=STEPS, guidance=GUIDANCE, samplers=info,
                                     transformer_parameters=m["num_parameters"])


def main(argv):
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    wanted = argv or ["dit_tiny", "dit_xl2_recipe"]
    path = os.path.join(OUT, "summary.json")
    summary = json.load(open(path)) if os.path.exists(path) else {}
    if "dit_tiny" in wanted:
        write_tiny(summary)
    if "dit_xl2_recipe" in wanted:
        write_xl(summary)
    summary["versions"] = dict(torch=torch.__version__, diffusers=__import__("diffusers").__version__)
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
