#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/pipelines/sdxl_tiny/: a diffusers StableDiffusionXLPipeline folder in small (architecture-
identical to SDXL base 1.0: two CLIP tokenizers and text encoders, the text_time U-Net, 8x VAE) and whole text-to-
image generations run by diffusers' own StableDiffusionXLPipeline, for tests/pipeline/sdxl_pipeline_test.cpp.

    .venv-ref/bin/python tools/make_sdxl_pipeline_fixtures.py

The folder (weights rounded to float16 and stored as F16, so diffusers ran on exactly the stored values):
- tokenizer/: sd_tiny's 1,000-token CLIP vocabulary (tools/make_sd_pipeline_fixtures.py), pad <|endoftext|>.
- tokenizer_2/: the same vocabulary with SDXL's second tokenizer's pad token "!" (id 0 here, as in OpenCLIP's).
- text_encoder/: CLIPTextModel, ViT-L/14's layout in small (hidden 16, 3 layers, 2 heads, quick_gelu, the legacy
  eos_token_id 2).
- text_encoder_2/: CLIPTextModelWithProjection, ViT-bigG/14's layout in small (hidden 32, 4 layers, 4 heads, gelu,
  projection_dim 16, eos_token_id 2 as SDXL's config).
- unet/: UNet2DConditionModel with SDXL base's structure in small: DownBlock2D + two CrossAttnDownBlock2D (and the
  mirror up blocks), transformer_layers_per_block [1, 1, 2] (SDXL's [1, 2, 10]; the mid block takes the last),
  per-block heads [1, 2, 2], use_linear_projection, addition_embed_type text_time, addition_time_embed_dim 8,
  projection_class_embeddings_input_dim 16 + 6 x 8, cross_attention_dim 16 + 32.
- vae/: sd_tiny's AutoencoderKL (8x) with SDXL's scaling_factor 0.13025.
- scheduler/: SDXL base 1.0's published scheduler_config.json (EulerDiscreteScheduler, "leading" spacing,
  steps_offset 1); the cases below swap classes with `Class.from_config`, as diffusers users do.
- model_index.json as save_pretrained writes it (force_zeros_for_empty_prompt true, image_encoder and
  feature_extractor [null, null]).

generations.safetensors: per case `CASE.images` (output_type "np": [B, H, W, 3] in [0, 1]) and `CASE.latents` (the
final latents before the VAE decode, times scaling_factor); `encode.*`: pipe.encode_prompt's prompt_embeds,
negative_prompt_embeds, pooled_prompt_embeds and negative_pooled_prompt_embeds for the prompts of the
"dpmpp_2m_negative_batch" case. summary.json (key "sdxl_tiny") records each case's settings, the timesteps it ran,
the time ids diffusers passed, and torch's own float32 error (the same generation with every network in float64 and
the same float32 noise) for the deterministic samplers.
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
import make_pipeline_fixtures as mpf  # noqa: E402
import make_sd_pipeline_fixtures as msd  # noqa: E402
import make_vae_fixtures as mvf  # noqa: E402

OUT = msd.OUT

# stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json as published.
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
TEXT_1 = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
              max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
TEXT_2 = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=16,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16, 16], layers_per_block=1,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[1, 2, 2], transformer_layers_per_block=[1, 1, 2], norm_num_groups=4,
    use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=TEXT_2["projection_dim"] + 6 * 8,
    cross_attention_dim=TEXT_1["hidden_size"] + TEXT_2["hidden_size"])
TINY_VAE = dict(mpf.TINY_VAE, scaling_factor=0.13025)
TOKENIZER_2_CONFIG = dict(msd.TOKENIZER_CONFIG, pad_token="!")
SPECIAL_TOKENS_2 = dict(msd.SPECIAL_TOKENS, pad_token="!")

# Each case: sampler (diffusers class via from_config of the folder's scheduler), prompts, negative prompts (None:
# not given, so diffusers' force_zeros_for_empty_prompt gives zero states; negative_prompt_2 is always the same as
# negative_prompt), seed, guidance, size (32 pixels, 4 latents, the smallest the three levels allow, where 64 is not
# needed: the images are stored in float32), steps; clip_skip as A1111 counts it (diffusers' clip_skip + 1).
CASES = {
    "euler": dict(cls="EulerDiscreteScheduler", prompt=["a red apple on a wooden table"], negative=None, seed=0,
                  guidance=5.0, height=64, width=64, steps=4),
    "dpmpp_2m_negative_batch": dict(cls="DPMSolverMultistepScheduler",
                                    prompt=["a photo of a cat", "a rocket flying to the moon at night"],
                                    negative=["blurry, low quality", "ugly!"], seed=7, guidance=5.0, height=32,
                                    width=32, steps=5),
    # A given empty negative prompt is encoded (force_zeros_for_empty_prompt applies only when none is given).
    "euler_wide_empty_negative": dict(cls="EulerDiscreteScheduler", prompt=["a lighthouse by the sea"],
                                      negative=[""], seed=3, guidance=6.0, height=64, width=96, steps=4),
    "ddim_clip_skip": dict(cls="DDIMScheduler", prompt=["a watercolor painting of a fox"], negative=["dark"], seed=11,
                           guidance=7.0, height=64, width=32, steps=4, clip_skip=2),
    "no_guidance": dict(cls="EulerDiscreteScheduler", prompt=["a bowl of soup"], negative=None, seed=5, guidance=1.0,
                        height=32, width=32, steps=3),
    "euler_a": dict(cls="EulerAncestralDiscreteScheduler", prompt=["an astronaut riding a horse"], negative=None,
                    seed=13, guidance=5.0, height=32, width=32, steps=4),
}
DETERMINISTIC = {"EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"}
ENCODE_CASE = "dpmpp_2m_negative_batch"


def write_tokenizers(folder):
    msd.write_tokenizer(os.path.join(folder, "tokenizer"))
    second = os.path.join(folder, "tokenizer_2")
    msd.write_tokenizer(second)
    for name, content in [("tokenizer_config.json", TOKENIZER_2_CONFIG), ("special_tokens_map.json", SPECIAL_TOKENS_2)]:
        with open(os.path.join(second, name), "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")


def make_text_encoder(cls, config, seed):
    return msd.make_text_encoder(seed, config, cls)


def make_unet(seed):
    return msd.make_unet(seed, TINY_UNET)


def scheduler(cls_name):
    import diffusers

    return getattr(diffusers, cls_name).from_config(SDXL_SCHEDULER)


def pipeline(parts, sched):
    from diffusers import StableDiffusionXLPipeline

    unet, vae, te1, te2, tok1, tok2 = parts
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)


class TimeIdsCapture:
    """Wraps unet.forward to keep the time ids diffusers passes (added_cond_kwargs["time_ids"])."""

    def __init__(self, unet):
        self.inner, self.time_ids = unet.forward, None

    def __call__(self, *a, **k):
        self.time_ids = k["added_cond_kwargs"]["time_ids"].detach().clone()
        return self.inner(*a, **k)


@torch.no_grad()
def run(parts, case, double=False):
    unet, vae, te1, te2, tok1, tok2 = parts
    if double:
        unet, vae, te1, te2 = (copy.deepcopy(m).double() for m in (unet, vae, te1, te2))
    sched = scheduler(case["cls"])
    pipe = pipeline((unet, vae, te1, te2, tok1, tok2), sched)
    cap = mpf.LatentCapture(vae)
    vae.decode = cap
    ids = TimeIdsCapture(unet)
    unet.forward = ids
    batch = len(case["prompt"])
    kwargs = dict(prompt=case["prompt"], negative_prompt=case["negative"], negative_prompt_2=case["negative"],
                  height=case["height"], width=case["width"], num_inference_steps=case["steps"],
                  guidance_scale=case["guidance"], output_type="np")
    if case.get("clip_skip", 1) > 1:
        kwargs["clip_skip"] = case["clip_skip"] - 1  # diffusers counts the layers skipped, A1111 the layer used
    shape = (batch, 4, case["height"] // 8, case["width"] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(case["seed"]))
    if double:  # the same float32 noise, upcast (randn_tensor would draw in float64)
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl as pxl
        orig = pxl.randn_tensor
        pxl.randn_tensor = lambda shape, generator=None, device=None, dtype=None, **k: noise.to(dtype)
        try:
            images = pipe(generator=torch.Generator().manual_seed(case["seed"]), **kwargs).images
        finally:
            pxl.randn_tensor = orig
    else:
        images = pipe(generator=torch.Generator().manual_seed(case["seed"]), **kwargs).images
    latents = cap.z * vae.config.scaling_factor
    vae.decode = cap.inner
    del unet.forward  # the instance attribute: back to the class's forward
    dtype = torch.float64 if double else torch.float32
    return (torch.from_numpy(np.asarray(images)).to(dtype), latents.to(dtype), [float(t) for t in sched.timesteps],
            ids.time_ids, pipe)


def save_folder(folder, parts):
    unet, vae, te1, te2, _, _ = parts
    pipe = pipeline(parts, scheduler("EulerDiscreteScheduler"))
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub in ["unet", "vae", "text_encoder", "text_encoder_2"]:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            shutil.copy(os.path.join(tmp, sub, "config.json"), os.path.join(folder, sub, "config.json"))
        shutil.copy(os.path.join(tmp, "model_index.json"), os.path.join(folder, "model_index.json"))
    for sub, model, name in [("unet", unet, "diffusion_pytorch_model.safetensors"),
                             ("vae", vae, "diffusion_pytorch_model.safetensors"),
                             ("text_encoder", te1, "model.safetensors"),
                             ("text_encoder_2", te2, "model.safetensors")]:
        mpf.save_f16(model, os.path.join(folder, sub, name))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SDXL_SCHEDULER, f, indent=2)
        f.write("\n")


def check_folder(folder, parts):
    """The written folder loads back in diffusers and gives the same generation (the files mean what we say)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, add_watermarker=False)
    assert pipe.config.force_zeros_for_empty_prompt
    case = CASES["euler"]
    with torch.no_grad():
        a = pipe(prompt=case["prompt"], height=64, width=64, num_inference_steps=2, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(1), output_type="np").images
        b = pipeline(parts, scheduler("EulerDiscreteScheduler"))(
            prompt=case["prompt"], height=64, width=64, num_inference_steps=2, guidance_scale=5.0,
            generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.array_equal(a, b), float(np.abs(a - b).max())


def main():
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    dlogging.set_verbosity_error()
    torch.set_num_threads(2)
    folder = os.path.join(OUT, "sdxl_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    write_tokenizers(folder)
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer_2"))
    assert tok2.pad_token_id == 0, tok2.pad_token_id
    te1 = make_text_encoder(CLIPTextModel, TEXT_1, 15001)
    te2 = make_text_encoder(CLIPTextModelWithProjection, TEXT_2, 15002)
    unet = make_unet(15003)
    vae, _, _ = mvf.make(TINY_VAE, 15004)
    for m in (te1, te2, unet, vae):
        mpf.to_f16_values(m)
    parts = (unet, vae, te1, te2, tok1, tok2)
    save_folder(folder, parts)
    check_folder(folder, parts)

    tensors, info = {}, {}
    for name, case in CASES.items():
        images, latents, timesteps, time_ids, pipe = run(parts, case)
        tensors[name + ".images"] = images.contiguous()
        tensors[name + ".latents"] = latents.float().contiguous()
        entry = dict(case, timesteps=timesteps, image_max=float(images.abs().max()), time_ids=time_ids.tolist())
        if case["cls"] in DETERMINISTIC:
            images64, latents64, _, _, _ = run(parts, case, double=True)
            entry["torch_f32_vs_f64_images"] = mpf.max_rel(images, images64)
            entry["torch_f32_vs_f64_latents"] = mpf.max_rel(latents, latents64)
        if name == ENCODE_CASE:
            with torch.no_grad():
                pe, ne, pp, npp = pipe.encode_prompt(case["prompt"], device="cpu", num_images_per_prompt=1,
                                                     do_classifier_free_guidance=True,
                                                     negative_prompt=case["negative"],
                                                     negative_prompt_2=case["negative"])
            for key, t in [("prompt_embeds", pe), ("negative_prompt_embeds", ne), ("pooled_prompt_embeds", pp),
                           ("negative_pooled_prompt_embeds", npp)]:
                tensors["encode." + key] = t.float().contiguous()
            entry["prompt_ids"] = tok1(case["prompt"], padding="max_length", max_length=77).input_ids
            entry["prompt_ids_2"] = tok2(case["prompt"], padding="max_length", max_length=77).input_ids
            entry["negative_ids_2"] = tok2(case["negative"], padding="max_length", max_length=77).input_ids
        info[name] = entry
        print(f"sdxl_tiny {name}: timesteps {timesteps}, time ids {entry['time_ids'][0]}, "
              f"f32 vs f64 latents {entry.get('torch_f32_vs_f64_latents')}")
    save_file(tensors, os.path.join(folder, "generations.safetensors"))

    mpf.update_summary("sdxl_tiny", cases=info)


if __name__ == "__main__":
    main()
