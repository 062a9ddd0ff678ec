#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/safetensors/python_written.safetensors with the reference `safetensors`
package (through torch, as diffusers does), and python_written.json beside it with what each
tensor must read back as: dtype, shape, the raw bytes (hex) and the float32 bit patterns
(as signed int32) of the values torch converts them to.

Run with the reference venv: .venv-ref/bin/python tools/make_safetensors_fixture.py
"""
import json
import pathlib

import safetensors
import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/data/safetensors"


def main():
    g = torch.Generator().manual_seed(1234)
    tensors = {
        "unet.conv_in.weight": torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float32),
        "unet.conv_in.bias": torch.tensor([0.5, -1.25, 3.0e-8, 65504.0], dtype=torch.float32),
        "half": torch.tensor([[1.0, -2.0, 0.1], [6.1e-5, 65504.0, -0.0]], dtype=torch.float16),
        "half_special": torch.tensor([float("inf"), float("-inf"), 5.96e-8, 1.0 / 3.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -3.140625, 1.0e30, 1.0e-30, 0.0078125], dtype=torch.bfloat16),
        "position_ids": torch.arange(77, dtype=torch.int64).reshape(1, 77) - 5,
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "mask": torch.tensor([True, False, True], dtype=torch.bool),
        "bytes": torch.tensor([0, 1, 254, 255], dtype=torch.uint8),
        "i32": torch.tensor([-2147483648, 2147483647, 0], dtype=torch.int32),
        "f8": torch.tensor([0.5, -448.0, 0.001953125], dtype=torch.float8_e4m3fn),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    path = OUT / "python_written.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})

    expected = {"safetensors_version": safetensors.__version__, "torch_version": torch.__version__,
                "metadata": {"format": "pt"}, "tensors": {}}
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        expected["tensors"][name] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "hex": raw.hex(),
            # float32 bit patterns (JSON has no inf/NaN), as torch converts each value
            "f32_bits": t.to(torch.float32).reshape(-1).view(torch.int32).tolist(),
        }
    (OUT / "python_written.json").write_text(json.dumps(expected, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
