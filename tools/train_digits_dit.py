#!/usr/bin/env python3
"""Train the default class-conditional DiT (diffusers DiTTransformer2DModel) on 16x16 sklearn digits.

Objective: rectified flow / flow matching.  t ~ U(0,1), eps ~ N(0,I),
  x_t = (1 - t) * x0 + t * eps,   target v = eps - x0,   model timestep = t * 1000
(the convention of diffusers' FlowMatchEulerDiscreteScheduler, which passes sigma * num_train_timesteps and steps
 x <- x + (sigma_next - sigma) * v).
Classes: num_embeds_ada_norm=10. diffusers' AdaLayerNormZero builds LabelEmbedding(10, D, class_dropout_prob=0.1),
so every block's class table has 11 rows and row 10 is the null / unconditional class (used for CFG).
The built-in dropout draws independently in each block, so this script disables it (dropout_prob=0 at train time,
the table size is unaffected) and instead replaces the label by 10 with probability --label-drop for the whole model.

Output (diffusers layout, in --out, default models/digits-dit):
  config.json, diffusion_pytorch_model.safetensors (EMA weights, f16 by default), scheduler_config.json
Usage: nice -n 19 .venv-ref/bin/python tools/train_digits_dit.py [--steps N] [--resume] [--export-only]
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

DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,  # D = 128
    in_channels=1,
    out_channels=1,  # no learned sigma
    num_layers=4,
    dropout=0.0,
    attention_bias=True,
    sample_size=16,
    patch_size=2,  # 8x8 = 64 tokens
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=10,
    upcast_attention=False,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    norm_eps=1e-5,
)

SCHED_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def build():
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
    model = DiTTransformer2DModel(**DIT_CONFIG)
    return model, FlowMatchEulerDiscreteScheduler(**SCHED_CONFIG)


def set_builtin_label_dropout(model, p):
    for blk in model.transformer_blocks:
        blk.norm1.emb.class_embedder.dropout_prob = p


def export(model, ema, sched, out, dtype):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(out, safe_serialization=True)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    sched.save_config(out)
    print(f"exported {sum(v.numel() for v in sd.values())} params ({dtype}) to {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--label-drop", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", default="/tmp/digits-dit-ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "digits-dit"))
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    model, sched = build()
    set_builtin_label_dropout(model, 0.0)
    print(f"DiTTransformer2DModel params: {sum(p.numel() for p in model.parameters())}")
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
    prog = Progress(a.steps)
    run = 0.0
    model.train()
    while step < a.steps:
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        x0 = random_shift(x_all[idx], gen)
        y = y_all[idx].clone()
        y[torch.rand(a.batch, generator=gen) < a.label_drop] = NULL_CLASS
        t = torch.rand(a.batch, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        pred = model(xt, timestep=t * 1000, class_labels=y).sample
        loss = F.mse_loss(pred, eps - x0)
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
