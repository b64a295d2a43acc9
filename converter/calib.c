/* calib.c — MBQ's calibration inputs (calib.h; shared/spec/mbq.md §3).
 *
 * What each sample is, following the reference (qmllm coco_vl.py + LLaVA-NeXT preprocess_qwen + llava_onevision.py):
 *   - prompt: the human value with every "<image>" removed and stripped, then "<image>\n" + that (§3 "moved to the
 *     front"); the gpt value is the caption, used as is;
 *   - ids: ChatML with the default system prompt (chat_render, CHAT_CHATML_QWEN):
 *       <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n{prompt}<|im_end|>\n
 *       <|im_start|>assistant\n{caption}<|im_end|>\n
 *     data text is encoded with special-token parsing off (a literal "<|im_end|>" in a caption stays text), the
 *     template's own special tokens are inserted as ids, and "<image>" becomes n_vis positions;
 *   - vis: those n_vis positions = P² features of ONE crop + 1 image_newline (730 for a 384/14 tower);
 *   - ans: the reference's labels != -100 (§3 "Labels"): the whole assistant turn from its <|im_start|> through the
 *     final "\n", PLUS every "\n" token (Qwen2 id 198, looked up through the tokenizer), <|im_start|> and
 *     <|im_end|> anywhere, system and user turns included. This quirk of the reference is reproduced on purpose
 *     (mbq.md §3 and §9): those tokens count as "answer" tokens in the loss of §5;
 *   - emb: text embeddings (the model's embedding table) with the vision rows scattered into the vis positions.
 *
 * Images use LLaVA's "pad" mode, not the inference-time anyres (§3 "Image preprocessing at calibration"): expand to
 * a square of the mean colour (expand2square with tuple(int(x*255) for x in image_mean)), Pillow-exact bicubic
 * resize to image_size², rescale + normalize exactly as vision/preprocess.c does.
 *
 * Selection [ours, §3]: we do not reproduce NumPy's default_rng(42); the whole list is shuffled by
 * conv_calib_shuffle (splitmix64 + Fisher–Yates) and the first n_samples are taken. Unlike the reference (index
 * modulo length) a list shorter than n_samples is an error. Every entry's text is validated before any image is
 * read, so a bad sample is reported whatever the seed; images are read only for the selected samples.
 * Not done here (later steps of the converter): padding to a batch (§3 "Sequence"), model_max_length truncation. */
#include "converter/calib.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/qwen2.h"
#include "runtime/util.h"
#include "tokenizer/chat.h"
#include "vision/siglip.h"

#define CALIB_MAX_JSON_BYTES (1ull << 30) /* the ShareGPT4V lists are a few hundred MB at most */
#define CALIB_MAX_VISION 4194304           /* sanity bound on n_vis (a 384/14 tower gives 730) */

static const char IMAGE_MARK[] = "<image>";

int64_t conv_calib_n_vision(const struct vlm_config *c) {
    const int64_t P = c->vision.n_patches_side;
    return P * P + 1;
}

void conv_sample_free(struct conv_sample *s) {
    if (!s) return;
    free(s->ids);
    free(s->vis);
    free(s->ans);
    free(s->emb);
    memset(s, 0, sizeof *s);
}

void conv_calib_free(struct conv_calib *c) {
    if (!c) return;
    for (int64_t i = 0; i < c->n_samples && c->s; i++) conv_sample_free(&c->s[i]);
    free(c->s);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Text */

static bool is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Python's value.replace("<image>", "").strip(), with strip limited to ASCII whitespace (Python also strips
 * Unicode spaces; captions in the COCO subset do not start or end with them). */
enum vlm_status conv_calib_clean_prompt(const char *human, char **out) {
    if (!human || !out) {
        vlm_log_error("calibration: missing prompt");
        return VLM_ERR_ARG;
    }
    if (!strstr(human, IMAGE_MARK)) {
        vlm_log_error("calibration: the human turn has no \"<image>\" marker");
        return VLM_ERR_FORMAT;
    }
    const size_t len = strlen(human), mark = sizeof IMAGE_MARK - 1;
    char *r = vlm_alloc_array(len + 1, 1, "calibration prompt");
    if (!r) return VLM_ERR_OOM;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (strncmp(human + i, IMAGE_MARK, mark) == 0) {
            i += mark;
        } else {
            r[n++] = human[i++];
        }
    }
    size_t lo = 0, hi = n;
    while (lo < hi && is_space(r[lo])) lo++;
    while (hi > lo && is_space(r[hi - 1])) hi--;
    memmove(r, r + lo, hi - lo);
    r[hi - lo] = '\0';
    *out = r;
    return VLM_OK;
}

enum vlm_status conv_calib_build_ids(const struct vlm_tokenizer *tok, const char *prompt, const char *caption,
                                     int64_t n_vis, int64_t image_id, struct conv_sample *out) {
    if (!tok || !prompt || !caption || !out || n_vis < 1 || n_vis > CALIB_MAX_VISION) {
        vlm_log_error("calibration: bad arguments to build a sample (%lld vision positions)", (long long)n_vis);
        return VLM_ERR_ARG;
    }
    memset(out, 0, sizeof *out);
    const int64_t im_start = tok_token_to_id(tok, "<|im_start|>"), im_end = tok_token_to_id(tok, "<|im_end|>");
    const int64_t tok_image = tok_special_ids(tok)->image;
    if (im_start < 0 || im_end < 0 || tok_image < 0) {
        vlm_log_error("calibration: the tokenizer lacks <|im_start|>, <|im_end|> or <image> (ChatML needs them)");
        return VLM_ERR_ARG;
    }
    /* the "\n" of the label quirk is whatever single id the tokenizer gives "\n" (198 for Qwen2) */
    int64_t *nl_ids = NULL, *full = NULL, *prefix = NULL;
    size_t n_nl = 0, n_full = 0, n_prefix = 0;
    enum vlm_status st = tok_encode(tok, "\n", 1, false, &nl_ids, &n_nl);
    if (st != VLM_OK) return st;
    const int64_t nl = n_nl == 1 ? nl_ids[0] : -1;
    free(nl_ids);
    if (nl < 0) {
        vlm_log_error("calibration: the tokenizer encodes \"\\n\" as %zu tokens (one expected)", n_nl);
        return VLM_ERR_ARG;
    }

    /* The assistant turn starts where the rendering of the system + user turns ends: the prefix ends with a text
     * run ("\n") and the next segment is the special <|im_start|>, so no text run crosses the boundary and the
     * prefix's ids are exactly the first ids of the whole conversation (checked below). */
    const struct chat_msg msgs[2] = {{"user", prompt, 1}, {"assistant", caption, 0}};
    if ((st = chat_render(tok, CHAT_CHATML_QWEN, NULL, msgs, 2, &n_vis, 1, false, &full, &n_full)) != VLM_OK)
        goto fail;
    if ((st = chat_render(tok, CHAT_CHATML_QWEN, NULL, msgs, 1, &n_vis, 1, false, &prefix, &n_prefix)) != VLM_OK)
        goto fail;
    st = VLM_ERR_ARG;
    if (n_prefix >= n_full || memcmp(prefix, full, n_prefix * sizeof *full) != 0 || full[n_prefix] != im_start) {
        vlm_log_error("calibration: the user turn does not tokenize as a prefix of the conversation");
        goto fail;
    }
    st = VLM_ERR_OOM;
    out->vis = vlm_calloc_array(n_full, 1, "calibration vision mask");
    out->ans = vlm_calloc_array(n_full, 1, "calibration answer mask");
    if (!out->vis || !out->ans) goto fail;
    int64_t n_img = 0;
    for (size_t i = 0; i < n_full; i++) {
        if (full[i] == tok_image) {
            out->vis[i] = 1;
            full[i] = image_id;
            n_img++;
        } else {
            /* mbq.md §3 label quirk: the assistant turn, plus every "\n", <|im_start|>, <|im_end|> anywhere */
            out->ans[i] = i >= n_prefix || full[i] == nl || full[i] == im_start || full[i] == im_end;
        }
    }
    if (n_img != n_vis) { /* cannot happen: data text is encoded without special tokens */
        vlm_log_error("calibration: %lld image positions rendered for %lld", (long long)n_img, (long long)n_vis);
        st = VLM_ERR_ARG;
        goto fail;
    }
    free(prefix);
    out->ids = full;
    out->n = (int64_t)n_full;
    return VLM_OK;
fail:
    free(full);
    free(prefix);
    conv_sample_free(out);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Images: LLaVA's pad mode */

enum vlm_status conv_calib_pad_square(const struct vlm_image *img, const struct vlm_preproc_config *pp,
                                      struct vlm_image *out) {
    if (!img || !img->rgb || !pp || !out || img->width < 1 || img->height < 1) {
        vlm_log_error("calibration: pad: missing image");
        return VLM_ERR_ARG;
    }
    const int64_t w = img->width, h = img->height, side = w > h ? w : h;
    size_t px, bytes;
    if (!vlm_size_mul((size_t)side, (size_t)side, &px) || !vlm_size_mul(px, 3, &bytes)) {
        vlm_log_error("calibration: pad: a %lld x %lld canvas overflows", (long long)side, (long long)side);
        return VLM_ERR_OOM;
    }
    uint8_t *rgb = vlm_alloc_array(bytes, 1, "padded calibration image");
    if (!rgb) return VLM_ERR_OOM;
    /* tuple(int(x * 255) for x in image_mean): int() truncates; the float32 mean widened to double matches the
     * Python float except within float32 rounding of an integer boundary (not the case for the CLIP/SigLIP means) */
    uint8_t fill[3];
    for (int ch = 0; ch < 3; ch++) {
        double v = (double)pp->image_mean[ch] * 255.0;
        fill[ch] = v <= 0.0 ? 0 : v >= 255.0 ? 255 : (uint8_t)v;
    }
    for (size_t i = 0; i < px; i++) memcpy(rgb + 3 * i, fill, 3);
    /* PIL paste at ((side - w) // 2, (side - h) // 2): one of the two offsets is 0 */
    const int64_t x0 = (side - w) / 2, y0 = (side - h) / 2;
    for (int64_t y = 0; y < h; y++)
        memcpy(rgb + ((size_t)(y0 + y) * (size_t)side + (size_t)x0) * 3, img->rgb + (size_t)y * (size_t)w * 3,
               (size_t)w * 3);
    out->width = out->height = side;
    out->rgb = rgb;
    return VLM_OK;
}

enum vlm_status conv_calib_pad_pixels(const struct vlm_image *img, const struct vlm_model *m, float **out_pixels) {
    if (!m || !out_pixels) {
        vlm_log_error("calibration: pad: missing model");
        return VLM_ERR_ARG;
    }
    const struct vlm_preproc_config *pp = &m->preproc;
    const int64_t S = m->config.vision.image_size;
    if (pp->resample != 3) {
        vlm_log_error("calibration: resample filter %d is not supported (only 3 = BICUBIC)", pp->resample);
        return VLM_ERR_UNSUPPORTED;
    }
    if (S < 1 || S > (1 << 20)) {
        vlm_log_error("calibration: vision image_size %lld is out of range", (long long)S);
        return VLM_ERR_ARG;
    }
    struct vlm_image sq = {0};
    enum vlm_status st = conv_calib_pad_square(img, pp, &sq);
    if (st != VLM_OK) return st;
    const size_t plane = (size_t)S * (size_t)S;
    uint8_t *resized = vlm_alloc_array(plane, 3, "resized calibration image");
    float *pixels = vlm_alloc_array(plane * 3, sizeof(float), "calibration pixel values");
    st = VLM_ERR_OOM;
    if (!resized || !pixels) goto fail;
    if ((st = img_resize_bicubic_u8(sq.rgb, sq.height, sq.width, 3, resized, S, S)) != VLM_OK) goto fail;
    float lut[3][256];
    img_level_table(pp, lut);
    for (size_t i = 0; i < plane; i++)
        for (int ch = 0; ch < 3; ch++) pixels[(size_t)ch * plane + i] = lut[ch][resized[3 * i + (size_t)ch]];
    img_free(&sq);
    free(resized);
    *out_pixels = pixels;
    return VLM_OK;
fail:
    img_free(&sq);
    free(resized);
    free(pixels);
    return st;
}

enum vlm_status conv_calib_vision(const struct vlm_model *m, const struct vlm_image *img, float **out_rows) {
    if (!m || !out_rows || !m->w.image_newline) {
        vlm_log_error("calibration: vision: missing model or image_newline");
        return VLM_ERR_ARG;
    }
    const struct vlm_config *c = &m->config;
    const int64_t P = c->vision.n_patches_side, np = P * P, d = c->text.hidden_size;
    const int64_t width = c->vision.hidden_size * c->n_feature_layers;
    float *pixels = NULL, *feats = NULL, *rows = NULL;
    enum vlm_status st = conv_calib_pad_pixels(img, m, &pixels);
    if (st != VLM_OK) return st;
    st = VLM_ERR_OOM;
    feats = vlm_alloc_array((size_t)np, (size_t)width * sizeof(float), "calibration vision features");
    rows = vlm_alloc_array((size_t)(np + 1), (size_t)d * sizeof(float), "calibration vision rows");
    if (!feats || !rows) goto fail;
    if ((st = vit_forward(m, pixels, 1, feats)) != VLM_OK) goto fail;
    if ((st = vit_project(m, feats, np, rows)) != VLM_OK) goto fail;
    /* LLaVA-NeXT appends image_newline to a single-crop image when the merge type contains "unpad" (§3) */
    memcpy(rows + (size_t)np * (size_t)d, m->w.image_newline, (size_t)d * sizeof(float));
    free(pixels);
    free(feats);
    *out_rows = rows;
    return VLM_OK;
fail:
    free(pixels);
    free(feats);
    free(rows);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Selection */

/* splitmix64 (Steele, Lea, Flood 2014): state += 0x9E3779B97F4A7C15, then the two xor-shift-multiply rounds. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* perm = identity, then for i = n-1 down to 1: j uniform in [0, i] (draws >= the largest multiple of i+1 are
 * redrawn, so j is unbiased; j = draw % (i+1)), swap perm[i] and perm[j]. The state starts at seed. */
void conv_calib_shuffle(int64_t n, uint64_t seed, int64_t *perm) {
    uint64_t state = seed;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const uint64_t b = (uint64_t)i + 1, lim = UINT64_MAX - UINT64_MAX % b;
        uint64_t r;
        do r = splitmix64(&state);
        while (r >= lim);
        const int64_t j = (int64_t)(r % b), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * The list */

/* A sample's strings, pointing into the parsed JSON. */
struct entry {
    const char *image, *human, *gpt;
};

static const cJSON *get_key(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }

/* true when obj (an object) names a key twice: a parser-differential hole we close as config.c does. */
static bool has_dup_key(const cJSON *obj) {
    for (const cJSON *a = obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0) return true;
    return false;
}

/* Validates sample k of the list; one error line on failure. */
static enum vlm_status check_entry(const char *path, int64_t k, const cJSON *it, struct entry *e) {
    const long long kk = (long long)k;
    if (!cJSON_IsObject(it) || has_dup_key(it)) {
        vlm_log_error("%s: sample %lld is not a JSON object (or repeats a key)", path, kk);
        return VLM_ERR_FORMAT;
    }
    const cJSON *img = get_key(it, "image"), *conv = get_key(it, "conversations");
    if (!cJSON_IsString(img) || !img->valuestring[0]) {
        vlm_log_error("%s: sample %lld has no \"image\" path", path, kk);
        return VLM_ERR_FORMAT;
    }
    if (!cJSON_IsArray(conv)) {
        vlm_log_error("%s: sample %lld has no \"conversations\" list", path, kk);
        return VLM_ERR_FORMAT;
    }
    const int n_turns = cJSON_GetArraySize(conv);
    const char *vals[2] = {NULL, NULL}, *want[2] = {"human", "gpt"};
    for (int t = 0; t < 2 && t < n_turns; t++) {
        const cJSON *turn = cJSON_GetArrayItem(conv, t);
        const cJSON *from = cJSON_IsObject(turn) ? get_key(turn, "from") : NULL;
        const cJSON *val = cJSON_IsObject(turn) ? get_key(turn, "value") : NULL;
        if (!cJSON_IsObject(turn) || has_dup_key(turn) || !cJSON_IsString(from) || !cJSON_IsString(val)) {
            vlm_log_error("%s: sample %lld: conversations[%d] needs string \"from\" and \"value\"", path, kk, t);
            return VLM_ERR_FORMAT;
        }
        if (strcmp(from->valuestring, want[t]) != 0) {
            char pb[40];
            vlm_log_error("%s: sample %lld: conversations[%d] is from \"%s\" (want \"%s\")", path, kk, t,
                          vlm_printable(from->valuestring, pb, sizeof pb), want[t]);
            return VLM_ERR_FORMAT;
        }
        vals[t] = val->valuestring;
    }
    if (n_turns < 2) {
        vlm_log_error("%s: sample %lld has no gpt answer (%d turn%s)", path, kk, n_turns, n_turns == 1 ? "" : "s");
        return VLM_ERR_FORMAT;
    }
    if (n_turns > 2) {
        vlm_log_error("%s: sample %lld has %d turns; only one human/gpt pair is supported", path, kk, n_turns);
        return VLM_ERR_FORMAT;
    }
    if (!strstr(vals[0], IMAGE_MARK)) {
        vlm_log_error("%s: sample %lld: the human turn has no \"<image>\" marker", path, kk);
        return VLM_ERR_FORMAT;
    }
    *e = (struct entry){img->valuestring, vals[0], vals[1]};
    return VLM_OK;
}

/* The image path: as given when absolute, else relative to the JSON file's folder. false when it does not fit. */
static bool image_path(const char *json_path, const char *image, char *buf, size_t cap) {
    if (image[0] == '/') return (size_t)snprintf(buf, cap, "%s", image) < cap;
    const char *slash = strrchr(json_path, '/');
    if (!slash) return (size_t)snprintf(buf, cap, "%s", image) < cap;
    const int dir_len = (int)(slash - json_path);
    if ((size_t)dir_len >= cap) return false;
    return (size_t)snprintf(buf, cap, "%.*s/%s", dir_len, json_path, image) < cap;
}

/* Builds sample k (list entry e) into *s; one error line on failure. */
static enum vlm_status build_sample(const char *path, int64_t k, const struct entry *e, const struct vlm_model *m,
                                    const struct vlm_tokenizer *tok, struct conv_sample *s) {
    const int64_t n_vis = conv_calib_n_vision(&m->config), d = m->config.text.hidden_size;
    char ipath[4096], pb[160];
    struct vlm_image img = {0};
    float *rows = NULL;
    char *prompt = NULL;
    if (!image_path(path, e->image, ipath, sizeof ipath)) {
        vlm_log_error("%s: sample %lld: image path %s is too long", path, (long long)k,
                      vlm_printable(e->image, pb, sizeof pb));
        return VLM_ERR_ARG;
    }
    if (access(ipath, R_OK) != 0) {
        vlm_log_error("%s: sample %lld: cannot read image %s (%s)", path, (long long)k,
                      vlm_printable(ipath, pb, sizeof pb), strerror(errno));
        return VLM_ERR_IO;
    }
    enum vlm_status st = conv_calib_clean_prompt(e->human, &prompt);
    if (st != VLM_OK) return st;
    if ((st = conv_calib_build_ids(tok, prompt, e->gpt, n_vis, m->config.image_token_index, s)) != VLM_OK) goto fail;
    for (int64_t i = 0; i < s->n; i++) {
        if (s->ids[i] < 0 || s->ids[i] >= m->w.n_vocab_rows) {
            vlm_log_error("%s: sample %lld: token id %lld at position %lld is outside the model's %lld embedding rows "
                          "(tokenizer and model do not match)",
                          path, (long long)k, (long long)s->ids[i], (long long)i, (long long)m->w.n_vocab_rows);
            st = VLM_ERR_ARG;
            goto fail;
        }
    }
    if ((st = img_load(ipath, &img)) != VLM_OK) goto fail; /* logs one line naming the image */
    if ((st = conv_calib_vision(m, &img, &rows)) != VLM_OK) goto fail;
    st = VLM_ERR_OOM;
    s->emb = vlm_alloc_array((size_t)s->n, (size_t)d * sizeof(float), "calibration embeddings");
    if (!s->emb) goto fail;
    if ((st = qwen2_embed(m, s->ids, s->n, s->emb)) != VLM_OK) goto fail;
    for (int64_t i = 0, r = 0; i < s->n; i++)
        if (s->vis[i]) memcpy(s->emb + i * d, rows + (r++) * d, (size_t)d * sizeof(float));
    free(prompt);
    free(rows);
    img_free(&img);
    return VLM_OK;
fail:
    free(prompt);
    free(rows);
    img_free(&img);
    conv_sample_free(s);
    return st;
}

enum vlm_status conv_calib_load(const char *json_path, const struct vlm_model *m, const struct vlm_tokenizer *tok,
                                int64_t n_samples, uint64_t seed, struct conv_calib *out) {
    char *text = NULL;
    size_t len = 0, where = 0;
    cJSON *root = NULL;
    struct entry *entries = NULL;
    int64_t *perm = NULL;
    struct conv_calib c = {0};
    if (out) memset(out, 0, sizeof *out);
    if (!json_path || !m || !tok || !out) {
        vlm_log_error("calibration: missing argument");
        return VLM_ERR_ARG;
    }
    if (n_samples < 1) {
        vlm_log_error("%s: %lld calibration samples asked (at least 1)", json_path, (long long)n_samples);
        return VLM_ERR_ARG;
    }
    enum vlm_status st = vlm_file_read_all(json_path, CALIB_MAX_JSON_BYTES, &text, &len);
    if (st != VLM_OK) return st; /* logged, naming the file */
    st = VLM_ERR_FORMAT;
    const char *why = vlm_json_prescan((const unsigned char *)text, len, &where);
    if (why) {
        vlm_log_error("%s: not valid JSON: %s (byte %zu)", json_path, why, where);
        goto done;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        vlm_log_error("%s: not valid JSON (near byte %zu)", json_path, at);
        goto done;
    }
    for (const char *p = end; p < text + len; p++) {
        if (!is_space(*p)) {
            vlm_log_error("%s: bytes after the JSON value (byte %zu)", json_path, (size_t)(p - text));
            goto done;
        }
    }
    if (!cJSON_IsArray(root)) {
        vlm_log_error("%s: the top level is not a JSON list of samples", json_path);
        goto done;
    }
    const int64_t n_total = cJSON_GetArraySize(root);
    if (n_total < n_samples) {
        vlm_log_error("%s: holds %lld samples, fewer than the %lld asked", json_path, (long long)n_total,
                      (long long)n_samples);
        st = VLM_ERR_ARG;
        goto done;
    }
    st = VLM_ERR_OOM;
    entries = vlm_alloc_array((size_t)n_total, sizeof *entries, "calibration list");
    perm = vlm_alloc_array((size_t)n_total, sizeof *perm, "calibration order");
    c.s = vlm_calloc_array((size_t)n_samples, sizeof *c.s, "calibration samples");
    if (!entries || !perm || !c.s) goto done;
    int64_t k = 0;
    for (const cJSON *it = root->child; it; it = it->next, k++)
        if ((st = check_entry(json_path, k, it, &entries[k])) != VLM_OK) goto done;
    conv_calib_shuffle(n_total, seed, perm);
    c.n_samples = n_samples;
    for (int64_t i = 0; i < n_samples; i++)
        if ((st = build_sample(json_path, perm[i], &entries[perm[i]], m, tok, &c.s[i])) != VLM_OK) goto done;
    *out = c;
    c = (struct conv_calib){0};
    st = VLM_OK;
done:
    conv_calib_free(&c);
    free(entries);
    free(perm);
    cJSON_Delete(root);
    free(text);
    return st;
}
