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
    int ignore_eos = 0;
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
    vlm_log_info("image %lldx%lld: %lld crops, %lld image tokens, vision encode %.1f ms", (long long)img.width,
                 (long long)img.height, (long long)lay.n_crops, (long long)lay.n_image_tokens, t1 - t0);
    int64_t n_full;
    if (vlm_prompt_expand(p_ids, n_ids, img_tok, 1, lay.n_image_tokens, &full, &n_full) != VLM_OK) goto done;
    emb = vlm_alloc_array((size_t)n_full, (size_t)d * sizeof(float), "prompt embeddings");
    gen = vlm_alloc_array(max_new ? (size_t)max_new : 1, sizeof(int64_t), "generated tokens");
    if (!emb || !gen) goto done;
    if (vlm_prompt_embed(m, full, n_full, feats, lay.n_image_tokens, emb) != VLM_OK) goto done;
    int first = 1;
    int64_t n_gen = 0;
    double t2 = vlm_time_ms();
    if (vlm_generate_greedy(m, emb, n_full, max_new, stop, n_stop, gen, &n_gen, NULL, print_token, &first) != VLM_OK)
        goto done;
    double t3 = vlm_time_ms();
    printf("\n");
    vlm_log_info("prompt %lld tokens, %lld generated in %.1f ms (prefill + decode, reference fp32 CPU path)",
                 (long long)n_full, (long long)n_gen, t3 - t2);
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
