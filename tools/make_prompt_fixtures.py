#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/text/prompts/: a Python reference of AUTOMATIC1111's prompt handling (the emphasis syntax, 75-token
chunks, BREAK, comma backtracking, weights applied to the hidden states with the mean restored) run on the small CLIP
text fixtures of tests/data/models/, for tests/text/prompt_test.cpp.

    .venv-ref/bin/python tools/make_prompt_fixtures.py [path/to/bpe_simple_vocab_16e6.txt.gz]

Written from A1111's documented behaviour (modules/prompt_parser.py parse_prompt_attention, the version whose weight
token is `:\\s*([+-]?[.\\d]+)\\s*\\)`; modules/sd_hijack_clip.py tokenize_line / process_tokens; modules/sd_emphasis.py
EmphasisOriginal), not copied from it.

The tokenizer is transformers' CLIPTokenizer on a vocabulary derived from OpenAI's merges list the way OpenAI's clip
builds it, cut to the first 486 merges so that it has the 1,000 tokens of the encoder fixtures (256 byte characters,
the same with `</w>`, 486 merged tokens, `<|startoftext|>` 998, `<|endoftext|>` 999). Its folders are committed:
  tokenizer/           pad `<|endoftext|>` (SD 1.x), used with clip_text_quick (quick_gelu, D = 32);
  tokenizer_openclip/  pad `!` (id 0, OpenCLIP), used with clip_text_gelu_proj (gelu, D = 40, projection).

prompts.json: for each prompt its text, "parsed" ([text, weight] pairs, weights as Python floats), and per model
"chunks" (ids and f32 weights, 77 each), "token_count"; or "error" for prompts Python's float() rejects.
seeds/<i>.txt: the prompts, for tests/fuzz/prompt_fuzz.cpp.
hidden_<model>.safetensors: "p<i>" = the final hidden states [1, 77 * chunks, D] (F32) of prompt i, and
"p<i>_pooled" the pooled output of its first chunk (and "p<i>_embeds", the projection model's text_embeds).
"""
import gzip
import json
import math
import os
import re
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_clip_tokenizer_fixture import DEFAULT_GZ, bytes_to_unicode  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "text", "prompts")
MODELS = os.path.join(ROOT, "tests", "data", "models")
MERGES = 486
CHUNK = 75
BACKTRACK = 20


# --- parse_prompt_attention -------------------------------------------------------------------------------------
# One token of A1111's attention syntax per match, alternatives in this order: the escapes \( \) \[ \] \\, a lone
# backslash, ( and [, a weight ":1.3)" (spaces allowed around the number), ) and ], a run of plain text, a lone colon.
ATTENTION = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?[.\d]+)\s*\)|[)\]]|[^\\()\[\]:]+|:")
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND, SQUARE = 1.1, 1 / 1.1


def parse_prompt_attention(text):
    pieces, round_open, square_open = [], [], []

    def scale(start, factor):
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in ATTENTION.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok[0] == "\\":
            pieces.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(pieces))
        elif tok == "[":
            square_open.append(len(pieces))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))  # ValueError for "1.2.3", as in A1111
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for k, part in enumerate(BREAK.split(tok)):
                if k:
                    pieces.append(["BREAK", -1])
                pieces.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    if not pieces:
        pieces = [["", 1.0]]
    merged = []
    for piece in pieces:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


# --- chunks ---------------------------------------------------------------------------------------------------------
def tokenize_prompt(tok, text):
    parsed = parse_prompt_attention(text)
    tokenized = tok([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    comma = tok.get_vocab().get(",</w>")
    start, end, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    chunks, ids, mults = [], [], []
    state = {"count": 0, "comma": -1}

    def close(is_last=False):
        state["count"] += len(ids) if is_last else CHUNK
        body = ids + [end] * (CHUNK - len(ids))
        row = [start] + body + [end]
        if end != pad:
            first = row.index(end)
            row = row[:first + 1] + [pad] * (len(row) - first - 1)
        chunks.append({"ids": row, "weights": [1.0] + mults + [1.0] * (CHUNK + 1 - len(mults)), "tokens": len(ids)})
        ids.clear()
        mults.clear()
        state["comma"] = -1

    for tokens, (piece, weight) in zip(tokenized, parsed):
        if piece == "BREAK" and weight == -1:
            close()
            continue
        for token in tokens:
            if token == comma:
                state["comma"] = len(ids)
            elif len(ids) == CHUNK and state["comma"] != -1 and len(ids) - state["comma"] <= BACKTRACK:
                at = state["comma"] + 1
                moved, moved_mults = ids[at:], mults[at:]
                del ids[at:], mults[at:]
                close()
                ids.extend(moved)
                mults.extend(moved_mults)
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            mults.append(weight)
    if ids or not chunks:
        close(is_last=True)
    for c in chunks:  # the multipliers as torch.asarray makes them: f32
        c["weights"] = torch.tensor(c["weights"], dtype=torch.float32).tolist()
    return parsed, chunks, state["count"]


def encode(model, chunks):
    zs, pooled, embeds = [], None, None
    for k, c in enumerate(chunks):
        ids = torch.tensor([c["ids"]])
        with torch.no_grad():
            out = model(input_ids=ids)
        z = out.last_hidden_state
        w = torch.tensor([c["weights"]], dtype=torch.float32)
        # A1111: z * w, then z * (mean before / mean after), in f32. The means are taken in f64 here: with a mean
        # near zero (negative weights, small models) the ratio amplifies f32 summation error, and the reference
        # should not be less precise than what it checks. The ratio is applied in f32, as in A1111.
        mean_before = z.double().mean()
        z = z * w.reshape(w.shape + (1,)).expand(z.shape)
        z = z * (mean_before / z.double().mean()).float()
        zs.append(z)
        if k == 0:
            if isinstance(model, CLIPTextModelWithProjection):
                embeds = out.text_embeds
                with torch.no_grad():
                    pooled = model.text_model(input_ids=ids).pooler_output
            else:
                pooled = out.pooler_output
    return torch.cat(zs, dim=1), pooled, embeds


LONG = ("a breathtaking panoramic landscape of rolling green hills under a dramatic stormy sky, golden hour light, "
        "volumetric fog, a small wooden cabin")


def prompts():
    commas = ", ".join(["cat"] * 30)  # one comma every two tokens or so: the backtrack rule at each boundary
    return [
        "",
        "a photo of a cat",
        "an (important) word",
        "a [quiet] forest, ((very)) detailed",
        "a (red:1.3) fox in the [[snow]]",
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        "(unbalanced",
        "[unbalanced square and (round",
        "closing only) and ] here",
        "\\(literal\\] and \\\\ backslash \\x gone",
        "(spaced weight : 1.25 ) and (neg:-0.5) and (plus:+2) and (dot:.5) and (trail:2.)",
        "nested (outer [inner (deep:1.5) back] out:0.8) end",
        "a colon: here and :1.2) without an open bracket",
        "first part BREAK second part",
        "BREAK leading break",
        "trailing break BREAK",
        "a BREAK BREAK double, xBREAK and BREAKy are words, (in BREAK brackets)",
        "Arabic-Indic digits (weight:\u0661.\u0665) and full-width (w:\uff12)",
        "caf\u00e9 na\u00efve \U0001F431 emoji (\u65e5\u672c:1.1)",
        LONG,
        LONG + ", " + LONG,
        "(" + LONG + ":1.2), [" + LONG + "] BREAK " + LONG,
        commas,
        "word " * 70 + ", " + "tail " * 20,
        "(masterpiece:1.2), (best quality), [blurry], " + LONG + ", (" + commas + ":0.9)",
        "bad weight (a:1.2.3)",
        "bad weight (a:.)",
    ]


def derive(gz_path, out_dir, pad):
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:1 + MERGES]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 1000
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_max_length": 77, "pad_token": pad, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f)


def main():
    gz = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GZ
    os.makedirs(OUT, exist_ok=True)
    cases = {"quick": ("tokenizer", "<|endoftext|>", "clip_text_quick", CLIPTextModel),
             "gelu_proj": ("tokenizer_openclip", "!", "clip_text_gelu_proj", CLIPTextModelWithProjection)}
    records = [{"prompt": p} for p in prompts()]
    seeds = os.path.join(OUT, "seeds")  # for tests/fuzz/prompt_fuzz.cpp (tests/fuzz/prompt.seeds)
    shutil.rmtree(seeds, ignore_errors=True)
    os.makedirs(seeds)
    for i, rec in enumerate(records):
        with open(os.path.join(seeds, f"{i:02d}.txt"), "w", encoding="utf-8") as f:
            f.write(rec["prompt"])
    for rec in records:
        try:
            rec["parsed"] = parse_prompt_attention(rec["prompt"])
        except ValueError as e:
            rec["error"] = str(e)
    for name, (tok_dir, pad, model_dir, cls) in cases.items():
        derive(gz, os.path.join(OUT, tok_dir), pad)
        tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, tok_dir))
        model = cls.from_pretrained(os.path.join(MODELS, model_dir)).eval()
        tensors = {}
        for i, rec in enumerate(records):
            if "error" in rec:
                continue
            parsed, chunks, count = tokenize_prompt(tok, rec["prompt"])
            assert parsed == rec["parsed"]
            rec[name] = {"chunks": chunks, "token_count": count}
            z, pooled, embeds = encode(model, chunks)
            tensors[f"p{i}"] = z.contiguous()
            tensors[f"p{i}_pooled"] = pooled.contiguous()
            if embeds is not None:
                tensors[f"p{i}_embeds"] = embeds.contiguous()
            if rec["parsed"] == [[rec["prompt"], 1.0]] and len(chunks) == 1 and count <= CHUNK:
                # a plain prompt: exactly transformers' padded encoding
                ids = tok(rec["prompt"], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
                assert ids[0].tolist() == chunks[0]["ids"], rec["prompt"]
                with torch.no_grad():
                    assert torch.equal(model(input_ids=ids).last_hidden_state, z), rec["prompt"]
        save_file(tensors, os.path.join(OUT, f"hidden_{name}.safetensors"))
        print(name, {r["prompt"][:20]: len(r[name]["chunks"]) for r in records if name in r})
    import transformers
    with open(os.path.join(OUT, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump({"reference": f"tools/make_prompt_fixtures.py, transformers {transformers.__version__}, "
                                f"torch {torch.__version__}", "prompts": records}, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
