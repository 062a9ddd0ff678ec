"""Shared helpers for the digits default models (tools/train_digits_*.py, tools/eval_digits.py).

Dataset: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" test set
(sklearn.datasets.load_digits: 1797 images, 8x8, integer values 0..16). It ships inside the scikit-learn
package, so no network is needed.

Preprocessing (must be identical for training and evaluation):
  x = img / 16                       # [0, 1]
  x = bilinear upsample 8x8 -> 16x16 (torch F.interpolate, align_corners=False, antialias=False)
  x = clamp(x, 0, 1) * 2 - 1          # [-1, 1], background = -1, 1 channel
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_digits_16(return_split=False):
    """Returns (images float32 [N,1,16,16] in [-1,1], labels int64 [N])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N,1,8,8]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0) * 2.0 - 1.0
    y = torch.from_numpy(d.target.astype(np.int64))
    return x.contiguous(), y


def random_shift(x, gen, max_shift=1):
    """Shift each image by an integer offset in [-max_shift, max_shift] on each axis (pad with -1 = background)."""
    b, c, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


class EMA:
    """Exponential moving average of parameters with the usual warm-up: decay_n = min(decay, (1+n)/(10+n))."""

    def __init__(self, model, decay=0.999):
        self.decay = decay
        self.n = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return {"decay": self.decay, "n": self.n, "shadow": self.shadow}

    def load_state_dict(self, s):
        self.decay, self.n, self.shadow = s["decay"], s["n"], s["shadow"]


def lr_at(step, total, base, warmup=200):
    """Linear warm-up then cosine decay to 10% of base."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, p))))


def save_checkpoint(path, step, model, ema, opt, gen, losses):
    tmp = path + ".tmp"
    torch.save({"step": step, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, ema, opt, gen):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    gen.set_state(ck["gen"])
    torch.set_rng_state(ck["torch_rng"])
    return ck["step"], ck["losses"]


class Progress:
    def __init__(self, total):
        self.total = total
        self.t0 = time.time()

    def line(self, step, loss):
        el = time.time() - self.t0
        return f"step {step}/{self.total} loss {loss:.4f} elapsed {el:.0f}s"


NULL_CLASS = 10  # the class label that means "unconditional" (classifier-free guidance) in both models


def export(model, ema, sched, out, dtype):
    """Writes the EMA weights in diffusers layout: config.json, diffusion_pytorch_model.safetensors (in `dtype`)
    and a top-level scheduler_config.json."""
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(out, safe_serialization=True)  # writes config.json (+ f32 weights, replaced below)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    sched.save_config(out)
    print(f"exported {sum(v.numel() for v in sd.values())} params ({dtype}) to {out}")


def run(name, build, objective, lr, label_drop, prepare=None):
    """The command line, setup and training loop both default models share.

    build() -> (model, scheduler); prepare(model) adjusts it before training (may be None);
    objective(x0, gen, scheduler) -> (x_t, timestep, target), drawing its own randomness from `gen`.
    Each step: a batch of shifted digits, labels replaced by NULL_CLASS with probability --label-drop,
    MSE between the model output and the target, AdamW with warm-up + cosine decay, grad-clip 1.0, EMA 0.999.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--label-drop", type=float, default=label_drop)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", default=f"/tmp/{name}-ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(here, "..", "models", name))
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export the EMA weights of --ckpt and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    model, sched = build()
    if prepare is not None:
        prepare(model)
    print(f"{type(model).__name__} params: {sum(p.numel() for p in model.parameters())}")
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
    running = 0.0
    model.train()
    while step < a.steps:
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        x0 = random_shift(x_all[idx], gen)
        y = y_all[idx].clone()
        y[torch.rand(a.batch, generator=gen) < a.label_drop] = NULL_CLASS
        xt, t, target = objective(x0, gen, sched)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        running += loss.item()
        if step % 100 == 0:
            losses.append((step, running / 100))
            print(prog.line(step, running / 100), flush=True)
            running = 0.0
        if step % a.ckpt_every == 0 or step == a.steps:
            save_checkpoint(a.ckpt, step, model, ema, opt, gen, losses)
    json.dump(losses, open(a.ckpt + ".losses.json", "w"))
    export(model, ema, sched, a.out, dtype)
