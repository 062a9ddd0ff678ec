#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the safetensors test corpus (standard library only).

tests/data/safetensors/malformed/*.safetensors: one file per way a safetensors file can be
broken; tests/io/safetensors_test.cpp asserts the specific error each one raises.
tests/data/safetensors/valid/*.safetensors: unusual but valid files (whitespace padding, empty
header, zero-sized tensors, unsorted JSON). Both directories also seed the fuzzer.

Usage: tools/make_malformed_safetensors.py [OUTPUT_ROOT]   (default tests/data/safetensors)
"""
import json
import pathlib
import struct
import sys


def st(header, data=b"", n=None):
    """8-byte little-endian length + header (str or bytes) + data; n overrides the length."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def js(obj):
    return json.dumps(obj, separators=(",", ":"))


F32_ONE = struct.pack("<f", 1.0)

MALFORMED = {
    # length prefix
    "empty": b"",
    "short": b"\x01\x00\x00\x00\x00",
    "header_too_large": st("{}", n=100_000_001),
    "header_len_max_u64": st("{}", n=2**64 - 1),
    "header_past_eof": st("{}", n=100),
    # header text
    "not_utf8": st(b'{"a\xff":' + js(t("F32", [1], 0, 4)).encode() + b"}", F32_ONE),
    "utf8_overlong": st(b'{"\xc0\xaf":' + js(t("F32", [1], 0, 4)).encode() + b"}", F32_ONE),
    "utf8_surrogate": st(b'{"\xed\xa0\x80":' + js(t("F32", [1], 0, 4)).encode() + b"}", F32_ONE),
    "not_json": st("hello!!!"),
    "truncated_json": st('{"a":{"dtype":"F32"'),
    "empty_header": st(""),
    "nul_in_header": st(b'{"a"\x00:1}'),
    "json_comment": st("/* c */{}"),
    "header_array": st("[]"),
    "header_null": st("null"),
    "deep_nesting": st('{"a":{"dtype":"F32","shape":' + "[" * 200 + "]" * 200 + ',"data_offsets":[0,0]}}'),
    # schema
    "entry_not_object": st('{"a":5}'),
    "unknown_dtype": st(js({"a": t("F33", [1], 0, 4)}), F32_ONE),
    "dtype_lowercase": st(js({"a": t("f32", [1], 0, 4)}), F32_ONE),
    "dtype_not_string": st(js({"a": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}}), F32_ONE),
    "missing_shape": st(js({"a": {"dtype": "F32", "data_offsets": [0, 4]}}), F32_ONE),
    "missing_offsets": st(js({"a": {"dtype": "F32", "shape": [1]}}), F32_ONE),
    "extra_field": st(js({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "strides": [1]}}), F32_ONE),
    "negative_shape": st(js({"a": t("F32", [-1], 0, 4)}), F32_ONE),
    "float_shape": st('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', F32_ONE),
    "shape_not_array": st(js({"a": t("F32", "1", 0, 4)}), F32_ONE),
    "shape_too_big_integer": st('{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}', F32_ONE),
    "offsets_three": st(js({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}), F32_ONE),
    "offsets_negative": st(js({"a": t("F32", [1], -4, 0)}), F32_ONE),
    "offsets_strings": st(js({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}), F32_ONE),
    "metadata_not_object": st(js({"__metadata__": [], "a": t("F32", [1], 0, 4)}), F32_ONE),
    "metadata_null": st(js({"__metadata__": None, "a": t("F32", [1], 0, 4)}), F32_ONE),
    "metadata_non_string": st(js({"__metadata__": {"format": 1}, "a": t("F32", [1], 0, 4)}), F32_ONE),
    # duplicates (nlohmann alone would keep the last one)
    "duplicate_tensor": st('{"a":' + js(t("F32", [1], 0, 4)) + ',"a":' + js(t("F32", [1], 0, 4)) + "}", F32_ONE),
    "duplicate_metadata_key": st('{"__metadata__":{"format":"pt","format":"np"}}'),
    "duplicate_field": st('{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', F32_ONE),
    # offsets
    "gap": st(js({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}), F32_ONE * 3),
    "overlap": st(js({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)}), F32_ONE * 3),
    "not_from_zero": st(js({"a": t("F32", [1], 4, 8)}), F32_ONE * 2),
    "end_before_begin": st(js({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 4, 0)}), F32_ONE),
    # sizes
    "size_mismatch": st(js({"conv.weight": t("F32", [2, 2], 0, 12)}), F32_ONE * 3),
    "shape_overflow": st(js({"a": t("F32", [2**32, 2**32, 2], 0, 4)}), F32_ONE),
    "bits_overflow": st(js({"a": t("F32", [2**62], 0, 4)}), F32_ONE),
    "subbyte_f4": st(js({"a": t("F4", [3], 0, 2)}), b"\x00\x00"),
    "subbyte_f6": st(js({"a": t("F6_E2M3", [1], 0, 1)}), b"\x00"),
    # data buffer length
    "trailing_bytes": st(js({"a": t("F32", [1], 0, 4)}), F32_ONE + b"PK\x03\x04"),
    "truncated_data": st(js({"a": t("F32", [4], 0, 16)}), F32_ONE * 2),
    "zero_tensors_trailing": st("{}", b"\x00"),
}

VALID = {
    "empty_header_object": st("{}"),
    "leading_whitespace": st("  \n\t" + js({"a": t("F32", [1], 0, 4)}), F32_ONE),
    "trailing_whitespace": st(js({"a": t("F32", [1], 0, 4)}) + "   \n   ", F32_ONE),
    "zero_sized": st(js({"z": t("F16", [0, 3], 0, 0), "s": t("F32", [], 0, 4), "y": t("I8", [2, 0], 4, 4)}), F32_ONE),
    "unsorted_json": st(js({"b": t("I32", [1], 4, 8), "a": t("U8", [4], 0, 4), "__metadata__": {"k": "v"}}),
                        b"\x01\x02\x03\x04" + struct.pack("<i", -7)),
    "subbyte_f4_even": st(js({"a": t("F4", [2, 2], 0, 2)}), b"\x21\x43"),
    "unpadded_unaligned": st(js({"h": t("F16", [1], 0, 2), "f": t("F32", [2], 2, 10)}),
                             b"\x00\x3c" + struct.pack("<ff", 2.0, -3.0)),
}


def main():
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "tests/data/safetensors"
    for sub, files in (("malformed", MALFORMED), ("valid", VALID)):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.safetensors"):
            old.unlink()
        for name, data in files.items():
            (d / f"{name}.safetensors").write_bytes(data)
        print(f"{len(files)} files in {d}")


if __name__ == "__main__":
    main()
