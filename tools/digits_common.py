"""Shared helpers for the digits default models (tools/train_digits_*.py, tools/eval_digits.py).

Dataset: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" test set
(sklearn.datasets.load_digits: 1797 images, 8x8, integer values 0..16). It ships inside the scikit-learn
package, so no network is needed.

Preprocessing (must be identical for training and evaluation):
  x = img / 16                       # [0, 1]
  x = bilinear upsample 8x8 -> 16x16 (torch F.interpolate, align_corners=False, antialias=False)
  x = clamp(x, 0, 1) * 2 - 1          # [-1, 1], background = -1, 1 channel
"""
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
