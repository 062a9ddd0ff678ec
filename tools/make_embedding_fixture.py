# SPDX-License-Identifier: MIT
"""Writes tests/data/kernels/embeddings.json: diffusers' get_timestep_embedding and
get_2d_sincos_pos_embed on a few small configurations, for tests/kernels/ops_test.cpp.

Run with the reference environment:  .venv-ref/bin/python tools/make_embedding_fixture.py
Floats are stored as base64 of their little-endian f32 bytes, so the comparison is exact and the
file stays a few KB.
"""
import base64
import json
import pathlib

import numpy as np
import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding


def bits(t):
    a = np.ascontiguousarray(t.detach().to(torch.float32).numpy()).astype("<f4").reshape(-1)
    return base64.b64encode(a.tobytes()).decode("ascii")


def main():
    short = [0.0, 1.0, 17.0, 999.0, 0.5]
    timestep = []
    for dim, flip, shift, scale, max_period, ts in [(32, True, 0.0, 1.0, 10000, short),  # UNet2DModel style
                                                    (33, False, 1.0, 1.0, 10000, short),  # odd dim: zero pad
                                                    (256, True, 1.0, 1.0, 10000, [999.0, 0.5]),  # DiT
                                                    (16, False, 0.0, 1000.0, 10000, short),
                                                    (10, True, 1.0, 1.0, 100, short)]:
        t = torch.tensor(ts, dtype=torch.float32)
        e = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale,
                                   max_period=max_period)
        timestep.append({"dim": dim, "flip_sin_to_cos": flip, "downscale_freq_shift": shift, "scale": scale,
                         "max_period": max_period, "timesteps": ts, "out": bits(e)})
    pos = []
    for dim, gh, gw, base, interp in [(16, 4, 4, 16, 1.0), (8, 2, 3, 2, 1.0), (12, 3, 3, 16, 2.0), (64, 2, 2, 1, 1.0)]:
        e = get_2d_sincos_pos_embed(dim, (gh, gw), base_size=base, interpolation_scale=interp, output_type="pt")
        pos.append({"dim": dim, "grid_h": gh, "grid_w": gw, "base_size": base, "interpolation_scale": interp,
                    "out": bits(e)})
    out = {"timestep_embedding": timestep, "sincos_pos_embed_2d": pos}
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "kernels" / "embeddings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
