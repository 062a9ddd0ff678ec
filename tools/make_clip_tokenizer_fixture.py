#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/data/text/clip_tokenizer_corpus.json: >= 500 prompts and the ids transformers.CLIPTokenizer gives
them, for tests/text/clip_tokenizer_test.cpp.

    .venv-ref/bin/python tools/make_clip_tokenizer_fixture.py [path/to/bpe_simple_vocab_16e6.txt.gz]

The vocabulary is OpenAI's merges list (default ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz); vocab.json and
merges.txt are derived from it into a temporary folder exactly as OpenAI's clip builds its vocabulary (see
derive_tokenizer_folder, also usable as `--derive GZ OUT_DIR` to make a pipeline-style tokenizer folder), with a
tokenizer_config.json of model_max_length 77 and pad_token "<|endoftext|>" (SD 1.x) or "!" (OpenCLIP).

The corpus is generated from a fixed seed (random.Random(12)): Stable-Diffusion-style prompts (commas, weights
"(word:1.2)", numbers, units, apostrophes and contractions), plus hand-written cases: emoji (ZWJ sequences, flags,
skin tones), accented Latin in composed and decomposed form, Greek, Cyrillic, CJK, Hangul (syllables and
conjoining jamo), Arabic, Devanagari, Thai, full-width forms, superscripts and fractions, repeated and exotic
white space (tabs, newlines, NBSP, ideographic space), control characters, HTML entities, literal and upper-case
special tokens, the empty prompt, and prompts of several hundred tokens.

Stored per prompt: "ids" = tokenizer(prompt).input_ids (no truncation), "padded" = tokenizer(prompt,
padding="max_length", max_length=77, truncation=True).input_ids with the SD 1.x pad token; for the first 150
prompts "padded_openclip" with pad_token "!" (id 0).
"""
import gzip
import json
import os
import random
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "text", "clip_tokenizer_corpus.json")
DEFAULT_GZ = os.path.join(ROOT, "..", "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def derive_tokenizer_folder(gz_path, out_dir, pad_token="<|endoftext|>"):
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_max_length": 77, "pad_token": pad_token, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f)


SUBJECTS = ["a cat", "an astronaut riding a horse", "portrait of a woman", "a red fox in the snow", "1girl", "two dogs",
            "a cyberpunk city", "the Eiffel Tower", "a bowl of ramen", "an old man's face", "a dragon", "mount Fuji",
            "a robot", "a lighthouse at dusk", "Van Gogh's starry night", "a Ferrari F40", "a medieval castle"]
STYLES = ["oil painting", "digital art", "photorealistic", "8k", "4K UHD", "trending on ArtStation", "octane render",
          "studio lighting", "bokeh", "f/1.8", "50mm", "HDR", "concept art", "by Greg Rutkowski", "unreal engine 5",
          "anime style", "watercolor", "low-poly", "isometric", "black-and-white", "35mm film", "ultra-detailed"]
EXTRAS = ["(masterpiece:1.2)", "((best quality))", "[blurry]", "(worst quality:1.4)", "don't", "it's", "we're",
          "they've", "I'm", "you'll", "he'd", "rock'n'roll", "''quoted''", "O'Neil", "\"quoted\"", "$100", "3.14",
          "1920x1080", "50%", "#hashtag", "@user", "e-mail", "C++", "v2.1", "100,000", "--ar 16:9", "<lora:foo:0.8>",
          "\\(escaped\\)", "a/b", "semi;colon", "!!!", "...", "???", "&amp;", "&lt;tag&gt;", "x²", "½", "Ⅻ", "°C",
          "™", "©", "§3", "№5", "→", "★★★", "♥", "✨", "🐱", "🔥🔥", "👩‍🚀", "🇯🇵", "👍🏽", "❤️", "café", "naïve",
          "Straße", "İstanbul", "ΣΑΣ", "Ελληνικά", "русский", "日本語", "テスト", "中文字", "한국어", "ｆｕｌｌｗｉｄｔｈ",
          "ＡＢＣ１２３", "العربية", "हिन्दी", "ไทย", "Ærøskøbing", "ǅ", "ﬁ", "Ω", "K", "Å"]


def sd_prompt(rng):
    parts = [rng.choice(SUBJECTS)] + rng.sample(STYLES, rng.randint(0, 6)) + rng.sample(EXTRAS, rng.randint(0, 4))
    rng.shuffle(parts[1:])
    sep = rng.choice([", ", ",", " , ", " ", ",  ", "\n", " | "])
    s = sep.join(parts)
    r = rng.random()
    if r < 0.15:
        s = s.upper()
    elif r < 0.3:
        s = s.title()
    if rng.random() < 0.2:
        s = "  " + s + "   "
    return s


HAND = [
    "", " ", "   ", "\t\n", "a", "A", ".", "'", "'s", "''s", "!'s", "don't stop", "DON'T STOP", "I'LL BE BACK",
    "it's", "its'", "'re'", "'ll'm'd", "a  b", "a\tb", "a\nb", "a\r\nb", "a\u00a0b", "a\u3000b", "a\u2028b",
    "a\u0085b", "a\u200bb", "a\x00b", "a\x7fb", "\x1fx", "\ufeffbom", "<|startoftext|>", "<|endoftext|>",
    "a<|endoftext|>b", "<|startoftext|>a photo<|endoftext|>", "<|ENDOFTEXT|>", "<|endoftext|", "<|endoftext|><|endoftext|>",
    "x<|STARTOFTEXT|>!!", "a<|EndOfText|>b", "!<|ENDOFTEXT|>", "hello!", "wow!!! great!", "a ! b",
    "cafe\u0301", "caf\u00e9", "e\u0301\u0302", "a\u0323\u0307", "\u1100\u1161\u11a8", "\u1100\u1161", "한\u11a8",
    "Å Å", "ǅungla", "ﬁne", "ΟΔΥΣΣΕΥΣ", "ß", "ẞ", "İ", "I\u0307", "ﬀ", "Ⅷ", "①②③", "١٢٣", "٣.١٤", "१२३", "๑๒๓",
    "12345678901234567890", "3.14159", "1,000,000", "0x1F", "1e-5", "24/7", "9:16", "1st 2nd 3rd 4th",
    "🐱🐶🐭", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇬🇧", "✌🏿", "😀 smile", "emoji🙂text", "\U0001F9D1\u200d\U0001F4BB",
    "日本語のテキスト", "東京タワー", "中华人民共和国", "한국어 텍스트", "Привет, мир!", "Γειά σου Κόσμε",
    "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "שלום עולם", "Tiếng Việt có dấu", "Ἀθῆναι",
    "&amp; &lt; &gt; &quot; &#39;", "&nbsp;", "<b>bold</b>", "\\(escaped\\) \\[brackets\\]", "(((a)))", "[[[b]]]",
    "(a:1.5) [b:0.5] {c}", "a (b:1.1), c", "-- ~~ ** __", "a_b_c", "CamelCaseWord", "ALLCAPS", "mIxEd CaSe",
    "   leading", "trailing   ", "multiple     spaces     here", "x" * 100, "ab" * 150, "!" * 60,
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
]


def corpus():
    rng = random.Random(12)
    prompts = list(HAND)
    while len(prompts) < 480:
        prompts.append(sd_prompt(rng))
    for _ in range(20):  # long: several hundred tokens
        prompts.append(", ".join(sd_prompt(rng) for _ in range(rng.randint(8, 25))))
    prompts.append(" ".join(EXTRAS))
    prompts.append(" ".join(SUBJECTS + STYLES))
    return prompts


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--derive":
        derive_tokenizer_folder(sys.argv[2], sys.argv[3])
        return
    from transformers import CLIPTokenizer
    gz = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GZ
    with tempfile.TemporaryDirectory() as tmp:
        derive_tokenizer_folder(gz, os.path.join(tmp, "sd1"))
        derive_tokenizer_folder(gz, os.path.join(tmp, "openclip"), pad_token="!")
        sd1 = CLIPTokenizer.from_pretrained(os.path.join(tmp, "sd1"))
        oc = CLIPTokenizer.from_pretrained(os.path.join(tmp, "openclip"))
        assert sd1.pad_token_id == 49407 and oc.pad_token_id == 0, (sd1.pad_token_id, oc.pad_token_id)
        prompts = corpus()
        cases = []
        for i, p in enumerate(prompts):
            c = {"prompt": p, "ids": sd1(p)["input_ids"],
                 "padded": sd1(p, padding="max_length", max_length=77, truncation=True)["input_ids"]}
            if i < 150:
                c["padded_openclip"] = oc(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
            cases.append(c)
    import transformers
    import tokenizers
    doc = {"generator": "tools/make_clip_tokenizer_fixture.py",
           "reference": f"transformers {transformers.__version__} CLIPTokenizer (tokenizers {tokenizers.__version__})",
           "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items()
                                   if k != "cases"))
        f.write(',\n"cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    n_long = sum(len(c["ids"]) > 77 for c in cases)
    print(f"{OUT}: {len(cases)} prompts, {n_long} longer than 77 tokens, max {max(len(c['ids']) for c in cases)}")


if __name__ == "__main__":
    main()
