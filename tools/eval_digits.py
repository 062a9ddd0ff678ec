#!/usr/bin/env python3
"""Quality check for the digits default models, plus the C++ parity fixtures.

1. Trains classifiers on the real 16x16 digits (same preprocessing as training: tools/digits_common.py) on a
   stratified 75/25 split and reports held-out accuracy (RBF SVM = the judge, logistic regression for reference).
2. Samples N images per model with diffusers' own schedulers (UNet: DDIMScheduler built from the model's DDPM
   scheduler_config, eta 0; DiT: FlowMatchEulerDiscreteScheduler from its scheduler_config), N/10 per class,
   with guidance scale 1 (plain conditional, no CFG) and with CFG (eps/v = u + s * (c - u), u = null class 10),
   and reports the judge's accuracy for the class asked.
3. Writes a 10 classes x 8 samples grid (CFG samples, x4 nearest) to docs/images/digits-<model>-grid.png.
4. Writes tests/data/models/digits-<model>/forward.safetensors (fixed inputs + diffusers f32 output).

Usage: .venv-ref/bin/python tools/eval_digits.py [--which unet,dit] [--unet-dir D] [--dit-dir D] [--n 200]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_common import load_digits_16, NULL_CLASS  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def train_judges():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    x, y = load_digits_16()
    X = x.reshape(len(x), -1).numpy()
    Y = y.numpy()
    xtr, xte, ytr, yte = train_test_split(X, Y, test_size=0.25, stratify=Y, random_state=0)
    svm = SVC(kernel="rbf", C=10.0, gamma="scale").fit(xtr, ytr)
    lr = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    acc = {"svm_heldout": float((svm.predict(xte) == yte).mean()), "logreg_heldout": float((lr.predict(xte) == yte).mean()),
           "n_train": int(len(ytr)), "n_test": int(len(yte))}
    return svm, lr, acc


@torch.no_grad()
def sample_unet(model_dir, labels, guidance, steps, seed):
    from diffusers import DDIMScheduler, UNet2DModel
    model = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    sched = DDIMScheduler.from_pretrained(model_dir)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    x = torch.randn((b, 1, 16, 16), generator=g)
    null = torch.full_like(labels, NULL_CLASS)
    for t in sched.timesteps:
        tt = t.expand(b)
        if guidance == 1.0:
            eps = model(x, tt, class_labels=labels).sample
        else:
            e = model(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, null])).sample
            ec, eu = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def sample_dit(model_dir, labels, guidance, steps, seed):
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
    model = DiTTransformer2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    x = torch.randn((b, 1, 16, 16), generator=g)
    null = torch.full_like(labels, NULL_CLASS)
    for t in sched.timesteps:
        tt = t.expand(b)
        if guidance == 1.0:
            v = model(x, timestep=tt, class_labels=labels).sample
        else:
            o = model(torch.cat([x, x]), timestep=torch.cat([tt, tt]), class_labels=torch.cat([labels, null])).sample
            vc, vu = o.chunk(2)
            v = vu + guidance * (vc - vu)
        x = sched.step(v, t, x).prev_sample
    return x.clamp(-1, 1)


def save_grid(x, path, per_class=8, scale=4, gap=2):
    from PIL import Image
    # x: [10*per_class, 1, 16, 16] ordered class-major
    img = ((x[:, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    c = 16 * scale
    W = per_class * c + (per_class + 1) * gap
    H = 10 * c + 11 * gap
    canvas = np.full((H, W), 128, np.uint8)
    for k in range(10):
        for j in range(per_class):
            tile = np.kron(img[k * per_class + j], np.ones((scale, scale), np.uint8))
            y0, x0 = gap + k * (c + gap), gap + j * (c + gap)
            canvas[y0:y0 + c, x0:x0 + c] = tile
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(canvas, "L").save(path, optimize=True)


@torch.no_grad()
def write_fixture(kind, model_dir, path):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(1234)
    sample = torch.randn((2, 1, 16, 16), generator=g)
    labels = torch.tensor([3, NULL_CLASS], dtype=torch.int64)
    if kind == "unet":
        from diffusers import UNet2DModel
        model = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        timestep = torch.tensor([999.0, 250.0])
        out = model(sample, timestep.long(), class_labels=labels).sample
    else:
        from diffusers import DiTTransformer2DModel
        model = DiTTransformer2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        timestep = torch.tensor([960.0, 250.5])
        out = model(sample, timestep=timestep, class_labels=labels).sample
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"sample": sample.contiguous(), "timestep": timestep.float().contiguous(),
               "class_labels": labels.float().contiguous(), "output": out.float().contiguous()}, path,
              metadata={"model": os.path.relpath(model_dir, ROOT), "dtype": "float32",
                        "note": "timestep and class_labels stored as float32 (integers); output = diffusers forward in f32 "
                                "of the shipped weights (f16 upcast to f32)"})
    print(f"wrote {path}: out mean {out.mean():.5f} std {out.std():.5f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="unet,dit")
    ap.add_argument("--unet-dir", default=os.path.join(ROOT, "models", "digits-unet"))
    ap.add_argument("--dit-dir", default=os.path.join(ROOT, "models", "digits-dit"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--unet-steps", type=int, default=50)
    ap.add_argument("--dit-steps", type=int, default=25)
    ap.add_argument("--cfg", default="1,2,3", help="guidance scales to evaluate (1 = no CFG)")
    ap.add_argument("--grid-cfg", type=float, default=2.0)
    ap.add_argument("--no-files", action="store_true", help="only print numbers (no grid/fixture)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    svm, lr, acc = train_judges()
    print(f"judge held-out accuracy: SVM {acc['svm_heldout']:.4f}, logreg {acc['logreg_heldout']:.4f} "
          f"(train {acc['n_train']}, test {acc['n_test']})")
    results = {"judge": acc}
    labels = torch.arange(10).repeat_interleave(a.n // 10)
    for kind in a.which.split(","):
        mdir = a.unet_dir if kind == "unet" else a.dit_dir
        steps = a.unet_steps if kind == "unet" else a.dit_steps
        fn = sample_unet if kind == "unet" else sample_dit
        res = {"steps": steps, "sampler": "DDIM eta=0" if kind == "unet" else "FlowMatchEuler"}
        for s in [float(v) for v in a.cfg.split(",")]:
            x = fn(mdir, labels, s, steps, seed=42)
            X = x.reshape(len(x), -1).numpy()
            a_svm = float((svm.predict(X) == labels.numpy()).mean())
            a_lr = float((lr.predict(X) == labels.numpy()).mean())
            res[f"cfg{s:g}"] = {"svm": a_svm, "logreg": a_lr}
            print(f"{kind} guidance {s:g} ({steps} steps, {len(labels)} samples): SVM acc {a_svm:.3f}, logreg acc {a_lr:.3f}",
                  flush=True)
        if not a.no_files:
            glabels = torch.arange(10).repeat_interleave(8)
            save_grid(fn(mdir, glabels, a.grid_cfg, steps, seed=7), os.path.join(ROOT, "docs", "images", f"digits-{kind}-grid.png"))
            write_fixture(kind, mdir, os.path.join(ROOT, "tests", "data", "models", f"digits-{kind}", "forward.safetensors"))
        results[kind] = res
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
