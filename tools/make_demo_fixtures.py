#!/usr/bin/env python3
"""make_demo_fixtures.py — the bundled demo model's test fixtures (tests/data/demo/), read by tests/test_demo.c.

Writes, under --out (default tests/data/demo):
  test/test_NNNNN.png  the test split's scenes (tools/scenes.py, split "test", --seed 0: the split train_demo.py never
                       trains or validates on), saved exactly as `scenes.py --split test` saves them;
  test_eval.jsonl      vlmeval's VQA format, one question per type per scene (scenes.eval_items, the items
                       train_demo.py's report scores on the val split): {"file", "index", "type", "q", "a"} with
                       "file" relative to the JSONL. `vlmeval --vqa test_eval.jsonl --model DIR` gives the accuracy
                       the floor in tests/test_demo.c guards;
  greedy_hf.jsonl      transformers' own greedy answers for the first --n-greedy test scenes (one question per scene,
                       the question types taken in turn so that every type appears), in the same format with "a" =
                       transformers' decoded answer, so `vlmeval --vqa greedy_hf.jsonl --model DIR` scores 100 %
                       exactly when the runtime reproduces the reference's greedy text. Extra keys (vlmeval ignores
                       them): "ids_hf" every token generate() produced (the stop id included when it stopped on
                       one), "n_prompt" the prompt's token count, "margin_min" the smallest top-1 minus top-2 logit
                       over the generated steps (a tiny margin is where float noise may legitimately flip a token);
  greedy_hf_chat.jsonl transformers' greedy answers in --n-chat three-turn chats about one test scene each
                       (the first --n-chat scenes; the first question of each is its greedy_hf.jsonl item, then the
                       scene's next two question types), the first answer kept in the history as the
                       assistant's turn: {"file", "turns": [{"q", "a", "n_prompt"}, ...]}, "a" decoded as above,
                       "n_prompt" the whole chat's prompt length (so a runtime that drops the history is caught even
                       where its answers happen to agree). vlmrun's interactive mode (questions on stdin) must
                       print exactly these answers;
  MANIFEST.md          the command, the model files' sha256, library versions, the split and the sizes.

Why: the demo model is what `vlmrun` runs by default, so its tests check the thing users see — that our runtime
answers like the reference implementation token for token (greedy_hf) and that the checkpoint is as good as its
training report says (test_eval).

How the reference runs: LlavaOnevisionForConditionalGeneration.from_pretrained(DIR) in float32 with eager attention,
inputs from transformers' LlavaOnevisionProcessor with the slow PIL image processor (train_demo.load_folder, the
same loader the training report uses), prompt = scenes.chat_prompt(question): ChatML with the system turn
"You are a helpful assistant." — vlmrun's default (tokenizer/chat.c CHAT_CHATML_QWEN) and what train_demo.py trains
on. The script asserts that this prompt is what the checkpoint's chat template renders for [system, user(image,
question)], and that the processor's ids equal chat.c's segment-wise tokenization (specials as ids, the text runs
between them encoded on their own, the image as its expanded <image> ids). Greedy decoding with generate(), at most
32 new tokens, stopping at generation_config.json's eos ids; answers decoded with skip_special_tokens=True.

Promises: deterministic (fixed split, seed and greedy decoding on one torch thread; a rerun writes the same bytes);
refuses to run on other library versions than tools/requirements.txt pins (torch 2.15.0, transformers 5.24.0,
tokenizers 0.23.3, pillow 13.0.0, numpy 2.4.6), since the PNG bytes and the reference answers depend on them.

Usage:   python tools/make_demo_fixtures.py [--model models/demo] [--out tests/data/demo] [--n-greedy 20]
                                            [--test-scenes N] [--seed 0]
         (--test-scenes defaults to the whole test split, 500 scenes, cut short if the PNGs would pass 1.5 MB)
Needs:   tools/requirements.txt, tools/scenes.py, tools/train_demo.py (its loader and processor).
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import scenes  # noqa: E402

PNG_BUDGET_BYTES = 1_500_000  # default --test-scenes: the whole split if its PNGs fit, else the scenes that do
MAX_NEW_TOKENS = 32  # vlmrun's and vlmeval's default --max-new
PINNED = ("torch", "transformers", "tokenizers", "pillow", "numpy")  # the versions the outputs depend on


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def check_versions():
    """Exits unless the installed packages are the ones tools/requirements.txt pins (a local suffix such as
    torch's '+cu132' is ignored: the CPU kernels are the same)."""
    from importlib.metadata import version
    pins = {}
    with open(os.path.join(TOOLS, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, v = line.split("==")
                pins[name.strip().lower()] = v.strip()
    got = {}
    for name in PINNED:
        got[name] = version(name)
        if got[name].split("+")[0] != pins[name]:
            raise SystemExit(f"{name} {got[name]} is installed; tools/requirements.txt pins {pins[name]}")
    return got


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------------
# The test split: PNGs and test_eval.jsonl
# ------------------------------------------------------------------------------------------------------------------

def write_test_split(out, seed, n_scenes):
    """Renders test scenes 0.. into out/test/ (as scenes.write_split saves them) and writes out/test_eval.jsonl.
    n_scenes None: every scene of the split while the PNGs stay within PNG_BUDGET_BYTES. Returns (records,
    images, png bytes)."""
    img_dir = os.path.join(out, "test")
    os.makedirs(img_dir, exist_ok=True)
    for old in glob.glob(os.path.join(img_dir, "test_*.png")):  # a rerun with fewer scenes leaves none behind
        os.remove(old)
    limit = scenes.DEFAULT_SPLIT_SIZES["test"] if n_scenes is None else n_scenes
    recs, images, total = [], [], 0
    for i in range(limit):
        img, rec = scenes.make_scene(seed, "test", i)
        fn = f"test_{i:05d}.png"
        path = os.path.join(img_dir, fn)
        img.save(path, optimize=False)
        size = os.path.getsize(path)
        if n_scenes is None and total + size > PNG_BUDGET_BYTES:
            os.remove(path)
            log(f"test split: the PNG budget of {PNG_BUDGET_BYTES:,} bytes ends at scene {i}")
            break
        total += size
        rec["file"] = f"test/{fn}"
        recs.append(rec)
        images.append(img)
    with open(os.path.join(out, "test_eval.jsonl"), "w") as f:
        for rec in recs:
            for qa in scenes.eval_items(rec):
                f.write(json.dumps(dict(file=rec["file"], index=rec["index"], **qa)) + "\n")
    return recs, images, total


CALIB_START = 150000  # train-split scenes far past what training draws first (steps x batch << 150k)
CALIB_PROMPTS = ("Describe the image.", "What is in the picture?", "List the shapes you see.")


def write_calib(out, seed, n):
    """n training-split scenes as vlmconvert --calib data (the ShareGPT4V / LLaVA form): out/calib/train_*.png and
    out/calib/data.json, each a captioning conversation ("<image>\\n" + a prompt, the scene's caption as the answer),
    as MBQ calibrates on image-caption pairs. Training scenes: calibration data comes from the training
    distribution, never from the test split it is evaluated on."""
    d = os.path.join(out, "calib")
    os.makedirs(d, exist_ok=True)
    for old in glob.glob(os.path.join(d, "train_*.png")):
        os.remove(old)
    data, total = [], 0
    for i in range(CALIB_START, CALIB_START + n):
        img, rec = scenes.make_scene(seed, "train", i)
        fn = f"train_{i:06d}.png"
        img.save(os.path.join(d, fn), optimize=False)
        total += os.path.getsize(os.path.join(d, fn))
        data.append({"image": fn, "conversations": [
            {"from": "human", "value": "<image>\n" + CALIB_PROMPTS[i % len(CALIB_PROMPTS)]},
            {"from": "gpt", "value": rec["caption"]}]})
    with open(os.path.join(d, "data.json"), "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return total


def greedy_items(recs, n):
    """One eval item for each of the first n scenes: the question types in turn (QTYPES order), a scene without the
    next type giving the first of the following types it has."""
    out, k = [], 0
    for rec in recs[:n]:
        by_type = {qa["type"]: qa for qa in scenes.eval_items(rec)}
        for step in range(len(scenes.QTYPES)):
            t = scenes.QTYPES[(k + step) % len(scenes.QTYPES)]
            if t in by_type:
                out.append((rec, by_type[t]))
                k = (k + step + 1) % len(scenes.QTYPES)
                break
    return out


# ------------------------------------------------------------------------------------------------------------------
# The reference: prompt checks and greedy answers
# ------------------------------------------------------------------------------------------------------------------

def chat_c_ids(raw_tok, question, n_image_tokens):
    """The prompt ids as tokenizer/chat.c builds vlmrun's default (CHAT_CHATML_QWEN): the template's specials as ids,
    each run of text between them encoded on its own (no special-token parsing), the image as n_image_tokens
    <image> ids followed by the text run "\\n" + question."""
    sp = {s: raw_tok.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>", "<image>")}

    def text(s):
        return raw_tok.encode(s, add_special_tokens=False).ids

    return ([sp["<|im_start|>"]] + text("system\n" + scenes.SYSTEM_PROMPT) + [sp["<|im_end|>"]] + text("\n") +
            [sp["<|im_start|>"]] + text("user\n") + [sp["<image>"]] * n_image_tokens + text("\n" + question) +
            [sp["<|im_end|>"]] + text("\n") + [sp["<|im_start|>"]] + text("assistant\n"))


def prompt_features(processor, raw_tok, chat_template, image, question):
    """Processor features of the prompt, after asserting that scenes.chat_prompt (what train_demo.py trains on) is
    the checkpoint's chat template (chat_template.json's Jinja text) with the default system turn, and that the ids
    are chat.c's."""
    text = scenes.chat_prompt(question)
    messages = [{"role": "system", "content": [{"type": "text", "text": scenes.SYSTEM_PROMPT}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    templated = processor.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                              tokenize=False)
    assert templated == text, f"chat template {templated!r} != scenes.chat_prompt {text!r}"
    f = processor(images=[image], text=[text], return_tensors="pt")
    ids = f["input_ids"][0].tolist()
    n_img = ids.count(raw_tok.token_to_id("<image>"))
    assert n_img > 0, "the processor expanded no image tokens"
    want = chat_c_ids(raw_tok, question, n_img)
    assert ids == want, f"processor ids differ from chat.c's segment-wise ids for {question!r}:\n{ids}\n{want}"
    return f


def chat_greedy(model, processor, chat_template, image, questions, eos_ids, pad_id):
    """transformers' greedy answers in one chat about image: each question asked after the previous answers, which
    stay in the history as assistant turns (the checkpoint's chat template renders it; the first user turn carries
    the image, the default system turn first, as vlmrun's interactive mode builds it)."""
    import torch
    messages = [{"role": "system", "content": [{"type": "text", "text": scenes.SYSTEM_PROMPT}]}]
    turns = []
    for k, q in enumerate(questions):
        content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": q}]
        messages.append({"role": "user", "content": content})
        text = processor.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                             tokenize=False)
        f = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**f, do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS,
                               eos_token_id=eos_ids, pad_token_id=pad_id)
        answer = processor.tokenizer.decode(g[0, f["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
        turns.append(dict(q=q, a=answer, n_prompt=f["input_ids"].shape[1]))
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def greedy(model, processor, raw_tok, chat_template, image, question, eos_ids, pad_id):
    """transformers' greedy answer: (decoded text, generated ids, prompt length, smallest top-1/top-2 margin)."""
    import torch
    f = prompt_features(processor, raw_tok, chat_template, image, question)
    with torch.no_grad():
        g = model.generate(**f, do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos_ids,
                           pad_token_id=pad_id, return_dict_in_generate=True, output_logits=True)
    n_prompt = f["input_ids"].shape[1]
    new = g.sequences[0, n_prompt:].tolist()
    margins = []
    for step, lg in enumerate(g.logits):
        top2 = torch.topk(lg[0].float(), 2)
        assert int(top2.indices[0]) == new[step] or float(top2.values[0] - top2.values[1]) == 0.0
        margins.append(float(top2.values[0] - top2.values[1]))
    answer = processor.tokenizer.decode(new, skip_special_tokens=True)
    return answer, new, n_prompt, min(margins)


# ------------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "models", "demo"), help="HF checkpoint folder")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "demo"))
    ap.add_argument("--n-greedy", type=int, default=20, help="scenes with a reference greedy answer")
    ap.add_argument("--n-chat", type=int, default=3, help="scenes with a reference three-turn chat")
    ap.add_argument("--test-scenes", type=int, default=None, help="test scenes written (default: all 500 while "
                    f"the PNGs stay within {PNG_BUDGET_BYTES:,} bytes)")
    ap.add_argument("--seed", type=int, default=0, help="scenes.py seed (train_demo.py's default)")
    ap.add_argument("--calib-scenes", type=int, default=64, help="training scenes written as calibration data")
    args = ap.parse_args()
    versions = check_versions()

    import torch
    import transformers
    from transformers import GenerationConfig
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import train_demo  # after the thread settings: it imports torch lazily, but keep the order obvious

    t0 = time.time()
    recs, images, png_bytes = write_test_split(args.out, args.seed, args.test_scenes)
    n_items = sum(len(scenes.eval_items(r)) for r in recs)
    log(f"test split: {len(recs)} scenes, {png_bytes:,} bytes of PNG, {n_items} eval items ({time.time() - t0:.1f} s)")
    calib_bytes = write_calib(args.out, args.seed, args.calib_scenes)
    log(f"calibration: {args.calib_scenes} training scenes from {CALIB_START}, {calib_bytes:,} bytes of PNG")
    if args.n_greedy > len(recs):
        raise SystemExit(f"--n-greedy {args.n_greedy} > the {len(recs)} test scenes written")

    model, processor, raw_tok = train_demo.load_folder(args.model, attn="eager")
    assert next(model.parameters()).dtype == torch.float32
    gc = GenerationConfig.from_pretrained(args.model)
    eos_ids = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]
    pad_id = gc.pad_token_id if gc.pad_token_id is not None else eos_ids[0]
    with open(os.path.join(args.model, "chat_template.json")) as f:
        chat_template = json.load(f)["chat_template"]
    t1 = time.time()
    lines, n_empty, worst = [], 0, (float("inf"), None)
    by_index = {r["index"]: img for r, img in zip(recs, images)}
    for rec, qa in greedy_items(recs, args.n_greedy):
        answer, ids, n_prompt, margin = greedy(model, processor, raw_tok, chat_template, by_index[rec["index"]],
                                               qa["q"], eos_ids, pad_id)
        n_empty += answer.strip() == ""
        worst = min(worst, (margin, rec["index"]), key=lambda x: x[0])
        lines.append(dict(file=rec["file"], index=rec["index"], type=qa["type"], q=qa["q"], a=answer, ids_hf=ids,
                          n_prompt=n_prompt, margin_min=round(margin, 6)))
        log(f"  test {rec['index']:3d} [{qa['type']}] {qa['q']!r} -> {answer!r} ({len(ids)} ids, margin "
            f"{margin:.4f}; expected {qa['a']!r})")
    with open(os.path.join(args.out, "greedy_hf.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    types = sorted({x["type"] for x in lines}, key=scenes.QTYPES.index)
    log(f"greedy: {len(lines)} answers ({n_empty} empty), types {', '.join(types)}; smallest margin {worst[0]:.4f} "
        f"(test {worst[1]}) ({time.time() - t1:.1f} s)")

    chats = []
    for rec, qa in greedy_items(recs, args.n_chat):
        types = [x["type"] for x in scenes.eval_items(rec)]
        items = scenes.eval_items(rec)
        k = types.index(qa["type"])
        questions = [qa["q"]] + [items[(k + j) % len(items)]["q"] for j in (1, 2)]
        turns = chat_greedy(model, processor, chat_template, by_index[rec["index"]], questions, eos_ids, pad_id)
        chats.append(dict(file=rec["file"], index=rec["index"], turns=turns))
        log(f"  chat test {rec['index']:3d}: " + " / ".join(f"{t['q']!r} -> {t['a']!r}" for t in turns))
    with open(os.path.join(args.out, "greedy_hf_chat.jsonl"), "w") as f:
        for c in chats:
            f.write(json.dumps(c) + "\n")

    files = sorted(os.listdir(args.model))
    with open(os.path.join(args.out, "MANIFEST.md"), "w") as f:
        f.write("# tests/data/demo — fixtures of the bundled demo model\n\n")
        f.write("Written by `python tools/make_demo_fixtures.py "
                + " ".join(sys.argv[1:])
                + "` (see its docstring for what each file is and how the reference runs).\n\n")
        f.write(f"- test split: tools/scenes.py split `test`, seed {args.seed}, scenes 0..{len(recs) - 1} "
                f"({png_bytes:,} bytes of PNG), {n_items} eval items in test_eval.jsonl\n")
        f.write(f"- calib/: {args.calib_scenes} training scenes from index {CALIB_START} ({calib_bytes:,} bytes of PNG) "
                f"with their captions, vlmconvert --calib data (data.json)\n")
        f.write(f"- greedy_hf.jsonl: {len(lines)} items (first {args.n_greedy} scenes), transformers float32 eager, "
                f"max {MAX_NEW_TOKENS} new tokens, eos {eos_ids}; {n_empty} empty answers; smallest top-1/top-2 "
                f"logit margin {worst[0]:.4f}\n")
        f.write(f"- greedy_hf_chat.jsonl: {len(chats)} three-turn chats (first {args.n_chat} scenes), the same reference "
                f"and limits\n")
        f.write("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
                + f", Python {sys.version.split()[0]}\n\n")
        f.write("Model files (the reference answers hold for exactly these bytes):\n\n")
        for name in files:
            p = os.path.join(args.model, name)
            if os.path.isfile(p):
                f.write(f"- `{name}` {os.path.getsize(p):,} bytes, sha256 `{sha256(p)}`\n")
    log(f"wrote {args.out}: test/ ({len(recs)} PNGs), test_eval.jsonl, greedy_hf.jsonl, greedy_hf_chat.jsonl, "
        "MANIFEST.md")


if __name__ == "__main__":
    main()
