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
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_common import EMA, Progress, load_checkpoint, load_digits_16, lr_at, random_shift, save_checkpoint  # noqa: E402

NULL_CLASS = 10

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


def export(model, ema, sched, out, dtype):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(out, safe_serialization=True)  # writes config.json + f32 weights
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    sched.save_config(out)  # top-level scheduler_config.json
    print(f"exported {sum(v.numel() for v in sd.values())} params ({dtype}) to {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--label-drop", type=float, default=0.12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", default="/tmp/digits-unet-ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "digits-unet"))
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export the EMA weights of --ckpt and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    model, sched = build()
    print(f"UNet2DModel params: {sum(p.numel() for p in model.parameters())}")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    ema = EMA(model, 0.999)
    gen = torch.Generator().manual_seed(a.seed)
    step, losses = 0, []
    if (a.resume or a.export_only) and os.path.exists(a.ckpt):
        step, losses = load_checkpoint(a.ckpt, model, ema, opt, gen)
        print(f"resumed from {a.ckpt} at step {step}")
    dtype = torch.float16 if a.dtype == "f16" else torch.float32
    if a.export_only:
        export(model, ema, sched, a.out, dtype)
        return

    x_all, y_all = load_digits_16()
    n = x_all.shape[0]
    acp = sched.alphas_cumprod.float()
    prog = Progress(a.steps)
    run = 0.0
    model.train()
    while step < a.steps:
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        x0 = random_shift(x_all[idx], gen)
        y = y_all[idx].clone()
        y[torch.rand(a.batch, generator=gen) < a.label_drop] = NULL_CLASS
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        pred = model(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        run += loss.item()
        if step % 100 == 0:
            losses.append((step, run / 100))
            print(prog.line(step, run / 100), flush=True)
            run = 0.0
        if step % a.ckpt_every == 0 or step == a.steps:
            save_checkpoint(a.ckpt, step, model, ema, opt, gen, losses)
    json.dump(losses, open(a.ckpt + ".losses.json", "w"))
    export(model, ema, sched, a.out, dtype)


if __name__ == "__main__":
    main()
