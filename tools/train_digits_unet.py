#!/usr/bin/env python3
"""Train the default class-conditional pixel UNet (diffusers UNet2DModel) on 16x16 sklearn digits.

Objective: DDPM epsilon prediction, DDPMScheduler(linear betas 1e-4..0.02, 1000 steps).
Classes: num_class_embeds=11; labels 0..9 = digit, label 10 = null / unconditional (used for classifier-free
guidance). During training the label is replaced by 10 with probability --label-drop (default 0.12).

Output (diffusers layout, in --out, default models/digits-unet):
  config.json, diffusion_pytorch_model.safetensors (EMA weights, --dtype f16 by default), scheduler_config.json
Checkpoints (resumable with --resume) go to --ckpt (default /tmp/digits-unet-ckpt.pt).

Usage: nice -n 19 .venv-ref/bin/python tools/train_digits_unet.py [--steps N] [--resume] [--export-only]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_common import run  # noqa: E402

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    center_input_sample=False,
    time_embedding_type="positional",
    freq_shift=0,
    flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    mid_block_scale_factor=1,
    downsample_padding=1,
    act_fn="silu",
    attention_head_dim=32,  # 64 channels -> 2 heads of 32
    norm_num_groups=8,
    norm_eps=1e-5,
    resnet_time_scale_shift="default",
    add_attention=True,
    num_class_embeds=11,
    num_train_timesteps=1000,
)

SCHED_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small",
                    timestep_spacing="leading", steps_offset=0)


def build():
    from diffusers import DDPMScheduler, UNet2DModel
    return UNet2DModel(**UNET_CONFIG), DDPMScheduler(**SCHED_CONFIG)


def ddpm_epsilon(x0, gen, sched):
    """DDPM training objective (Ho et al. 2020): t ~ U{0..999}, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, target eps."""
    t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    ab = sched.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps


if __name__ == "__main__":
    run("digits-unet", build, ddpm_epsilon, lr=1e-3, label_drop=0.12)
