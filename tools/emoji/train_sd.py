#!/usr/bin/env python3
"""Train the emoji text-to-image model: a CLIP text encoder and a conditional U-Net on the VAE's latents.

The architecture is Stable Diffusion 1.x's, small: transformers' CLIPTextModel (the real CLIP BPE vocabulary of
49,408 tokens, hidden 48, 4 layers, 77 positions) and diffusers' UNet2DConditionModel (cross-attention on the
text hidden states) on the 16x16x4 latents of the f = 4 VAE from train_vae.py. Both are trained together from
scratch on the emoji renders of make_dataset.py; the result is saved as a StableDiffusionPipeline folder
(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) in f16.

Training (deterministic for --seed and --threads):
  - latents: the VAE posterior (mean, std) of each training image and of its mirror image, computed once;
    each step draws z = mean + std * eps, times the VAE's scaling_factor.
  - captions: the CLDR name ("red apple") with probability 0.7, else a shortcode alias ("apple") with 0.2 or
    the CLDR keywords joined by ", " with 0.1 (when the emoji has them); replaced by the empty prompt with
    probability --drop (classifier-free guidance, as SD's unconditional prompt is "").
  - items drawn with weight family_size^-0.5 (People & Body is 60 % of the images through skin tones).
  - objective: epsilon prediction on SD's DDPM schedule (scaled_linear, beta 0.00085 -> 0.012, 1000 steps),
    the loss weighted by min(SNR, 5) / SNR (Min-SNR weighting, Hang et al. 2023, arXiv:2303.09556).
  - AdamW (lr --lr, weight decay 0.01), linear warm-up + cosine decay to 10 %, grad-clip 1.0, EMA --ema of both
    networks (the exported weights).
Every --sample-every steps a grid of fixed prompts is drawn with the EMA weights (DPM-Solver++ 2M, 25 steps,
CFG 7.5: `diffuse generate`'s defaults for this folder) to --grid-prefix<step>.png, to watch training.

Run (2 cores; checkpoints every --ckpt-every steps, --resume continues):
  nohup .venv-ref/bin/python tools/emoji/train_sd.py --steps 2400 > /tmp/emoji-sd.log 2>&1 &
  .venv-ref/bin/python tools/emoji/train_sd.py --steps 2400 --export-only     # export the checkpoint again
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import DATA_DIR, family_weights, REPO, grid_image, load_dataset, split_indices, to_tensor, to_uint8  # noqa: E402
from digits_common import EMA, load_checkpoint, lr_at, save_checkpoint  # noqa: E402
from make_clip_tokenizer_fixture import DEFAULT_GZ, derive_tokenizer_folder  # noqa: E402

# SD 1.x's training schedule (diffusers' scheduler_config.json of the SD 1.5 pipeline, minus the PNDM fields)
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)

SAMPLE_PROMPTS = ["red apple", "cat face", "rocket", "smiling face with sunglasses", "pizza", "sun",
                  "grinning face", "dog face", "heart", "flag: japan", "ghost", "tree"]


def text_config():
    return dict(vocab_size=49408, hidden_size=48, intermediate_size=192, num_hidden_layers=4,
                num_attention_heads=3, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                projection_dim=48, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def unet_config():
    return dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=[64, 96],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=48, attention_head_dim=4,
                norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0)


def build(vae_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    unet = UNet2DConditionModel(**unet_config())
    text = CLIPTextModel(CLIPTextConfig(**text_config()))
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    return unet, text, vae


def caption_choices(item):
    aliases = [a.strip(":").replace("_", " ") for a in item.get("aliases", []) if a]
    aliases = [a.lower() for a in aliases if a and a.lower() != item["caption"]]
    kw = [k.lower() for k in item.get("keywords", []) if k]
    return item["caption"], aliases, kw


def draw_caption(item, gen):
    cap, aliases, kw = caption_choices(item)
    u = torch.rand((), generator=gen).item()
    if u < 0.7 or (not aliases and not kw):
        return cap
    if (u < 0.9 and aliases) or not kw:
        return aliases[torch.randint(len(aliases), (), generator=gen).item()] if aliases else cap
    return ", ".join(kw)


@torch.no_grad()
def encode_latents(vae, images_u8, batch=64):
    """Posterior mean and std of images and of their mirror images: [2N, 4, h, w] each (mirrors second)."""
    vae.eval()
    means, stds = [], []
    for flip in (False, True):
        for i in range(0, len(images_u8), batch):
            x = to_tensor(images_u8[i:i + batch])
            if flip:
                x = x.flip(-1)
            post = vae.encode(x).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def sd_pipeline(unet, vae, text, tokenizer, scheduler):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def default_scheduler():
    from diffusers import DPMSolverMultistepScheduler
    # trailing spacing: the first step starts at t = 999 (Lin et al. 2023, arXiv:2305.08891, table 2)
    return DPMSolverMultistepScheduler(**dict(SD_BETAS, timestep_spacing="trailing"), algorithm_type="dpmsolver++",
                                       solver_order=2, use_karras_sigmas=False)


@torch.no_grad()
def sample_grid(unet, vae, text, tokenizer, prompts, path, seed=0, steps=25, cfg=7.5):
    pipe = sd_pipeline(unet, vae, text, tokenizer, default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=cfg, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(seed)).images
    ims = (np.asarray(out) * 255).round().clip(0, 255).astype(np.uint8)
    rows = [list(ims[i:i + 6]) for i in range(0, len(ims), 6)]
    labels = [prompts[i:i + 6] for i in range(0, len(prompts), 6)]
    grid_image(rows, labels=labels, zoom=2, label_lines=2).save(path)


def save_f16(model, path):
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt"})
    return sum(v.numel() for v in sd.values())


def export(unet, text, vae, tok_dir, out):
    """A StableDiffusionPipeline folder: configs from save_pretrained, weights in f16, the real tokenizer."""
    from transformers import CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = sd_pipeline(unet, vae, text, tokenizer, default_scheduler())
    # what this writes is replaced; anything else in the folder (README.md, LICENSE) stays
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        os.makedirs(out, exist_ok=True)
        shutil.copy(os.path.join(tmp, "model_index.json"), out)
        for sub in ["unet", "vae", "text_encoder", "scheduler"]:
            os.makedirs(os.path.join(out, sub))
            for f in os.listdir(os.path.join(tmp, sub)):
                if f.endswith(".json"):
                    with open(os.path.join(tmp, sub, f)) as fh:
                        cfg = json.load(fh)
                    cfg.pop("_name_or_path", None)  # where a component was loaded from: a path of this machine
                    with open(os.path.join(out, sub, f), "w") as fh:
                        json.dump(cfg, fh, indent=2, sort_keys=True)
                        fh.write("\n")
    shutil.copytree(tok_dir, os.path.join(out, "tokenizer"))
    sizes = {}
    for sub, model, name in [("unet", unet, "diffusion_pytorch_model.safetensors"),
                             ("vae", vae, "diffusion_pytorch_model.safetensors"),
                             ("text_encoder", text, "model.safetensors")]:
        n = save_f16(model, os.path.join(out, sub, name))
        sizes[sub] = {"params": n, "bytes": os.path.getsize(os.path.join(out, sub, name))}
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"exported {out}: {json.dumps(sizes)}; {total / 1e6:.2f} MB in all", flush=True)
    return sizes, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--drop", type=float, default=0.1, help="caption dropout (the empty prompt)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=DATA_DIR)
    ap.add_argument("--vae", default=os.path.join(DATA_DIR, "vae-f4"))
    ap.add_argument("--merges", default=DEFAULT_GZ, help="OpenAI's CLIP merges list (bpe_simple_vocab_16e6.txt.gz)")
    ap.add_argument("--ckpt", default="/tmp/emoji-sd-ckpt.pt")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--sample-every", type=int, default=400)
    ap.add_argument("--grid-prefix", default="/tmp/emoji-sd-grid-")
    ap.add_argument("--out", default=os.path.join(REPO, "models", "emoji"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    tok_dir = os.path.join(tempfile.mkdtemp(prefix="emoji-tok-"), "tokenizer")
    derive_tokenizer_folder(a.merges, tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    unet, text, vae = build(a.vae)
    vae.requires_grad_(False)
    n_u = sum(p.numel() for p in unet.parameters())
    n_t = sum(p.numel() for p in text.parameters())
    print(f"UNet2DConditionModel {n_u} params, CLIPTextModel {n_t} params", flush=True)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)

    class Both(torch.nn.Module):  # one module so that EMA and checkpoints see both networks
        def __init__(self):
            super().__init__()
            self.unet, self.text = unet, text

    both = Both()
    ema = EMA(both, a.ema)
    gen = torch.Generator().manual_seed(a.seed)
    step, log = 0, {"train": [], "seconds": 0.0}
    if (a.resume or a.export_only) and os.path.exists(a.ckpt):
        step, log = load_checkpoint(a.ckpt, both, ema, opt, gen)
        print(f"resumed from {a.ckpt} at step {step} ({log['seconds']:.0f}s so far)", flush=True)

    images, items = load_dataset(a.data)
    tr = split_indices(items, "train")
    w = family_weights(items, tr)
    t0 = time.time()
    lat_mean, lat_std = encode_latents(vae, images[tr])
    print(f"latents of {len(tr)} images and their mirrors: {tuple(lat_mean.shape)} in {time.time() - t0:.0f}s",
          flush=True)
    scale = vae.config.scaling_factor
    sched = DDPMScheduler(**SD_BETAS)
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=5.0) / snr
    empty_ids = tokenize(tokenizer, [""])

    t_start = time.time() - log["seconds"]
    run_loss, n_run = 0.0, 0
    while step < a.steps and not a.export_only:
        unet.train()
        text.train()
        pick = torch.multinomial(w, a.batch, replacement=True, generator=gen)
        flip = (torch.rand(a.batch, generator=gen) < 0.5).long()
        rows = pick + flip * len(tr)
        eps_z = torch.randn((a.batch,) + tuple(lat_mean.shape[1:]), generator=gen)
        z0 = (lat_mean[rows] + lat_std[rows] * eps_z) * scale
        caps = [draw_caption(items[tr[i]], gen) for i in pick.tolist()]
        drop = torch.rand(a.batch, generator=gen) < a.drop
        ids = tokenize(tokenizer, caps)
        ids[drop] = empty_ids
        t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = sched.add_noise(z0, noise, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, warmup=200)
        states = text(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=states).sample
        per = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
        loss = (per * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(both)
        step += 1
        run_loss += per.mean().item()
        n_run += 1
        if step % 25 == 0:
            el = time.time() - t_start
            log["train"].append({"step": step, "seconds": round(el, 1), "mse": run_loss / n_run})
            print(f"step {step}/{a.steps} mse {run_loss / n_run:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"elapsed {el:.0f}s ({el / step:.2f}s/step)", flush=True)
            run_loss, n_run = 0.0, 0
        if step % a.ckpt_every == 0 or step == a.steps:
            log["seconds"] = time.time() - t_start
            save_checkpoint(a.ckpt, step, both, ema, opt, gen, log)
        if step % a.sample_every == 0 or step == a.steps:
            live = {k: v.clone() for k, v in both.state_dict().items()}
            both.load_state_dict(ema.shadow)
            unet.eval()
            text.eval()
            sample_grid(unet, vae, text, tokenizer, SAMPLE_PROMPTS, f"{a.grid_prefix}{step}.png")
            both.load_state_dict(live)
            print(f"  grid {a.grid_prefix}{step}.png", flush=True)

    both.load_state_dict(ema.shadow)
    unet.eval()
    text.eval()
    sizes, total = export(unet, text, vae, tok_dir, a.out)
    info = {"steps": step, "batch": a.batch, "lr": a.lr, "drop": a.drop, "ema": a.ema, "seed": a.seed,
            "threads": a.threads, "train_seconds": round(log["seconds"], 1), "unet_config": unet_config(),
            "text_config": text_config(), "sizes": sizes, "folder_bytes": total,
            "final_mse": log["train"][-1]["mse"] if log["train"] else None}
    with open("/tmp/emoji-sd-train.json", "w") as fh:
        json.dump({**info, "log": log["train"]}, fh, indent=1)
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
