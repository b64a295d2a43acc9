/* text_mode.c — see text_mode.h. */
#include "text_mode.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mbq_file.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * The tokenizer */

static bool is_file(const char *dir, const char *name) {
    char path[4096];
    struct stat sb;
    return vlm_path_join(path, sizeof path, dir, name) && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

enum vlm_status vlm_tokenizer_find(const char *model_path, const struct vlm_model *m, const char *tok_path,
                                   struct vlm_tokenizer **out) {
    struct stat sb;
    if (tok_path) {
        if (stat(tok_path, &sb) == 0 && S_ISDIR(sb.st_mode)) return tok_load(tok_path, out);
        return tok_load_file(tok_path, out);
    }
    /* a .mbq path is a file, so these look for nothing there */
    if (is_file(model_path, "tokenizer.json") || is_file(model_path, "tokenizer.model"))
        return tok_load(model_path, out);
    if (m && m->mbq && vlm_model_has_tokenizer(m)) return vlm_model_load_tokenizer(m, out);
    return VLM_OK;
}

enum vlm_status vlm_model_check_tokenizer(const struct vlm_model *m, const struct vlm_tokenizer *t) {
    const int64_t n_tok = tok_vocab_size(t), rows = m->w.n_vocab_rows, img = tok_special_ids(t)->image;
    if (n_tok > rows) {
        vlm_log_error("tokenizer has %lld token ids but %s has %lld embedding rows: the tokenizer does not belong "
                      "to this model", (long long)n_tok, m->dir, (long long)rows);
        return VLM_ERR_ARG;
    }
    if (img >= 0 && img != m->config.image_token_index) {
        vlm_log_error("tokenizer's <image> is id %lld but %s%s has image_token_index %lld: the tokenizer does not "
                      "belong to this model", (long long)img, m->dir, m->mbq ? " (its config)" : "/config.json",
                      (long long)m->config.image_token_index);
        return VLM_ERR_ARG;
    }
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Stop ids */

/* The checkpoint's generation_config.json parsed into *out (NULL when there is no such file: no stop ids from
 * it). Statuses as vlm_file_read_all, VLM_ERR_FORMAT for invalid JSON; logged. */
static enum vlm_status read_generation_config(const char *dir, cJSON **out) {
    char path[4096];
    char *buf = NULL;
    size_t len;
    *out = NULL;
    if (!vlm_path_join(path, sizeof path, dir, "generation_config.json")) {
        vlm_log_error("%s: path too long", dir);
        return VLM_ERR_ARG;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return VLM_OK;
    fclose(f);
    enum vlm_status st = vlm_file_read_all(path, 1 << 20, &buf, &len);
    if (st != VLM_OK) return st;
    *out = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!*out) {
        vlm_log_error("%s: invalid JSON", path);
        return VLM_ERR_FORMAT;
    }
    return VLM_OK;
}

enum vlm_status vlm_model_read_stop_ids(const struct vlm_model *m, const struct vlm_tokenizer *t, int64_t **ids,
                                        int *n) {
    cJSON *owned = NULL;
    const cJSON *g = NULL;
    if (m->mbq) {
        g = cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "generation");
    } else {
        enum vlm_status st = read_generation_config(m->dir, &owned);
        if (st != VLM_OK) return st;
        g = owned;
    }
    const cJSON *e = cJSON_IsObject(g) ? cJSON_GetObjectItemCaseSensitive(g, "eos_token_id") : NULL;
    /* the file is capped at 1 MiB, so the list's size (an int) plus the tokenizer's three cannot overflow */
    const int n_cfg = cJSON_IsArray(e) ? cJSON_GetArraySize(e) : 1;
    int64_t *stop = vlm_alloc_array((size_t)n_cfg + 3, sizeof *stop, "stop ids");
    if (!stop) {
        cJSON_Delete(owned);
        return VLM_ERR_OOM;
    }
    int k = 0;
    if (cJSON_IsNumber(e)) stop[k++] = (int64_t)e->valuedouble;
    else if (cJSON_IsArray(e)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, e) if (cJSON_IsNumber(it)) stop[k++] = (int64_t)it->valuedouble;
    }
    cJSON_Delete(owned);
    if (t) {
        const int64_t cand[] = {tok_special_ids(t)->eos, tok_special_ids(t)->im_end,
                                tok_token_to_id(t, "<|endoftext|>")};
        for (size_t i = 0; i < sizeof cand / sizeof *cand; i++) {
            bool have = cand[i] < 0;
            for (int j = 0; j < k && !have; j++) have = stop[j] == cand[i];
            if (!have) stop[k++] = cand[i];
        }
    }
    *ids = stop;
    *n = k;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Generated ids as text */

void vlm_text_out_init(struct vlm_text_out *o, const struct vlm_tokenizer *t, bool log_unknown) {
    tok_stream_init(&o->stream, t, true);
    o->n_vocab = tok_vocab_size(t);
    o->log_unknown = log_unknown;
    o->warned = false;
}

int64_t vlm_text_out_push(struct vlm_text_out *o, int64_t id) {
    if (id < 0 || id >= o->n_vocab) {
        if (o->log_unknown && !o->warned)
            vlm_log_info("generated id %lld has no token in the tokenizer (%lld ids); such ids print nothing",
                         (long long)id, (long long)o->n_vocab);
        o->warned = true;
        return 0;
    }
    return tok_stream_push(&o->stream, id, o->buf, sizeof o->buf);
}

int64_t vlm_text_out_flush(struct vlm_text_out *o) { return tok_stream_flush(&o->stream, o->buf, sizeof o->buf); }
