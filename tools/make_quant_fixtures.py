"""make_quant_fixtures.py — fixtures for the weight formats and the quantized runtime, written independently of the C
code (torch + numpy, following the formulas of shared/spec/mbq.md §2 literally):

  tests/golden/quant_ref.bin   a weight matrix with awkward groups (all-positive, all-negative, constant, one outlier,
                               tiny range), the dequantized values ŵ that W3 g128, W4 g128 (asymmetric, integer zero,
                               fp16 scale) and W4 per-channel symmetric (W4A8) give, the int8 per-row ŵ (q8r), and the
                               per-token int8 activation codes and scales of §2.2 — to be matched BIT FOR BIT by
                               kernels/cpu/quant_ref.c.
  tests/data/models/tiny_q/    a LLaVA-OneVision checkpoint saved by transformers whose decoder widths are multiples of
                               128 (hidden 128, ffn 384 — not a multiple of 256), so every g128 format applies; random
                               weights from make_fixtures.randomize_weights; F16; tied embeddings (as the 0.5B model).

Run: python tools/make_quant_fixtures.py  (same pinned versions as make_fixtures.py, tools/requirements.txt)."""

import os
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (shared weight randomiser, image processor, constants)
from golden_io import write_golden  # noqa: E402

REPO = mf.REPO


# ---- the quantizers of mbq.md §2, in torch, with our one documented deviation: the asymmetric scale is rounded to
# fp16 first and the codes are derived from that rounded scale (mbq.md §2.1 "[ours]").

def asym_g128(w, bits):
    """w (n, k) float32 -> ŵ (n, k) float32."""
    Q = 2 ** bits - 1
    n, k = w.shape
    g = w.reshape(n, k // 128, 128)
    mx = g.amax(dim=2, keepdim=True)
    mn = g.amin(dim=2, keepdim=True)
    s = torch.clamp(mx - mn, min=1e-5) / Q
    s = s.to(torch.float16).to(torch.float32)
    z = torch.clamp(-torch.round(mn / s), 0, Q)
    q = torch.clamp(torch.round(g / s) + z, 0, Q)
    return ((q - z) * s).reshape(n, k)


def sym_row(w, qmax, qmin):
    s = torch.clamp(w.abs().amax(dim=1, keepdim=True), min=1e-5) / qmax
    q = torch.clamp(torch.round(w / s), qmin, qmax)
    return q * s


def act_q8(x):
    s = torch.clamp(x.abs().amax(dim=1, keepdim=True), min=1e-5) / 127
    q = torch.clamp(torch.round(x / s), -128, 127)
    return q.to(torch.int32), s.reshape(-1)


def quant_records():
    rng = np.random.default_rng(5150)
    n, k = 12, 384
    w = rng.normal(0.0, 0.05, (n, k))
    w[0, 0:128] = np.abs(w[0, 0:128]) + 0.01          # all-positive group: z = 0, top codes clip
    w[1, 128:256] = -np.abs(w[1, 128:256]) - 0.01     # all-negative group: z = Q
    w[2, 0:128] = 0.3                                 # constant group: range 0 -> scale 1e-5 / Q
    w[3, 5] = 2.5                                     # one outlier
    w[4, 256:384] *= 1e-4                             # tiny range
    w[5, :] = np.round(w[5, :] * 40) / 40             # exact ties at several grid points
    w[6, :] *= 1e-7                                   # whole row below the 1e-5 floor (W4A8 / q8r scale floor)
    w = torch.from_numpy(w.astype(np.float32))
    x = torch.from_numpy(rng.normal(0.0, 1.0, (5, k)).astype(np.float32))
    x[1, 7] = 40.0                                    # an activation outlier
    x[2, :] = 0.0                                     # an all-zero token: scale floor 1e-5 / 127
    a, s = act_q8(x)
    return [
        ("w", w.numpy()),
        ("w3g128", asym_g128(w, 3).numpy()),
        ("w4g128", asym_g128(w, 4).numpy()),
        ("w4a8", sym_row(w, 7, -8).numpy()),
        ("q8r", sym_row(w, 127, -127).numpy()),
        ("x", x.numpy()),
        ("x_q8", a.numpy()),
        ("x_scale", s.numpy()),
    ]


# ---- tiny_q: make_fixtures' "tiny" vision side, a decoder whose widths suit group 128

def build_tiny_q(model_dir):
    spec = dict(arch="tiny", dtype=torch.float16, tie=True)
    base = mf.ARCHS["tiny"]
    vision = dict(model_type="siglip_vision_model", patch_size=mf.TINY_PATCH, hidden_act="gelu_pytorch_tanh",
                  layer_norm_eps=1e-6, vision_use_head=False, **base["vision"])
    text = dict(model_type="qwen2", max_position_embeddings=4096, tie_word_embeddings=True, use_sliding_window=False,
                hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1024, rope_theta=1e6, rms_norm_eps=1e-6)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=mf.IMAGE_TOKEN,
                               video_token_index=mf.VIDEO_TOKEN, projector_hidden_act="gelu",
                               vision_feature_layer=-1, vision_feature_select_strategy="full",
                               vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=mf.TINY_PINPOINTS)
    torch.manual_seed(6000)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    mf.randomize_weights(model, 6000)
    model = model.to(torch.float16)
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir, safe_serialization=True)
    mf.tiny_image_processor(spec).save_pretrained(model_dir)
    return model


def main():
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    path = os.path.join(REPO, "tests", "golden", "quant_ref.bin")
    size = write_golden(path, quant_records())
    print(f"{os.path.relpath(path, REPO)}: {size} bytes", file=sys.stderr)
    model_dir = os.path.join(REPO, "tests", "data", "models", "tiny_q")
    build_tiny_q(model_dir)
    total = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    print(f"{os.path.relpath(model_dir, REPO)}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
