#!/usr/bin/env python3
"""Render every emoji of the Noto Color Emoji font into a captioned image set (the emoji model's data).

What: each fully-qualified emoji sequence (and the emoji components) -- single code points, keycaps, flags,
tag flags, skin-tone variants and ZWJ sequences -- drawn with PIL from the font's CBDT bitmap strike
(ImageFont.truetype(font, 109), raqm layout, draw.text(..., embedded_color=True)), composited on white and
reduced to --size x --size RGB. Sequences the font does not draw as one glyph are dropped and counted:
  no glyph        nothing drawn (the font predates the emoji)
  several glyphs  the advance is wider than one emoji (a ZWJ sequence falling apart)
  base glyph      a multi-code-point sequence drawn pixel-identical to its first code point alone
                  (a skin tone or tag sequence the font ignored)
  clipped         ink outside the 128x128 crop (none with Noto Color Emoji 2.042)

Sources of the sequences and captions:
  - the `emoji` package (PyPI, BSD-3-Clause): EMOJI_DATA, its fully-qualified and component entries, their
    shortcode names and aliases;
  - emoji-test.txt of Debian's unicode-data (Unicode 15.0): the CLDR names ("woman technologist: medium skin
    tone"), group and subgroup; for newer sequences the name is derived from the emoji package's shortcode;
  - CLDR annotations of Debian's unicode-cldr-core (en.xml, annotationsDerived/en.xml): the keywords.
  Both Debian sources are optional (flags --emoji-test / --cldr); without them names come from the shortcodes
  and keywords are empty. Python's unicodedata names single code points (added to the aliases).

Caption: the CLDR name, lowercased. Aliases (shortcodes, unicodedata name) and keywords (CLDR) are stored as
lists per emoji for caption augmentation.

Geometry: at size 109 the strike is 136x128 px per emoji and all ink lies in the 128x128 box starting 4 px
right of the pen position; that box is cropped (so every emoji keeps the font's own scale and placement) and
reduced with --filter (default box: an exact 2x2 average for 64 px).

Held-out split: families (a sequence with its skin-tone modifiers removed, so all skin tones of one emoji go
together) are ranked by SHA-256 of the family key inside each CLDR subgroup and the first
round(--heldout * n_families) of each subgroup are held out (stratified by subgroup, deterministic).

Outputs (in --out, default data/emoji/, git-ignored):
  images_<size>.npy  uint8 [N, size, size, 3]
  meta.json          per item: id, seq, codepoints, caption, name, aliases, keywords, group, subgroup,
                     family, emoji_version, split; plus the sources, settings, counts and dropped sequences
  --sheet (default /tmp/emoji_contact.png): 64 random emoji with their captions, to look at.

Run (needs fonts-noto-color-emoji; unicode-data and unicode-cldr-core for the CLDR names and keywords):
  .venv-ref/bin/python -m pip install emoji==2.16.0
  .venv-ref/bin/python tools/emoji/make_dataset.py
Measured (emoji 2.16.0, Noto Color Emoji 2.042, unicode-data 15.0, CLDR 41): 3,972 candidate sequences,
3,793 rendered, 179 dropped (23 no glyph and 151 several glyphs, all Emoji 16.0 and later; 5 base glyph: the
snowboarder's skin tones, which Noto draws without the tone); 13 rendered images are exact duplicates of
another (flags shared by territories, the old and new family glyphs); 1,910 families; 3,618 train / 175
held out (86 families); 3,628 with CLDR keywords; about 5 s on one core.
"""
import argparse
import collections
import hashlib
import json
import os
import re
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR, grid_image  # noqa: E402

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
CLDR = "/usr/share/unicode/cldr/common"
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
SKIN_NAMES = ("light", "medium-light", "medium", "medium-dark", "dark")
VS16 = "\ufe0f"
PEN = 40           # pen position (x and y) on the scratch canvas
CROP = (4, 0, 132, 128)  # the ink box relative to the pen position, at font size 109


def read_emoji_test(path):
    """emoji-test.txt -> {seq: (name, group, subgroup, version)} for fully-qualified and component lines."""
    out = {}
    group = subgroup = ""
    line_re = re.compile(r"^([0-9A-F ]+?)\s*;\s*(fully-qualified|component)\s*#\s*\S+\s+E([\d.]+)\s+(.*)$")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            else:
                m = line_re.match(line)
                if m:
                    seq = "".join(chr(int(c, 16)) for c in m.group(1).split())
                    out[seq] = (m.group(4).strip(), group, subgroup, m.group(3))
    return out


def read_cldr_keywords(cldr_dir):
    """CLDR annotations (en.xml, then annotationsDerived/en.xml) -> {seq without VS16: [keywords]}."""
    kw = {}
    for rel in ("annotations/en.xml", "annotationsDerived/en.xml"):
        path = os.path.join(cldr_dir, rel)
        if not os.path.exists(path):
            continue
        for a in ET.parse(path).getroot().iter("annotation"):
            if a.get("type") == "tts" or not a.text:
                continue
            key = a.get("cp").replace(VS16, "")
            got = kw.setdefault(key, [])
            for w in a.text.split("|"):
                w = w.strip().lower()
                if w and w not in got:
                    got.append(w)
    return kw


def shortcode_words(code):
    return code.strip(":").replace("_", " ").strip().lower()


def name_from_shortcode(code):
    """':woman_technologist_medium_skin_tone:' -> 'woman technologist: medium skin tone' (the CLDR form)."""
    s = shortcode_words(code)
    tones = "|".join(re.escape(t) for t in SKIN_NAMES)
    m = re.match(rf"^(.*?) ((?:{tones}) skin tone(?:,? (?:{tones}) skin tone)?)$", s)
    if m:
        return m.group(1) + ": " + m.group(2).replace(" skin tone ", " skin tone, ").replace(",,", ",")
    words = s.split()
    if words[0] == "family" and len(words) > 1 and set(words[1:]) <= {"adult", "child", "man", "woman", "boy", "girl"}:
        return "family: " + ", ".join(words[1:])  # 'family: adult, adult, child'
    return s


def family_key(seq):
    return "".join(c for c in seq if c not in SKIN_TONES and c != VS16)


def render(font, seq):
    im = Image.new("RGBA", (PEN + 512, PEN + 200), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((PEN, PEN), seq, font=font, embedded_color=True)
    return im


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--font", default=FONT)
    ap.add_argument("--emoji-test", default=EMOJI_TEST, help="Unicode emoji-test.txt (optional)")
    ap.add_argument("--cldr", default=CLDR, help="CLDR common/ folder with annotations/en.xml (optional)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--filter", choices=["box", "lanczos"], default="box")
    ap.add_argument("--heldout", type=float, default=0.05, help="fraction of families held out per subgroup")
    ap.add_argument("--seed", type=int, default=0, help="only for the contact sheet's sample")
    ap.add_argument("--out", default=DATA_DIR)
    ap.add_argument("--sheet", default="/tmp/emoji_contact.png")
    a = ap.parse_args()
    t0 = time.time()

    import emoji
    if not features.check("raqm"):
        sys.exit("PIL lacks raqm (libraqm): ZWJ and skin-tone sequences would not be shaped into one glyph")
    font = ImageFont.truetype(a.font, 109, layout_engine=ImageFont.Layout.RAQM)
    one = font.getlength("\U0001F600")

    test = read_emoji_test(a.emoji_test) if os.path.exists(a.emoji_test) else {}
    keywords = read_cldr_keywords(a.cldr) if os.path.isdir(a.cldr) else {}
    print(f"emoji {emoji.__version__}: {len(emoji.EMOJI_DATA)} entries; emoji-test: {len(test)} sequences; "
          f"CLDR keywords: {len(keywords)} sequences")

    wanted = (emoji.STATUS["fully_qualified"], emoji.STATUS["component"])
    pkg = {s: v for s, v in emoji.EMOJI_DATA.items() if v["status"] in wanted}
    seqs = list(test) + sorted((s for s in pkg if s not in test), key=lambda s: [ord(c) for c in s])
    by_family = {}
    for s, (_, g, sg, _) in test.items():
        by_family.setdefault(family_key(s), (g, sg))

    items, images, dropped = [], [], []
    reasons = collections.Counter()
    resample = Image.BOX if a.filter == "box" else Image.LANCZOS
    base_cache = {}
    for seq in seqs:
        v = pkg.get(seq, {})
        if seq in test:
            name, group, subgroup, version = test[seq]
        else:
            name = name_from_shortcode(v["en"])
            fam = family_key(seq)
            if all(0x1F1E6 <= ord(ch) <= 0x1F1FF for ch in seq):
                group, subgroup = "Flags", "country-flag"
            else:
                group, subgroup = by_family.get(fam) or by_family.get(fam[0]) or ("Other", "other")
            version = str(v.get("E", ""))
        cps = " ".join(f"{ord(c):04X}" for c in seq)
        im = render(font, seq)
        bbox = im.getchannel("A").getbbox()
        n_glyphs = font.getlength(seq) / one
        reason = None
        if bbox is None:
            reason = "no glyph"
        elif n_glyphs > 1.5:
            reason = "several glyphs"
        else:
            c = (PEN + CROP[0], PEN + CROP[1], PEN + CROP[2], PEN + CROP[3])
            if bbox[0] < c[0] or bbox[1] < c[1] or bbox[2] > c[2] or bbox[3] > c[3]:
                reason = "clipped"
            elif len(seq.replace(VS16, "")) > 1:
                first = seq[0]
                for cand in (first, first + VS16):
                    if cand not in base_cache:
                        base_cache[cand] = render(font, cand).tobytes()
                    if base_cache[cand] == im.tobytes():
                        reason = "base glyph"
        if reason:
            reasons[reason] += 1
            dropped.append({"seq": seq, "codepoints": cps, "name": name, "emoji_version": version,
                            "reason": reason})
            continue
        tile = Image.new("RGBA", (128, 128), (255, 255, 255, 255))
        tile.alpha_composite(im.crop(c))
        tile = tile.convert("RGB")
        if a.size != 128:
            tile = tile.resize((a.size, a.size), resample)
        images.append(np.asarray(tile, dtype=np.uint8))

        aliases = []
        for code in [v.get("en", "")] + list(v.get("alias", [])):
            w = shortcode_words(code)
            if w and w not in aliases:
                aliases.append(w)
        core = seq.replace(VS16, "")
        if len(core) == 1:
            un = unicodedata.name(core, "").lower()
            if un and un not in aliases:
                aliases.append(un)
        caption = name.lower()
        aliases = [w for w in aliases if w != caption]
        items.append({"id": len(items), "seq": seq, "codepoints": cps, "caption": caption, "name": name,
                      "aliases": aliases, "keywords": keywords.get(core, []), "group": group,
                      "subgroup": subgroup, "family": family_key(seq), "emoji_version": version})

    # held-out split: whole families, stratified by subgroup, ranked by hash
    fams = collections.defaultdict(list)
    for it in items:
        fams[(it["group"], it["subgroup"])].append(it["family"])
    held = set()
    for key, fl in fams.items():
        uniq = sorted(set(fl), key=lambda f: hashlib.sha256(f.encode("utf-8")).hexdigest())
        held.update(uniq[:int(round(a.heldout * len(uniq)))])
    for it in items:
        it["split"] = "heldout" if it["family"] in held else "train"

    x = np.stack(images)
    digests = collections.Counter(hashlib.sha256(t.tobytes()).hexdigest() for t in x)
    n_dup = sum(c - 1 for c in digests.values() if c > 1)
    counts = {"candidates": len(seqs), "rendered": len(items), "dropped": len(dropped),
              "dropped_by_reason": dict(reasons), "duplicate_images": n_dup,
              "train": sum(it["split"] == "train" for it in items),
              "heldout": sum(it["split"] == "heldout" for it in items),
              "families": len({it["family"] for it in items}), "heldout_families": len(held),
              "with_keywords": sum(bool(it["keywords"]) for it in items),
              "from_emoji_test": sum(it["seq"] in test for it in items)}
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, f"images_{a.size}.npy"), x)
    font_sha = hashlib.sha256(open(a.font, "rb").read()).hexdigest()
    meta = {"size": a.size, "filter": a.filter, "font": os.path.basename(a.font), "font_sha256": font_sha,
            "emoji_package": emoji.__version__, "emoji_test": bool(test), "cldr_keywords": bool(keywords),
            "heldout_fraction": a.heldout, "counts": counts, "dropped": dropped, "items": items}
    with open(os.path.join(a.out, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, ensure_ascii=False, indent=1)

    rng = np.random.default_rng(a.seed)
    pick = rng.choice(len(items), size=min(64, len(items)), replace=False)
    rows = [[x[i] for i in pick[r:r + 8]] for r in range(0, len(pick), 8)]
    labels = [[items[i]["caption"] for i in pick[r:r + 8]] for r in range(0, len(pick), 8)]
    grid_image(rows, labels, zoom=max(1, 128 // a.size), label_lines=3).save(a.sheet)

    print(json.dumps(counts))
    by_group = collections.Counter((it["group"], it["split"]) for it in items)
    for g in sorted({k[0] for k in by_group}):
        print(f"  {g:24s} train {by_group[(g, 'train')]:5d}  heldout {by_group[(g, 'heldout')]:4d}")
    print(f"wrote {x.shape} to {a.out}, contact sheet {a.sheet}; {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
