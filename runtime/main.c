/* main.c — the vlmrun CLI: vlmrun --model DIR IMAGE PROMPT.
 *
 * Runs one image + prompt through the float32 reference model and streams the generated tokens to stdout.
 * Until the tokenizer lands, PROMPT is a list of token ids (spaces or commas between them) in which "<image>"
 * or the model's image token id marks the image; stdout then carries the generated ids. Logs and timings go to
 * stderr. Exit status: 0 success, 1 runtime error (one line on stderr), 2 usage error. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/util.h"
#include "vision/image.h"

#define MAX_PROMPT_IDS 65536
#define MAX_STOP_IDS 8

static void usage(FILE *f) {
    fputs("usage: vlmrun --model DIR [options] IMAGE PROMPT\n"
          "  --model DIR     Hugging Face LLaVA-OneVision checkpoint directory (config.json,\n"
          "                  preprocessor_config.json, model.safetensors or sharded with an index)\n"
          "  --max-new N     generate at most N tokens (default 32)\n"
          "  --ignore-eos    do not stop at the end-of-sequence tokens of generation_config.json\n"
          "  --info          print the model's dimensions, parameter counts and memory needs from its\n"
          "                  config.json alone (no weights, image or prompt needed) and exit\n"
          "  -h, --help      show this help\n"
          "IMAGE is a PNG or JPEG file. PROMPT is, until the tokenizer lands, a list of token ids separated by\n"
          "spaces or commas; \"<image>\" (or the model's image token id) marks where the image goes, and without\n"
          "a marker the image goes first. Generated token ids are printed to stdout as they are produced.\n",
          f);
}

/* Parses PROMPT into ids; the marker becomes image_token. Returns the count, or -1 after logging. */
static int64_t parse_prompt(const char *s, int64_t image_token, int64_t *ids, int64_t cap) {
    int64_t n = 0;
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        if (n >= cap) {
            vlm_log_error("prompt: more than %lld tokens", (long long)cap);
            return -1;
        }
        if (strncmp(p, "<image>", 7) == 0) {
            ids[n++] = image_token;
            p += 7;
            continue;
        }
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            vlm_log_error("prompt: '%.20s' is not a token id (no tokenizer yet: give ids, e.g. \"<image> 12 34\")", p);
            return -1;
        }
        ids[n++] = v;
        p = end;
    }
    return n;
}

/* Reads eos ids from DIR/generation_config.json when present (int or list); absent file = no stop ids. */
static int read_stop_ids(const char *dir, int64_t *stop, int cap) {
    char path[4096];
    char *buf = NULL;
    size_t len;
    int n = 0;
    if (!vlm_path_join(path, sizeof path, dir, "generation_config.json")) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    if (vlm_file_read_all(path, 1 << 20, &buf, &len) != VLM_OK) return -1;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!j) {
        vlm_log_error("%s: invalid JSON", path);
        return -1;
    }
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    if (cJSON_IsNumber(e)) stop[n++] = (int64_t)e->valuedouble;
    else if (cJSON_IsArray(e)) {
        cJSON *it;
        cJSON_ArrayForEach(it, e) if (cJSON_IsNumber(it) && n < cap) stop[n++] = (int64_t)it->valuedouble;
    }
    cJSON_Delete(j);
    return n;
}

/* --info: what a checkpoint is and what it needs, from config.json alone (so it also works for configs of
 * models too large for this machine). Prints to stdout; one error line and 1 on failure. */
static int print_info(const char *dir) {
    char path[4096];
    struct vlm_config c;
    if (!vlm_path_join(path, sizeof path, dir, "config.json")) {
        vlm_log_error("%s: path too long", dir);
        return 1;
    }
    if (vlm_config_parse(path, &c) != VLM_OK) return 1;
    struct vlm_mem_estimate e;
    vlm_config_estimate_memory(&c, &e);
    const struct vlm_text_config *t = &c.text;
    const struct vlm_vision_config *v = &c.vision;
    const double M = 1e6, GB = 1e9;
    printf("model: %s\n", dir);
    printf("text: qwen2 hidden %lld, layers %lld, heads %lld, kv heads %lld, head_dim %lld, ffn %lld, vocab %lld, "
           "tied head %s, rope_theta %g\n", (long long)t->hidden_size, (long long)t->n_layers, (long long)t->n_heads,
           (long long)t->n_kv_heads, (long long)t->head_dim, (long long)t->intermediate_size, (long long)t->vocab_size,
           t->tie_word_embeddings ? "yes" : "no", (double)t->rope_theta);
    printf("vision: siglip hidden %lld, layers %lld (%lld used), heads %lld, ffn %lld, image %lld, patch %lld\n",
           (long long)v->hidden_size, (long long)v->n_layers, (long long)vlm_config_n_vit_layers(&c),
           (long long)v->n_heads, (long long)v->intermediate_size, (long long)v->image_size, (long long)v->patch_size);
    printf("params: vision %.1f M, projector %.2f M, text linear %.1f M, text norms+biases %.2f M, embedding %.1f M, "
           "lm_head %.1f M, total %.1f M\n", e.params.vision / M, e.params.projector / M, e.params.text_linear / M,
           e.params.text_other / M, e.params.embedding / M, e.params.lm_head / M, e.params.total / M);
    printf("memory: fp32 weights %.2f GB, fp16 weights %.2f GB, kv cache %lld B/token fp16 (%.2f GB at 8192 "
           "tokens)\n", e.fp32_bytes / GB, e.fp16_bytes / GB, (long long)e.kv_bytes_per_token_fp16,
           e.kv_bytes_per_token_fp16 * 8192.0 / GB);
    return 0;
}

static int print_token(int64_t id, void *user) {
    int *first = user;
    printf(*first ? "%lld" : " %lld", (long long)id);
    *first = 0;
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *image_path = NULL, *prompt = NULL;
    long long max_new = 32;
    int ignore_eos = 0, info = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model") && i + 1 < argc) {
            model_dir = argv[++i];
        } else if (!strcmp(a, "--max-new") && i + 1 < argc) {
            char *end;
            max_new = strtoll(argv[++i], &end, 10);
            if (*end || max_new < 0 || max_new > 1000000) {
                fprintf(stderr, "vlmrun: --max-new takes a whole number from 0 to 1000000\n");
                return 2;
            }
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
        } else if (!strcmp(a, "--info")) {
            info = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "vlmrun: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else if (!image_path) {
            image_path = a;
        } else if (!prompt) {
            prompt = a;
        } else {
            fprintf(stderr, "vlmrun: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (info && model_dir) return print_info(model_dir);
    if (!model_dir || !image_path || !prompt) {
        usage(stderr);
        return 2;
    }

    int rc = 1;
    struct vlm_model *m = NULL;
    struct vlm_image img = {0};
    int64_t *ids = NULL, *full = NULL, *gen = NULL;
    float *feats = NULL, *emb = NULL;
    int64_t stop[MAX_STOP_IDS];
    int n_stop = 0;

    /* Cheap input checks first, so a bad image or prompt fails before a long model load. */
    if (img_load(image_path, &img) != VLM_OK) goto done;
    if (vlm_model_load(model_dir, &m) != VLM_OK) goto done;
    if (!ignore_eos && (n_stop = read_stop_ids(model_dir, stop, MAX_STOP_IDS)) < 0) goto done;
    const int64_t img_tok = m->config.image_token_index, d = m->config.text.hidden_size;
    ids = vlm_alloc_array(MAX_PROMPT_IDS + 1, sizeof(int64_t), "prompt ids");
    if (!ids) goto done;
    int64_t n_ids = parse_prompt(prompt, img_tok, ids + 1, MAX_PROMPT_IDS);
    if (n_ids < 0) goto done;
    int has_marker = 0;
    for (int64_t i = 1; i <= n_ids; i++) has_marker += ids[i] == img_tok;
    int64_t *p_ids = ids + 1;
    if (!has_marker) { /* no marker: the image goes first */
        ids[0] = img_tok;
        p_ids = ids;
        n_ids++;
    }

    double t0 = vlm_time_ms();
    struct img_layout lay;
    if (vlm_image_encode(m, &img, &lay, &feats) != VLM_OK) goto done;
    double t1 = vlm_time_ms();
    vlm_log_info("image %lld x %lld (w x h): %lld crops, %lld image tokens, vision encode %.1f ms", (long long)img.width,
                 (long long)img.height, (long long)lay.n_crops, (long long)lay.n_image_tokens, t1 - t0);
    int64_t n_full;
    if (vlm_prompt_expand(p_ids, n_ids, img_tok, 1, lay.n_image_tokens, &full, &n_full) != VLM_OK) goto done;
    emb = vlm_alloc_array((size_t)n_full, (size_t)d * sizeof(float), "prompt embeddings");
    gen = vlm_alloc_array(max_new ? (size_t)max_new : 1, sizeof(int64_t), "generated tokens");
    if (!emb || !gen) goto done;
    if (vlm_prompt_embed(m, full, n_full, feats, lay.n_image_tokens, emb) != VLM_OK) goto done;
    int first = 1;
    int64_t n_gen = 0;
    struct vlm_gen_stats gs;
    if (vlm_generate_greedy(m, emb, n_full, max_new, stop, n_stop, gen, &n_gen, NULL, print_token, &first, &gs) !=
        VLM_OK)
        goto done;
    printf("\n");
    /* the first token comes out of the prefill pass; the other n_gen - 1 are decode steps */
    vlm_log_info("prefill %lld tokens in %.1f ms (%.1f tok/s); decode %lld tokens in %.1f ms (%.1f tok/s); "
                 "fp32 reference CPU path", (long long)n_full, gs.prefill_ms, n_full / (gs.prefill_ms * 1e-3),
                 (long long)(n_gen > 0 ? n_gen - 1 : 0), gs.decode_ms,
                 n_gen > 1 ? (n_gen - 1) / (gs.decode_ms * 1e-3) : 0.0);
    rc = 0;
done:
    free(ids);
    free(full);
    free(gen);
    free(feats);
    free(emb);
    img_free(&img);
    vlm_model_free(m);
    return rc;
}
