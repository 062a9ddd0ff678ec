#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Inpainting generations run by diffusers' own StableDiffusionInpaintPipeline on the committed tiny SD folder
(tests/data/pipelines/sd_tiny, written by tools/make_sd_pipeline_fixtures.py), with its own 4-channel U-Net (the
legacy blend) and with a 9-channel inpainting U-Net written here, for the C++ inpainting tests.

    .venv-ref/bin/python tools/make_sd_inpaint_fixtures.py

Writes, next to the folder (the init image is the img2img fixture's sd_tiny_img2img_init.png, read as it is):
- sd_tiny_inpaint_unet/: config.json + diffusion_pytorch_model.safetensors, a UNet2DConditionModel with exactly
  sd_tiny's unet config but in_channels 9 (latents, mask, masked image latents), weights seeded as sd_tiny's U-Net
  is (make_sd_pipeline_fixtures.make_unet, seed INPAINT_UNET_SEED), rounded to float16 and stored as F16; the
  generations ran the file as loaded in float32, i.e. exactly the stored values. Only the U-Net: an inpainting
  pipeline folder is sd_tiny's model_index.json, scheduler, tokenizer, text_encoder and vae with this unet.
- sd_tiny_inpaint_mask.png: a 64x64 8-bit grayscale ("L") mask, white = repaint: a rectangle and a disc in 255
  on 0, bands and single pixels of 127, 128, 60 and 200 (binarization at 0.5: 127/255 keeps, 128/255 repaints),
  some on the pixels the latent mask samples (8i, 8j), some off them (those reach only the masked image).
- sd_tiny_inpaint_mask_rgb.png: a 64x64 RGB mask: primary / secondary colours and coloured values whose PIL
  convert("L") is 127 or 128 (PIL's L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16, checked here; e.g.
  (214, 68, 207) is 127.5 by 0.299/0.587/0.114 but L 127: keep; (2, 209, 37) is 127.499 but L 128: repaint).
- sd_tiny_inpaint.safetensors (float32): `init.image` ([1, 3, 64, 64] in [-1, 1]: what diffusers'
  image_processor makes of the init PNG, equal to the img2img fixture's init.image), `mask.condition` and
  `mask_rgb.condition` ([1, 1, 64, 64] in {0, 1}: what diffusers' mask_processor makes of each mask PNG),
  `mask_rgb.gray` ([1, 1, 64, 64]: PIL's convert("L") of the RGB mask / 255), `mask.latent` and `mask_rgb.latent`
  ([1, 1, 8, 8]: the condition resized to the latents by F.interpolate's default nearest, i.e. pixel (8i, 8j)),
  and per case `CASE.latents` (output_type "latent": the final latents as the pipeline returns them, in model
  space, [B, 4, 8, 8]), for the 9-channel cases `CASE.masked_image_latents` ([B, 4, 8, 8]: scaling_factor x the
  masked image's posterior sample, as prepare_mask_latents returns it, repeated to the batch, before the
  duplication for classifier-free guidance), and for some (WITH_IMAGES) `CASE.images` (output_type "np":
  [B, 64, 64, 3] in [0, 1]).
- sd_tiny_inpaint.json: `inputs` (the files and the U-Net seed), `versions`, and `cases`: each case's settings
  (cls, prompt, negative (None: the empty prompt), unet ("sd_tiny": the folder's 4-channel U-Net, the legacy blend;
  "inpaint": the 9-channel one), images and masks (1: one, repeated for every prompt; 2: the first and its
  left-right mirror, second_is_mirror), mask ("mask" or "mask_rgb"), strength, seed, guidance, steps), the timesteps
  diffusers' loop walked, `draws` (the generator's draws in order: who drew and the shape), latents_max,
  image_max, and torch's own float32 error: the same generation with every network in float64 and the same
  float32 draws of the generator (the posterior samples, the noise, Euler ancestral's step noise),
  max|f32 - f64| / max|f64| of the latents and the images.

The generator (one torch.Generator seeded with the case's seed, on the CPU) is drawn in this order:
1. the init image's posterior sample (vae.encode(init).latent_dist.sample, [images, 4, 8, 8]) when strength < 1
   or the U-Net has 4 channels (the legacy blend needs the image latents even at strength 1); one image for a batch
   of prompts is encoded once and its latents repeated, so the prompts share that sample;
2. the noise [B, 4, 8, 8]; strength 1 starts from noise x init_noise_sigma (no add_noise, whatever the image),
   strength < 1 from add_noise(image_latents, noise, first timestep);
3. the masked image's posterior sample ([images or masks, 4, 8, 8]: masked_image = init * (condition < 0.5)),
   always, also for a 4-channel U-Net that never uses it (so it moves the generator before the scheduler's draws);
4. the scheduler's per-step noise (Euler ancestral: [B, 4, 8, 8] per step).

The pipeline's steps: the mask is the mask_processor's (convert("L"), /255, binarized: < 0.5 -> 0, else 1; no
normalize; no resize here, the PNGs are 64x64), then F.interpolate (nearest) to 8x8, i.e. the pixel at (8i, 8j)
of each 8x8 block: thresholded values there decide the latent mask, those elsewhere only the masked image (a
mirrored mask is not the mirror of the latent mask: its samples come from the columns 8j + 7 of the original).
4-channel U-Nets: after every step latents = (1 - mask) * add_noise(image_latents, noise, timesteps[i + 1]) +
mask * latents, the clean image_latents after the last step (the first U-Net call at strength 1 sees pure noise
everywhere: there is no blend before the first step). 9-channel U-Nets: the U-Net input is cat([scaled latents,
mask, masked_image_latents]) on channels (mask and masked_image_latents doubled for guidance), no blend.

Found in diffusers' blend (noted, not fixtures): the sigma schedulers' add_noise (Euler, Euler ancestral, DPM++,
Heun, KDPM2) ignore the timestep they are given and take sigmas[step_index], the index after the step just made
(get_timesteps sets begin_index); DDIM's and PNDM's take alphas_cumprod[timesteps[i + 1]]. Heun (order 2,
interleaved [t0, t1, t1, t2, t2, ...]): the blend after the first-order half re-noises the kept region at the sigma
that half reached, consistent; the second-order half restarts from the scheduler's stored sample (the previous full
step's blended latents), so the mid-step blend only moves the point where the second derivative is taken. KDPM2: the
first half goes to the interpolated sigma but the blend re-noises at the next full sigma (less noise than the sample
has) at the midpoint. PNDM (the folder's scheduler, timesteps [801, 601, 601, 401, 201, 1]): at strength 1 the blend
matches (the warm-up's second call returns a sample at 601 again and is re-noised at 601); at strength < 1 the cut
timesteps[t_start:] starts at the repeated entry ([601, 401, 201, 1] at 0.6: four U-Net calls for three steps), the
warm-up's second call (at "401") returns a sample at 401 but the blend re-noises the kept region at 201, and PLMS
then steps from 201: the misalignment of diffusers issue #9090, in the masked region only.

The pipeline is built from the folder loaded with from_pretrained (float32), the case's U-Net and its scheduler,
swapped with `Class.from_config` of the folder's scheduler_config.json as written (absent keys take the class's
defaults), as the img2img fixtures do. Masks and images are given as PIL images, so diffusers' own preprocessing
runs. Each case runs twice: output_type "latent" (CASE.latents) and output_type "np" (CASE.images; its final
latents, caught at the last step, are checked equal to the first run's).
"""
import copy
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_pipeline_fixtures as mpf  # noqa: E402
import make_sd_img2img_fixtures as img2img  # noqa: E402
import make_sd_pipeline_fixtures as sdp  # noqa: E402

OUT, FOLDER = img2img.OUT, img2img.FOLDER
UNET_DIR = os.path.join(OUT, "sd_tiny_inpaint_unet")
MASK_PNG = os.path.join(OUT, "sd_tiny_inpaint_mask.png")
MASK_RGB_PNG = os.path.join(OUT, "sd_tiny_inpaint_mask_rgb.png")
INPAINT_UNET_SEED = 14004  # sd_tiny's text encoder, U-Net and VAE took 14001..14003

APPLE, CABIN, LIGHTHOUSE = ["a red apple on a wooden table"], ["a cozy cabin in a snowy forest"], \
    ["a watercolor painting of a lighthouse"]
ASTRONAUT, TWO = ["an astronaut riding a horse"], ["a photo of a cat", "a lighthouse at night"]


def case(cls, prompt, unet, strength, seed, negative=None, images=1, masks=1, mask="mask", guidance=7.5, steps=5):
    return dict(cls=cls, prompt=prompt, negative=negative, unet=unet, images=images, masks=masks,
                second_is_mirror=images == 2 or masks == 2, mask=mask, strength=strength, seed=seed,
                guidance=guidance, steps=steps)


EULER, DDIM, DPM, EULER_A = ("EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                             "EulerAncestralDiscreteScheduler")
# Each case: diffusers class, prompts (the batch), U-Net, strength, seed, and the rest as in case().
CASES = {
    "legacy_euler_100": case(EULER, APPLE, "sd_tiny", 1.0, 3),
    "legacy_euler_075": case(EULER, APPLE, "sd_tiny", 0.75, 3),
    "legacy_ddim_060": case(DDIM, CABIN, "sd_tiny", 0.6, 5),
    "legacy_dpmpp_2m_100": case(DPM, LIGHTHOUSE, "sd_tiny", 1.0, 13),
    "legacy_euler_a_080": case(EULER_A, ASTRONAUT, "sd_tiny", 0.8, 11, negative=["cartoon"], steps=6),
    # One negative prompt for both prompts: diffusers takes a list prompt with a list negative of the same length
    # only (a str negative is a TypeError), so the same string twice.
    "legacy_batch": case(EULER, TWO, "sd_tiny", 0.9, 7, negative=["blurry, low quality"] * 2, guidance=5.0),
    "inpaint_euler_100": case(EULER, APPLE, "inpaint", 1.0, 3),
    "inpaint_ddim_075": case(DDIM, CABIN, "inpaint", 0.75, 5, steps=6),
    "inpaint_dpmpp_2m_100": case(DPM, LIGHTHOUSE, "inpaint", 1.0, 13),
    "inpaint_euler_a_100": case(EULER_A, ASTRONAUT, "inpaint", 1.0, 11, negative=["cartoon"], steps=6),
    "inpaint_batch": case(EULER, TWO, "inpaint", 1.0, 9, images=2, masks=2),
    "inpaint_no_cfg": case(EULER, ["a bowl of soup"], "inpaint", 1.0, 5, guidance=1.0),
    "inpaint_rgb_mask": case(EULER, APPLE, "inpaint", 1.0, 17, mask="mask_rgb"),
}
# The cases whose decoded images are stored too (the decode is the text-to-image pipeline's; the fixture stays small).
WITH_IMAGES = {"legacy_euler_075", "inpaint_euler_100", "inpaint_batch"}
# Where randn_tensor is called: the posterior samples, the pipeline's noise, Euler ancestral's step noise.
RANDN_USERS = ["diffusers.models.autoencoders.vae",
               "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint",
               "diffusers.schedulers.scheduling_euler_ancestral_discrete"]
DRAWER = {"diffusers.models.autoencoders.vae": "posterior",
          "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint": "noise",
          "diffusers.schedulers.scheduling_euler_ancestral_discrete": "scheduler"}


def mask_pixels():
    """64x64 uint8, white = repaint: a rectangle, a disc, and grey values at the 0.5 threshold."""
    y, x = np.mgrid[0:64, 0:64]
    m = np.zeros((64, 64), np.uint8)
    m[10:34, 30:58] = 255
    m[(x - 18) ** 2 + (y - 44) ** 2 < 11 ** 2] = 255
    # Bands over whole 8x8 blocks (the latent mask samples them too): 127 and 60 keep, 128 and 200 repaint.
    m[0:8, 0:8], m[0:8, 8:16], m[56:64, 40:48], m[56:64, 48:56] = 127, 128, 60, 200
    m[16, 32] = 127  # in the rectangle, on a sampled pixel: that latent cell is kept
    m[24, 8] = 128  # in the background, on a sampled pixel: that latent cell is repainted
    m[27, 13], m[45, 21], m[12, 44] = 128, 127, 127  # off the sampled pixels: the masked image only
    m[0::2, 61], m[1::2, 61] = 127, 128  # a column alternating keep / repaint
    return m


# PIL's L of each: (76, 150, 29, 226, 179, 105) and the threshold colours (L 128, 127, 128, 127, 128, 127, 128, 127).
PRIMARIES = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
THRESHOLD = [(216, 76, 161), (216, 83, 124), (0, 204, 68), (214, 68, 207), (2, 209, 37), (194, 118, 2),
             (126, 149, 21), (127, 148, 23)]


def mask_rgb_pixels():
    """64x64x3 uint8: stripes 3 pixels wide of the threshold colours, a top band of 8x8 blocks of primaries, a
    disc of (2, 209, 37) (L 128: repaint) and a square of (214, 68, 207) (L 127: keep)."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.array(THRESHOLD, np.uint8)[(x // 3) % len(THRESHOLD)]
    img[0:16] = np.array(PRIMARIES, np.uint8)[(x[0:16] // 8 + y[0:16] // 8) % len(PRIMARIES)]
    img[(x - 20) ** 2 + (y - 40) ** 2 < 10 ** 2] = THRESHOLD[4]
    img[44:60, 40:56] = THRESHOLD[3]
    return img


def pil_gray(rgb):
    """PIL's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point, rounded)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def write_unet():
    """The 9-channel U-Net as F16 and its config; returns it as loaded back in float32."""
    from diffusers import UNet2DConditionModel

    unet = sdp.make_unet(INPAINT_UNET_SEED, dict(sdp.TINY_UNET, in_channels=9))
    mpf.to_f16_values(unet)
    os.makedirs(UNET_DIR, exist_ok=True)
    unet.save_config(UNET_DIR)
    mpf.save_f16(unet, os.path.join(UNET_DIR, "diffusion_pytorch_model.safetensors"))
    os.chmod(os.path.join(UNET_DIR, "diffusion_pytorch_model.safetensors"), 0o644)
    with open(os.path.join(UNET_DIR, "config.json")) as f, open(os.path.join(FOLDER, "unet", "config.json")) as g:
        assert json.load(f) == dict(json.load(g), in_channels=9)
    loaded = UNet2DConditionModel.from_pretrained(UNET_DIR, torch_dtype=torch.float32).eval()
    for (n, p), (m, q) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert n == m and q.dtype == torch.float32 and torch.equal(p, q), n
    return loaded


def recording(draws):
    """Appends (who, shape) to draws for each randn_tensor call of the RANDN_USERS modules within the block."""
    def recorder(name, inner):
        def draw(shape, *a, **k):
            draws.append([DRAWER[name], [int(s) for s in shape]])
            return inner(shape, *a, **k)
        return draw

    return img2img.patching_randn(RANDN_USERS, recorder)


def one_or_list(items):
    return items[0] if len(items) == 1 else list(items)


@torch.no_grad()
def run(base, unets, case, inputs, double=False):
    """(latents, images, masked_image_latents or None, latent mask, timesteps, draws) of one generation."""
    from diffusers import StableDiffusionInpaintPipeline

    unet, vae, text_encoder = unets[case["unet"]], base.vae, base.text_encoder
    if double:
        unet, vae, text_encoder = (copy.deepcopy(m).double() for m in (unet, vae, text_encoder))
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=base.tokenizer, unet=unet,
                                          scheduler=img2img.folder_scheduler(case["cls"]), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    got, timesteps, draws = {}, [], []
    inner = pipe.prepare_mask_latents

    def prepare_mask_latents(*a, **k):
        got["mask"], got["masked_image_latents"] = out = inner(*a, **k)
        return out

    def on_step_end(p, i, t, kw):
        timesteps.append(float(t))
        got["latents"] = kw["latents"].clone()
        return {}

    pipe.prepare_mask_latents = prepare_mask_latents
    kwargs = dict(prompt=case["prompt"], negative_prompt=case["negative"],
                  image=one_or_list(inputs["image"][:case["images"]]),
                  mask_image=one_or_list(inputs[case["mask"]][:case["masks"]]), strength=case["strength"],
                  num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                  callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    with img2img.drawing_f32(RANDN_USERS if double else []):
        with recording(draws):
            latents = pipe(output_type="latent", generator=torch.Generator().manual_seed(case["seed"]),
                           **kwargs).images
        walked = list(timesteps)
        images = pipe(output_type="np", generator=torch.Generator().manual_seed(case["seed"]), **kwargs).images
    assert torch.equal(got["latents"], latents) and timesteps == walked + walked
    batch = len(case["prompt"])
    masked = got["masked_image_latents"][:batch] if case["unet"] == "inpaint" else None  # [uncond; cond] halves
    dtype = torch.float64 if double else torch.float32
    return (latents.to(dtype), torch.from_numpy(np.asarray(images)).to(dtype), masked, got["mask"][:1], walked,
            draws)


def main():
    from diffusers import StableDiffusionInpaintPipeline

    torch.set_num_threads(1)
    Image.fromarray(mask_pixels(), "L").save(MASK_PNG)
    rgb = mask_rgb_pixels()
    Image.fromarray(rgb, "RGB").save(MASK_RGB_PNG)
    init = img2img.init_images()  # the img2img fixture's PNG and its mirror
    assert np.array_equal(np.asarray(init[0]), img2img.init_pixels())
    mask = Image.open(MASK_PNG)
    mask_rgb = Image.open(MASK_RGB_PNG)
    assert mask.mode == "L" and mask_rgb.mode == "RGB"
    inputs = dict(image=init, mask=[mask, mask.transpose(Image.FLIP_LEFT_RIGHT)], mask_rgb=[mask_rgb])

    base = StableDiffusionInpaintPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32, safety_checker=None,
                                                          requires_safety_checker=False)
    unets = {"sd_tiny": base.unet, "inpaint": write_unet()}

    gray = np.asarray(mask_rgb.convert("L"))
    assert np.array_equal(gray, pil_gray(rgb))
    tensors = {
        "init.image": base.image_processor.preprocess(init[0], height=64, width=64).float().contiguous(),
        "mask.condition": base.mask_processor.preprocess(mask, height=64, width=64).float().contiguous(),
        "mask_rgb.gray": torch.from_numpy(gray.astype(np.float32) / 255)[None, None].contiguous(),
        "mask_rgb.condition": base.mask_processor.preprocess(mask_rgb, height=64, width=64).float().contiguous(),
    }
    assert torch.equal(tensors["init.image"], load_file(os.path.join(OUT, "sd_tiny_img2img.safetensors"))["init.image"])
    assert torch.equal(tensors["mask.condition"], torch.from_numpy(np.asarray(mask) >= 128).float()[None, None])
    assert torch.equal(tensors["mask_rgb.condition"], (tensors["mask_rgb.gray"] >= 0.5).float())
    info = {}
    for name, c in CASES.items():
        latents, images, masked, latent_mask, timesteps, draws = run(base, unets, c, inputs)
        if c["unet"] == "inpaint" and c["masks"] == 1:
            tensors.setdefault(c["mask"] + ".latent", latent_mask.float().contiguous())
        tensors[name + ".latents"] = latents.contiguous()
        if masked is not None:
            tensors[name + ".masked_image_latents"] = masked.float().contiguous()
        if name in WITH_IMAGES:
            tensors[name + ".images"] = images.contiguous()
        latents64, images64, _, _, timesteps64, _ = run(base, unets, c, inputs, double=True)
        assert timesteps64 == timesteps
        info[name] = dict(c, timesteps=timesteps, draws=draws, latents_max=float(latents.abs().max()),
                          image_max=float(images.abs().max()),
                          torch_f32_vs_f64_latents=img2img.max_rel(latents, latents64),
                          torch_f32_vs_f64_images=img2img.max_rel(images, images64))
        print(f"sd_tiny inpaint {name}: timesteps {timesteps}, draws {draws}, max|latents| "
              f"{info[name]['latents_max']:.4g}, f32 vs f64 latents {info[name]['torch_f32_vs_f64_latents']:.3g}, "
              f"images {info[name]['torch_f32_vs_f64_images']:.3g}")
    save_file(tensors, os.path.join(OUT, "sd_tiny_inpaint.safetensors"))
    os.chmod(os.path.join(OUT, "sd_tiny_inpaint.safetensors"), 0o644)
    files = dict(unet=os.path.basename(UNET_DIR), mask=os.path.basename(MASK_PNG),
                 mask_rgb=os.path.basename(MASK_RGB_PNG), init=os.path.basename(img2img.INIT_PNG),
                 folder=os.path.basename(FOLDER))
    with open(os.path.join(OUT, "sd_tiny_inpaint.json"), "w") as f:
        json.dump(dict(cases=info, inputs=dict(files, unet_seed=INPAINT_UNET_SEED),
                       versions=dict(torch=torch.__version__, diffusers=__import__("diffusers").__version__,
                                     transformers=__import__("transformers").__version__)),
                  f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
