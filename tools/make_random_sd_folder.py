#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes a Stable Diffusion 1.5-architecture StableDiffusionPipeline folder with random weights, for measuring
memory and speed at the real size where the published checkpoint cannot be downloaded (nothing it generates is
meant to look like anything).

    .venv-ref/bin/python tools/make_random_sd_folder.py OUT_DIR [--dtype f16|f32]

unet/ (SD 1.5's config: 859,520,964 parameters), vae/ (83,653,863), text_encoder/ (CLIP ViT-L/14 text,
123,060,480), tokenizer/ (the real CLIP vocabulary, derived from ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz),
scheduler/ (SD 1.5's PNDMScheduler config), model_index.json as save_pretrained writes it. Weights are
diffusers' / transformers' default initialisation with torch.manual_seed(0), stored as F16 (default) or F32.
"""
import argparse
import gzip
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd_pipeline_fixtures as msp  # noqa: E402
import make_unet_condition_fixtures as muc  # noqa: E402
import make_vae_fixtures as mvf  # noqa: E402

SCHEDULER = dict(msp.SD15_SCHEDULER, _class_name="PNDMScheduler")
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)


def write_real_tokenizer(folder):
    with gzip.open(msp.MERGES_GZ, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    chars = list(msp.bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    for name, content in [("tokenizer_config.json", msp.TOKENIZER_CONFIG), ("special_tokens_map.json", msp.SPECIAL_TOKENS)]:
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=2)


@torch.no_grad()
def main():
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    a = ap.parse_args()
    torch.manual_seed(0)
    dtype = torch.float16 if a.dtype == "f16" else torch.float32
    unet = UNet2DConditionModel(**muc.SD15).to(dtype)
    vae = AutoencoderKL(**mvf.SD_VAE).to(dtype)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype)
    write_real_tokenizer(os.path.join(a.out, "tokenizer"))
    tok = CLIPTokenizer.from_pretrained(os.path.join(a.out, "tokenizer"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=PNDMScheduler.from_config(SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(a.out, safe_serialization=True)
    write_real_tokenizer(os.path.join(a.out, "tokenizer"))  # vocab.json + merges.txt as the published folders have
    print(f"wrote {a.out}: unet {sum(p.numel() for p in unet.parameters()):,}, vae "
          f"{sum(p.numel() for p in vae.parameters()):,}, text encoder {sum(p.numel() for p in te.parameters()):,} "
          f"parameters ({a.dtype})")


if __name__ == "__main__":
    main()
