#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/f8_to_f32.json: every code (0..255) of each 8-bit float dtype decoded to
f32 by torch, as the f32 bit pattern. tests/core/convert_test.cpp checks diffuse::to_f32 against it.

Usage: .venv-ref/bin/python tools/make_f8_fixture.py [output]

Each code is converted both in one 256-element tensor and one element at a time; the script
stops if torch's two paths disagree, so that the fixture never records a path-dependent value.
"""
import json
import pathlib
import sys

import torch

DTYPES = {
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}


def f32_bits(t: torch.Tensor) -> list[int]:
    return [int(v) & 0xFFFFFFFF for v in t.to(torch.float32).view(torch.int32).tolist()]


def main() -> None:
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else (
        pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "f8_to_f32.json")
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    table = {}
    for name, dtype in DTYPES.items():
        bulk = f32_bits(codes.view(dtype))
        single = [f32_bits(codes[i:i + 1].view(dtype))[0] for i in range(256)]
        if bulk != single:
            diff = [i for i in range(256) if bulk[i] != single[i]]
            raise SystemExit(f"{name}: torch's bulk and single-element paths differ at codes {diff}")
        table[name] = bulk
    doc = {
        "generator": "tools/make_f8_fixture.py",
        "torch": torch.__version__,
        "format": "for each dtype, 256 entries: entry i is the f32 bit pattern torch decodes code i to",
        "codes": table,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
