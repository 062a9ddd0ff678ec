#!/usr/bin/env python3
"""Measure the emoji model: does a prompt give the emoji it names?

The judge shares no weights with the generator: a nearest-neighbour classifier over the 3,793 renders of the
data set (make_dataset.py), in pixel space. An image is compared with every render after both are reduced to
32x32 (a 2x2 box filter, so that a one-pixel shift or fine texture matters less); distance is the mean squared
difference of RGB in [0, 1]. A generated image is "correct at k" when the family of the emoji its prompt names
(all skin tones of one emoji are one family) is among the families of its k nearest renders. Chance is about
k / 1,910 families.

Prompts: the CLDR name of one emoji per family (the one without a skin tone where there is one), for
--n-train families of the training split drawn with a fixed seed, and for every held-out family (their images
were never trained on, but their names' words often were: "held out" measures generalisation to a new
combination, which a model this small is not expected to do well). Baselines measured the same way:
  - the empty prompt (the unconditional model): how often the judge finds the asked-for family with no text;
  - the VAE's reconstruction of the named emoji's own render: the ceiling the latent space allows.
Generation: diffusers' StableDiffusionPipeline on the exported folder with its scheduler
(DPM-Solver++ 2M), --steps steps (25), CFG --cfg (7.5), seed = index, 64x64: the settings `diffuse generate` uses by default.

  .venv-ref/bin/python tools/emoji/judge.py [--model models/emoji] [--n-train 300] [--out /tmp/emoji-judge.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (DATA_DIR, REPO, grid_image, load_dataset, split_indices, to_tensor, to_uint8,  # noqa: E402
                    weights_sha256)


def features(images_u8):
    """uint8 [N,64,64,3] -> float32 [N, 32*32*3] in [0, 1] (2x2 box filter)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0
    return F.avg_pool2d(x, 2).flatten(1)


def family_ranks(query, bank, bank_families, want, ks=(1, 5, 10)):
    """For each query image: whether its wanted family is among the families of its k nearest bank images."""
    d = torch.cdist(query, bank) ** 2 / bank.shape[1]
    order = d.argsort(1)
    hits = {k: [] for k in ks}
    for i in range(len(query)):
        seen = []
        for j in order[i].tolist():
            f = bank_families[j]
            if f not in seen:
                seen.append(f)
            if len(seen) >= max(ks):
                break
        for k in ks:
            hits[k].append(want[i] in seen[:k])
    return {f"top{k}": float(np.mean(v)) for k, v in hits.items()}, order[:, 0].tolist()


def representatives(items, indices):
    """One item per family: the one with the fewest code points (no skin tone), ties by sequence."""
    best = {}
    for i in indices:
        it = items[i]
        key = (len(it["codepoints"]), it["seq"])
        if it["family"] not in best or key < best[it["family"]][0]:
            best[it["family"]] = (key, i)
    return [best[f][1] for f in sorted(best)]


@torch.no_grad()
def generate(pipe, prompts, steps, cfg, batch=25):
    out = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        # one generator per image, seeded by its index: the image of a prompt does not depend on the batching
        gens = [torch.Generator().manual_seed(s + i) for i in range(len(chunk))]
        ims = pipe(chunk, num_inference_steps=steps, guidance_scale=cfg, height=64, width=64, output_type="np",
                   generator=gens).images
        out.append((np.asarray(ims) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(REPO, "models", "emoji"))
    ap.add_argument("--data", default=DATA_DIR)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/emoji-judge.json")
    ap.add_argument("--grid", default="/tmp/emoji-judge.png")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    images, items = load_dataset(a.data)
    bank = features(images)
    fams = [it["family"] for it in items]
    tr, ho = split_indices(items, "train"), split_indices(items, "heldout")
    reps_tr = representatives(items, tr)
    rng = np.random.default_rng(0)
    pick_tr = sorted(rng.choice(len(reps_tr), size=min(a.n_train, len(reps_tr)), replace=False).tolist())
    sets = {"train": [reps_tr[i] for i in pick_tr], "heldout": representatives(items, ho)}

    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32)
    result = {"model": os.path.relpath(a.model, REPO), "steps": a.steps, "cfg": a.cfg,
              "families": len(set(fams)), "renders": len(items), "judge": "nearest renders, 32x32 RGB MSE"}
    grid_rows, grid_labels = [], []
    for name, idx in sets.items():
        prompts = [items[i]["caption"] for i in idx]
        want = [fams[i] for i in idx]
        t = time.time()
        gen = generate(pipe, prompts, a.steps, a.cfg)
        secs = time.time() - t
        acc, nearest = family_ranks(features(gen), bank, fams, want)
        unc = generate(pipe, [""] * len(idx), a.steps, a.cfg)
        acc_unc, _ = family_ranks(features(unc), bank, fams, want)
        rec = []
        for s in range(0, len(idx), 64):
            x = to_tensor(images[idx[s:s + 64]])
            rec.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
        acc_vae, _ = family_ranks(features(np.concatenate(rec)), bank, fams, want)
        result[name] = {"prompts": len(idx), "generated": acc, "empty_prompt": acc_unc, "vae_ceiling": acc_vae,
                        "chance_top1": 1.0 / len(set(fams)), "seconds_per_image": secs / len(idx)}
        print(name, json.dumps(result[name]), flush=True)
        if name == "train":  # a grid to look at: 8 generations, their nearest render, the emoji asked for
            for r in range(0, 24, 8):
                grid_rows += [list(gen[r:r + 8]), [images[nearest[j]] for j in range(r, r + 8)],
                              [images[idx[j]] for j in range(r, r + 8)]]
                grid_labels += [prompts[r:r + 8], [items[nearest[j]]["caption"] for j in range(r, r + 8)],
                                ["(asked)"] * 8]
    result["weights_sha256"] = weights_sha256(a.model)
    grid_image(grid_rows, labels=grid_labels, zoom=2, label_lines=2).save(a.grid)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result), flush=True)
    print(f"grid {a.grid} (rows: generated, nearest render, asked-for render)")


if __name__ == "__main__":
    main()
