#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/pipelines/sd_tiny_single.safetensors: the tiny Stable Diffusion pipeline of
tests/data/pipelines/sd_tiny (tools/make_sd_pipeline_fixtures.py) as one single-file checkpoint in the original
layout A1111 and stable-diffusion.cpp users keep: `model.diffusion_model.*` (LDM U-Net names),
`first_stage_model.*` (LDM VAE names, the attention as 1x1 convs), `cond_stage_model.transformer.text_model.*`
(the CLIP text encoder), F16 as the folder's weights are.

    .venv-ref/bin/python tools/make_sd_single_file_fixture.py

The naming is checked against diffusers itself: StableDiffusionPipeline.from_single_file(file, config=folder)
must give back every tensor of the folder's unet, vae and text_encoder exactly. tests/pipeline/
single_file_pipeline_test.cpp then checks that the file and the folder generate the same bits. The helpers below
(unet_tensors, vae_tensors, clip_tensors, check_components) write and check tools/make_sdxl_single_file_fixture.py's
SDXL file too.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_single_file_fixtures as msf  # noqa: E402
import make_vae_fixtures as mvf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FOLDER = os.path.join(ROOT, "tests", "data", "pipelines", "sd_tiny")
OUT = os.path.join(ROOT, "tests", "data", "pipelines", "sd_tiny_single.safetensors")


def unet_tensors(unet):
    """The U-Net's tensors under `model.diffusion_model.` (LDM names), as F16."""
    ucfg = dict(unet.config)
    return {"model.diffusion_model." + msf.ldm_name(k, ucfg): v.half().contiguous()
            for k, v in unet.state_dict().items()}


def vae_tensors(vae):
    """The VAE's tensors under `first_stage_model.` (LDM names, the attention as 1x1 convs), as F16."""
    return {"first_stage_model." + k: v.half().contiguous()
            for k, v in mvf.ldm_names(vae.state_dict(), len(vae.config.block_out_channels)).items()}


def clip_tensors(te, prefix):
    """A transformers CLIP text encoder's tensors under `prefix` with their `text_model.` names (CLIPTextModel 5.x
    saves none: added), as F16, without the position_ids buffer."""
    out = {}
    for k, v in te.state_dict().items():
        if k.endswith("position_ids"):
            continue
        name = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + name] = v.half().contiguous()
    return out


def check_components(pipe, components):
    """Each (name, reference model) of `components` is given back exactly by the pipeline diffusers loaded."""
    for name, ref in components:
        got = getattr(pipe, name).state_dict()
        want = {k: v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
        missing = [k for k in want if k not in got and "text_model." + k not in got]
        assert not missing, (name, missing[:5])
        for k, v in want.items():
            g = got[k] if k in got else got["text_model." + k]
            assert torch.equal(g.float(), v.float()), (name, k)
        print(f"{name}: diffusers' from_single_file gives back all {len(want)} tensors exactly")


@torch.no_grad()
def main():
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(os.path.join(FOLDER, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(FOLDER, "vae")).eval()
    te = CLIPTextModel.from_pretrained(os.path.join(FOLDER, "text_encoder")).eval()
    tensors = {}
    tensors.update(unet_tensors(unet))
    tensors.update(vae_tensors(vae))
    tensors.update(clip_tensors(te, "cond_stage_model.transformer."))
    save_file(tensors, OUT, metadata={"format": "pt"})

    pipe = StableDiffusionPipeline.from_single_file(OUT, config=FOLDER, torch_dtype=torch.float16,
                                                    safety_checker=None, requires_safety_checker=False)
    check_components(pipe, [("unet", unet), ("vae", vae), ("text_encoder", te)])
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
