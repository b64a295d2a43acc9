#!/usr/bin/env python3
"""train_demo.py — trains vlmrun's bundled demo model: a tiny LLaVA-OneVision of the real architecture on scenes.py.

The model is transformers' LlavaOnevisionForConditionalGeneration with the exact config family the runtime is tested
on (tests/data/models/tiny_unpad: SigLIP tower, mlp2x_gelu projector, Qwen2 decoder, anyres_max_9, image_newline,
vision_feature_layer -1, strategy "full"), only the sizes changed, and a small Qwen2-style byte-level BPE tokenizer
trained here with `tokenizers` on the generated text. Inputs are built by transformers' own LlavaOnevisionProcessor
with the slow (PIL) image processor, so training sees exactly what the reference sees at inference. Loss is on the
answer tokens and the closing <|im_end|> only. With --turns K each training image carries a K-turn dialog (the first
turn exactly as vlmrun prompts, with the image; K-1 more questions on the same scene), every answer labelled: K times
the supervision per vision-tower pass.

Promises:
  - reproducible: everything follows from --seed (scenes, tokenizer corpus, weights, batch order). The batch of step t
    is a pure function of (seed, t), so --resume continues bit for bit. --minutes only chooses the step count (after
    timing the first steps, printed); rerun with that --steps to reproduce;
  - CPU only, float32 training, --threads torch threads;
  - the output folder is a complete HF checkpoint the runtime loads unchanged: config.json, generation_config.json,
    model.safetensors (--save-dtype, default bf16), preprocessor_config.json, processor_config.json, tokenizer.json,
    tokenizer_config.json, chat_template.json; it is reloaded with from_pretrained and evaluated from the files.

Usage:   python tools/train_demo.py --out models/demo --work /tmp/demo/work --steps 3000 --turns 5 --threads 2
                                                                 (the bundled model: 82 min on 2 cores)
         python tools/train_demo.py --out /tmp/demo/model --work /tmp/demo/work --steps 30 --threads 1   (smoke)
         python tools/train_demo.py --out DIR --eval-only        (evaluates a saved checkpoint on the val split)
Writes:  --out (the checkpoint), --work/ckpt.pt (resumable state), --work/report.{json,md} (per-type accuracy).
Needs:   tools/requirements.txt (torch, transformers, tokenizers, pillow, numpy) and tools/scenes.py.
"""

import argparse
import copy
import json
import math
import os
import sys
import time
import unicodedata
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes  # noqa: E402

# ------------------------------------------------------------------------------------------------------------------
# Sizes (multiples the runtime's group-128 formats need: decoder linear inputs hidden and intermediate % 128 == 0)
# ------------------------------------------------------------------------------------------------------------------

CROP = 64  # vision_config.image_size and preprocessor size
PATCH = 8  # -> P = 8, 64 patches per crop
PINPOINTS = [[CROP, CROP], [CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP]]  # [h, w]: 1x1 1x2 2x1 2x2
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)  # head_dim 32
TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)  # head_dim 64, GQA 2:1
VOCAB_TARGET = 1024  # BPE target incl. the 256 byte tokens; the corpus is small, so training may stop earlier
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]  # ids after the BPE vocab
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")  # spec §8 step 3, byte-identical to tokenizer/bpe.c's k_qwen2_pattern
HF_CHAT_TEMPLATE_FILE = "tests/data/tokenizers/qwen2/chat_template.json"  # spec §7.1, shared with the fixtures
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TYPE_WEIGHTS = {"color": 1.0, "shape": 1.0, "count": 1.2, "position": 1.5, "existence": 1.0, "text": 1.3,
                "caption": 1.0}  # training mix; harder types a little more often
POOL = 8  # batches per length-sorted pool (less padding); step t's batch is batch t % POOL of pool t // POOL


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Tokenizer: Qwen2-style byte-level BPE trained on the scenes' text
# ------------------------------------------------------------------------------------------------------------------

def corpus(seed, n_scenes):
    """Every string the model will read or write, from n_scenes training scenes (no images drawn)."""
    yield scenes.SYSTEM_PROMPT
    for role in ("system", "user", "assistant"):
        yield role + "\n"
    yield " ".join(scenes.WORDS) + " " + " ".join(str(i) for i in range(100))
    for i in range(n_scenes):
        _, rec = scenes.make_scene(seed, "train", i, draw=False)
        for qa in rec["qa"]:  # separately: in a prompt the question ends at <|im_end|>, the answer too
            yield qa["q"]
            yield qa["a"]


def train_tokenizer(seed, n_scenes, vocab_target):
    """Returns a tokenizers.Tokenizer: NFC, Split(Qwen2 regex, isolated), ByteLevel (no prefix space, no regex),
    BPE without byte fallback, ByteLevel decoder; SPECIALS added after the BPE vocabulary, as Qwen2 does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_target - len(SPECIALS), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(seed, n_scenes), trainer=trainer)
    n_bpe = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    # decoders.ByteLevel() serialises its flags as true whatever it is given; write Qwen2's exact entry (the
    # flags do not change decoding)
    d = json.loads(tok.to_str())
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tok = Tokenizer.from_str(json.dumps(d))
    for k, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == n_bpe + k, (s, tok.token_to_id(s), n_bpe + k)
    return tok


def tokenizer_config(tok):
    added = {str(tok.token_to_id(s)): dict(content=s, lstrip=False, normalized=False, rstrip=False,
                                           single_word=False, special=True) for s in SPECIALS}
    return {"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
            "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "clean_up_tokenization_spaces": False,
            "errors": "replace", "model_max_length": 32768, "split_special_tokens": False,
            "added_tokens_decoder": added}


def write_tokenizer(tok, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=True))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(tok), f, indent=2)
        f.write("\n")
    with open(os.path.join(REPO, HF_CHAT_TEMPLATE_FILE)) as src, open(os.path.join(folder, "chat_template.json"),
                                                                        "w") as dst:
        dst.write(src.read())


def check_tokenizer(folder, seed):
    """transformers' AutoTokenizer over the written files must give the raw tokenizer's ids (the runtime is
    tested against the former)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    raw = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(folder)
    texts = [scenes.chat_prompt("What color is the star?") + "red<|im_end|>", "Café 123 ÷ naïve \n\n  x",
             'a red circle, with the word "CAT"']
    for i in range(20):
        _, rec = scenes.make_scene(seed, "val", i, draw=False)
        texts += [scenes.chat_prompt(qa["q"]) + qa["a"] for qa in rec["qa"][:3]]
    for t in texts:
        a, b = raw.encode(t, add_special_tokens=False).ids, hf(t, add_special_tokens=False)["input_ids"]
        assert a == b, f"tokenizers and transformers disagree on {t!r}: {a} vs {b}"
        assert raw.decode(a, skip_special_tokens=False) == unicodedata.normalize("NFC", t), t
    return hf


# ------------------------------------------------------------------------------------------------------------------
# Model and processor
# ------------------------------------------------------------------------------------------------------------------

def build_config(tok, args):
    from transformers import LlavaOnevisionConfig
    vocab = tok.get_vocab_size(with_added_tokens=True)
    vision = dict(model_type="siglip_vision_model", patch_size=args.patch, image_size=CROP,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False, attention_dropout=0.0,
                  **VISION)
    text = dict(model_type="qwen2", max_position_embeddings=4096, tie_word_embeddings=False,
                use_sliding_window=False, vocab_size=vocab, rope_theta=1e6, rms_norm_eps=1e-6,
                attention_dropout=0.0, hidden_act="silu", bos_token_id=None,
                eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=tok.token_to_id("<|endoftext|>"),
                **dict(TEXT, hidden_size=args.text_hidden, num_hidden_layers=args.text_layers))
    vision["num_hidden_layers"] = args.vision_layers
    return LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                image_token_index=tok.token_to_id("<image>"),
                                video_token_index=tok.token_to_id("<video>"), projector_hidden_act="gelu",
                                multimodal_projector_bias=True, vision_feature_layer=-1,
                                vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                image_grid_pinpoints=PINPOINTS, tie_word_embeddings=False)


def image_processor():
    from transformers import LlavaOnevisionImageProcessorPil
    return LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=3, do_pad=True,
                                           image_grid_pinpoints=PINPOINTS)


def make_processor(improc, hf_tok, patches_per_crop):
    """transformers' LlavaOnevisionProcessor; video_processor=None is accepted (it needs torchvision, which the
    pinned stack lacks, and no input here is a video) — the same subclass as tools/make_tokenizer_fixtures.py."""
    from transformers import LlavaOnevisionProcessor

    class ProcessorNoVideo(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ProcessorNoVideo(image_processor=improc, tokenizer=hf_tok, video_processor=None,
                            num_image_tokens=patches_per_crop, vision_feature_select_strategy="full",
                            vision_aspect_ratio="anyres_max_9")


def save_checkpoint_folder(model, tok, improc, folder, dtype):
    """The HF folder the runtime loads: weights in `dtype`, configs, tokenizer, processor description."""
    from transformers import GenerationConfig
    os.makedirs(folder, exist_ok=True)
    m = copy.deepcopy(model).to(dtype)
    m.generation_config = GenerationConfig(
        eos_token_id=[tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
        pad_token_id=tok.token_to_id("<|endoftext|>"), bos_token_id=None, do_sample=False)
    m.save_pretrained(folder, safe_serialization=True)
    improc.save_pretrained(folder)
    write_tokenizer(tok, folder)
    with open(os.path.join(folder, "processor_config.json"), "w") as f:
        P = model.config.vision_config.image_size // model.config.vision_config.patch_size
        json.dump({"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": P * P,
                   "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
                   "image_token": "<image>", "video_token": "<video>"}, f, indent=2)
        f.write("\n")


def load_folder(folder, attn="sdpa"):
    """(model f32 eval, processor, raw tokenizer) from a saved folder, failing on any missing/unexpected key."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attn, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{folder}: loading reported {problems}"
    model.eval()
    improc = LlavaOnevisionImageProcessorPil.from_pretrained(folder)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    P = model.config.vision_config.image_size // model.config.vision_config.patch_size
    return model, make_processor(improc, hf_tok, P * P), Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


# ------------------------------------------------------------------------------------------------------------------
# Data: one (scene, question) sample -> processor features with answer-only labels
# ------------------------------------------------------------------------------------------------------------------

def encode_sample(processor, image, question, answer, system, ids_answer):
    """Features of one training example. Labels are -100 except the answer tokens and the closing <|im_end|>
    (ids_answer, the tokenization of answer + '<|im_end|>': the pre-tokenizer splits at the '\\n' before the answer
    and at the special token, so it is exactly the tail of the full sequence; asserted)."""
    text = scenes.chat_prompt(question, system) + answer + "<|im_end|>"
    f = processor(images=[image], text=[text], return_tensors="pt")
    ids = f["input_ids"][0]
    n = len(ids_answer)
    assert ids[-n:].tolist() == ids_answer, "answer tokens are not the tail of the sequence"
    labels = ids.clone()
    labels[:-n] = -100
    return dict(input_ids=ids, labels=labels, pixel_values=f["pixel_values"][0], image_sizes=f["image_sizes"][0])


def encode_dialog(processor, image, turns, system, header_ids, end_id):
    """Features of one multi-turn example (--turns > 1): the first turn carries the image exactly as at inference
    (chat_prompt), the later turns ask more questions about the same scene. Labels cover every answer and its
    <|im_end|>: the tokens after each '<|im_start|>assistant\\n' header up to and including the next <|im_end|>.
    Why: the vision tower and the image tokens dominate a step's cost, and one question per image left ~5 supervised
    tokens per 300-token sequence; more turns give several times the signal for ~1.3x the time."""
    q0, a0 = turns[0]
    text = scenes.chat_prompt(q0, system) + a0 + "<|im_end|>"
    for q, a in turns[1:]:
        text += f"\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>"
    f = processor(images=[image], text=[text], return_tensors="pt")
    ids = f["input_ids"][0]
    labels = ids.new_full(ids.shape, -100)  # no answer token until the walk below marks it
    L, h, n_ans = len(ids), len(header_ids), 0
    lst = ids.tolist()
    for i in range(L - h + 1):
        if lst[i:i + h] == header_ids:
            j = i + h
            while j < L and lst[j] != end_id:
                j += 1
            assert j < L, "answer without <|im_end|>"
            labels[i + h:j + 1] = ids[i + h:j + 1]
            n_ans += 1
    assert n_ans == len(turns), f"found {n_ans} answers, want {len(turns)}"
    return dict(input_ids=ids, labels=labels, pixel_values=f["pixel_values"][0], image_sizes=f["image_sizes"][0])


def collate(items, pad_id):
    import torch
    B, L = len(items), max(len(x["input_ids"]) for x in items)
    n_crops = max(x["pixel_values"].shape[0] for x in items)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    pv = torch.zeros((B, n_crops) + tuple(items[0]["pixel_values"].shape[1:]))
    sizes = torch.stack([x["image_sizes"] for x in items])
    for b, x in enumerate(items):
        n = len(x["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = x["input_ids"], x["labels"], 1
        pv[b, :x["pixel_values"].shape[0]] = x["pixel_values"]
    return dict(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pv, image_sizes=sizes)


class TrainData:
    """Batch t = function of (seed, t): pool t // POOL holds POOL * batch samples drawn with a Generator seeded by
    (seed, pool), sorted by length and cut into POOL batches (little padding), served in a seeded order."""

    def __init__(self, processor, raw_tok, args):
        self.processor, self.tok, self.args = processor, raw_tok, args
        self.pad_id = raw_tok.token_to_id("<|endoftext|>")
        self.types = list(TYPE_WEIGHTS)
        w = np.array([TYPE_WEIGHTS[t] for t in self.types])
        self.type_p = w / w.sum()
        self.pool_id, self.pool = None, None
        self.answer_ids = {}
        # --turns > 1: what marks each answer in a dialog (encode_dialog)
        self.header_ids = raw_tok.encode("<|im_start|>assistant\n", add_special_tokens=False).ids
        self.end_id = raw_tok.token_to_id("<|im_end|>")
        self.total = args.steps or 0

    def objects_at(self, step):
        """Curriculum (--curriculum A,B): scenes of one object for the first fraction A of the steps, two objects
        until B, then the full 2..5. Why: measured without it, the decoder stayed at the answer priors for 1300+
        steps (colour and shape questions at chance, the loss identical with blank images) — finding the asked-about
        object among several and reading its colour is a two-step circuit with no gradient until both steps exist;
        with one object the readout alone pays, and binding is learned on top of it."""
        a, b = self.args.curriculum
        f = step / max(1, self.total)
        return 1 if f < a else 2 if f < b else None

    def sample(self, rng, n_objects=None):
        t = self.types[int(rng.choice(len(self.types), p=self.type_p))]
        for _ in range(50):
            idx = int(rng.integers(self.args.train_scenes))
            img, rec = scenes.make_scene(self.args.seed, "train", idx, n_objects=n_objects)
            cands = [qa for qa in rec["qa"] if qa["type"] == t]
            if cands:
                break
        else:  # a type this stage's scenes never have (position with one object): any question of the scene
            cands = rec["qa"]
        qa = cands[int(rng.integers(len(cands)))]
        system = None if rng.random() < self.args.p_no_system else scenes.SYSTEM_PROMPT
        if self.args.turns > 1:
            rest = [x for x in rec["qa"] if x is not qa]
            pick = rng.permutation(len(rest))[:self.args.turns - 1]
            turns = [(qa["q"], qa["a"])] + [(rest[int(k)]["q"], rest[int(k)]["a"]) for k in pick]
            return encode_dialog(self.processor, img, turns, system, self.header_ids, self.end_id)
        a = qa["a"]
        if a not in self.answer_ids:
            self.answer_ids[a] = self.tok.encode(a + "<|im_end|>", add_special_tokens=False).ids
        return encode_sample(self.processor, img, qa["q"], a, system, self.answer_ids[a])

    def batch(self, step):
        pid = step // POOL
        if pid != self.pool_id:
            rng = np.random.default_rng([self.args.seed, 1000, pid])
            n_obj = self.objects_at(pid * POOL)
            items = [self.sample(rng, n_obj) for _ in range(POOL * self.args.batch)]
            items.sort(key=lambda x: len(x["input_ids"]))
            batches = [items[k * self.args.batch:(k + 1) * self.args.batch] for k in range(POOL)]
            order = rng.permutation(POOL)
            self.pool = [collate(batches[int(k)], self.pad_id) for k in order]
            self.pool_id = pid
        return self.pool[step % POOL]


# ------------------------------------------------------------------------------------------------------------------
# Evaluation: greedy exact match per question type
# ------------------------------------------------------------------------------------------------------------------

def val_items(seed, n_scenes):
    out = []
    for i in range(n_scenes):
        img, rec = scenes.make_scene(seed, "val", i)
        out += [dict(image=img, index=i, **qa) for qa in scenes.eval_items(rec)]
    return out


def evaluate(model, processor, raw_tok, items, batch, max_new_tokens=48):
    """Greedy answers (left-padded batches, stop at <|im_end|> / <|endoftext|>) -> (per-type stats, records)."""
    import torch
    stop = [raw_tok.token_to_id("<|im_end|>"), raw_tok.token_to_id("<|endoftext|>")]
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stats, recs = defaultdict(lambda: [0, 0]), []
    model.eval()
    try:
        with torch.no_grad():
            # captions (~30 tokens) apart from one-word answers, so short batches stop after a few steps
            order = sorted(range(len(items)), key=lambda k: (items[k]["type"] == "caption", items[k]["image"].size))
            for s in range(0, len(order), batch):
                chunk = [items[k] for k in order[s:s + batch]]
                f = processor(images=[x["image"] for x in chunk], text=[scenes.chat_prompt(x["q"]) for x in chunk],
                              return_tensors="pt", padding=True)
                gen = model.generate(**f, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                     pad_token_id=stop[1])
                new = gen[:, f["input_ids"].shape[1]:]
                for x, row in zip(chunk, new):
                    got = tokenizer.decode(row, skip_special_tokens=True).strip()
                    ok = got == x["a"]
                    stats[x["type"]][0] += ok
                    stats[x["type"]][1] += 1
                    recs.append(dict(index=x["index"], type=x["type"], q=x["q"], a=x["a"], got=got, ok=ok))
    finally:
        tokenizer.padding_side = side
    model.train()
    return {t: dict(correct=c, n=n, acc=c / n) for t, (c, n) in stats.items()}, recs


def fmt_acc(stats):
    return "  ".join(f"{t} {stats[t]['acc']:.2f}" for t in scenes.QTYPES if t in stats)


def write_report(work, report):
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    acc = report["val_accuracy"]
    lines = ["# Demo model — training report", "",
             f"Command: `{report['command']}`", "",
             f"Steps {report['steps']} x batch {report['batch']}, {report['train_seconds']:.0f} s "
             f"({report['seconds_per_step']:.2f} s/step, {report['threads']} threads), final loss "
             f"{report['final_loss']:.3f}. Parameters {report['n_params']:,}; checkpoint {report['checkpoint_bytes']:,} "
             f"bytes ({report['save_dtype']}). Vocabulary {report['vocab_size']} ({report['n_bpe']} BPE + "
             f"{len(SPECIALS)} special).", "",
             "Stage 0 (vision tower alone, per-patch object classes): " + (
                 f"{report['stage0'].get('heads', 'joint')} heads, {report['stage0']['steps']} steps x batch "
                 f"{report['stage0']['batch']}, "
                 f"{report['stage0']['seconds']:.0f} s, object-patch accuracy {report['stage0']['object_patch_acc']:.3f}."
                 if report.get("stage0") else "none."),
             f"Image-feature penalty weight: {report.get('feat_reg', 0):g}; curriculum: one-object scenes for the "
             f"first {report['curriculum'][0]:.0%} of the steps, two objects until {report['curriculum'][1]:.0%}; vision tower frozen for the first "
             f"{report['freeze_vision']:.0%}; {report.get('turns', 1)} question(s) per training image.", "",
             f"Validation: greedy exact match on {report['val_scenes']} val scenes (seed {report['seed']}), one "
             "question per type per scene, evaluated from the saved files.", "",
             "| type | correct | n | accuracy |", "|---|---|---|---|"]
    for t in scenes.QTYPES:
        if t in acc:
            lines.append(f"| {t} | {acc[t]['correct']} | {acc[t]['n']} | {acc[t]['acc']:.3f} |")
    tot_c, tot_n = sum(v["correct"] for v in acc.values()), sum(v["n"] for v in acc.values())
    lines.append(f"| all | {tot_c} | {tot_n} | {tot_c / max(tot_n, 1):.3f} |")
    lines += ["", "Some wrong answers:", ""]
    lines += [f"- [{r['type']}] val {r['index']}: {r['q']} -> `{r['got']}` (want `{r['a']}`)"
              for r in report["wrong_examples"]]
    with open(os.path.join(work, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------

def patch_labels(rec, P, window=None):
    """Stage 0 targets: for each of the P x P patches of a crop showing `window` (x0, y0, x1, y1) of the scene in
    scene pixels (default: the whole scene, i.e. the processor's base crop), the class of what its centre shows:
    colour x shape of the topmost object whose disc (0.8 r: inside the drawn shape for every shape kind) contains
    it, the text, or the background (last class)."""
    C, S = len(scenes.COLORS), len(scenes.SHAPES)
    colors, shapes = list(scenes.COLORS), scenes.SHAPES
    out = np.full((P, P), C * S + 1, dtype=np.int64)
    x0, y0, x1, y1 = window or (0, 0, rec["W"], rec["H"])
    for i in range(P):
        for j in range(P):
            y, x = y0 + (i + 0.5) * (y1 - y0) / P, x0 + (j + 0.5) * (x1 - x0) / P
            for o in rec["objects"]:  # drawn in order: a later object covers an earlier one
                if (x - o["cx"]) ** 2 + (y - o["cy"]) ** 2 <= (0.8 * o["r"]) ** 2:
                    out[i, j] = colors.index(o["color"]) * S + shapes.index(o["shape"])
            t = rec.get("text")
            if t and t["box"][0] <= x <= t["box"][2] and t["box"][1] <= y <= t["box"][3]:
                out[i, j] = C * S
    return out


def vit_pretrain(model, args):
    """Stage 0: the vision tower alone learns to say, for every patch of a scene's base crop (or, half the time, of a
    2x high-resolution tile as anyres cuts them), which coloured shape (or text, or background) lies under it — a linear head on the features the projector reads (the last encoder layer's
    hidden states, before post_layernorm), cross-entropy per patch. Why: trained jointly from scratch, the decoder
    learns the answers' priors long before the vision path carries anything (measured: 1300 steps of the joint run
    left colour and shape questions at chance and the image features a near-constant vector 4000x the text
    embeddings' scale); a tower that already separates colours, shapes and positions gets grounded quickly. The head
    is discarded; the checkpoint keeps the real architecture. Deterministic from --seed."""
    import torch
    from PIL import Image
    vt = model.model.vision_tower
    P = CROP // args.patch
    C, S = len(scenes.COLORS), len(scenes.SHAPES)
    n_cls = C * S + 2
    torch.manual_seed(args.seed + 2000)
    if args.vit_heads == "joint":
        heads = [torch.nn.Linear(vt.config.hidden_size, n_cls)]
    else:  # colour (C + text + background) and shape (S + text + background), each its own linear head
        heads = [torch.nn.Linear(vt.config.hidden_size, C + 2), torch.nn.Linear(vt.config.hidden_size, S + 2)]
    opt = torch.optim.AdamW(list(vt.parameters()) + [p for h in heads for p in h.parameters()], lr=args.lr,
                            weight_decay=0.0)
    rng = np.random.default_rng([args.seed, 2000])
    t0, acc_ema = time.time(), None
    for step in range(args.vit_steps):
        xs, ys = [], []
        for _ in range(args.vit_batch):
            img, rec = scenes.make_scene(args.seed, "train", int(rng.integers(args.train_scenes)))
            if rng.random() < 0.5:  # the base crop: the whole scene squeezed to CROP x CROP
                x = img.resize((CROP, CROP), Image.BICUBIC)
                window = None
            else:  # a high-resolution tile as anyres cuts them: the scene at 2 x CROP, one CROP x CROP quarter
                ty, tx = int(rng.integers(2)), int(rng.integers(2))
                x = img.resize((2 * CROP, 2 * CROP), Image.BICUBIC).crop((tx * CROP, ty * CROP, (tx + 1) * CROP,
                                                                           (ty + 1) * CROP))
                W2, H2 = rec["W"] / 2, rec["H"] / 2
                window = (tx * W2, ty * H2, (tx + 1) * W2, (ty + 1) * H2)
            x = np.asarray(x, dtype=np.float32) / 255.0
            xs.append(((x - 0.5) / 0.5).transpose(2, 0, 1))
            ys.append(patch_labels(rec, P, window).reshape(-1))
        px, y = torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.vit_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        h = vt(pixel_values=px, output_hidden_states=True).hidden_states[-1]
        if args.vit_heads == "joint":
            targets = [y]
        else:  # the joint class split into its colour and its shape; text and background keep their own classes
            obj = y < C * S
            targets = [torch.where(obj, y // S, y - C * S + C), torch.where(obj, y % S, y - C * S + S)]
        logits = [hd(h) for hd in heads]
        loss = sum(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), t.reshape(-1))
                   for lg, t in zip(logits, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # a foreground patch counts as right when every head is
            fg = y != n_cls - 1
            right = torch.stack([lg.argmax(-1) == t for lg, t in zip(logits, targets)]).all(0)
            acc = right[fg].float().mean().item()
        acc_ema = acc if acc_ema is None else 0.9 * acc_ema + 0.1 * acc
        if (step + 1) % args.log_every == 0 or step + 1 == args.vit_steps:
            log(f"stage 0 step {step + 1}/{args.vit_steps}  loss {loss.item():.3f}  object-patch acc {acc_ema:.3f}  "
                f"{time.time() - t0:.0f} s")
    return dict(steps=args.vit_steps, batch=args.vit_batch, heads=args.vit_heads, object_patch_acc=acc_ema,
                seconds=time.time() - t0)


def feature_penalty(outs, n_images):
    """Keeps the image tokens usable as content. Measured without it (a joint run, and one after stage 0): the decoder
    turned the ~300 image tokens into an attention sink — their projected features grew to a shared constant vector
    ~1000x the text embeddings' scale, attention still put 30-75 % of its mass on them, and the loss was identical
    with blank images (the values carried nothing). Penalized here: the share of the features' energy in their
    per-token mean (the shared constant a sink needs), and an RMS above 1. The architecture is untouched."""
    import torch
    f = torch.cat([o.reshape(-1, o.shape[-1]) for o in outs]) if outs else None
    if f is None or f.shape[0] == 0:
        return 0.0
    energy = f.pow(2).mean()
    const = f.mean(0).pow(2).mean()
    rms = energy.sqrt()
    return const / (energy + 1e-6) + torch.relu(rms - 1.0) ** 2


def lr_at(step, total, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def folder_bytes(folder):
    return {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder (HF layout)")
    ap.add_argument("--work", default="/tmp/demo/work", help="resumable state and reports")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps")
    ap.add_argument("--minutes", type=float, default=None, help="train for about this long (sets --steps after "
                    "timing the first --time-steps steps; printed, so the run can be reproduced with --steps)")
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-scenes", type=int, default=scenes.DEFAULT_SPLIT_SIZES["train"])
    ap.add_argument("--tok-scenes", type=int, default=4000, help="training scenes whose text trains the tokenizer")
    ap.add_argument("--vocab", type=int, default=VOCAB_TARGET)
    ap.add_argument("--p-no-system", type=float, default=0.1, help="share of prompts without the system turn "
                    "(the HF chat template's form, spec §7.1)")
    ap.add_argument("--patch", type=int, default=PATCH)
    ap.add_argument("--text-hidden", type=int, default=TEXT["hidden_size"])
    ap.add_argument("--text-layers", type=int, default=TEXT["num_hidden_layers"])
    ap.add_argument("--vision-layers", type=int, default=VISION["num_hidden_layers"])
    ap.add_argument("--vit-steps", type=int, default=3000, help="stage 0: vision tower pretraining steps (0: none)")
    ap.add_argument("--vit-batch", type=int, default=64)
    ap.add_argument("--vit-heads", default="joint", choices=["joint", "factored"],
                    help="stage 0's targets: one head over colour x shape classes, or a colour head and a shape head "
                    "(meant to give each shape a direction shared by every colour for the decoder to search by; "
                    "measured no better: models/demo/README.md)")
    ap.add_argument("--curriculum", type=lambda v: tuple(float(x) for x in v.split(",")), default=(0.25, 0.4),
                    help="A,B: one-object scenes for the first fraction A of the steps, two objects until B")
    ap.add_argument("--freeze-vision", type=float, default=0.5, help="fraction of the steps with the stage-0 "
                    "vision tower frozen (LLaVA's recipe: the decoder and projector learn to read it before it moves)")
    ap.add_argument("--feat-reg", type=float, default=1.0, help="weight of the image-feature penalty (0: none)")
    ap.add_argument("--turns", type=int, default=1, help="questions per training image (multi-turn; 1: one)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=1000, help="quick val eval during training (0: off)")
    ap.add_argument("--quick-eval-scenes", type=int, default=16)
    ap.add_argument("--val-scenes", type=int, default=200, help="val scenes of the final evaluation")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--save-dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--resume", action="store_true", help="continue from --work/ckpt.pt")
    ap.add_argument("--eval-only", action="store_true", help="evaluate --out on the val split and exit")
    args = ap.parse_args()
    if not args.eval_only and (args.steps is None) == (args.minutes is None):
        ap.error("give exactly one of --steps and --minutes")
    if args.minutes is not None and args.warmup < args.time_steps:
        ap.error("--warmup must cover the --time-steps timing steps (the schedule's length is not known yet)")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import LlavaOnevisionForConditionalGeneration
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    save_dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.save_dtype]
    command = "python tools/train_demo.py " + " ".join(sys.argv[1:])

    if args.eval_only:
        model, processor, raw_tok = load_folder(args.out, args.attn)
        t0 = time.time()
        acc, recs = evaluate(model, processor, raw_tok, val_items(args.seed, args.val_scenes), args.eval_batch)
        log(f"val ({args.val_scenes} scenes, {time.time() - t0:.0f} s): {fmt_acc(acc)}")
        print(json.dumps(acc, indent=2))
        return

    os.makedirs(args.work, exist_ok=True)
    tok_dir = os.path.join(args.work, "tokenizer")
    ckpt_path = os.path.join(args.work, "ckpt.pt")

    # Tokenizer (trained once per work folder; a resumed run reuses it).
    t0 = time.time()
    if args.resume and os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    else:
        tok = train_tokenizer(args.seed, args.tok_scenes, args.vocab)
        write_tokenizer(tok, tok_dir)
    hf_tok = check_tokenizer(tok_dir, args.seed)
    n_bpe = tok.get_vocab_size(with_added_tokens=False)
    log(f"tokenizer: {n_bpe} BPE + {len(SPECIALS)} special = {tok.get_vocab_size()} ids, <image> = "
        f"{tok.token_to_id('<image>')} ({time.time() - t0:.1f} s)")

    # Model.
    torch.manual_seed(args.seed)
    cfg = build_config(tok, args)
    cfg._attn_implementation = args.attn
    model = LlavaOnevisionForConditionalGeneration(cfg)
    stage0 = None
    vit_path = os.path.join(args.work, "stage0_vision.pt")
    if args.resume and os.path.exists(vit_path):
        stage0 = torch.load(vit_path, weights_only=False)["info"]
    elif args.vit_steps:
        if os.path.exists(vit_path):  # a rerun with the same work folder reuses stage 0
            st0 = torch.load(vit_path, weights_only=False)
            model.model.vision_tower.load_state_dict(st0["vision_tower"])
            stage0 = st0["info"]
            log(f"stage 0: vision tower from {vit_path}")
        else:
            stage0 = vit_pretrain(model, args)
            torch.save(dict(vision_tower=model.model.vision_tower.state_dict(), info=stage0), vit_path + ".tmp")
            os.replace(vit_path + ".tmp", vit_path)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    P = CROP // args.patch
    improc = image_processor()
    processor = make_processor(improc, hf_tok, P * P)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    start, total = 0, args.steps
    t_train, loss_ema, acc_ema = 0.0, None, None
    if args.resume and os.path.exists(ckpt_path):
        st = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, total = st["step"], st["total"]
        t_train, loss_ema, acc_ema = st["log"]
        log(f"resumed at step {start} of {total}")
    log(f"model: {n_params:,} parameters; vision {VISION['hidden_size']}x{args.vision_layers} (crop {CROP}, patch "
        f"{args.patch}, {P * P} tokens per crop), text {args.text_hidden}x{args.text_layers}, vocab "
        f"{cfg.text_config.vocab_size}; pinpoints {PINPOINTS}; {args.threads} threads")

    proj_out = []  # the projector's outputs of this step (the image tokens' input embeddings), for the penalty
    model.model.multi_modal_projector.register_forward_hook(lambda mod, inp, out: proj_out.append(out))
    data = TrainData(processor, tok, args)
    data.total = total or 0  # the curriculum's clock (a resumed run's total comes from the checkpoint)
    quick = val_items(args.seed, args.quick_eval_scenes) if args.eval_every else []
    step, t_timing = start, None
    while total is None or step < total:
        t_step = time.time()
        b = data.batch(step)
        lr = lr_at(step, total or 10 ** 9, args)
        for g in opt.param_groups:
            g["lr"] = lr
        frozen = step < args.freeze_vision * (total or 0)
        for p_ in model.model.vision_tower.parameters():
            p_.requires_grad_(not frozen)
        proj_out.clear()
        out = model(**b)
        loss_total = out.loss
        if args.feat_reg > 0:
            loss_total = loss_total + args.feat_reg * feature_penalty(proj_out, b["image_sizes"].shape[0])
        opt.zero_grad(set_to_none=True)
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # teacher-forced answer-token accuracy
            sel = b["labels"][:, 1:] != -100
            tacc = (out.logits[:, :-1].argmax(-1)[sel] == b["labels"][:, 1:][sel]).float().mean().item()
        loss = out.loss.item()
        loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
        acc_ema = tacc if acc_ema is None else 0.95 * acc_ema + 0.05 * tacc
        dt = time.time() - t_step
        t_train += dt
        step += 1
        if total is None and step - start == 1:
            t_timing = time.time()  # the first step pays one-time costs; time the next ones
        if total is None and step - start == 1 + args.time_steps:
            per = (time.time() - t_timing) / args.time_steps
            total = step + int((args.minutes * 60 - t_train) / per)
            data.total = total
            log(f"timing: {per:.2f} s/step -> --steps {total} for {args.minutes:g} minutes (reproduce with it)")
        if step % args.log_every == 0 or step == total:
            rate = t_train / step
            eta = (total - step) * rate if total else float("nan")
            log(f"step {step}/{total or '?'}  loss {loss:.3f} (ema {loss_ema:.3f})  answer-token acc {acc_ema:.3f}  "
                f"lr {lr:.2e}  {rate:.2f} s/step  elapsed {t_train / 60:.1f} min  eta {eta / 60:.1f} min  "
                f"seq {b['input_ids'].shape[1]}")
        if args.ckpt_every and step % args.ckpt_every == 0 and total and step < total:
            tmp = ckpt_path + ".tmp"
            torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, total=total,
                            args=vars(args), log=(t_train, loss_ema, acc_ema)), tmp)
            os.replace(tmp, ckpt_path)
            log(f"checkpoint: {ckpt_path} (step {step})")
        if args.eval_every and step % args.eval_every == 0 and step < (total or 0):
            te = time.time()
            acc, _ = evaluate(model, processor, tok, quick, args.eval_batch)
            log(f"quick val ({len(quick)} items, {time.time() - te:.0f} s): {fmt_acc(acc)}")

    # Save, reload from the files, evaluate.
    save_checkpoint_folder(model, tok, improc, args.out, save_dtype)
    sizes = folder_bytes(args.out)
    log(f"saved {args.out}: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    model2, processor2, raw2 = load_folder(args.out, args.attn)
    te = time.time()
    acc, recs = evaluate(model2, processor2, raw2, val_items(args.seed, args.val_scenes), args.eval_batch)
    log(f"val ({args.val_scenes} scenes, {len(recs)} items, {time.time() - te:.0f} s, from {args.out}): "
        f"{fmt_acc(acc)}")
    wrong = [r for r in recs if not r["ok"]]
    report = dict(command=command, seed=args.seed, stage0=stage0, feat_reg=args.feat_reg, curriculum=list(args.curriculum), freeze_vision=args.freeze_vision, turns=args.turns, steps=step, batch=args.batch, threads=args.threads,
                  train_seconds=t_train, seconds_per_step=t_train / max(1, step), final_loss=loss_ema,
                  n_params=n_params, checkpoint_bytes=sum(sizes.values()), files=sizes, save_dtype=args.save_dtype,
                  vocab_size=tok.get_vocab_size(), n_bpe=n_bpe, val_scenes=args.val_scenes, val_accuracy=acc,
                  eval_seconds=time.time() - te,
                  wrong_examples=[wrong[int(k)] for k in np.linspace(0, len(wrong) - 1, min(12, len(wrong)))]
                  if wrong else [],
                  library_versions=dict(torch=torch.__version__, transformers=transformers.__version__))
    write_report(args.work, report)
    log(f"report: {os.path.join(args.work, 'report.md')}")


if __name__ == "__main__":
    main()
