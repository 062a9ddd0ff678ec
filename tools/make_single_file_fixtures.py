#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/models/unetc_*_single/: conditional U-Nets saved as Stable Diffusion single-file checkpoints
(the original LDM names under `model.diffusion_model.`, beside a few stand-in `first_stage_model.` / text encoder
tensors so the file looks like a checkpoint), for tests/models/checkpoint_test.cpp.

    .venv-ref/bin/python tools/make_single_file_fixtures.py

The LDM names are written by this script's own renaming (ldm_names below, from the config), and then CHECKED
against diffusers itself: diffusers' convert_ldm_unet_checkpoint must give back every original tensor under its
diffusers name, bit for bit and nothing else, and UNet2DConditionModel.from_single_file(file, config=<folder>) must
reproduce the diffusers folder's forward output exactly.

Cases:
- unetc_sd15_single/model.safetensors: the weights of unetc_sd15_small (SD 1.5 structure in small: 1x1 conv
  proj_in/proj_out, layers_per_block 1) renamed; the C++ test compares with unetc_sd15_small's folder and io.
- unetc_sdxl_single/: a new tiny SDXL-like U-Net (config.json + diffusion_pytorch_model.safetensors + io.safetensors
  as the other unetc_* folders, and model.safetensors, the same weights under LDM names): three levels
  DownBlock2D, CrossAttnDownBlock2D x2 with layers_per_block 2 (so input_blocks 1..8, the downsamplers at 3 and
  6, output_blocks 0..8 with upsamplers at .2 after a transformer and at .1 without), transformer_layers_per_block
  [1, 1, 2], linear proj_in/proj_out, addition_embed_type text_time (label_emb.0.0 / 0.2), conv_shortcut
  (skip_connection) in resnets that change width. Its torch f32-vs-f64 error is recorded in unetc_cases.json.
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_unet_condition_fixtures as muc  # noqa: E402

OUT = muc.OUT
PREFIX = "model.diffusion_model."

SDXL_SINGLE = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[4, 8, 8], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=8,
    attention_head_dim=[1, 2, 2], transformer_layers_per_block=[1, 1, 2], norm_num_groups=2,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=8 + 6 * 4)

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_name(name, cfg):
    """diffusers UNet2DConditionModel name -> LDM name (the inverse of convert_ldm_unet_checkpoint)."""
    nb = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    lpb = lpb if isinstance(lpb, list) else [lpb] * nb
    p = name.split(".")

    def resnet(head, rest):
        return ".".join([head, RESNET[rest[0]]] + rest[1:])

    simple = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for k, v in simple.items():
        if name.startswith(k + "."):
            return v + name[len(k):]
    if p[0] == "mid_block":
        j = int(p[2])
        return resnet(f"middle_block.{2 * j}", p[3:]) if p[1] == "resnets" else ".".join(["middle_block.1"] + p[3:])
    i, kind, j = int(p[1]), p[2], int(p[3])
    if p[0] == "down_blocks":
        base = 1 + sum(lpb[k] + 1 for k in range(i))
        if kind == "resnets":
            return resnet(f"input_blocks.{base + j}.0", p[4:])
        if kind == "attentions":
            return ".".join([f"input_blocks.{base + j}.1"] + p[4:])
        assert kind == "downsamplers" and p[4] == "conv", name
        return ".".join([f"input_blocks.{base + lpb[i]}.0.op"] + p[5:])
    assert p[0] == "up_blocks", name
    base = sum(lpb[nb - 1 - k] + 1 for k in range(i))
    n = lpb[nb - 1 - i] + 1
    if kind == "resnets":
        return resnet(f"output_blocks.{base + j}.0", p[4:])
    if kind == "attentions":
        return ".".join([f"output_blocks.{base + j}.1"] + p[4:])
    assert kind == "upsamplers" and p[4] == "conv", name
    slot = 2 if cfg["up_block_types"][i] == "CrossAttnUpBlock2D" else 1
    return ".".join([f"output_blocks.{base + n - 1}.{slot}.conv"] + p[5:])


def stand_ins(sdxl):
    """A few tensors of the other networks, as a checkpoint has them (the U-Net loader must leave them alone)."""
    g = torch.Generator().manual_seed(5)
    t = {"first_stage_model.decoder.conv_in.weight": torch.randn((8, 4, 3, 3), generator=g),
         "first_stage_model.decoder.up.0.block.0.conv1.weight": torch.randn((4, 8, 3, 3), generator=g)}
    if sdxl:
        t["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"] = torch.randn((77, 8), generator=g)
        t["conditioner.embedders.1.model.positional_embedding"] = torch.randn((77, 8), generator=g)
    else:
        t["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = torch.randn((77, 8), generator=g)
    return t


def write_single(path, model, sdxl):
    cfg = dict(model.config)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    ldm = {PREFIX + ldm_name(k, cfg): v for k, v in sd.items()}
    assert len(ldm) == len(sd), "two diffusers names map to one LDM name"
    tensors = dict(stand_ins(sdxl))
    tensors.update(ldm)
    save_file(tensors, path, metadata={"format": "pt"})
    check_with_diffusers(path, model, sd)
    return len(ldm)


@torch.no_grad()
def check_with_diffusers(path, model, sd):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    checkpoint = load_file(path)
    back = convert_ldm_unet_checkpoint(checkpoint, dict(model.config))
    assert set(back) == set(sd), (sorted(set(back) ^ set(sd)))[:10]
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded = UNet2DConditionModel.from_single_file(path, config=tmp, torch_dtype=torch.float32).eval()
    lsd = loaded.state_dict()
    assert set(lsd) == set(sd)
    for k, v in sd.items():
        assert torch.equal(lsd[k], v), k
    print(f"{os.path.relpath(path, OUT)}: diffusers' convert_ldm_unet_checkpoint and from_single_file give back all "
          f"{len(sd)} tensors exactly")
    return loaded


@torch.no_grad()
def main():
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    # SD 1.5 in small: unetc_sd15_small's own weights.
    small = os.path.join(OUT, "unetc_sd15_small")
    model = UNet2DConditionModel.from_pretrained(small, torch_dtype=torch.float32).eval()
    folder = muc.fresh("unetc_sd15_single")
    path = os.path.join(folder, "model.safetensors")
    n = write_single(path, model, sdxl=False)
    io = load_file(os.path.join(small, "io.safetensors"))
    ref = io.pop("output")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        single = UNet2DConditionModel.from_single_file(path, config=tmp, torch_dtype=torch.float32).eval()
    got = muc.run(single, io)
    assert torch.equal(got, muc.run(model, io)), "from_single_file and from_pretrained differ"
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5, rel
    print(f"unetc_sd15_single: {n} U-Net tensors; from_single_file gives from_pretrained's output exactly, "
          f"{rel:.2g} x max|ref| from the committed unetc_sd15_small/io.safetensors (another run's torch f32)")

    # SDXL-like, new weights.
    name, seed = "unetc_sdxl_single", 3006
    folder = muc.fresh(name)
    model, _, _ = muc.make(SDXL_SINGLE, seed)
    model.save_pretrained(folder, safe_serialization=True)
    io = muc.inputs(model, (8, 8), [617.0, 3.25], 8, seed)
    out = muc.run(model, io)
    again = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    assert torch.equal(muc.run(again, io), out), name
    muc.save_io(folder, io, out)
    path = os.path.join(folder, "model.safetensors")
    n = write_single(path, model, sdxl=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        single = UNet2DConditionModel.from_single_file(path, config=tmp, torch_dtype=torch.float32).eval()
    assert torch.equal(muc.run(single, io), out), "from_single_file output differs"
    print(f"{name}: {n} U-Net tensors; from_single_file reproduces the folder's output exactly")

    cases = os.path.join(OUT, "unetc_cases.json")
    summary = json.load(open(cases))
    summary[name] = dict(seed=seed, covers="SDXL-like U-Net in small saved as a single file too (model.safetensors, "
                         "LDM names): layers_per_block 2 over three levels, transformer_layers_per_block [1, 1, 2], "
                         "linear projections, text_time", output_std=float(out.std()),
                         torch_f32_vs_f64=muc.f64_error(model, io, out))
    with open(cases, "w") as f:
        json.dump(dict(sorted(summary.items())), f, indent=1)
        f.write("\n")
    print(name, summary[name])


if __name__ == "__main__":
    main()
