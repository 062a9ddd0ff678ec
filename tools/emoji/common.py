"""Shared helpers for the emoji text-to-image model (tools/emoji/*.py).

The data set is written by tools/emoji/make_dataset.py into data/emoji/ (git-ignored):
  images_<S>.npy   uint8 [N, S, S, 3], RGB, the emoji composited on white
  meta.json        {"items": [...], "size": S, ...}; items[i] describes images[i]:
                   seq, codepoints, caption, name, aliases, keywords, group, subgroup, family, split
Model inputs use x = image / 127.5 - 1 (white background = +1), NCHW float32.
"""
import hashlib
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA_DIR = os.path.join(REPO, "data", "emoji")


def load_dataset(data_dir=DATA_DIR, size=64):
    """Returns (images uint8 [N,S,S,3], items list of dicts) as written by make_dataset.py."""
    images = np.load(os.path.join(data_dir, f"images_{size}.npy"))
    with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    items = meta["items"]
    assert images.shape[0] == len(items), (images.shape, len(items))
    return images, items


def split_indices(items, split):
    return np.array([i for i, it in enumerate(items) if it["split"] == split], dtype=np.int64)


def family_weights(items, indices):
    """Sampling weights of items[indices]: family_size^-0.5 (float64), so that the many skin-tone variants of
    one emoji count less (People & Body is 60 % of the images through skin tones)."""
    size = {}
    for i in indices:
        size[items[i]["family"]] = size.get(items[i]["family"], 0) + 1
    return torch.tensor([size[items[i]["family"]] ** -0.5 for i in indices], dtype=torch.float64)


def weights_sha256(folder):
    """sha256 over the .safetensors files under `folder` (walked in sorted order): which weights a figure or a
    fixture came from."""
    h = hashlib.sha256()
    for d, _, fs in sorted(os.walk(folder)):
        for f in sorted(fs):
            if f.endswith(".safetensors"):
                with open(os.path.join(d, f), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def to_tensor(images_u8):
    """uint8 [N,S,S,3] -> float32 [N,3,S,S] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x):
    """float [N,3,S,S] in [-1, 1] -> uint8 [N,S,S,3] (rounded, clamped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def psnr_u8(a, b):
    """Per-image PSNR (dB) between two uint8 [N,S,S,3] arrays."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = (d * d).reshape(d.shape[0], -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def grid_image(rows, labels=None, zoom=1, label_lines=0, pad=2):
    """rows: list of lists of uint8 [S,S,3] images -> PIL image, each tile enlarged `zoom` times (nearest),
    optionally with `label_lines` lines of text under each tile (labels: list of lists of strings)."""
    from PIL import Image, ImageDraw
    s = rows[0][0].shape[0] * zoom
    n_c = max(len(r) for r in rows)
    line_h = 11
    lh = label_lines * line_h
    chars = max(4, s // 6)
    g = Image.new("RGB", (n_c * (s + pad) + pad, len(rows) * (s + lh + pad) + pad), (190, 190, 190))
    d = ImageDraw.Draw(g)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            x0, y0 = pad + c * (s + pad), pad + r * (s + lh + pad)
            g.paste(Image.fromarray(im).resize((s, s), Image.NEAREST), (x0, y0))
            if labels is not None and label_lines:
                text = labels[r][c]
                for k in range(label_lines):
                    d.text((x0, y0 + s + k * line_h), text[k * chars:(k + 1) * chars], fill=(0, 0, 0))
    return g
