#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/models/<case>/: small UNet2DModel and DiTTransformer2DModel networks with seeded random
weights and diffusers' forward output on a fixed input, for the C++ parity tests (tests/models/), plus weight
*recipes* for the full-size google/ddpm-cifar10-32, ddpm-256 (cat / celebahq), DiT-S/2 and DiT-B/2 shapes (too
large to commit).

Run with the reference venv (torch is never needed at test time):

    .venv-ref/bin/python tools/make_network_fixtures.py            # everything
    .venv-ref/bin/python tools/make_network_fixtures.py unet2d_basic dit_learned_sigma   # some cases

    .venv-ref/bin/python tools/make_network_fixtures.py --torch-f64   # only cases.json's torch_f32_vs_f64

Layout and the meaning of every case: tests/data/models/README.md (CASES below is the source of truth).

torch's own float32 error. Every case also records in cases.json `torch_f32_vs_f64` = max |out32 - out64| /
max |out64| over the channels the C++ tests compare (the epsilon half of a learned-sigma DiT), where out32 is the
committed `output` and out64 the same model (the same float32 weights, upcast) and inputs run in float64. The
parity tests bound the C++ error at a stated multiple of it. `--torch-f64` computes only that figure for the
committed fixtures (and the shipped digits models' forward.safetensors) and rewrites nothing else.

Weights. diffusers' default init leaves many tensors zero (adaLN-Zero, zero-initialised output convs), which would
hide bugs, so every parameter is overwritten, in state_dict order, from one generator per case:
    g = torch.Generator().manual_seed(seed)
    for name, p in params: p = torch.randn(p.shape, generator=g) * std + mean          (float32)
with (mean, std) from init_stats(): weights N(0, 1/fan_in), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2),
embedding tables N(0, 0.5^2). Recipes store exactly this list (name, shape, mean, std) and the seed; the C++ side
regenerates it with diffuse::TorchGenerator (tests/models/model_fixture.hpp).
"""
import json
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "models")

# ---------------------------------------------------------------------------------------------------------------
# Cases. "inputs": size (H, W), one timestep per batch item, class labels (None = unconditional).

UNET_BASIC = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=None, norm_num_groups=4)

UNET_CASES = {
    "unet2d_basic": dict(
        config=UNET_BASIC, size=(16, 16), timesteps=[999.0, 37.25], labels=None,
        covers="DownBlock2D, AttnDownBlock2D, AttnUpBlock2D, UpBlock2D; layers_per_block 1; attention_head_dim null "
               "(one head of 16); mid block with attention (default); positional time embedding, flip_sin_to_cos true, "
               "freq_shift 0; downsample_padding 1; norm_eps 1e-5; native size"),
    "unet2d_cifar_like": dict(
        config=dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[8, 8, 16],
                    layers_per_block=2, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
                    norm_num_groups=4, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6),
        size=(16, 24), timesteps=[0.0, 512.5], labels=None,
        covers="the ddpm-cifar10 layout in small: layers_per_block 2, attention in the middle level only, "
               "downsample_padding 0 (zero pad right/bottom), flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6; "
               "non-square 16x24 input (config sample_size 16); timestep 0"),
    "unet2d_multihead_class": dict(
        config=dict(sample_size=16, in_channels=2, out_channels=3, block_out_channels=[8, 16], layers_per_block=2,
                    down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], attention_head_dim=4, norm_num_groups=4,
                    attn_norm_num_groups=2, num_class_embeds=10, resnet_time_scale_shift="scale_shift",
                    mid_block_scale_factor=1.4142135, center_input_sample=True, norm_eps=1e-5),
        size=(8, 8), timesteps=[250.75, 3.0], labels=[7, 0],
        covers="attention_head_dim 4 (2 heads at 8 channels, 4 at 16); attention in every level incl. the first "
               "and the last up block; num_class_embeds 10 (nn.Embedding class conditioning); resnet_time_scale_shift "
               "scale_shift (time_emb_proj -> 2*out, norm2*(1+scale)+shift); attn_norm_num_groups 2 (mid attention "
               "GroupNorm with 2 groups; the block attentions use norm_num_groups 4); mid_block_scale_factor 1.4142135 (mid resnets and attention divide by it); "
               "center_input_sample (x = 2x-1); in_channels 2 != out_channels 3; 8x8 input on sample_size 16"),
    "unet2d_timestep_class": dict(
        config=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
                    down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
                    attention_head_dim=8, norm_num_groups=4, resnet_time_scale_shift="scale_shift",
                    class_embed_type="timestep", time_embedding_dim=24, freq_shift=1, downsample_padding=0),
        size=(16, 8), timesteps=[999.0, 0.125], labels=[5, 999],
        covers="class_embed_type timestep (labels through the sinusoidal time_proj, then class_embedding.linear_1/2); "
               "scale_shift with attn_norm_num_groups null: the mid attention has NO group_norm (diffusers passes "
               "norm_num_groups None when resnet_time_scale_shift != default); time_embedding_dim 24 (not 4*C0); mid attention 2 heads of 8; "
               "no attention in down/up blocks; norm_num_groups 4; non-square 16x8"),
    "unet2d_fourier_noattn": dict(
        config=dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
                    down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                    attention_head_dim=8, norm_num_groups=4, add_attention=False, time_embedding_type="fourier"),
        size=(16, 16), timesteps=[0.5, 80.0], labels=None,
        covers="time_embedding_type fourier (GaussianFourierProjection: log(t), time_proj.weight, sin then cos; "
               "the output is divided by t); add_attention false (mid block = resnet, resnet); timesteps are "
               "sigmas > 0"),
    "unet2d_learned_nomid": dict(
        config=dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                    down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"],
                    attention_head_dim=None, norm_num_groups=4, mid_block_type=None, time_embedding_type="learned",
                    num_train_timesteps=100),
        size=(16, 16), timesteps=[99.0, 4.0], labels=None,
        covers="time_embedding_type learned (time_proj = nn.Embedding(num_train_timesteps=100, C0); integer "
               "timesteps only); mid_block_type null (no mid block); attention in the first down and last up block; "
               "1 channel"),
}

DIT_SMALL = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                 sample_size=8, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=10,
                 norm_type="ada_norm_zero", norm_elementwise_affine=False)

DIT_CASES = {
    "dit_learned_sigma": dict(
        config=DIT_SMALL, size=8, timesteps=[999.0, 12.5], labels=[3, 10], tied=True,
        covers="learned sigma (out_channels 8 = 2*in 4; the C++ forward returns channels 0..3); patch 2, 2 layers, "
               "2 heads x 16; num_embeds_ada_norm 10 with the null class 10 among the labels; gelu-approximate; "
               "per-block t/y embedders identical (as in converted checkpoints)"),
    "dit_original_names": dict(
        config=DIT_SMALL, size=8, timesteps=[999.0, 12.5], labels=[3, 10], tied=True, original_of="dit_learned_sigma",
        covers="the dit_learned_sigma model saved with facebookresearch/DiT key names (x_embedder, t_embedder.mlp, "
               "y_embedder, pos_embed [1,N,D], blocks.i.attn.qkv, ..., final_layer) and a diffusers config.json; "
               "expected output = diffusers output of dit_learned_sigma"),
    "dit_flow": dict(
        config=dict(DIT_SMALL, num_attention_heads=4, attention_head_dim=8, out_channels=None, num_layers=3),
        size=8, timesteps=[960.0, 0.5], labels=[9, 0], tied=False,
        covers="flow-style: out_channels null (= in_channels 4, no learned sigma); 3 layers, 4 heads x 8; fractional "
               "timesteps; per-block t/y embedders DIFFERENT (diffusers computes each block's own conditioning; "
               "the final layer uses block 0's)"),
    "dit_patch4": dict(
        config=dict(DIT_SMALL, in_channels=3, out_channels=6, sample_size=16, patch_size=4, norm_eps=1e-6),
        size=16, timesteps=[500.0, 1.0], labels=[10, 1], tied=True,
        covers="patch_size 4 (tokens of 4*4*3 = 48 features), in 3 / out 6 (learned sigma), norm_eps 1e-6"),
    "dit_gelu_exact": dict(
        config=dict(DIT_SMALL, activation_fn="gelu", out_channels=None),
        size=8, timesteps=[100.0, 700.25], labels=[2, 10], tied=True,
        covers="activation_fn gelu (exact erf GELU instead of the tanh approximation)"),
    "dit_resized": dict(
        config=dict(DIT_SMALL, out_channels=None, sample_size=8),
        size=16, timesteps=[321.0, 999.0], labels=[4, 6], tied=True,
        covers="16x16 input on sample_size 8: diffusers recomputes the 2D sincos position embedding for the 8x8 "
               "token grid with base_size 4 (grid coordinates arange(8) / (8/4) = 0, 0.5, 1, ...)"),
}

# Full-size recipes: config + manifest (weights regenerated from the seed), io at batch 2
# (ddpm_256_recipe: batch 1).
CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    freq_shift=1, flip_sin_to_cos=False, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], block_out_channels=[128, 256, 256, 256],
    layers_per_block=2, mid_block_scale_factor=1, downsample_padding=0, act_fn="silu", attention_head_dim=None,
    norm_num_groups=32, norm_eps=1e-6)
# google/ddpm-cat-256 (and, per models.md section 2, believed ddpm-celebahq-256): six levels, attention at 16x16 only.
DDPM_256_CONFIG = dict(
    CIFAR10_CONFIG, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4)
# Key lists (name<TAB>shape) of the real architectures: the reference notes beside the repository
# (../shared/reference/keys from its root), or DIFFUSE_REFERENCE_KEYS.
REFERENCE_KEYS = os.environ.get("DIFFUSE_REFERENCE_KEYS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                                       "shared", "reference", "keys"))


def dit_config(hidden, layers, heads):
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4, out_channels=8,
                num_layers=layers, sample_size=32, patch_size=2, activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False)


RECIPES = {
    "ddpm_cifar10_recipe": dict(kind="unet", config=CIFAR10_CONFIG, size=(32, 32), timesteps=[999.0, 261.5],
                                labels=None, seed=20240601,
                                covers="google/ddpm-cifar10-32 configuration (35,746,307 parameters)"),
    # Batch 1 at 64x64 (not 256x256) to keep the forward cheap: the network is fully convolutional and 64 is a
    # multiple of its size multiple 32 (five downsamples); the attention level then runs at 4x4.
    "ddpm_256_recipe": dict(kind="unet", config=DDPM_256_CONFIG, size=(64, 64), timesteps=[617.5], labels=None,
                            seed=20240604, keys="ddpm_256_unet2d.txt",
                            covers="google/ddpm-cat-256 / ddpm-celebahq-256 configuration (113,673,219 parameters), "
                                   "batch 1 at 64x64"),
    "dit_s2_recipe": dict(kind="dit", config=dit_config(384, 12, 6), size=32, timesteps=[999.0, 261.5],
                          labels=[207, 1000], seed=20240602,
                          covers="DiT-S/2 shape: hidden 384, 12 layers, 6 heads, patch 2, 32x32x4 latents, learned sigma"),
    "dit_b2_recipe": dict(kind="dit", config=dit_config(768, 12, 12), size=32, timesteps=[999.0, 261.5],
                          labels=[207, 1000], seed=20240603,
                          covers="DiT-B/2 shape: hidden 768, 12 layers, 12 heads (benchmarks)"),
}

# ---------------------------------------------------------------------------------------------------------------


def f32(x):
    """x rounded to float32, as a Python float (so that JSON and torch agree on the exact value)."""
    return float(np.float32(x))


def init_stats(name, shape):
    """(mean, std) of the seeded init of parameter `name` (see the module docstring)."""
    if name.endswith("bias"):
        return 0.0, f32(0.05)
    if len(shape) == 1:
        if name == "time_proj.weight":  # GaussianFourierProjection frequencies
            return 0.0, 1.0
        return 1.0, f32(0.1)  # GroupNorm / LayerNorm weights
    if name == "time_proj.weight":  # learned time embedding table (nn.Embedding), feeds linear_1 like sin/cos
        return 0.0, 1.0
    if name == "class_embedding.weight" or name.endswith("embedding_table.weight"):  # class tables, added to temb
        return 0.0, f32(0.5)
    fan_in = int(np.prod(shape[1:]))
    return 0.0, f32(1.0 / np.sqrt(fan_in))


def param_list(model, tie_dit_embedders=False):
    """[(name, shape, mean, std)] in state_dict order (parameters only). With tie_dit_embedders, blocks 1.. reuse
    block 0's norm1.emb.* (they are left out of the list and copied)."""
    names = dict(model.named_parameters())
    out = []
    for name, t in model.state_dict().items():
        if name not in names:
            continue
        if tie_dit_embedders and ".norm1.emb." in name and not name.startswith("transformer_blocks.0."):
            continue
        mean, std = init_stats(name, list(t.shape))
        out.append((name, list(t.shape), mean, std))
    return out


def generate_each(plist, seed):
    """The recipe one parameter at a time: (name, tensor) in list order, from one generator (for models too large
    to hold their weights twice)."""
    g = torch.Generator().manual_seed(seed)
    for name, shape, mean, std in plist:
        yield name, torch.randn(shape, generator=g) * std + mean


def generate(plist, seed):
    """The recipe: one generator, successive randn calls in list order."""
    return dict(generate_each(plist, seed))


@torch.no_grad()
def load_weights(model, weights, tie_dit_embedders=False):
    sd = model.state_dict()
    for name, t in sd.items():
        src = name
        if name not in weights and tie_dit_embedders and ".norm1.emb." in name:
            src = "transformer_blocks.0." + name.split(".", 2)[2]
        if src in weights:
            t.copy_(weights[src])
    missing = [n for n, _ in model.named_parameters() if n not in weights and not (tie_dit_embedders and ".norm1.emb." in n)]
    assert not missing, missing


def make_model(kind, config):
    from diffusers import DiTTransformer2DModel, UNet2DModel

    torch.manual_seed(0)
    cls = UNet2DModel if kind == "unet" else DiTTransformer2DModel
    return cls(**config).eval()


def make_inputs(kind, model, size, timesteps, labels, seed):
    g = torch.Generator().manual_seed(seed + 1)
    h, w = (size, size) if isinstance(size, int) else size
    c = model.config.in_channels
    sample = torch.randn((len(timesteps), c, h, w), generator=g)
    t = torch.tensor(timesteps, dtype=torch.float32)
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return sample, t, y


@torch.no_grad()
def forward(kind, model, sample, t, y):
    if kind == "unet" and model.config.time_embedding_type == "learned":
        t = t.long()  # nn.Embedding lookup
    if kind == "unet":
        return model(sample, t, class_labels=y).sample.float()
    return model(sample, timestep=t, class_labels=y).sample.float()


def compared_channels(kind, config, out):
    """The channels the C++ forward returns: the epsilon half of a learned-sigma DiT, else all."""
    if kind == "dit" and config.out_channels and config.out_channels == 2 * config.in_channels:
        return out[:, : config.in_channels]
    return out


@torch.no_grad()
def torch_f32_vs_f64(kind, model, sample, t, y, out32):
    """max |out32 - out64| / max |out64| on the compared channels; out64 = `model` upcast to float64 (a copy) run
    on the float64 inputs. (diffusers still computes the sinusoidal time / position tables in float32 and casts
    them: that part is common to both and not measured.)"""
    import copy

    m64 = copy.deepcopy(model).double()
    if kind == "unet":  # class_embed_type "timestep" feeds time_proj's float32 table to a linear layer uncast
        m64.time_proj.register_forward_hook(lambda mod, inp, out: out.double())
    tt = t.long() if kind == "unet" and model.config.time_embedding_type == "learned" else t.double()
    if kind == "unet":
        out64 = m64(sample.double(), tt, class_labels=y).sample
    else:
        out64 = m64(sample.double(), timestep=tt, class_labels=y).sample
    a = compared_channels(kind, model.config, out32.double())
    b = compared_channels(kind, model.config, out64)
    return float((a - b).abs().max() / b.abs().max())


def save_io(path, sample, t, y, out):
    tensors = {"sample": sample.contiguous(), "timestep": t.contiguous(), "output": out.contiguous()}
    if y is not None:
        tensors["class_labels"] = y.contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def crc32_of(t):
    return zlib.crc32(np.ascontiguousarray(t.numpy(), dtype="<f4").tobytes())


def to_legacy_unet_names(sd):
    """to_q/to_k/to_v/to_out.0 of UNet attention blocks -> query/key/value/proj_attn (pre-0.14 diffusers files)."""
    out = {}
    for k, v in sd.items():
        if ".attentions." in k:
            k = (k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
                  .replace(".to_out.0.", ".proj_attn."))
        out[k] = v
    return out


def to_original_dit_names(sd, num_layers):
    """Inverse of diffusers' scripts/convert_dit_to_diffusers.py: diffusers DiT keys -> facebookresearch/DiT keys.
    The per-block embedder copies must be identical (the original has one embedder); q, k, v are concatenated
    along dim 0 into attn.qkv; the position embedding buffer becomes the `pos_embed` tensor [1, N, D]."""
    e = "transformer_blocks.0.norm1.emb."
    for i in range(1, num_layers):
        for k in sd:
            if k.startswith(f"transformer_blocks.{i}.norm1.emb."):
                assert torch.equal(sd[k], sd[e + k.split("norm1.emb.", 1)[1]]), k
    o = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "t_embedder.mlp.0.weight": sd[e + "timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd[e + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd[e + "timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd[e + "timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": sd[e + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"], "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for i in range(num_layers):
        b, a = f"transformer_blocks.{i}.", f"blocks.{i}."
        for s in ("weight", "bias"):
            o[a + "attn.qkv." + s] = torch.cat([sd[b + f"attn1.to_{c}.{s}"] for c in "qkv"], dim=0)
            o[a + "attn.proj." + s] = sd[b + "attn1.to_out.0." + s]
            o[a + "mlp.fc1." + s] = sd[b + "ff.net.0.proj." + s]
            o[a + "mlp.fc2." + s] = sd[b + "ff.net.2." + s]
            o[a + "adaLN_modulation.1." + s] = sd[b + "norm1.linear." + s]
    return o


def from_original_dit_names(o, num_layers):
    """diffusers' convert script, as written there (used to check the inverse above)."""
    sd = {"pos_embed.proj.weight": o["x_embedder.proj.weight"], "pos_embed.proj.bias": o["x_embedder.proj.bias"],
          "proj_out_1.weight": o["final_layer.adaLN_modulation.1.weight"],
          "proj_out_1.bias": o["final_layer.adaLN_modulation.1.bias"],
          "proj_out_2.weight": o["final_layer.linear.weight"], "proj_out_2.bias": o["final_layer.linear.bias"]}
    for i in range(num_layers):
        b, a = f"transformer_blocks.{i}.", f"blocks.{i}."
        sd[b + "norm1.emb.timestep_embedder.linear_1.weight"] = o["t_embedder.mlp.0.weight"]
        sd[b + "norm1.emb.timestep_embedder.linear_1.bias"] = o["t_embedder.mlp.0.bias"]
        sd[b + "norm1.emb.timestep_embedder.linear_2.weight"] = o["t_embedder.mlp.2.weight"]
        sd[b + "norm1.emb.timestep_embedder.linear_2.bias"] = o["t_embedder.mlp.2.bias"]
        sd[b + "norm1.emb.class_embedder.embedding_table.weight"] = o["y_embedder.embedding_table.weight"]
        sd[b + "norm1.linear.weight"] = o[a + "adaLN_modulation.1.weight"]
        sd[b + "norm1.linear.bias"] = o[a + "adaLN_modulation.1.bias"]
        for s in ("weight", "bias"):
            q, k, v = torch.chunk(o[a + "attn.qkv." + s], 3, dim=0)
            sd[b + "attn1.to_q." + s], sd[b + "attn1.to_k." + s], sd[b + "attn1.to_v." + s] = q, k, v
            sd[b + "attn1.to_out.0." + s] = o[a + "attn.proj." + s]
            sd[b + "ff.net.0.proj." + s] = o[a + "mlp.fc1." + s]
            sd[b + "ff.net.2." + s] = o[a + "mlp.fc2." + s]
    return sd


def save_folder(model, folder, weights=None, dtype=None):
    """config.json via save_pretrained; the weights file replaced by `weights` (a state dict) if given."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if weights is not None or dtype is not None:
        sd = weights if weights is not None else {k: v for k, v in model.state_dict().items()}
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt"})


def reload_output(kind, folder, sample, t, y):
    """Loads `folder` with diffusers (f32) and runs it: proves the written files mean what we say."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    cls = UNet2DModel if kind == "unet" else DiTTransformer2DModel
    m = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return forward(kind, m, sample, t, y)


def build_case(name, spec, kind, seed):
    model = make_model(kind, spec["config"])
    tie = kind == "dit" and spec.get("tied", False)
    weights = generate(param_list(model, tie), seed)
    load_weights(model, weights, tie)
    sample, t, y = make_inputs(kind, model, spec["size"], spec["timesteps"], spec["labels"], seed)
    return model, sample, t, y


def write_small(name, spec, kind, seed, summary):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    base = spec.get("original_of")
    model, sample, t, y = build_case(name, spec, kind, seed)
    out = forward(kind, model, sample, t, y)
    if base:  # same model as `base`, facebookresearch/DiT names
        sd = model.state_dict()
        orig = to_original_dit_names(sd, model.config.num_layers)
        back = from_original_dit_names(orig, model.config.num_layers)
        assert back.keys() == set(sd.keys()) and all(torch.equal(back[k], sd[k]) for k in sd)
        orig["pos_embed"] = model.pos_embed.pos_embed.detach().clone()  # [1, N, D] float32
        save_folder(model, folder, weights=orig)
    else:
        save_folder(model, folder)
        again = reload_output(kind, folder, sample, t, y)
        assert torch.equal(again, out), name
    save_io(os.path.join(folder, "io.safetensors"), sample, t, y, out)
    summary[name] = dict(kind=kind, seed=seed, covers=spec["covers"], output_std=float(out.std()),
                         torch_f32_vs_f64=torch_f32_vs_f64(kind, model, sample, t, y, out))
    return model, sample, t, y, out


def write_variants_of_unet_basic(model, sample, t, y, out, summary):
    # Legacy attention names (query/key/value/proj_attn): same model, same expected output.
    folder = os.path.join(OUT, "unet2d_legacy_names")
    shutil.rmtree(folder, ignore_errors=True)
    save_folder(model, folder, weights=to_legacy_unet_names(model.state_dict()))
    assert torch.equal(reload_output("unet", folder, sample, t, y), out)  # diffusers renames on load
    save_io(os.path.join(folder, "io.safetensors"), sample, t, y, out)
    summary["unet2d_legacy_names"] = dict(kind="unet", seed=summary["unet2d_basic"]["seed"],
                                          covers="unet2d_basic with legacy attention names query/key/value/proj_attn",
                                          torch_f32_vs_f64=summary["unet2d_basic"]["torch_f32_vs_f64"])
    # f16 / bf16 storage: the output is the f32 forward of the rounded weights.
    for dt, tag in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
        folder = os.path.join(OUT, f"unet2d_basic_{tag}")
        shutil.rmtree(folder, ignore_errors=True)
        save_folder(model, folder, dtype=dt)
        rounded = make_model("unet", UNET_BASIC)
        load_weights(rounded, {k: v.to(dt).float() for k, v in model.state_dict().items()})
        o = forward("unet", rounded, sample, t, y)
        assert torch.equal(reload_output("unet", folder, sample, t, y), o)
        save_io(os.path.join(folder, "io.safetensors"), sample, t, y, o)
        rel = float((o - out).abs().max() / out.abs().max())
        summary[f"unet2d_basic_{tag}"] = dict(
            kind="unet", seed=summary["unet2d_basic"]["seed"],
            covers=f"unet2d_basic weights stored as {tag}; output = f32 forward of the {tag}-rounded weights "
                   f"(differs from unet2d_basic's by max {rel:.1e} relative)",
            torch_f32_vs_f64=torch_f32_vs_f64("unet", rounded, sample, t, y, o))


def check_reference_keys(model, keys_file):
    """Asserts the model's state_dict holds exactly the tensors of the reference key list (names and shapes; the
    list is not in state_dict order) and its parameter count, when the reference file is available (it is not
    part of the repository)."""
    path = os.path.join(REFERENCE_KEYS, keys_file)
    if not os.path.exists(path):
        print(f"note: {path} not found, state_dict not checked against it")
        return
    want, total = {}, None
    for line in open(path):
        line = line.strip()
        if line.startswith("# tensors="):  # trailer: "# tensors=450 params=113673219"
            total = int(line.split("params=")[1])
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        assert key not in want, key
        want[key] = json.loads(shape)
    have = {k: list(v.shape) for k, v in model.state_dict().items()}
    diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
    assert not diff, (keys_file, [(k, have.get(k), want.get(k)) for k in diff[:10]])
    assert total is None or sum(int(np.prod(s)) for s in have.values()) == total, keys_file
    print(f"{keys_file}: {len(have)} tensors match (names and shapes)")


def write_recipe(name, spec, summary):
    kind = spec["kind"]
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    model = make_model(kind, spec["config"])
    if spec.get("keys"):
        check_reference_keys(model, spec["keys"])
    plist = param_list(model)
    weights = generate(plist, spec["seed"])
    load_weights(model, weights)
    sample, t, y = make_inputs(kind, model, spec["size"], spec["timesteps"], spec["labels"], spec["seed"])
    out = forward(kind, model, sample, t, y)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "config.json"), os.path.join(folder, "config.json"))
    params = []
    for pname, shape, mean, std in plist:
        w = weights[pname]
        params.append(dict(name=pname, shape=shape, mean=mean, std=std, crc32=crc32_of(w)))
    first, last = weights[plist[0][0]].reshape(-1), weights[plist[-1][0]].reshape(-1)
    all_crc = 0
    total = 0.0
    for pname, *_ in plist:
        arr = np.ascontiguousarray(weights[pname].numpy(), dtype="<f4")
        all_crc = zlib.crc32(arr.tobytes(), all_crc)
        total += float(arr.astype(np.float64).sum())
    manifest = dict(
        format="diffuse-weight-recipe-1",
        model=model.__class__.__name__,
        description=spec["covers"],
        generator="torch.Generator().manual_seed(seed); per parameter in order: "
                  "torch.randn(shape, generator=g) * std + mean (float32; std and mean are float32 values)",
        seed=spec["seed"],
        torch_version=torch.__version__,
        num_parameters=int(sum(np.prod(p["shape"]) for p in params)),
        checks=dict(
            first_param=plist[0][0], first_param_first=f32(first[0]), first_param_last=f32(first[-1]),
            last_param=plist[-1][0], last_param_first=f32(last[0]), last_param_last=f32(last[-1]),
            crc32_all=all_crc, sum_all=total),
        parameters=params,
    )
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    save_io(os.path.join(folder, "io.safetensors"), sample, t, y, out)
    summary[name] = dict(kind=kind, seed=spec["seed"], covers=spec["covers"], output_std=float(out.std()),
                         num_parameters=manifest["num_parameters"],
                         torch_f32_vs_f64=torch_f32_vs_f64(kind, model, sample, t, y, out))


def check_recipe_arithmetic():
    """torch's `randn * std + mean` is two float32 roundings (no fused multiply-add): what model_fixture.hpp does."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4099, generator=g)
    std, mean = f32(1 / np.sqrt(1152)), 1.0
    y = (x * std + mean).numpy()
    xn = x.numpy()
    ref = ((xn * np.float32(std)).astype(np.float32) + np.float32(mean)).astype(np.float32)
    assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))
    # Multi-call: the recipe's successive calls continue one stream (what TorchGenerator does).
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(3, generator=g), torch.randn(20, generator=g)
    torch.manual_seed(7)
    assert torch.equal(a, torch.randn(3)) and torch.equal(b, torch.randn(20))


def load_io(path):
    """(sample, t, y, output) of an io.safetensors / forward.safetensors (float labels become int64)."""
    io = load_file(path)
    y = io.get("class_labels")
    return io["sample"], io["timestep"], None if y is None else y.long(), io["output"]


def record_torch_f64(wanted, summary):
    """torch_f32_vs_f64 of the committed fixtures, rewriting nothing but cases.json. Rebuilds each case's
    float32 model (recipes from their seed, the others from their folder), reports whether this machine's torch
    reproduces the committed output bit for bit (informative: it depends on the CPU), and measures the
    committed output against the float64 forward."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    def record(name, kind, model, folder, io_name="io.safetensors"):
        sample, t, y, out = load_io(os.path.join(folder, io_name))
        here = forward(kind, model, sample, t, y)
        same = torch.equal(here, out)
        rel_here = float((here - out).abs().max() / out.abs().max())
        v = torch_f32_vs_f64(kind, model, sample, t, y, out)
        summary.setdefault(name, dict(kind=kind))["torch_f32_vs_f64"] = v
        print(f"{name:24s} torch f32 vs f64 {v:.3g}   (this machine's f32 forward vs committed: "
              f"{'identical' if same else f'{rel_here:.2g} relative'})")

    names = list(UNET_CASES) + ["unet2d_legacy_names", "unet2d_basic_f16", "unet2d_basic_bf16"] + list(DIT_CASES)
    for name in names:
        if wanted and name not in wanted:
            continue
        kind = "unet" if name.startswith("unet") else "dit"
        folder = os.path.join(OUT, name)
        src = os.path.join(OUT, DIT_CASES[name]["original_of"]) if name in DIT_CASES and DIT_CASES[name].get(
            "original_of") else folder  # the same model under the names diffusers reads
        cls = UNet2DModel if kind == "unet" else DiTTransformer2DModel
        model = cls.from_pretrained(src, torch_dtype=torch.float32).eval()  # f16/bf16 files: upcast, as the C++
        record(name, kind, model, folder)
    for name, spec in RECIPES.items():
        if wanted and name not in wanted:
            continue
        model = make_model(spec["kind"], spec["config"])
        load_weights(model, generate(param_list(model), spec["seed"]))
        record(name, spec["kind"], model, os.path.join(OUT, name))
        del model
    for name, kind, cls in (("digits-unet", "unet", UNet2DModel), ("digits-dit", "dit", DiTTransformer2DModel)):
        if wanted and name not in wanted:
            continue
        model = cls.from_pretrained(os.path.join(ROOT, "models", name), torch_dtype=torch.float32).eval()
        record(name, kind, model, os.path.join(OUT, name), "forward.safetensors")


def main(argv):
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    check_recipe_arithmetic()
    only_f64 = "--torch-f64" in argv
    wanted = set(a for a in argv if a != "--torch-f64")
    os.makedirs(OUT, exist_ok=True)
    summary_path = os.path.join(OUT, "cases.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    if only_f64:
        record_torch_f64(wanted, summary)
        with open(summary_path, "w") as f:
            json.dump(dict(sorted(summary.items())), f, indent=1)
            f.write("\n")
        return
    seed = 1000
    for name, spec in UNET_CASES.items():
        seed += 1
        if wanted and name not in wanted:
            continue
        res = write_small(name, spec, "unet", seed, summary)
        if name == "unet2d_basic":
            write_variants_of_unet_basic(*res, summary)
    seed = 2000
    for name, spec in DIT_CASES.items():
        seed += 1
        if wanted and name not in wanted:
            continue
        if spec.get("original_of"):  # same seed as the model it renames
            s = 2001 + list(DIT_CASES).index(spec["original_of"])
        else:
            s = seed
        write_small(name, spec, "dit", s, summary)
    for name, spec in RECIPES.items():
        if wanted and name not in wanted:
            continue
        write_recipe(name, spec, summary)
    summary = dict(sorted(summary.items()))
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    total = 0
    for name in summary:
        folder = os.path.join(OUT, name)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        total += size
        print(f"{name:28s} {size / 1024:8.1f} KiB  output std {summary[name].get('output_std', float('nan')):.3g}")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
