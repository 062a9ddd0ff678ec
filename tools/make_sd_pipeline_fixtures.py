#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/pipelines/sd_tiny/: a diffusers StableDiffusionPipeline folder in small (architecture-identical
to Stable Diffusion 1.5: CLIP tokenizer and text encoder, conditional U-Net, 8x VAE) and whole text-to-image
generations run by diffusers' own StableDiffusionPipeline, for tests/pipeline/text_pipeline_test.cpp.

    .venv-ref/bin/python tools/make_sd_pipeline_fixtures.py

The folder (weights rounded to float16 and stored as F16, so diffusers ran on exactly the stored values):
- tokenizer/: a CLIP BPE vocabulary in small: OpenAI's byte characters, the first 486 merges of OpenAI's merges
  list (../shared/data/clip/bpe_simple_vocab_16e6.txt.gz) and the two special tokens, 1,000 tokens in all, as
  vocab.json + merges.txt with SD 1.5's tokenizer_config.json (pad = <|endoftext|>, 77 tokens). Words the
  small vocabulary lacks are split into more pieces; the tokenizer code is the same.
- text_encoder/: CLIPTextModel with ViT-L/14's layout in small (hidden 32, 3 layers, 4 heads, quick_gelu, SD 1.5's
  legacy eos_token_id 2).
- unet/: UNet2DConditionModel with SD 1.5's structure in small (CrossAttnDownBlock2D + DownBlock2D, the cross-
  attention mid block, UpBlock2D + CrossAttnUpBlock2D, 1x1-conv proj_in/proj_out, cross_attention_dim 32).
- vae/: AutoencoderKL with four blocks (8, 8, 16, 16): 8x, as the real one.
- scheduler/: SD 1.5's published scheduler_config.json (PNDMScheduler, skip_prk_steps, set_alpha_to_one false,
  steps_offset 1); the cases below swap classes with `Class.from_config`, as diffusers users do.
- model_index.json as save_pretrained writes it with safety_checker and feature_extractor saved as [null, null]
  (requires_safety_checker false).

generations.safetensors: per case `CASE.images` (output_type "np": [B, H, W, 3] in [0, 1] after diffusers' clamp)
and `CASE.latents` (the final latents before the VAE decode, times scaling_factor); `euler.prompt_embeds` and
`euler.negative_prompt_embeds` (pipe.encode_prompt). summary.json (tests/data/pipelines/summary.json, key
"sd_tiny") records each case's settings, the timesteps it ran, and torch's own float32 error (the same generation
with every network in float64 and the same float32 noise) for the deterministic samplers.
"""
import copy
import gzip
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
import make_vae_fixtures as mvf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "pipelines")
MERGES_GZ = os.path.join(ROOT, "..", "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 486  # 512 byte tokens + 486 merges + 2 special tokens = 1,000

# stable-diffusion-v1-5/scheduler/scheduler_config.json as published.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
TINY_TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
TOKENIZER_CONFIG = {
    "add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True, "eos_token": "<|endoftext|>",
    "errors": "replace", "model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}
SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>"}

# Each case: sampler (diffusers class via from_config of the folder's scheduler), prompts, negative prompts (None:
# diffusers' default, the empty prompt), seed, guidance, size, steps, and the settings given to both sides.
CASES = {
    "euler": dict(cls="EulerDiscreteScheduler", prompt=["a red apple on a wooden table"], negative=None, seed=0,
                  guidance=7.5, height=64, width=64, steps=4),
    "ddim_batch": dict(cls="DDIMScheduler", prompt=["a photo of a cat", "a rocket flying to the moon at night"],
                       negative=["blurry, low quality", "ugly"], seed=7, guidance=5.0, height=64, width=64, steps=4),
    "dpmpp_2m_skip": dict(cls="DPMSolverMultistepScheduler", prompt=["a watercolor painting of a lighthouse"],
                          negative=None, seed=3, guidance=7.5, height=48, width=64, steps=5, clip_skip=2),
    "euler_a_rescale": dict(cls="EulerAncestralDiscreteScheduler", prompt=["an astronaut riding a horse"],
                            negative=["cartoon"], seed=11, guidance=7.5, height=64, width=64, steps=4,
                            guidance_rescale=0.7),
    "no_guidance": dict(cls="EulerDiscreteScheduler", prompt=["a bowl of soup"], negative=None, seed=5, guidance=1.0,
                        height=64, width=64, steps=3),
}
CASES["pndm"] = dict(cls="PNDMScheduler", prompt=["a cozy cabin in a snowy forest"], negative=["dark"], seed=21,
                     guidance=7.5, height=64, width=64, steps=5)
# The same weights read as a v_prediction model (the scheduler config's prediction_type, as SD 2.x 768 has it):
# guidance rescale acts on the network's output, v here (rescale_noise_cfg on noise_pred), not on eps.
CASES["v_euler_rescale"] = dict(cls="EulerDiscreteScheduler", prompt=["a red apple on a wooden table"],
                                negative=["blurry"], seed=13, guidance=7.5, height=64, width=64, steps=4,
                                guidance_rescale=0.7, scheduler_overrides=dict(prediction_type="v_prediction"))
DETERMINISTIC = {"EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler"}


def bytes_to_unicode():
    """GPT-2's byte-to-unicode table (the printable bytes stand for themselves, the others are shifted up)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(folder):
    with gzip.open(MERGES_GZ, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == TINY_TEXT["vocab_size"], len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    for name, content in [("tokenizer_config.json", TOKENIZER_CONFIG), ("special_tokens_map.json", SPECIAL_TOKENS)]:
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")


def seed_clip_weights(model, seed):
    """Every parameter of a CLIP text encoder overwritten from one generator, in named_parameters order: embeddings
    N(0, 0.5), layer norms N(1, 0.1) / N(0, 0.05), biases N(0, 0.05), matrices N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding.weight"):
                mean, std = 0.0, 0.5
            elif "layer_norm" in name:
                mean, std = (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
            elif name.endswith("bias"):
                mean, std = 0.0, 0.05
            else:
                mean, std = 0.0, 1.0 / (p.shape[1] ** 0.5)
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    return model


def make_text_encoder(seed, config=None, cls=None):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = (cls or CLIPTextModel)(CLIPTextConfig(**(config or TINY_TEXT))).eval()
    return seed_clip_weights(model, seed)


def make_unet(seed, config=None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(**(config or TINY_UNET)).eval()
    mnf.load_weights(model, mnf.generate(mnf.param_list(model), seed))
    return model


def scheduler(cls_name, overrides=None):
    import diffusers

    return getattr(diffusers, cls_name).from_config(dict(SD15_SCHEDULER, **(overrides or {})))


def pipeline(unet, vae, text_encoder, tokenizer, sched):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@torch.no_grad()
def run(parts, case, double=False):
    unet, vae, text_encoder, tokenizer = parts
    if double:
        unet, vae, text_encoder = (copy.deepcopy(m).double() for m in (unet, vae, text_encoder))
    sched = scheduler(case["cls"], case.get("scheduler_overrides"))
    pipe = pipeline(unet, vae, text_encoder, tokenizer, sched)
    cap = mpf.LatentCapture(vae)
    vae.decode = cap
    batch = len(case["prompt"])
    kwargs = dict(prompt=case["prompt"], negative_prompt=case["negative"], height=case["height"],
                  width=case["width"], num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                  guidance_rescale=case.get("guidance_rescale", 0.0), output_type="np")
    if case.get("clip_skip", 1) > 1:
        kwargs["clip_skip"] = case["clip_skip"] - 1  # diffusers counts the layers skipped, A1111 the layer used
        if not hasattr(text_encoder, "text_model"):
            # diffusers 0.42's clip_skip reads text_encoder.text_model.final_layer_norm, which transformers 5's
            # CLIPTextModel no longer has (its layers sit on the model itself): point the name at the model,
            # outside the module tree so that nothing else sees it.
            object.__setattr__(text_encoder, "text_model", text_encoder)
    shape = (batch, 4, case["height"] // 8, case["width"] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(case["seed"]))
    if double:  # the same float32 noise, upcast (randn_tensor would draw in float64)
        import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as psd
        orig = psd.randn_tensor
        psd.randn_tensor = lambda shape, generator=None, device=None, dtype=None, **k: noise.to(dtype)
        try:
            images = pipe(generator=torch.Generator().manual_seed(case["seed"]), **kwargs).images
        finally:
            psd.randn_tensor = orig
    else:
        images = pipe(generator=torch.Generator().manual_seed(case["seed"]), **kwargs).images
    latents = cap.z * vae.config.scaling_factor
    vae.decode = cap.inner
    dtype = torch.float64 if double else torch.float32
    return torch.from_numpy(np.asarray(images)).to(dtype), latents.to(dtype), [float(t) for t in sched.timesteps], pipe


def save_folder(folder, unet, vae, text_encoder, tokenizer):
    pipe = pipeline(unet, vae, text_encoder, tokenizer, scheduler("PNDMScheduler"))
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub in ["unet", "vae", "text_encoder"]:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            shutil.copy(os.path.join(tmp, sub, "config.json"), os.path.join(folder, sub, "config.json"))
        shutil.copy(os.path.join(tmp, "model_index.json"), os.path.join(folder, "model_index.json"))
    for sub, model, name in [("unet", unet, "diffusion_pytorch_model.safetensors"),
                             ("vae", vae, "diffusion_pytorch_model.safetensors"),
                             ("text_encoder", text_encoder, "model.safetensors")]:
        mpf.save_f16(model, os.path.join(folder, sub, name))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD15_SCHEDULER, f, indent=2)
        f.write("\n")


def main():
    from transformers import CLIPTokenizer

    torch.set_num_threads(2)
    folder = os.path.join(OUT, "sd_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    write_tokenizer(os.path.join(folder, "tokenizer"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    text_encoder = make_text_encoder(14001)
    unet = make_unet(14002)
    vae, _, _ = mvf.make(mpf.TINY_VAE, 14003)
    for m in (text_encoder, unet, vae):
        mpf.to_f16_values(m)
    save_folder(folder, unet, vae, text_encoder, tokenizer)
    parts = (unet, vae, text_encoder, tokenizer)

    tensors, info = {}, {}
    for name, case in CASES.items():
        images, latents, timesteps, pipe = run(parts, case)
        tensors[name + ".images"] = images.contiguous()
        tensors[name + ".latents"] = latents.float().contiguous()
        entry = dict(case, timesteps=timesteps, image_max=float(images.abs().max()))
        if case["cls"] in DETERMINISTIC:
            images64, latents64, _, _ = run(parts, case, double=True)
            entry["torch_f32_vs_f64_images"] = mpf.max_rel(images, images64)
            entry["torch_f32_vs_f64_latents"] = mpf.max_rel(latents, latents64)
        if name == "euler":
            with torch.no_grad():
                pe, ne = pipe.encode_prompt(case["prompt"], "cpu", 1, True, negative_prompt=None)
            tensors[name + ".prompt_embeds"] = pe.float().contiguous()
            tensors[name + ".negative_prompt_embeds"] = ne.float().contiguous()
            entry["prompt_ids"] = tokenizer(case["prompt"], padding="max_length", max_length=77).input_ids[0]
        info[name] = entry
        print(f"sd_tiny {name}: timesteps {timesteps}, f32 vs f64 latents {entry.get('torch_f32_vs_f64_latents')}")
    save_file(tensors, os.path.join(folder, "generations.safetensors"))

    mpf.update_summary("sd_tiny", cases=info)


if __name__ == "__main__":
    main()
