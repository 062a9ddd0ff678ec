#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/models/clip_text_*/: small CLIPTextModel / CLIPTextModelWithProjection networks with seeded
random weights and transformers' outputs, for tests/models/clip_text_test.cpp.

    .venv-ref/bin/python tools/make_clip_text_fixtures.py

Each case folder holds config.json, model.safetensors (transformers 5.x names: CLIPTextModel without the
`text_model.` prefix, CLIPTextModelWithProjection with it), model_prefixed/ (the CLIPTextModel weights under
`text_model.`, as transformers 4.x saved them) and io.safetensors:
  input_ids [3, 77] (int64): 1, 20 and 75 content tokens between bos and eos, padded with the pad id;
  short_ids [2, 20]: unpadded sequences of 20 tokens (the encoder at a sequence length below 77);
  last_hidden_state [3, 77, D], hidden_skip2 [3, 77, D] (hidden_states[-2], no final norm),
  hidden_skip2_norm (the same through final_layer_norm), pooled [3, D], short_last_hidden_state [2, 20, D],
  short_pooled [2, D], and for the projection model text_embeds [3, P].
With --original-names (also run at the end of a full run), from the committed model.safetensors:
  clip_text_quick/sd1_single_file.safetensors: the weights as an SD 1.x single file holds them
  (`cond_stage_model.transformer.text_model.*`, with the `position_ids` buffer, and two tensors of other networks
  outside the prefix);
  clip_text_gelu_proj/open_clip.safetensors: as an OpenCLIP checkpoint under `cond_stage_model.model.` (the
  names of diffusers' convert_open_clip_checkpoint, read backwards): q/k/v fused row-wise into
  `attn.in_proj_weight` [3D, D] / `in_proj_bias`, `text_projection` [D, P] (transposed), `positional_embedding`,
  `logit_scale`, a 4th resblock beyond the config's 3 layers (SD 2.x files keep the layer diffusers drops), and
  a tensor of another network.
Weights: every parameter, in state_dict order, from torch.Generator().manual_seed(seed):
  p = randn(shape) * std + mean, (mean, std) = (0, 1/sqrt(fan_in)) for Linear weights, (0, 0.05) for biases,
  (1, 0.1) for LayerNorm weights, (0, 0.5) for embedding tables.
"""
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "models")

VOCAB = 1000
BOS, EOS = VOCAB - 2, VOCAB - 1

CASES = {
    "clip_text_quick": dict(
        cls=CLIPTextModel, seed=12001, pad=EOS,
        config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        covers="OpenAI ViT-L/14 layout in small: quick_gelu, legacy eos_token_id 2 (pooled at argmax of ids), pad = eos"),
    "clip_text_gelu_proj": dict(
        cls=CLIPTextModelWithProjection, seed=12002, pad=0,
        config=dict(vocab_size=VOCAB, hidden_size=40, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=5, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                    projection_dim=24, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0),
        covers="OpenCLIP ViT-bigG layout in small: gelu (erf), eos_token_id rule (first eos), pad id 0, "
               "text_projection (CLIPTextModelWithProjection)"),
}


def init_stats(name, shape):
    if name.endswith("embedding.weight"):
        return 0.0, 0.5
    if "layer_norm" in name or "final_layer_norm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
    if name.endswith("bias"):
        return 0.0, 0.05
    return 0.0, 1.0 / (shape[1] ** 0.5)


def seed_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean, std = init_stats(name, list(p.shape))
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)


def input_ids(gen, pad):
    rows = []
    for n in (1, 20, 75):
        content = torch.randint(0, VOCAB - 2, (n,), generator=gen).tolist()
        rows.append([BOS] + content + [EOS] + [pad] * (75 - n))
    return torch.tensor(rows, dtype=torch.int64)


def main():
    for name, case in CASES.items():
        torch.manual_seed(0)
        cfg = CLIPTextConfig(**case["config"])
        model = case["cls"](cfg).eval()
        seed_weights(model, case["seed"])
        gen = torch.Generator().manual_seed(case["seed"] + 1)
        ids = input_ids(gen, case["pad"])
        short = torch.tensor([[BOS] + torch.randint(0, VOCAB - 2, (18,), generator=gen).tolist() + [EOS]] * 2)
        short[1, 5] = EOS  # an eos inside the sequence: the eos_token_id rule takes the first one
        short[1, 6] = BOS
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            so = model(input_ids=short)
        tm = model.text_model if hasattr(model, "text_model") else model
        hidden = out.hidden_states
        io = {"input_ids": ids, "short_ids": short, "last_hidden_state": out.last_hidden_state,
              "hidden_skip2": hidden[-2], "hidden_skip2_norm": tm.final_layer_norm(hidden[-2]).detach(),
              "short_last_hidden_state": so.last_hidden_state}
        if case["cls"] is CLIPTextModelWithProjection:
            io["text_embeds"] = out.text_embeds
            io["short_text_embeds"] = so.text_embeds
            with torch.no_grad():
                io["pooled"] = tm(input_ids=ids).pooler_output
                io["short_pooled"] = tm(input_ids=short).pooler_output
        else:
            io["pooled"] = out.pooler_output
            io["short_pooled"] = so.pooler_output
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"))
        if case["cls"] is CLIPTextModel:
            sd = load_file(os.path.join(d, "model.safetensors"))
            assert not any(k.startswith("text_model.") for k in sd), list(sd)[:3]
            os.makedirs(os.path.join(d, "model_prefixed"))
            save_file({"text_model." + k: v for k, v in sd.items()}, os.path.join(d, "model_prefixed", "model.safetensors"))
            shutil.copy(os.path.join(d, "config.json"), os.path.join(d, "model_prefixed", "config.json"))
        keys = list(load_file(os.path.join(d, "model.safetensors")))
        print(name, sum(p.numel() for p in model.parameters()), "parameters;", keys[0], "...",
              "max|last|", float(out.last_hidden_state.abs().max()))


def write_original_names():
    torch.manual_seed(0)
    d = os.path.join(OUT, "clip_text_quick")
    sd = load_file(os.path.join(d, "model.safetensors"))
    out = {"cond_stage_model.transformer.text_model." + k: v for k, v in sd.items()}
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    out["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(4, 4, 3, 3)
    out["first_stage_model.decoder.conv_in.bias"] = torch.randn(4)
    save_file(out, os.path.join(d, "sd1_single_file.safetensors"))
    ref = os.path.join(ROOT, "..", "shared", "reference", "keys", "sd15_single_file.txt")
    if os.path.exists(ref):  # the names are those of a real SD 1.5 file (layer numbers aside)
        def pattern(k):
            return re.sub(r"layers\.\d+\.", "layers.N.", k)
        real = {pattern(line.split()[0]) for line in open(ref) if line.startswith("cond_stage_model.")}
        ours = {pattern(k) for k in out if k.startswith("cond_stage_model.") and not k.endswith("position_ids")}
        assert real == ours, (sorted(real ^ ours))

    d = os.path.join(OUT, "clip_text_gelu_proj")
    sd = load_file(os.path.join(d, "model.safetensors"))
    p, layers = "cond_stage_model.model.", 3
    tm = "text_model."
    out = {p + "token_embedding.weight": sd[tm + "embeddings.token_embedding.weight"],
           p + "positional_embedding": sd[tm + "embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd[tm + "final_layer_norm.weight"],
           p + "ln_final.bias": sd[tm + "final_layer_norm.bias"],
           p + "text_projection": sd["text_projection.weight"].T.contiguous(),
           p + "logit_scale": torch.tensor(4.6052)}
    leaf = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers + 1):
        src, dst = f"{tm}encoder.layers.{min(i, layers - 1)}.", f"{p}transformer.resblocks.{i}."
        extra = i == layers  # the layer beyond the config: any numbers of the right shapes
        take = (lambda t: torch.randn_like(t)) if extra else (lambda t: t)
        for a, b in leaf.items():
            for kind in ("weight", "bias"):
                out[dst + b + "." + kind] = take(sd[src + a + "." + kind])
        for kind in ("weight", "bias"):
            out[dst + "attn.in_proj_" + kind] = take(torch.cat([sd[src + f"self_attn.{x}_proj.{kind}"] for x in "qkv"]))
    out["model.diffusion_model.out.2.bias"] = torch.randn(4)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "open_clip.safetensors"))
    print("original names:", sorted(k for k in out if "resblocks.0." in k or "resblocks" not in k))


if __name__ == "__main__":
    import sys
    if "--original-names" not in sys.argv:
        main()
    write_original_names()
