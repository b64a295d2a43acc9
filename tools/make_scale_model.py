#!/usr/bin/env python3
"""make_scale_model.py — writes a full-size, random-weight LLaVA-OneVision checkpoint and a synthetic calibration
set, so the converter and runtime can be exercised at the published dimensions without downloading real weights.

The committed fixtures (tools/make_fixtures.py) are tiny models; they check numerics but not scale (memory, shard
handling, time per layer, the real 151936-entry vocabulary). This script builds the model of a published config
(tests/data/configs/<size>/config.json) with transformers' own class and initialisation, casts it to bfloat16 (the
real checkpoints are bf16) and saves it with transformers' own save_pretrained, so the tensor names, shard layout and
config.json are exactly what a real download looks like. The outputs are NOT committed (they are large); the
weights are meaningless, so generated text is noise — use it for speed, memory and "does it load" checks only.

Writes:
  OUT/config.json, OUT/model*.safetensors (+ index when sharded), OUT/generation_config.json (if transformers
      writes one)                           transformers' save_pretrained of the random bf16 model;
  OUT/preprocessor_config.json              copied from tests/data/configs/<size>/;
  OUT/tokenizer.json, tokenizer_config.json, chat_template.json
                                            the Qwen2 byte-level BPE of tests/data/tokenizers/qwen2/ (decompressed);
                                            config.json's image_token_index is checked against its <image> id;
  CALIB/img_NNNN.png, CALIB/data.json       --n-samples synthetic images (random filled rectangles / ellipses on a
                                            random background, 200..640 px per side) and a ShareGPT4V / LLaVA-form
                                            JSON list whose answers are templated captions of what was drawn (the
                                            form vlmconvert --calib reads).

Deterministic: weights from torch.manual_seed(--seed), images and captions from numpy.random.default_rng(--seed);
the same seed gives the same bytes for the calibration set (and the same weights for the same torch version).

Usage:   python tools/make_scale_model.py [--size 0.5b] [--out /tmp/scale05b] [--calib-dir /tmp/scale_calib]
                                          [--n-samples 40] [--seed 1]
         Only 0.5b fits comfortably in a small machine's memory; 7b / 72b are refused unless --force.
Needs:   tools/requirements.txt (transformers 5.24.0, torch, pillow, numpy, tokenizers).
"""

import argparse
import glob
import gzip
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw
from tokenizers import Tokenizer
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "tests", "data", "configs")
TOKDIR = os.path.join(REPO, "tests", "data", "tokenizers", "qwen2")
SIZES = ("0.5b", "7b", "72b")

# files this script writes into OUT (cleared before writing so a rerun never mixes old shards with new ones)
OUT_PATTERNS = ("config.json", "generation_config.json", "preprocessor_config.json", "model*.safetensors",
                "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json")

# ------------------------------------------------------------------------------------------------------------------
# Calibration set
# ------------------------------------------------------------------------------------------------------------------
COLOURS = {
    "red": (220, 30, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (240, 215, 40),
    "orange": (245, 140, 30), "purple": (130, 50, 170), "pink": (240, 130, 180), "brown": (120, 75, 40),
    "black": (15, 15, 15), "white": (245, 245, 245), "grey": (128, 128, 128), "cyan": (40, 200, 210),
}
PROMPTS = (
    "Describe the image.",
    "What is shown in this picture?",
    "Describe this image in detail.",
    "What do you see in the image?",
    "Give a short description of the picture.",
    "What shapes and colours does this image contain?",
)
NUMBERS = ("no", "one", "two", "three", "four", "five")
MIN_SIDE, MAX_SIDE = 200, 640
MIN_WORDS, MAX_WORDS = 20, 60


def position_name(cx, cy, w, h):
    """Where a shape's centre lies, in words (a 3 x 3 grid of the image)."""
    col = min(int(3 * cx / w), 2)
    row = min(int(3 * cy / h), 2)
    if row == 1 and col == 1:
        return "in the center"
    vert = ("top", "middle", "bottom")[row]
    horiz = ("left", "center", "right")[col]
    if row == 1:
        return f"on the {horiz} side"
    if col == 1:
        return f"at the {vert}"
    return f"in the {vert} {horiz} corner"


def size_name(area_frac):
    return "small" if area_frac < 0.03 else ("large" if area_frac > 0.12 else "medium")


def make_sample(rng):
    """One synthetic image (PIL) and its caption (str)."""
    names = list(COLOURS)
    w = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    bg = names[int(rng.integers(len(names)))]
    img = Image.new("RGB", (w, h), COLOURS[bg])
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(1, 5))                                   # 1..4 shapes
    shapes, boxes = [], []
    for _ in range(n):
        colour = names[int(rng.integers(len(names)))]
        while colour == bg:
            colour = names[int(rng.integers(len(names)))]
        kind = ("rectangle", "ellipse")[int(rng.integers(2))]
        sw = int(rng.integers(max(8, w // 10), w // 2 + 1))
        sh = int(rng.integers(max(8, h // 10), h // 2 + 1))
        x0 = int(rng.integers(0, w - sw + 1))
        y0 = int(rng.integers(0, h - sh + 1))
        box = (x0, y0, x0 + sw - 1, y0 + sh - 1)
        boxes.append(box)
        if kind == "rectangle":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.ellipse(box, fill=COLOURS[colour])
        if kind == "ellipse" and abs(sw - sh) <= 0.1 * max(sw, sh):
            kind = "circle"
        elif kind == "rectangle" and abs(sw - sh) <= 0.1 * max(sw, sh):
            kind = "square"
        shapes.append(dict(colour=colour, kind=kind, size=size_name(sw * sh / (w * h)),
                           where=position_name(x0 + sw / 2, y0 + sh / 2, w, h)))

    # caption: overview and one clause per shape (required), then optional sentences while under MAX_WORDS
    noun = "shape" if n == 1 else "shapes"
    descr = [f"a {s['size']} {s['colour']} {s['kind']} {s['where']}" for s in shapes]
    parts = [f"The image shows {NUMBERS[n]} filled {noun} on a plain {bg} background.",
             f"There is {descr[0]}." if n == 1 else "There is " + ", ".join(descr[:-1]) + f" and {descr[-1]}."]
    optional = []
    if n > 1:
        kinds = sorted({s["kind"] for s in shapes})
        ncol = len({s["colour"] for s in shapes})
        kind_list = " and ".join([", ".join(k + "s" for k in kinds[:-1]), kinds[-1] + "s"]) if len(kinds) > 1 \
            else kinds[0] + "s"
        overlap = any(a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]
                      for i, a in enumerate(boxes) for b in boxes[i + 1:])
        optional.append(f"The shapes are {kind_list} in {NUMBERS[ncol] if ncol < len(NUMBERS) else ncol} "
                        f"colour{'s' if ncol > 1 else ''}" + (", and some of them overlap." if overlap else
                                                             ", and none of them overlap."))
    orient = "wider than it is tall" if w > h * 1.1 else ("taller than it is wide" if h > w * 1.1 else "roughly square")
    optional.append(f"The picture is {orient}, with flat colours and no text.")
    optional.append("The edges of every shape are sharp and the background is evenly coloured.")
    for extra in optional:
        if len(" ".join(parts + [extra]).split()) <= MAX_WORDS:
            parts.append(extra)
    caption = " ".join(parts)
    words = len(caption.split())
    assert MIN_WORDS <= words <= MAX_WORDS, (words, caption)
    return img, caption


def write_calib(calib_dir, n_samples, seed):
    os.makedirs(calib_dir, exist_ok=True)
    for fn in glob.glob(os.path.join(calib_dir, "img_*.png")) + [os.path.join(calib_dir, "data.json")]:
        if os.path.isfile(fn):
            os.remove(fn)
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n_samples):
        img, caption = make_sample(rng)
        name = f"img_{i:04d}.png"
        img.save(os.path.join(calib_dir, name), format="PNG")
        prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
        data.append({"image": name, "conversations": [{"from": "human", "value": "<image>\n" + prompt},
                                                       {"from": "gpt", "value": caption}]})
    path = os.path.join(calib_dir, "data.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return path, data


# ------------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ------------------------------------------------------------------------------------------------------------------
def estimate_params(cfg):
    """Parameter count of the model of cfg, from its dimensions (no weights built)."""
    t, v = cfg.text_config, cfg.vision_config
    d, f, L, vocab = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size
    hd = d // t.num_attention_heads
    kv = t.num_key_value_heads * hd
    layer = d * d + 2 * d * kv + (d + 2 * kv) + d * d + 3 * d * f + 2 * d
    text = L * layer + vocab * d * (1 if t.tie_word_embeddings else 2) + d
    vd, vf, vl = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    npatch = (v.image_size // v.patch_size) ** 2
    vision = (3 * v.patch_size ** 2 * vd + vd + npatch * vd
              + vl * (4 * (vd * vd + vd) + 2 * vd * vf + vf + vd + 4 * vd) + 2 * vd)
    proj = vd * d + d + d * d + d
    return text + vision + proj + d                                # + image_newline


def write_tokenizer(out_dir, image_token_index):
    src = os.path.join(TOKDIR, "tokenizer.json.gz")
    dst = os.path.join(out_dir, "tokenizer.json")
    with gzip.open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    for name in ("tokenizer_config.json", "chat_template.json"):
        if os.path.isfile(os.path.join(TOKDIR, name)):
            shutil.copyfile(os.path.join(TOKDIR, name), os.path.join(out_dir, name))
    tok = Tokenizer.from_file(dst)
    check_tokenizer(tok, image_token_index)
    return dst


def check_tokenizer(tok, image_token_index):
    got = tok.token_to_id("<image>")
    if got != image_token_index:
        sys.exit(f"error: config.json image_token_index = {image_token_index} but the tokenizer's <image> is {got}")
    ids = tok.encode("<image>", add_special_tokens=False).ids
    if ids != [image_token_index]:
        sys.exit(f"error: the tokenizer encodes '<image>' as {ids}, not [{image_token_index}]")
    for s, want in (("<|im_start|>", 151644), ("<|im_end|>", 151645)):
        if tok.token_to_id(s) != want:
            sys.exit(f"error: tokenizer's {s} is {tok.token_to_id(s)}, expected {want}")


def clear_out_dir(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for pat in OUT_PATTERNS:
        for fn in glob.glob(os.path.join(out_dir, pat)):
            os.remove(fn)


def build_model(cfg, seed):
    """transformers' own init of the config, built directly in bfloat16 (half the memory of float32 then cast)."""
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlavaOnevisionForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(torch.bfloat16).eval()                       # any buffer/param still float32
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            sys.exit(f"error: non-finite values in {name} after init")
    return model


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if os.path.isfile(os.path.join(path, f)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=SIZES, default="0.5b", help="published config under tests/data/configs/")
    ap.add_argument("--out", default="/tmp/scale05b", help="checkpoint directory to write")
    ap.add_argument("--calib-dir", default="/tmp/scale_calib", help="calibration set directory to write")
    ap.add_argument("--n-samples", type=int, default=40, help="calibration images to write")
    ap.add_argument("--seed", type=int, default=1, help="seed of the weights and of the calibration set")
    ap.add_argument("--max-shard-size", default=None, help="passed to save_pretrained (default: transformers')")
    ap.add_argument("--skip-model", action="store_true", help="write only the calibration set")
    ap.add_argument("--force", action="store_true", help="build 7b / 72b too (needs ~2 bytes per parameter of RAM)")
    args = ap.parse_args()
    if args.n_samples < 1:
        ap.error("--n-samples must be >= 1")

    t_all = time.perf_counter()
    transformers.logging.set_verbosity_error()
    cfg_dir = os.path.join(CONFIGS, args.size)
    cfg = LlavaOnevisionConfig.from_pretrained(cfg_dir)
    est = estimate_params(cfg)

    if not args.skip_model:
        if args.size != "0.5b" and not args.force:
            sys.exit(f"refusing to build {args.size}: about {est / 1e9:.2f} B parameters, {2 * est / 2**30:.1f} GiB "
                     f"of RAM and disk in bf16; pass --force if this machine has that")
        # fail before the expensive part if tokenizer and config disagree
        tmp_tok = Tokenizer.from_str(gzip.open(os.path.join(TOKDIR, "tokenizer.json.gz"), "rt").read())
        check_tokenizer(tmp_tok, cfg.image_token_index)
        if tmp_tok.get_vocab_size(with_added_tokens=True) > cfg.text_config.vocab_size:
            sys.exit(f"error: tokenizer has {tmp_tok.get_vocab_size()} tokens, more than vocab_size "
                     f"{cfg.text_config.vocab_size}")
        del tmp_tok

        clear_out_dir(args.out)
        t0 = time.perf_counter()
        print(f"building {args.size} (estimated {est / 1e9:.3f} B parameters) in bfloat16, seed {args.seed} ...",
              flush=True)
        model = build_model(cfg, args.seed)
        n_params = sum(p.numel() for p in model.parameters())     # tied lm_head counted once
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        save_kwargs = dict(safe_serialization=True)
        if args.max_shard_size:
            save_kwargs["max_shard_size"] = args.max_shard_size
        model.save_pretrained(args.out, **save_kwargs)
        del model
        t_save = time.perf_counter() - t0
        shutil.copyfile(os.path.join(cfg_dir, "preprocessor_config.json"),
                        os.path.join(args.out, "preprocessor_config.json"))
        with open(os.path.join(args.out, "config.json")) as f:
            written = json.load(f)
        write_tokenizer(args.out, written["image_token_index"])
        shards = sorted(glob.glob(os.path.join(args.out, "*.safetensors")))
        print(f"model:  {args.out}  ({n_params:,} parameters, {len(shards)} safetensors file(s), "
              f"{dir_bytes(args.out) / 2**30:.2f} GiB; config dtype {written.get('dtype', written.get('torch_dtype'))})"
              f"  build {t_build:.1f} s, save {t_save:.1f} s")
        for fn in sorted(os.listdir(args.out)):
            print(f"  {fn:40s} {os.path.getsize(os.path.join(args.out, fn)):>14,} bytes")

    t0 = time.perf_counter()
    path, data = write_calib(args.calib_dir, args.n_samples, args.seed)
    words = [len(d["conversations"][1]["value"].split()) for d in data]
    print(f"calib:  {path}  ({len(data)} samples, captions {min(words)}..{max(words)} words, "
          f"{dir_bytes(args.calib_dir) / 2**20:.2f} MiB)  {time.perf_counter() - t0:.1f} s")
    print(f"total:  {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
