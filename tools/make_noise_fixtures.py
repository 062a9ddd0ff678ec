#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/noise/: torch's CPU noise and A1111's Philox noise, for tests/core/random_test.cpp.

Run with the reference venv (torch is never needed at test time):

    .venv-ref/bin/python tools/make_noise_fixtures.py

Files (all little-endian, row-major):
  randn_sizes_seed<S>.f32   torch.manual_seed(S); torch.randn(n) for n = 1..100, reseeded before
                            each n, concatenated (5050 floats)
  randn_1x4x64x64_seed<S>.f32, randn_2x4x128x128_seed0.f32   torch.randn(shape) after manual_seed
  randn_f16_sizes_seed0.u16 / randn_bf16_sizes_seed0.u16   as randn_sizes, dtype float16/bfloat16
  randn_f16_1x4x64x64_seed0.u16   torch.randn((1,4,64,64), dtype=torch.float16)
  torch_state_*.bin         torch.get_rng_state() after known draws (5056-byte CPUGeneratorImplState)
  noise.json                manifest: torch version, MT19937 words (numpy RandomState, the same
                            engine), multi-call sequences (float32 bits), Philox values (float32
                            bits) from a numpy re-implementation of A1111's modules/rng_philox.py.
"""
import json
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "noise")
SEEDS = [0, 1, 42, 2**32 + 5, 123456789]


def bits(t):
    return [int(v) for v in t.contiguous().view(-1).numpy().view(np.uint32)]


def write(name, array):
    path = os.path.join(OUT, name)
    np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tofile(path)
    return os.path.getsize(path)


# ---- Philox4x32-10 as A1111 (written from its published algorithm, models.md section 8) ----
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
INV = np.array([2.3283064e-10], dtype=np.float32)
INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def philox_randn(seed, offset, n):
    c0 = np.full(n, offset, dtype=np.uint32)
    c1 = np.zeros(n, dtype=np.uint32)
    c2 = np.arange(n, dtype=np.uint32)
    c3 = np.zeros(n, dtype=np.uint32)
    k0 = np.full(n, seed & 0xFFFFFFFF, dtype=np.uint32)
    k1 = np.full(n, (seed >> 32) & 0xFFFFFFFF, dtype=np.uint32)
    for r in range(10):
        if r:
            k0 = k0 + np.uint32(W0)
            k1 = k1 + np.uint32(W1)
        p0 = c0.astype(np.uint64) * np.uint64(M0)
        p1 = c2.astype(np.uint64) * np.uint64(M1)
        hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    # numpy promotes uint32 x float32 to float64: the transform runs in double.
    u = c0 * INV + INV / 2
    v = c1 * INV_2PI + INV_2PI / 2
    assert u.dtype == np.float64
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for s in SEEDS:
        chunks = []
        for n in range(1, 101):
            torch.manual_seed(s)
            chunks.append(torch.randn(n).numpy())
        total += write(f"randn_sizes_seed{s}.f32", np.concatenate(chunks))
    for s in [0, 42]:
        torch.manual_seed(s)
        total += write(f"randn_1x4x64x64_seed{s}.f32", torch.randn(1, 4, 64, 64).numpy())
    torch.manual_seed(0)
    total += write("randn_2x4x128x128_seed0.f32", torch.randn(2, 4, 128, 128).numpy())
    for dt, tag in [(torch.float16, "f16"), (torch.bfloat16, "bf16")]:
        chunks = []
        for n in range(1, 101):
            torch.manual_seed(0)
            chunks.append(torch.randn(n, dtype=dt).view(torch.int16).numpy().view(np.uint16))
        total += write(f"randn_{tag}_sizes_seed0.u16", np.concatenate(chunks))
    torch.manual_seed(0)
    total += write("randn_f16_1x4x64x64_seed0.u16",
                   torch.randn(1, 4, 64, 64, dtype=torch.float16).view(torch.int16).numpy().view(np.uint16))

    # torch.get_rng_state() bytes: after randn(3) (a cached normal pending) and mid-cycle.
    torch.manual_seed(0)
    torch.randn(3)
    total += write("torch_state_seed0_randn3.bin", torch.get_rng_state().numpy())
    torch.manual_seed(42)
    torch.randn(700)
    torch.randn(16)
    total += write("torch_state_seed42_randn700_16.bin", torch.get_rng_state().numpy())

    # Calls in a row: the generator (and its cached double normal) carries over.
    sequences = []
    for seed, sizes in [(0, [3, 20]), (0, [1, 1, 1, 1]), (0, [3, 1, 16]), (42, [5, 1, 16, 7, 33, 2, 1]),
                        (1, [17, 15, 1, 100, 9, 9]), (123456789, [31, 2, 64, 1, 1])]:
        torch.manual_seed(seed)
        sequences.append({"seed": seed, "sizes": sizes, "bits": [bits(torch.randn(n)) for n in sizes]})
    # Explicit torch.Generator objects, and the list-of-generators batch form of diffusers.
    g = torch.Generator().manual_seed(7)
    gen_calls = {"seed": 7, "sizes": [2, 40], "bits": [bits(torch.randn(n, generator=g)) for n in [2, 40]]}
    batch = [bits(torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(100 + b))) for b in range(2)]

    # MT19937 words: numpy's RandomState is the same engine with the same init_genrand.
    words = {}
    for s in [0, 1, 42, 5, 123456789]:
        words[str(s)] = [int(w) for w in np.random.RandomState(s).randint(0, 2**32, size=1300, dtype=np.uint64)]
        # randint over the full 32-bit range takes raw words; check one against the known value
    assert words["0"][0] == 2357136044

    philox = []
    for seed, calls in [(0, [12]), (0, [5, 5, 3]), (42, [16, 100]), (2**32 + 7, [8]), (123456789, [1000])]:
        philox.append({"seed": seed, "sizes": calls,
                       "bits": [[int(b) for b in philox_randn(seed, off, n).view(np.uint32)] for off, n in enumerate(calls)]})
    # A1111's docstring: Generator(seed=0).randn(shape=(3, 4)). These are torch CUDA's float32
    # values; A1111's float64 transform is within 3 float32 ulp of them, not bit-identical.
    a1111_doc = [-0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564,
                 -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497]
    assert np.allclose(philox_randn(0, 0, 12), a1111_doc, rtol=0, atol=3e-7), philox_randn(0, 0, 12)

    manifest = {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seeds": SEEDS,
        "sequences": sequences,
        "generator_calls": gen_calls,
        "batch_list_of_generators": {"seeds": [100, 101], "shape": [1, 4, 4, 4], "bits": batch},
        "mt19937_words": words,
        "philox": philox,
        "a1111_docstring_seed0_3x4": a1111_doc,
    }
    with open(os.path.join(OUT, "noise.json"), "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
    total += os.path.getsize(os.path.join(OUT, "noise.json"))
    print(f"wrote {OUT} ({total / 1024:.0f} KiB), torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
