"""make_grad_fixtures.py — the autograd reference for the fp32 gradient pass of MBQ's modality sensitivity
(shared/spec/mbq.md §4), checked by tests/test_backward.c against converter/backward.c:

  tests/golden/grad_ref.bin   one calibration-like sample on tests/data/models/tiny_q run in float32 with eager
                              attention: the decoder input embeddings emb (n, d) (a block of random "vision"
                              features scattered between embed_tokens rows), the token ids (n), the vision and answer
                              masks vis/ans (n) u8, the model's own loss (mean next-token CE over labels != -100
                              after the shift; no 1/128 factor), and per layer the gradients of the loss with respect
                              to the outputs of self_attn.o_proj (g_attn) and mlp.down_proj (g_mlp), (L, n, d).

The gradients come from torch autograd through transformers' own Qwen2 modules (hooks on the two linears), so they
are independent of the hand-written adjoints they test. The loss is also recomputed by hand from the logits and
asserted equal to transformers' (so the fixture pins down the shift and the averaging, not just one library's code).

Run: python tools/make_grad_fixtures.py  (pinned versions of tools/requirements.txt; transformers 5.24.0)."""

import os
import sys

import numpy as np
import torch
import transformers
from transformers import LlavaOnevisionForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_golden  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N = 48
VIS = range(5, 25)                      # the image-embedding span
ANS = list(range(30, 48)) + [2, 27]     # supervised positions (a few outside the answer block too)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    model_dir = os.path.join(REPO, "tests", "data", "models", "tiny_q")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
    lm = model.model.language_model
    head = model.lm_head
    embed = lm.embed_tokens.weight.detach()
    rng = np.random.default_rng(4242)
    ids = torch.from_numpy(rng.integers(0, 1000, N).astype(np.int64))
    vis = np.zeros(N, np.uint8)
    vis[list(VIS)] = 1
    ans = np.zeros(N, np.uint8)
    ans[ANS] = 1
    emb = embed[ids].clone()
    # vision features: random normal at a few times the token-embedding scale (projector outputs are larger than
    # embedding rows in the real model)
    scale = 3.0 * float(embed.std())
    emb[list(VIS)] = torch.from_numpy(rng.normal(0.0, scale, (len(VIS), emb.shape[1])).astype(np.float32))
    emb = emb.contiguous()
    labels = torch.where(torch.from_numpy(ans).bool(), ids, torch.full_like(ids, -100))

    grads = {}

    def keep(name):
        def hook(_module, _inp, out):
            out.register_hook(lambda g: grads.__setitem__(name, g.detach().clone()))
        return hook

    n_layers = len(lm.layers)
    for i, layer in enumerate(lm.layers):
        layer.self_attn.o_proj.register_forward_hook(keep(("attn", i)))
        layer.mlp.down_proj.register_forward_hook(keep(("mlp", i)))

    x = emb.clone()[None].requires_grad_(True)
    out = lm(inputs_embeds=x, use_cache=False)
    logits = head(out.last_hidden_state)
    loss = model.loss_function(logits=logits, labels=labels[None], vocab_size=logits.shape[-1])
    # the same loss by hand: logits at t predict ids[t+1], mean over supervised t+1
    lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    tgt = labels[1:]
    sel = tgt != -100
    mine = -lp[sel.nonzero()[:, 0], tgt[sel]].mean()
    assert abs(mine.item() - loss.item()) <= 1e-6 * abs(mine.item()), (mine.item(), loss.item())
    loss.backward()

    g_attn = torch.stack([grads[("attn", i)][0] for i in range(n_layers)]).numpy()
    g_mlp = torch.stack([grads[("mlp", i)][0] for i in range(n_layers)]).numpy()
    g_emb = x.grad[0].numpy()
    records = [
        ("emb", emb.numpy()),
        ("ids", ids.numpy()),
        ("vis", vis),
        ("ans", ans),
        ("loss", np.array([loss.item()], np.float32)),
        ("g_attn", g_attn.astype(np.float32)),
        ("g_mlp", g_mlp.astype(np.float32)),
        ("g_emb", g_emb.astype(np.float32)),
    ]
    path = os.path.join(REPO, "tests", "golden", "grad_ref.bin")
    size = write_golden(path, records, max_bytes=200_000)
    print(f"{os.path.relpath(path, REPO)}: {size} bytes, loss {loss.item():.6f}, "
          f"max|g_attn| {np.abs(g_attn).max():.3g}, max|g_mlp| {np.abs(g_mlp).max():.3g}", file=sys.stderr)


if __name__ == "__main__":
    main()
