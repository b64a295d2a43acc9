#!/usr/bin/env python3
"""scenes.py — the demo model's synthetic VQA data: coloured shapes on a plain background, with questions.

A scene is an RGB image of 2..5 shapes (circle, square, triangle, star, diamond, hexagon) in 8 colours, at different
positions and sizes, about half of them with a short word or a number drawn in, plus a templated caption and
question-answer pairs of seven types: color, shape, count, position, existence, text (reading), caption.
Image sizes and aspect ratios vary (small, wide, tall, large) so that the runtime's anyres path (1x1, 1x2, 2x1 and
2x2 crop grids of the demo model, unpadding of rows or columns) is exercised.

Promises:
  - deterministic: scene (seed, split, index) is a pure function of those three numbers (numpy Generator seeded
    with [seed, split id, index]; Pillow drawing without anti-aliasing, Pillow's built-in bitmap font), so train,
    validation and test splits are fixed by the seed and never share a random stream;
  - every question has exactly one correct short answer (one word, a number, or "color shape"): referents are
    unique in the scene, shapes never overlap each other or the text, and position questions are only asked when
    the centres are clearly apart;
  - importable: train_demo.py renders training scenes on the fly with make_scene(); the CLI writes a split to disk.

Usage:   python tools/scenes.py --split test --n 500 --out DIR [--seed 0]
Writes:  DIR/<split>/<split>_NNNNN.png, DIR/<split>.jsonl (one scene per line: file, size, objects, text, caption,
         all QA pairs) and DIR/<split>_eval.jsonl (the evaluation items: one question per type per scene, the first
         of that type in the scene's list — what train_demo.py and the runtime's eval score).
Needs:   numpy, Pillow (tools/requirements.txt).
"""

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# ------------------------------------------------------------------------------------------------------------------
# Vocabulary of the scenes
# ------------------------------------------------------------------------------------------------------------------

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_SIZES = {"train": 200000, "val": 500, "test": 500}  # train is an index space, rendered on demand

COLORS = {  # name -> RGB; each drawn with a small per-object jitter
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (235, 205, 25), "green": (40, 160, 60),
    "blue": (40, 80, 225), "purple": (140, 60, 190), "pink": (245, 125, 195), "brown": (125, 80, 40),
}
SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon"]
PLURAL = {s: s + "s" for s in SHAPES}
WORDS = ["CAT", "DOG", "SUN", "BOX", "CAR", "MAP", "KEY", "HAT", "CUP", "BUS", "FOX", "PEN", "OWL", "BEE", "EGG",
         "ICE", "FISH", "MOON", "TREE", "BOAT", "LAMP", "KITE", "BIRD", "FROG"]  # no colour or shape names
QTYPES = ["color", "shape", "count", "position", "existence", "text", "caption"]

TEXT_INK = (20, 20, 20)
FONT = ImageFont.load_default_imagefont()  # Pillow's built-in bitmap font: 6 x 11 px cells, no FreeType involved
GLYPH_W, GLYPH_H = 6, 11

SYSTEM_PROMPT = "You are a helpful assistant."


def article(word):
    return "an" if word[0] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------------------------------
# Layout: image size, text box, shapes (all random draws happen here, before any drawing)
# ------------------------------------------------------------------------------------------------------------------

def sample_size(rng):
    """(H, W). Kinds: small (1x1 grid), wide (1x2), tall (2x1), large (2x2, often unpadded) for 64-px crops."""
    kind = rng.choice(4, p=[0.2, 0.2, 0.2, 0.4])
    if kind == 0:
        h, w = rng.integers(48, 65, size=2)
    elif kind in (1, 2):
        s = int(rng.integers(44, 73))
        h, w = s, min(160, int(round(s * rng.uniform(1.7, 2.3))))
        if kind == 2:
            h, w = w, h
    else:
        long = int(rng.integers(96, 161))
        r = rng.uniform(0.7, 1.4)
        h, w = (long, int(round(long / r))) if r >= 1 else (int(round(long * r)), long)
    return int(h), int(w)


def rect_circle_gap(box, cx, cy):
    """Distance from (cx, cy) to the rectangle box = (x0, y0, x1, y1) (0 inside)."""
    dx = max(box[0] - cx, 0.0, cx - box[2])
    dy = max(box[1] - cy, 0.0, cy - box[3])
    return float(np.hypot(dx, dy))


def layout(rng, n_objects=None):
    """Random content of one scene: size, background, optional text, 2..5 non-overlapping objects (n_objects
    instead, for train_demo.py's curriculum; the draws from rng stay the same, so the default scenes never change)."""
    H, W = sample_size(rng)
    bg = tuple(int(v) for v in rng.integers(215, 256, size=3))
    n_want = int(rng.integers(2, 6))
    if n_objects is not None:
        n_want = int(n_objects)

    text = None
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            s = WORDS[int(rng.integers(len(WORDS)))]
            kind = "word"
        else:
            s = str(int(rng.integers(0, 100)))
            kind = "number"
        scale = 2 if min(H, W) >= 80 else 1
        tw, th = GLYPH_W * len(s) * scale, GLYPH_H * scale
        if tw + 4 > W:  # a 4-letter word at scale 2 in a narrow tall image
            scale, tw, th = 1, GLYPH_W * len(s), GLYPH_H
        x0 = int(rng.integers(2, W - tw - 1))
        y0 = int(rng.integers(2, H - th - 1))
        text = dict(text=s, kind=kind, scale=scale, box=[x0, y0, x0 + tw, y0 + th])

    # Colours: half of the scenes draw them without replacement (every colour unique), half with replacement
    # (repeats make "how many red shapes" interesting). (colour, shape) pairs are always unique.
    distinct_colors = rng.random() < 0.5
    base_r = rng.uniform(0.10, 0.17) * min(H, W)
    objs = []
    for _ in range(n_want):
        for _try in range(60):
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            r = float(np.clip(base_r * rng.uniform(0.75, 1.3), 6.0, 24.0))
            R = 1.1 * r  # every shape lies inside the circle of radius 1.1 r
            cx = float(rng.uniform(R + 1, W - R - 1))
            cy = float(rng.uniform(R + 1, H - R - 1))
            jitter = rng.integers(-12, 13, size=3)
            if any(o["color"] == color and o["shape"] == shape for o in objs):
                continue
            if distinct_colors and any(o["color"] == color for o in objs):
                continue
            if any(np.hypot(cx - o["cx"], cy - o["cy"]) < R + 1.1 * o["r"] + 2 for o in objs):
                continue
            if text and rect_circle_gap(text["box"], cx, cy) < R + 2:
                continue
            rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
            objs.append(dict(color=color, shape=shape, cx=round(cx, 2), cy=round(cy, 2), r=round(r, 2), rgb=rgb))
            break
    return H, W, bg, text, objs


# ------------------------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------------------------

def polygon(cx, cy, r, n, start_deg, inner=None):
    """Vertices of a regular n-gon (or an n-pointed star when inner is the inner radius ratio)."""
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        a = np.deg2rad(start_deg + 360.0 * i / k)
        rr = r * (inner if inner and i % 2 else 1.0)
        pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
    return pts


def draw_shape(d, o):
    cx, cy, r, fill = o["cx"], o["cy"], o["r"], o["rgb"]
    s = o["shape"]
    if s == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif s == "square":
        h = 0.78 * r
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif s == "triangle":
        d.polygon(polygon(cx, cy + 0.15 * r, 1.1 * r, 3, -90), fill=fill)
    elif s == "star":
        d.polygon(polygon(cx, cy, 1.1 * r, 5, -90, inner=0.45), fill=fill)
    elif s == "diamond":
        d.polygon([(cx, cy - 1.1 * r), (cx + 0.75 * r, cy), (cx, cy + 1.1 * r), (cx - 0.75 * r, cy)], fill=fill)
    elif s == "hexagon":
        d.polygon(polygon(cx, cy, r, 6, 0), fill=fill)
    else:
        raise ValueError(s)


def draw_text(img, text):
    """The bitmap font drawn at 1x and blown up with nearest-neighbour: crisp, byte-identical everywhere."""
    s, scale, (x0, y0, x1, y1) = text["text"], text["scale"], text["box"]
    mask = Image.new("L", (GLYPH_W * len(s), GLYPH_H), 0)
    ImageDraw.Draw(mask).text((0, 0), s, fill=255, font=FONT)
    if scale != 1:
        mask = mask.resize((x1 - x0, y1 - y0), Image.NEAREST)
    img.paste(Image.new("RGB", mask.size, TEXT_INK), (x0, y0), mask)


def render(H, W, bg, text, objs):
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    for o in objs:
        draw_shape(d, o)
    if text:
        draw_text(img, text)
    return img


# ------------------------------------------------------------------------------------------------------------------
# Questions and answers
# ------------------------------------------------------------------------------------------------------------------

def name(o):
    return f"{o['color']} {o['shape']}"


def caption_of(objs, text):
    """Left to right: 'a red circle, an orange star and a blue square', then ', with the word "CAT"'."""
    parts = [f"{article(o['color'])} {name(o)}" for o in sorted(objs, key=lambda o: o["cx"])]
    cap = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if text:
        cap += f', with the {text["kind"]} "{text["text"]}"'
    return cap


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def make_qas(rng, H, W, text, objs):
    """All QA pairs of a scene: list of {type, q, a}, shuffled (so 'first of each type' is a random one)."""
    qas = []

    def add(t, q, a):
        qas.append(dict(type=t, q=q, a=str(a)))

    n_shape = Counter(o["shape"] for o in objs)
    n_color = Counter(o["color"] for o in objs)

    # color: of a shape that occurs once
    for o in objs:
        if n_shape[o["shape"]] == 1:
            add("color", pick(rng, ["What color is the {s}?", "What is the color of the {s}?",
                                    "Which color does the {s} have?"]).format(s=o["shape"]), o["color"])
    # shape: of a colour that occurs once
    for o in objs:
        if n_color[o["color"]] == 1:
            add("shape", pick(rng, ["What shape is the {c} object?", "What is the {c} shape?",
                                    "Which shape is {c}?"]).format(c=o["color"]), o["shape"])
    # count: all, of one colour, of one shape (present or absent)
    add("count", pick(rng, ["How many shapes are there?", "How many shapes are in the image?",
                            "How many objects are there?"]), len(objs))
    c = pick(rng, sorted(n_color)) if rng.random() < 0.75 else pick(rng, list(COLORS))
    add("count", pick(rng, ["How many {c} shapes are there?", "How many {c} objects are there?"]).format(c=c),
        n_color.get(c, 0))
    s = pick(rng, sorted(n_shape)) if rng.random() < 0.75 else pick(rng, SHAPES)
    add("count", f"How many {PLURAL[s]} are there?", n_shape.get(s, 0))

    # position: relations between two objects whose centres are clearly apart, balanced yes/no; extremes
    mx, my = 0.15 * W, 0.15 * H
    rel = {"yes": [], "no": []}
    for a in objs:
        for b in objs:
            if a is b:
                continue
            dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
            if abs(dx) > mx:
                word = pick(rng, ["left of", "to the left of"])
                rel["yes" if dx > 0 else "no"].append(f"Is the {name(a)} {word} the {name(b)}?")
                word = pick(rng, ["right of", "to the right of"])
                rel["yes" if dx < 0 else "no"].append(f"Is the {name(a)} {word} the {name(b)}?")
            if abs(dy) > my:
                rel["yes" if dy > 0 else "no"].append(f"Is the {name(a)} above the {name(b)}?")
                rel["yes" if dy < 0 else "no"].append(f"Is the {name(a)} below the {name(b)}?")
    for ans in ("yes", "no"):
        cand = rel[ans]
        for i in rng.permutation(len(cand))[:2]:
            add("position", cand[int(i)], ans)
    for key, sign, words in (("cx", 1, ["leftmost", "furthest to the left"]),
                             ("cx", -1, ["rightmost", "furthest to the right"]),
                             ("cy", 1, ["topmost", "highest"]), ("cy", -1, ["bottommost", "lowest"])):
        order = sorted(objs, key=lambda o: sign * o[key])
        margin = mx if key == "cx" else my
        if len(order) >= 2 and sign * (order[1][key] - order[0][key]) > 0.5 * margin:
            add("position", f"Which shape is {pick(rng, words)}?", name(order[0]))

    # existence: a (colour, shape) pair, a shape, a colour (yes and no each), text
    o = pick(rng, objs)
    add("existence", f"Is there {article(o['color'])} {name(o)}?", "yes")
    absent = [(c, s) for c in COLORS for s in SHAPES if not any(x["color"] == c and x["shape"] == s for x in objs)]
    hard = [(c, s) for c, s in absent if c in n_color and s in n_shape]  # both present, not together
    c, s = pick(rng, hard) if hard and rng.random() < 0.5 else pick(rng, absent)
    add("existence", f"Is there {article(c)} {c} {s}?", "no")
    s_yes, s_no = pick(rng, sorted(n_shape)), [s for s in SHAPES if s not in n_shape]
    add("existence", f"Is there {article(s_yes)} {s_yes}?", "yes")
    if s_no:
        s = pick(rng, s_no)
        add("existence", f"Is there {article(s)} {s}?", "no")
    c_yes, c_no = pick(rng, sorted(n_color)), [c for c in COLORS if c not in n_color]
    add("existence", f"Is there {article(c_yes)} {c_yes} shape?", "yes")
    if c_no:
        c = pick(rng, c_no)
        add("existence", f"Is there {article(c)} {c} shape?", "no")
    add("existence", pick(rng, ["Is there any text in the image?", "Is there any writing?"]),
        "yes" if text else "no")

    # text: read it
    if text:
        add("text", pick(rng, ["What does the text say?", "What is written in the image?", "Read the text."]),
            text["text"])
        add("text", f"What {text['kind']} is written?", text["text"])

    # caption
    add("caption", pick(rng, ["Describe the image.", "Describe the image briefly.", "What is in the image?"]),
        caption_of(objs, text))

    order = rng.permutation(len(qas))
    return [qas[int(i)] for i in order]


# ------------------------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------------------------

def make_scene(seed, split, index, draw=True, n_objects=None):
    """Scene `index` of `split` ("train", "val", "test") for `seed`: (PIL RGB image or None, record dict).
    The record is JSON-serialisable: H, W, background, objects, text, caption, qa (all pairs)."""
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    H, W, bg, text, objs = layout(rng, n_objects)
    qas = make_qas(rng, H, W, text, objs)
    rec = dict(split=split, index=int(index), seed=int(seed), H=H, W=W, background=list(bg), text=text,
               objects=[dict(o, rgb=list(o["rgb"])) for o in objs], caption=caption_of(objs, text), qa=qas)
    return (render(H, W, bg, text, objs) if draw else None), rec


def eval_items(rec):
    """The scored questions of a scene: the first QA of each type present (list of {type, q, a})."""
    seen, out = set(), []
    for qa in rec["qa"]:
        if qa["type"] not in seen:
            seen.add(qa["type"])
            out.append(qa)
    return sorted(out, key=lambda qa: QTYPES.index(qa["type"]))


def chat_prompt(question, system=SYSTEM_PROMPT):
    """The prompt as the model sees it before the answer (spec §7.2, ChatML with the default Qwen system message;
    system=None gives the HF chat template's form, spec §7.1). '<image>' is expanded by the processor."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return f"{head}<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------------

def write_split(out, split, n, seed, start=0):
    img_dir = os.path.join(out, split)
    os.makedirs(img_dir, exist_ok=True)
    stats = Counter()
    with open(os.path.join(out, f"{split}.jsonl"), "w") as fs, open(os.path.join(out, f"{split}_eval.jsonl"),
                                                                       "w") as fe:
        for i in range(start, start + n):
            img, rec = make_scene(seed, split, i)
            fn = f"{split}_{i:05d}.png"
            img.save(os.path.join(img_dir, fn), optimize=False)
            rec["file"] = f"{split}/{fn}"
            fs.write(json.dumps(rec) + "\n")
            for qa in eval_items(rec):
                fe.write(json.dumps(dict(file=rec["file"], index=i, **qa)) + "\n")
                stats[qa["type"]] += 1
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=list(SPLITS), required=True)
    ap.add_argument("--n", type=int, default=None, help="scenes (default: val/test 500; train needs --n)")
    ap.add_argument("--start", type=int, default=0, help="first scene index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    n = args.n if args.n is not None else DEFAULT_SPLIT_SIZES[args.split]
    if args.split == "train" and args.n is None:
        ap.error("--split train needs --n (the training split is rendered on demand by train_demo.py)")
    stats = write_split(args.out, args.split, n, args.seed, args.start)
    print(f"wrote {n} {args.split} scenes to {args.out}; eval items per type: "
          + ", ".join(f"{t} {stats[t]}" for t in QTYPES), file=sys.stderr)


if __name__ == "__main__":
    main()
