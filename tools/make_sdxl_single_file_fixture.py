#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/pipelines/sdxl_tiny_single.safetensors: the tiny SDXL pipeline of tests/data/pipelines/sdxl_tiny
(tools/make_sdxl_pipeline_fixtures.py) as one single-file checkpoint in the original SGM layout that
sd_xl_base_1.0.safetensors has and A1111 / ComfyUI / stable-diffusion.cpp users keep, F16 as the folder's weights are:
- `model.diffusion_model.*`: the U-Net under its LDM names (label_emb.0.0 / 0.2 for the text_time embedding);
- `first_stage_model.*`: the VAE under its LDM names (the mid attention as 1x1 convs);
- `conditioner.embedders.0.transformer.text_model.*`: CLIP ViT-L/14 under transformers' names, with the
  `embeddings.position_ids` buffer as SDXL base 1.0 stores it (I64 [1, 77]);
- `conditioner.embedders.1.model.*`: OpenCLIP ViT-bigG/14 under OpenCLIP's names: `token_embedding.weight`,
  `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight / in_proj_bias (q, k, v fused
  along the rows), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection` [width, proj] (the
  transpose of transformers' text_projection.weight) and `logit_scale` (a scalar, ln 100 in F16 as SDXL base
  1.0 has it; no network reads it).

    .venv-ref/bin/python tools/make_sdxl_single_file_fixture.py

The naming is checked against diffusers itself: StableDiffusionXLPipeline.from_single_file(file, config=folder)
must give back every tensor of the folder's unet, vae, text_encoder and text_encoder_2 exactly (and the
OpenCLIP converter must consume every `conditioner.embedders.1.model.` tensor but logit_scale).
tests/pipeline/single_file_pipeline_test.cpp then checks that the file and the folder generate the same bits.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd_single_file_fixture as msd1  # noqa: E402

ROOT = msd1.ROOT
FOLDER = os.path.join(ROOT, "tests", "data", "pipelines", "sdxl_tiny")
OUT = os.path.join(ROOT, "tests", "data", "pipelines", "sdxl_tiny_single.safetensors")
CLIP_L = "conditioner.embedders.0.transformer."
BIGG = "conditioner.embedders.1.model."

# transformers' per-layer names (under text_model.encoder.layers.N.) -> OpenCLIP's (under transformer.resblocks.N.).
OPEN_CLIP_LAYER = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.",
                   "mlp.fc2.": "mlp.c_proj.", "self_attn.out_proj.": "attn.out_proj."}
OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                 "text_model.embeddings.position_embedding.weight": "positional_embedding",
                 "text_model.final_layer_norm.weight": "ln_final.weight",
                 "text_model.final_layer_norm.bias": "ln_final.bias"}


def open_clip_tensors(te, prefix):
    """A CLIPTextModelWithProjection's tensors under `prefix` with OpenCLIP's names (the inverse of diffusers'
    convert_open_clip_checkpoint), as F16, plus logit_scale."""
    sd = {k: v for k, v in te.state_dict().items() if not k.endswith("position_ids")}
    out, used = {}, set()
    for k, name in OPEN_CLIP_TOP.items():
        out[prefix + name] = sd[k]
        used.add(k)
    out[prefix + "text_projection"] = sd["text_projection.weight"].t()  # OpenCLIP: x @ text_projection, [D, P]
    used.add("text_projection.weight")
    for i in range(te.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [src + f"self_attn.{p}_proj.{kind}" for p in "qkv"]
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[k] for k in qkv], dim=0)
            used.update(qkv)
        for a, b in OPEN_CLIP_LAYER.items():
            for kind in ("weight", "bias"):
                out[dst + b + kind] = sd[src + a + kind]
                used.add(src + a + kind)
    assert used == set(sd), sorted(set(sd) - used)
    out = {k: v.half().contiguous() for k, v in out.items()}
    out[prefix + "logit_scale"] = torch.tensor(math.log(100.0)).half()  # shape [], as OpenCLIP's parameter
    return out


@torch.no_grad()
def check_open_clip_names(tensors, te):
    """diffusers' own OpenCLIP converter reads every bigG tensor written (logit_scale aside)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    back = convert_open_clip_checkpoint(te, tensors, prefix=BIGG)
    want = {k for k in te.state_dict() if not k.endswith("position_ids")}
    assert set(back) == want, sorted(set(back) ^ want)[:10]
    ours = [k for k in tensors if k.startswith(BIGG)]
    print(f"text_encoder_2: convert_open_clip_checkpoint turns the {len(ours)} OpenCLIP tensors (logit_scale "
          f"ignored) into its {len(want)} transformers tensors")


@torch.no_grad()
def main():
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    dlogging.set_verbosity_error()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FOLDER, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(FOLDER, "vae")).eval()
    te1 = CLIPTextModel.from_pretrained(os.path.join(FOLDER, "text_encoder")).eval()
    te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(FOLDER, "text_encoder_2")).eval()
    tensors = {}
    tensors.update(msd1.unet_tensors(unet))
    tensors.update(msd1.vae_tensors(vae))
    tensors.update(msd1.clip_tensors(te1, CLIP_L))
    tensors[CLIP_L + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    tensors.update(open_clip_tensors(te2, BIGG))
    save_file(tensors, OUT, metadata={"format": "pt"})
    check_open_clip_names(tensors, te2)

    pipe = StableDiffusionXLPipeline.from_single_file(OUT, config=FOLDER, torch_dtype=torch.float16,
                                                      local_files_only=True, add_watermarker=False)
    msd1.check_components(pipe, [("unet", unet), ("vae", vae), ("text_encoder", te1), ("text_encoder_2", te2)])
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"  # the folder's
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.config.force_zeros_for_empty_prompt
    counts = {p: sum(k.startswith(p) for k in tensors)
              for p in ("model.diffusion_model.", "first_stage_model.", CLIP_L, BIGG)}
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {len(tensors)} tensors {counts}, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
