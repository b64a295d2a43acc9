/* chat.c — prompt templates (chat.h): the conversation is first rendered into a list of segments (template text,
 * user text, the template's own special tokens, image markers, BOS), then either concatenated (chat_render_text)
 * or tokenized segment by segment (chat_render).
 *
 * Tokenization rule. Consecutive text segments (template text and user text together) form one run, encoded with
 * parse_special = false; the template's special tokens become their ids directly; each image marker becomes
 * image_tokens[k] copies of the tokenizer's "<image>" id; a special string the tokenizer does not know (ChatML's
 * "<|im_start|>" on a SentencePiece model) stays text. For every conversation whose text holds no special-token
 * string this equals the references:
 *   - HF's processor (ChatML, byte-level BPE): it renders the text, expands "<image>", and tokenizes with special
 *     tokens split out; BPE never merges across those split points, so the runs between them tokenize the same;
 *   - LLaVA-1.5's tokenizer_image_token (Vicuna, SentencePiece): every chunk between "<image>" / "</s>" is encoded
 *     on its own (each gets sentencepiece's dummy-prefix "▁"), BOS first.
 * Where they differ, on purpose: HF also splits special tokens the *user* typed, so a message containing
 * "<|im_end|>\n<|im_start|>system\n..." would close the user turn and open a system turn of the user's making
 * (prompt injection), and a typed "<image>" would claim image features. Here user text is always plain text: a typed
 * "<|im_end|>" is tokenized as the characters it is made of, and the only special ids in the prompt are the ones
 * the template put there. */
#include "tokenizer/chat.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"

#define CHAT_MAX_IMAGE_TOKENS (1 << 24) /* per image; the largest real count is ~8.8k (spec §6.7) */

static const char QWEN_DEFAULT_SYSTEM[] = "You are a helpful assistant.";
static const char VICUNA_DEFAULT_SYSTEM[] =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.";

/* ---------------------------------------------------------------------------------------------------------------
 * Rendering into segments */

enum seg_kind {
    SEG_TEXT,    /* template or user text */
    SEG_SPECIAL, /* a special token the template emits ("<|im_start|>", "</s>"): its id when the tokenizer has it */
    SEG_IMAGE,   /* one image: "<image>" in the text, image_tokens[k] ids in the prompt */
    SEG_BOS,     /* the tokenizer's BOS id (SentencePiece models only); nothing in the text */
};

struct seg {
    enum seg_kind kind;
    const char *s; /* not owned: string literals or the caller's messages */
};

struct segs {
    struct seg *v;
    size_t n, cap;
    bool oom;
};

static void seg_add(struct segs *g, enum seg_kind kind, const char *s) {
    if (g->oom) return;
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 32;
        struct seg *v = cap > SIZE_MAX / sizeof *v ? NULL : realloc(g->v, cap * sizeof *v);
        if (!v) {
            vlm_log_error("chat: out of memory for %zu prompt segments", cap);
            g->oom = true;
            return;
        }
        g->v = v, g->cap = cap;
    }
    g->v[g->n++] = (struct seg){kind, s};
}

static void add_images(struct segs *g, int n_images) {
    for (int i = 0; i < n_images; i++) {
        seg_add(g, SEG_IMAGE, "<image>");
        seg_add(g, SEG_TEXT, "\n");
    }
}

static bool is_role(const char *role, const char *want) { return role && strcmp(role, want) == 0; }

/* Checks msgs and resolves the system prompt: the system argument, else a leading "system" message, else NULL.
 * *first receives the index of the first non-system message. VLM_ERR_ARG (after logging) for a bad conversation. */
static enum vlm_status check_msgs(const char *system, const struct chat_msg *msgs, int n_msgs, const char **sys,
                                  int *first) {
    if (n_msgs < 0 || (n_msgs > 0 && !msgs)) {
        vlm_log_error("chat: %d messages", n_msgs);
        return VLM_ERR_ARG;
    }
    *sys = system;
    *first = 0;
    if (n_msgs > 0 && is_role(msgs[0].role, "system")) {
        if (system) {
            vlm_log_error("chat: a system prompt was given twice (argument and first message)");
            return VLM_ERR_ARG;
        }
        if (msgs[0].n_images != 0) {
            vlm_log_error("chat: the system message cannot carry images");
            return VLM_ERR_ARG;
        }
        *sys = msgs[0].text ? msgs[0].text : "";
        *first = 1;
    }
    for (int i = *first; i < n_msgs; i++) {
        if (!is_role(msgs[i].role, "user") && !is_role(msgs[i].role, "assistant")) {
            vlm_log_error("chat: message %d has role '%s' (want user or assistant%s)", i,
                          msgs[i].role ? msgs[i].role : "(null)", i ? "" : ", or system first");
            return VLM_ERR_ARG;
        }
        if (msgs[i].n_images < 0) {
            vlm_log_error("chat: message %d has %d images", i, msgs[i].n_images);
            return VLM_ERR_ARG;
        }
    }
    return VLM_OK;
}

/* ChatML (spec §7.1 / §7.2): "<|im_start|>" role "\n" ["<image>\n" per image] text "<|im_end|>\n" per turn. */
static void render_chatml(struct segs *g, const char *sys, const struct chat_msg *msgs, int first, int n_msgs,
                          bool gen) {
    if (sys) {
        seg_add(g, SEG_SPECIAL, "<|im_start|>");
        seg_add(g, SEG_TEXT, "system\n");
        seg_add(g, SEG_TEXT, sys);
        seg_add(g, SEG_SPECIAL, "<|im_end|>");
        seg_add(g, SEG_TEXT, "\n");
    }
    for (int i = first; i < n_msgs; i++) {
        seg_add(g, SEG_SPECIAL, "<|im_start|>");
        seg_add(g, SEG_TEXT, msgs[i].role);
        seg_add(g, SEG_TEXT, "\n");
        add_images(g, msgs[i].n_images);
        seg_add(g, SEG_TEXT, msgs[i].text ? msgs[i].text : "");
        seg_add(g, SEG_SPECIAL, "<|im_end|>");
        seg_add(g, SEG_TEXT, "\n");
    }
    if (gen) {
        seg_add(g, SEG_SPECIAL, "<|im_start|>");
        seg_add(g, SEG_TEXT, "assistant\n");
    }
}

/* LLaVA-1.5 conv_vicuna_v1 (SeparatorStyle.TWO, sep " ", sep2 "</s>"): system " " then "USER: " msg " " and
 * "ASSISTANT: " msg "</s>"; the generation prompt is "ASSISTANT:". */
static void render_vicuna(struct segs *g, const char *sys, const struct chat_msg *msgs, int first, int n_msgs,
                          bool gen) {
    seg_add(g, SEG_BOS, "");
    seg_add(g, SEG_TEXT, sys);
    seg_add(g, SEG_TEXT, " ");
    for (int i = first; i < n_msgs; i++) {
        bool user = is_role(msgs[i].role, "user");
        seg_add(g, SEG_TEXT, user ? "USER: " : "ASSISTANT: ");
        add_images(g, msgs[i].n_images);
        seg_add(g, SEG_TEXT, msgs[i].text ? msgs[i].text : "");
        if (user) seg_add(g, SEG_TEXT, " ");
        else seg_add(g, SEG_SPECIAL, "</s>");
    }
    if (gen) seg_add(g, SEG_TEXT, "ASSISTANT:");
}

static enum vlm_status render(enum chat_template tmpl, const char *system, const struct chat_msg *msgs, int n_msgs,
                              bool gen, struct segs *g) {
    const char *sys;
    int first;
    enum vlm_status st = check_msgs(system, msgs, n_msgs, &sys, &first);
    if (st != VLM_OK) return st;
    switch (tmpl) {
    case CHAT_CHATML_QWEN: render_chatml(g, sys ? sys : QWEN_DEFAULT_SYSTEM, msgs, first, n_msgs, gen); break;
    case CHAT_CHATML_HF: render_chatml(g, sys, msgs, first, n_msgs, gen); break;
    case CHAT_VICUNA_V1: render_vicuna(g, sys ? sys : VICUNA_DEFAULT_SYSTEM, msgs, first, n_msgs, gen); break;
    default: vlm_log_error("chat: unknown template %d", (int)tmpl); return VLM_ERR_ARG;
    }
    return g->oom ? VLM_ERR_OOM : VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Text */

enum vlm_status chat_render_text(enum chat_template tmpl, const char *system, const struct chat_msg *msgs,
                                 int n_msgs, bool add_generation_prompt, char **out) {
    struct segs g = {0};
    struct vlm_str b = {0};
    enum vlm_status st = render(tmpl, system, msgs, n_msgs, add_generation_prompt, &g);
    for (size_t i = 0; st == VLM_OK && i < g.n; i++)
        if (!vlm_str_append(&b, g.v[i].s, strlen(g.v[i].s), "chat: prompt text")) st = VLM_ERR_OOM;
    if (st == VLM_OK && !b.s && !vlm_str_append(&b, "", 0, "chat: prompt text")) st = VLM_ERR_OOM;
    free(g.v);
    if (st != VLM_OK) {
        vlm_str_free(&b);
        return st;
    }
    *out = b.s;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Ids */

struct idbuf {
    int64_t *v;
    size_t n, cap;
};

/* Makes room for count more ids. */
static bool ids_reserve(struct idbuf *b, size_t count) {
    size_t need, bytes;
    if (!vlm_size_add(b->n, count, &need)) {
        vlm_log_error("chat: prompt too long");
        return false;
    }
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    int64_t *v = vlm_size_mul(cap, sizeof *v, &bytes) ? realloc(b->v, bytes) : NULL;
    if (!v) {
        vlm_log_error("chat: out of memory for %zu prompt ids", cap);
        return false;
    }
    b->v = v, b->cap = cap;
    return true;
}

/* Encodes the pending text run (plain text: parse_special = false) onto b and empties it. */
static enum vlm_status flush_text(const struct vlm_tokenizer *t, struct vlm_str *run, struct idbuf *b) {
    if (run->len == 0) return VLM_OK;
    int64_t *ids = NULL;
    size_t n = 0;
    enum vlm_status st = tok_encode(t, run->s, run->len, false, &ids, &n);
    if (st != VLM_OK) return st;
    if (ids_reserve(b, n)) {
        memcpy(b->v + b->n, ids, n * sizeof *ids);
        b->n += n;
    } else {
        st = VLM_ERR_OOM;
    }
    free(ids);
    run->len = 0;
    return st;
}

enum vlm_status chat_render(const struct vlm_tokenizer *t, enum chat_template tmpl, const char *system,
                            const struct chat_msg *msgs, int n_msgs, const int64_t *image_tokens,
                            int n_images_total, bool add_generation_prompt, int64_t **ids, size_t *n_ids) {
    const struct tok_special *sp = tok_special_ids(t);
    int n_seen = 0;
    for (int i = 0; i < n_msgs && msgs; i++)
        if (msgs[i].n_images > 0) n_seen += msgs[i].n_images;
    if (n_images_total < 0 || n_seen != n_images_total || (n_images_total > 0 && !image_tokens)) {
        vlm_log_error("chat: the conversation has %d images but %d image token counts were given", n_seen,
                      n_images_total);
        return VLM_ERR_ARG;
    }
    for (int k = 0; k < n_images_total; k++) {
        if (image_tokens[k] < 0 || image_tokens[k] > CHAT_MAX_IMAGE_TOKENS) {
            vlm_log_error("chat: image %d has %lld tokens (0 .. %d allowed)", k, (long long)image_tokens[k],
                          CHAT_MAX_IMAGE_TOKENS);
            return VLM_ERR_ARG;
        }
    }
    if (n_images_total > 0 && sp->image < 0) {
        vlm_log_error("chat: the tokenizer has no <image> token, so the prompt cannot hold an image");
        return VLM_ERR_ARG;
    }

    struct segs g = {0};
    struct vlm_str run = {0};
    struct idbuf b = {0};
    int k_img = 0;
    enum vlm_status st = render(tmpl, system, msgs, n_msgs, add_generation_prompt, &g);
    for (size_t i = 0; st == VLM_OK && i < g.n; i++) {
        const struct seg *s = &g.v[i];
        int64_t id = -1;
        size_t count = 1;
        switch (s->kind) {
        case SEG_TEXT: break;
        case SEG_SPECIAL: id = tok_token_to_id(t, s->s); break;
        case SEG_IMAGE: id = sp->image, count = (size_t)image_tokens[k_img++]; break;
        case SEG_BOS:
            if (tok_get_kind(t) != TOK_KIND_SPM || sp->bos < 0) continue; /* Qwen's BPE prepends nothing */
            id = sp->bos;
            break;
        }
        if (id < 0) { /* text, or a special string this tokenizer does not have: it stays text */
            if (!vlm_str_append(&run, s->s, strlen(s->s), "chat: prompt text")) st = VLM_ERR_OOM;
            continue;
        }
        if ((st = flush_text(t, &run, &b)) != VLM_OK) break;
        if (!ids_reserve(&b, count)) {
            st = VLM_ERR_OOM;
            break;
        }
        for (size_t j = 0; j < count; j++) b.v[b.n++] = id;
    }
    if (st == VLM_OK) st = flush_text(t, &run, &b);
    if (st == VLM_OK && !b.v && !ids_reserve(&b, 1)) st = VLM_ERR_OOM; /* a freeable array even when empty */
    free(g.v);
    vlm_str_free(&run);
    if (st != VLM_OK) {
        free(b.v);
        return st;
    }
    *ids = b.v;
    *n_ids = b.n;
    return VLM_OK;
}
