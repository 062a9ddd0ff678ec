#!/usr/bin/env python3
"""Train the emoji model's VAE: a small diffusers AutoencoderKL (4 latent channels) on the 64x64 emoji renders.

Data: data/emoji/ from tools/emoji/make_dataset.py (train split only; the held-out split is for measuring).
Model: AutoencoderKL, DownEncoderBlock2D / UpDecoderBlock2D, layers_per_block 1, norm_num_groups 16, mid-block
attention; --f 4: block_out_channels (32, 64, 64) -> 16x16x4 latents; --f 8: (32, 64, 64, 64) -> 8x8x4.
Loss (per image, summed over pixels as in the latent-diffusion autoencoder, then divided by the pixel count):
  |x - x^| + --grad-weight * (|dx(x) - dx(x^)| + |dy(x) - dy(x^)|) + --kl-weight * KL(q(z|x) || N(0, I))
with z sampled from the posterior. Batches draw items with weight family_size^-0.5 (the many skin-tone
variants of one emoji count less), horizontally flipped with probability 1/2. AdamW, warm-up + cosine decay,
grad-clip 1.0, EMA 0.999 (the exported weights). Deterministic for --seed; resumable (--resume) from --ckpt.

Every --eval-every steps and at the end: PSNR of the EMA model on the held-out split (posterior mode -> decode).
At the end: the latent scaling_factor = 1 / std of the training latents (posterior samples, fixed seed, as SD
computed 0.18215), written into config.json; export in diffusers layout (config.json +
diffusion_pytorch_model.safetensors in --dtype, default f16) to --out; the export is reloaded with
AutoencoderKL.from_pretrained and measured again (held-out and train PSNR, per group, worst items) into
<out>-metrics.json, with latent statistics for the diffusion stage; a reconstruction grid goes to --grid.

Run (2 cores shared: one thread, nice, in the background):
  nohup nice -n 10 .venv-ref/bin/python tools/emoji/train_vae.py --f 4 --steps 1200 > /tmp/emoji-vae-f4.log 2>&1 &
  .venv-ref/bin/python tools/emoji/train_vae.py --f 4 --steps 1200 --export-only   # export/measure the checkpoint
Measured at 1 thread on a shared machine (details in tools/emoji/README.md):
  --f 4 (chosen): 954,567 params, 1.93 MB f16, 1,200 steps in 2,398 s, held-out PSNR 23.04 dB,
                  scaling_factor 0.60872
  --f 8:          1,250,759 params, 2.52 MB f16, 900 steps in 1,845 s, held-out PSNR 19.22 dB,
                  scaling_factor 0.65845
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
sys.path.insert(0, os.path.dirname(HERE))
from common import DATA_DIR, family_weights, grid_image, load_dataset, psnr_u8, split_indices, to_tensor, to_uint8  # noqa: E402
from digits_common import EMA, load_checkpoint, lr_at, save_checkpoint  # noqa: E402

CHANNELS = {4: (32, 64, 64), 8: (32, 64, 64, 64)}


def vae_config(f):
    ch = CHANNELS[f]
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(ch),
                up_block_types=["UpDecoderBlock2D"] * len(ch), block_out_channels=list(ch), layers_per_block=1,
                act_fn="silu", latent_channels=4, norm_num_groups=16, sample_size=64, scaling_factor=1.0,
                force_upcast=False, mid_block_add_attention=True)


def build(f):
    from diffusers import AutoencoderKL
    return AutoencoderKL(**vae_config(f))


def image_grad(x):
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_loss(model, x, gen, grad_weight, kl_weight):
    post = model.encode(x).latent_dist
    eps = torch.randn(post.mean.shape, generator=gen)
    z = post.mean + post.std * eps
    y = model.decode(z).sample
    n_pix = x[0].numel()
    rec = (y - x).abs().flatten(1).sum(1)
    gx, gy = image_grad(x)
    hx, hy = image_grad(y)
    rec_g = (hx - gx).abs().flatten(1).sum(1) + (hy - gy).abs().flatten(1).sum(1)
    kl = 0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar).flatten(1).sum(1)
    loss = (rec + grad_weight * rec_g + kl_weight * kl).mean() / n_pix
    return loss, {"l1": (rec / n_pix).mean().item(), "kl_per_latent": (kl / post.mean[0].numel()).mean().item()}


@torch.no_grad()
def reconstruct(model, images_u8, batch=64):
    """uint8 [N,S,S,3] -> (reconstructions uint8 [N,S,S,3], latent means float32 [N,4,h,w]) via the posterior mode."""
    model.eval()
    outs, lats = [], []
    for i in range(0, len(images_u8), batch):
        x = to_tensor(images_u8[i:i + batch])
        z = model.encode(x).latent_dist.mode()
        outs.append(to_uint8(model.decode(z).sample))
        lats.append(z)
    return np.concatenate(outs), torch.cat(lats)


@torch.no_grad()
def latent_stats(model, images_u8, seed, batch=64):
    """Posterior samples of all images (fixed seed): overall std/mean and per-channel mean/std."""
    g = torch.Generator().manual_seed(seed)
    zs = []
    for i in range(0, len(images_u8), batch):
        post = model.encode(to_tensor(images_u8[i:i + batch])).latent_dist
        zs.append(post.mean + post.std * torch.randn(post.mean.shape, generator=g))
    z = torch.cat(zs).double()
    return {"std": z.std().item(), "mean": z.mean().item(),
            "channel_mean": z.mean((0, 2, 3)).tolist(), "channel_std": z.std((0, 2, 3)).tolist(),
            "shape": list(z.shape[1:])}


def export(model, ema, out, dtype, scaling_factor):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    model.load_state_dict(ema.shadow)
    model.register_to_config(scaling_factor=float(scaling_factor))
    model.save_pretrained(out, safe_serialization=True)  # config.json (+ f32 weights, replaced below)
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(out, "diffusion_pytorch_model.safetensors")
    save_file(sd, path, metadata={"format": "pt"})
    print(f"exported {sum(v.numel() for v in sd.values())} params ({dtype}) to {out}: "
          f"{os.path.getsize(path) / 1e6:.2f} MB")


def measure(out, images, items, seed, grid_path):
    """Reload the export with AutoencoderKL.from_pretrained (f32 compute) and measure it."""
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(out, torch_dtype=torch.float32)
    tr, ho = split_indices(items, "train"), split_indices(items, "heldout")
    t = time.time()
    rec_h, _ = reconstruct(vae, images[ho])
    t_h = time.time() - t
    p_h = psnr_u8(images[ho], rec_h)
    sub = tr[np.random.default_rng(seed).choice(len(tr), size=min(512, len(tr)), replace=False)]
    rec_t, _ = reconstruct(vae, images[sub])
    p_t = psnr_u8(images[sub], rec_t)
    groups = {}
    for j, i in enumerate(ho):
        groups.setdefault(items[i]["group"], []).append(float(p_h[j]))
    order = np.argsort(p_h)
    worst = [{"caption": items[ho[j]]["caption"], "group": items[ho[j]]["group"], "psnr": round(float(p_h[j]), 2)}
             for j in order[:8]]
    m = {"heldout_psnr_mean": float(p_h.mean()), "heldout_psnr_median": float(np.median(p_h)),
         "heldout_psnr_of_mean_mse": float(10 * np.log10(255 ** 2 / np.mean(
             (images[ho].astype(np.float64) - rec_h) ** 2))),
         "train_sample_psnr_mean": float(p_t.mean()), "n_heldout": int(len(ho)), "n_train_sample": int(len(sub)),
         "heldout_psnr_by_group": {g: round(float(np.mean(v)), 2) for g, v in sorted(groups.items())},
         "worst_heldout": worst, "reconstruct_seconds_per_image_1thread": t_h / len(ho),
         "scaling_factor": vae.config.scaling_factor}
    # grid: 4 pairs of rows (original / reconstruction) of held-out items spread over the PSNR range,
    # then a pair of rows with the 8 worst
    pick = order[np.linspace(0, len(order) - 1, 32).round().astype(int)][::-1]
    rows = []
    for r in range(0, 32, 8):
        rows.append([images[ho[j]] for j in pick[r:r + 8]])
        rows.append([rec_h[j] for j in pick[r:r + 8]])
    rows.append([images[ho[j]] for j in order[:8]])
    rows.append([rec_h[j] for j in order[:8]])
    grid_image(rows, zoom=2).save(grid_path)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--f", type=int, choices=sorted(CHANNELS), default=4, help="downsampling factor")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--grad-weight", type=float, default=0.5)
    ap.add_argument("--kl-weight", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=DATA_DIR)
    ap.add_argument("--ckpt", default=None, help="default /tmp/emoji-vae-f<F>-ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--out", default=None, help="default data/emoji/vae-f<F>")
    ap.add_argument("--grid", default=None, help="default /tmp/emoji-vae-f<F>-recon.png")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export and measure the EMA weights of --ckpt")
    a = ap.parse_args()
    a.ckpt = a.ckpt or f"/tmp/emoji-vae-f{a.f}-ckpt.pt"
    a.out = a.out or os.path.join(a.data, f"vae-f{a.f}")
    a.grid = a.grid or f"/tmp/emoji-vae-f{a.f}-recon.png"

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    model = build(a.f)
    n_params = sum(p.numel() for p in model.parameters())
    n_dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    print(f"AutoencoderKL f={a.f} {CHANNELS[a.f]}: {n_params} params (decoder {n_dec})", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    ema = EMA(model, 0.999)
    gen = torch.Generator().manual_seed(a.seed)
    step, log = 0, {"train": [], "eval": [], "seconds": 0.0}
    if (a.resume or a.export_only) and os.path.exists(a.ckpt):
        step, log = load_checkpoint(a.ckpt, model, ema, opt, gen)
        print(f"resumed from {a.ckpt} at step {step} ({log['seconds']:.0f}s of training so far)", flush=True)

    images, items = load_dataset(a.data)
    tr, ho = split_indices(items, "train"), split_indices(items, "heldout")
    w = family_weights(items, tr)
    x_train = to_tensor(images[tr])
    eval_model = build(a.f)

    def evaluate():
        eval_model.load_state_dict(ema.shadow)
        rec, _ = reconstruct(eval_model, images[ho])
        return float(psnr_u8(images[ho], rec).mean())

    t_start = time.time() - log["seconds"]
    run_l = {"loss": 0.0, "l1": 0.0, "kl_per_latent": 0.0}
    while step < a.steps and not a.export_only:
        model.train()
        idx = torch.multinomial(w, a.batch, replacement=True, generator=gen)
        x = x_train[idx]
        flip = torch.rand(a.batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, warmup=100)
        loss, parts = vae_loss(model, x, gen, a.grad_weight, a.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        run_l["loss"] += loss.item()
        for k, v in parts.items():
            run_l[k] += v
        if step % 25 == 0:
            el = time.time() - t_start
            rec = {k: v / 25 for k, v in run_l.items()}
            log["train"].append({"step": step, "seconds": round(el, 1), **rec})
            print(f"step {step}/{a.steps} loss {rec['loss']:.4f} l1 {rec['l1']:.4f} "
                  f"kl/latent {rec['kl_per_latent']:.2f} elapsed {el:.0f}s ({el / step:.2f}s/step)", flush=True)
            run_l = {k: 0.0 for k in run_l}
        if step % a.eval_every == 0 or step == a.steps:
            p = evaluate()
            log["eval"].append({"step": step, "seconds": round(time.time() - t_start, 1), "heldout_psnr": p})
            print(f"  eval step {step}: held-out PSNR (EMA) {p:.2f} dB", flush=True)
        if step % a.ckpt_every == 0 or step == a.steps:
            log["seconds"] = time.time() - t_start
            save_checkpoint(a.ckpt, step, model, ema, opt, gen, log)

    # scaling factor from the EMA model's training latents, then export, reload and measure
    eval_model.load_state_dict(ema.shadow)
    eval_model.eval()
    stats = latent_stats(eval_model, images[tr], a.seed)
    scaling = 1.0 / stats["std"]
    print(f"latents {stats['shape']}: std {stats['std']:.4f} mean {stats['mean']:.4f} -> scaling_factor "
          f"{scaling:.5f}; channel means {np.round(stats['channel_mean'], 3).tolist()} "
          f"stds {np.round(stats['channel_std'], 3).tolist()}", flush=True)
    export(model, ema, a.out, torch.float16 if a.dtype == "f16" else torch.float32, scaling)
    m = measure(a.out, images, items, a.seed, a.grid)
    m.update({"f": a.f, "block_out_channels": list(CHANNELS[a.f]), "params": n_params, "decoder_params": n_dec,
              "weights_bytes": os.path.getsize(os.path.join(a.out, "diffusion_pytorch_model.safetensors")),
              "steps": step, "batch": a.batch, "train_seconds_1thread": round(log["seconds"], 1),
              "kl_weight": a.kl_weight, "grad_weight": a.grad_weight, "lr": a.lr, "seed": a.seed,
              "latents": stats, "eval_log": log["eval"]})
    with open(a.out.rstrip("/") + "-metrics.json", "w") as fh:
        json.dump(m, fh, indent=1, ensure_ascii=False)
    print(json.dumps({k: v for k, v in m.items() if k not in ("eval_log", "latents")}, ensure_ascii=False))
    print(f"grid {a.grid}")


if __name__ == "__main__":
    main()
