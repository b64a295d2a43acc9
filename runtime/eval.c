/* eval.c — the vlmeval CLI, two modes:
 *
 *   vlmeval --ref REF --model MODEL [--cases FILE] [--greedy N] [--kernels fast|ref]
 *   vlmeval --vqa FILE.jsonl --model MODEL [--ref REF] [--limit N] [--max-new N] [--answers OUT.jsonl]
 *           [--kernels fast|ref]
 *
 * Cases mode: how far a converted (quantized) model's next-token distributions are from a reference model's, over
 * fixed image prompts — the llama-perplexity KLD method (targets.md §5.2) on multimodal prompts. For every case (an
 * image and a prompt of token ids) both models run their own vision path and the full prompt (all positions'
 * logits, float32), then greedy decoding. Per case and overall, stdout gets: mean and max KL(P_ref || P_model) over
 * prompt positions (softmax and KL in double), top-1 agreement over prompt positions, and the length of the common
 * prefix of the greedy continuations.
 *
 * VQA mode: exact-match accuracy on question/answer items (JSONL, one object per line with string keys "file",
 * "type", "q", "a"; tools/scenes.py writes them). Each question is asked as `vlmrun MODEL IMAGE QUESTION` asks it
 * by default (the chat template vlmrun picks for the tokenizer, its default system prompt, its stop ids, its
 * decoder, up to --max-new tokens), the answer's text is trimmed of surrounding whitespace and compared
 * (case-sensitive) with "a", also trimmed. stdout gets one markdown table: a row per question type (first-seen
 * order) and an "all" row. With --ref, REF answers the same prompt ids too, and the table adds REF's accuracy, mean
 * KL(P_ref || P_model) and top-1 agreement over the prompt positions, and the share of identical answers.
 * --answers writes every item's answer next to the expected one (JSONL), so that what a model gets wrong can be
 * studied, not only counted; the file appears whole (temp file, rename) or not at all.
 *
 * Exit 0 on success, 1 on error (one line on stderr naming the file, and for VQA input the line), 2 on usage. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/text_mode.h"
#include "runtime/util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "vision/image.h"

#define MAX_CASES 256
#define MAX_IDS 4096

static void usage(FILE *f) {
    fputs("usage: vlmeval --ref REF --model MODEL [options]            (cases mode: distance to a reference)\n"
          "       vlmeval --vqa FILE.jsonl --model MODEL [options]     (VQA mode: exact-match accuracy)\n"
          "Cases mode compares MODEL's next-token distributions with REF's over image prompts: mean and max KL\n"
          "divergence KL(P_ref || P_model) per prompt position, top-1 agreement, and the common prefix of greedy\n"
          "continuations. REF and MODEL are each an HF checkpoint directory or a .mbq file (REF is normally the\n"
          "float32 checkpoint, MODEL a file from vlmconvert).\n"
          "  --cases FILE    one case per line: IMAGE <TAB> PROMPT, IMAGE relative to FILE's directory, PROMPT token\n"
          "                  ids with \"<image>\" where the image goes; '#' starts a comment line\n"
          "                  (default: tests/data/eval_cases.txt, the fixture prompts)\n"
          "  --greedy N      greedy tokens compared per case (default 16)\n"
          "VQA mode asks MODEL each question of FILE.jsonl as `vlmrun --model MODEL IMAGE QUESTION` does by default\n"
          "(chat template, system prompt, stop ids; MODEL needs a tokenizer) and scores the answer, trimmed of\n"
          "surrounding whitespace, by exact (case-sensitive) match with the item's answer.\n"
          "  --vqa FILE      JSONL, one object per line: {\"file\": IMAGE, \"type\": T, \"q\": QUESTION, \"a\": ANSWER}\n"
          "                  (IMAGE relative to FILE's directory; T any string; other keys ignored; blank lines\n"
          "                  skipped)\n"
          "  --ref REF       optional here: REF answers the same prompts too; adds REF's accuracy, mean KL and top-1\n"
          "                  agreement over the prompt positions, and the share of items with identical answers\n"
          "  --limit N       the first N items only\n"
          "  --max-new N     answer tokens at most (default 32, as vlmrun)\n"
          "  --answers OUT   also write one JSON object per item to OUT: {\"line\", \"file\", \"type\", \"q\", \"a\",\n"
          "                  \"got\" (MODEL's answer, trimmed), \"ok\"} and with --ref \"ref_got\", \"ref_ok\"\n"
          "                  (\"line\": the item's line in FILE, \"file\": the image as opened; written to a temp\n"
          "                  file, renamed when complete)\n"
          "stdout is one markdown table, a row per question type in first-seen order and an \"all\" row:\n"
          "  | type | items | correct | accuracy % |\n"
          "  and with --ref also | ref correct | ref accuracy % | mean KL | top-1 agree % | same answer % |\n"
          "Both modes:\n"
          "  --kernels K     fast (default) or ref: MODEL's quantized linears through the scalar reference kernels\n"
          "  -h, --help      show this help\n",
          f);
}

struct eval_case {
    char image[4096];
    int64_t ids[MAX_IDS];
    int64_t n_ids;
};

/* Parses "IMAGE\tPROMPT" lines. Returns the count, or -1 after logging. */
static int read_cases(const char *path, struct eval_case *cases, int cap) {
    char *text = NULL;
    size_t len;
    if (vlm_file_read_all(path, 1u << 20, &text, &len) != VLM_OK) return -1;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    int n = 0, line_no = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        if (line[0] == '#' || line[0] == 0) continue;
        char *tab = strchr(line, '\t');
        if (!tab || n >= cap) {
            vlm_log_error("%s: line %d: %s", path, line_no, !tab ? "expected IMAGE<TAB>PROMPT" : "too many cases");
            free(text);
            return -1;
        }
        *tab = 0;
        struct eval_case *c = &cases[n];
        if (snprintf(c->image, sizeof c->image, "%s/%s", dir, line) >= (int)sizeof c->image) {
            vlm_log_error("%s: line %d: image path too long", path, line_no);
            free(text);
            return -1;
        }
        c->n_ids = 0;
        for (char *p = tab + 1; *p;) {
            while (*p == ' ' || *p == ',' || *p == '\r') p++;
            if (!*p) break;
            if (c->n_ids >= MAX_IDS) {
                vlm_log_error("%s: line %d: more than %d ids", path, line_no, MAX_IDS);
                free(text);
                return -1;
            }
            if (strncmp(p, "<image>", 7) == 0) {
                c->ids[c->n_ids++] = -1; /* each model's own image token */
                p += 7;
                continue;
            }
            char *end;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || errno || v < 0) {
                vlm_log_error("%s: line %d: '%.20s' is not a token id", path, line_no, p);
                free(text);
                return -1;
            }
            c->ids[c->n_ids++] = v;
            p = end;
        }
        n++;
    }
    free(text);
    if (n == 0) vlm_log_error("%s: no cases", path);
    return n ? n : -1;
}

/* One model on one case: prompt logits (n, V) and greedy tokens. */
struct run {
    float *logits;
    int64_t n, greedy[256], n_greedy;
};

static enum vlm_status run_case(const struct vlm_model *m, const struct eval_case *c, const struct vlm_image *img,
                                int64_t n_greedy, struct run *r) {
    int64_t ids[MAX_IDS], *full = NULL, n_full;
    float *feats = NULL, *emb = NULL;
    struct img_layout lay;
    enum vlm_status st;
    for (int64_t i = 0; i < c->n_ids; i++) ids[i] = c->ids[i] < 0 ? m->config.image_token_index : c->ids[i];
    if ((st = vlm_image_encode(m, img, &lay, &feats)) != VLM_OK) return st;
    if ((st = vlm_prompt_expand(ids, c->n_ids, m->config.image_token_index, 1, lay.n_image_tokens, &full,
                                &n_full)) != VLM_OK)
        goto done;
    const int64_t d = m->config.text.hidden_size, V = m->w.n_vocab_rows;
    emb = vlm_alloc_array((size_t)n_full, (size_t)d * sizeof(float), "prompt embeddings");
    r->logits = vlm_alloc_array((size_t)n_full, (size_t)V * sizeof(float), "prompt logits");
    if (!emb || !r->logits) {
        st = VLM_ERR_OOM;
        goto done;
    }
    if ((st = vlm_prompt_embed(m, full, n_full, feats, lay.n_image_tokens, emb)) != VLM_OK) goto done;
    r->n = n_full;
    st = vlm_generate_greedy(m, emb, n_full, n_greedy, NULL, 0, r->greedy, &r->n_greedy, r->logits, NULL, NULL,
                             NULL);
done:
    free(full);
    free(feats);
    free(emb);
    return st;
}

/* KL(p || q) of two logit rows, and whether their argmaxes agree. */
static double kl_row(const float *lp, const float *lq, int64_t V) {
    double mp = lp[0], mq = lq[0], zp = 0, zq = 0, kl = 0;
    for (int64_t i = 1; i < V; i++) mp = lp[i] > mp ? lp[i] : mp, mq = lq[i] > mq ? lq[i] : mq;
    for (int64_t i = 0; i < V; i++) zp += exp(lp[i] - mp), zq += exp(lq[i] - mq);
    double lzp = log(zp), lzq = log(zq);
    for (int64_t i = 0; i < V; i++) {
        double a = lp[i] - mp - lzp, b = lq[i] - mq - lzq; /* log p, log q */
        kl += exp(a) * (a - b);
    }
    return kl > 0 ? kl : 0; /* rounding can give -1e-17 for identical rows */
}

/* Cases mode, after argument parsing. Returns the exit status. */
static int cases_main(const char *ref_path, const char *model_path, const char *cases_path, int64_t n_greedy,
                      enum vlm_kernels kernels) {
    int rc = 1;
    struct vlm_model *ref = NULL, *mod = NULL;
    struct eval_case *cases = vlm_alloc_array(MAX_CASES, sizeof *cases, "cases");
    if (!cases) return 1;
    int n_cases = read_cases(cases_path, cases, MAX_CASES);
    if (n_cases < 0) goto done;
    if (vlm_model_load(ref_path, &ref) != VLM_OK || vlm_model_load(model_path, &mod) != VLM_OK) goto done;
    mod->kernels = kernels;
    if (ref->w.n_vocab_rows != mod->w.n_vocab_rows || ref->config.text.hidden_size != mod->config.text.hidden_size) {
        vlm_log_error("%s and %s are not the same model (vocabulary rows %lld vs %lld)", ref_path, model_path,
                      (long long)ref->w.n_vocab_rows, (long long)mod->w.n_vocab_rows);
        goto done;
    }
    const int64_t V = ref->w.n_vocab_rows;
    printf("reference %s\nmodel     %s (%s)\n\n", ref_path, model_path, vlm_model_kernels_str(mod));
    printf("| case | image | positions | mean KL | max KL | top-1 agree | greedy common prefix |\n");
    printf("|---|---|---|---|---|---|---|\n");
    double sum_kl = 0, max_kl = 0;
    int64_t n_pos = 0, n_agree = 0, n_prefix = 0, n_greedy_total = 0;
    for (int ci = 0; ci < n_cases; ci++) {
        const struct eval_case *c = &cases[ci];
        struct vlm_image img = {0};
        struct run a = {0}, b = {0};
        if (img_load(c->image, &img) != VLM_OK) goto done;
        enum vlm_status st = run_case(ref, c, &img, n_greedy, &a);
        if (st == VLM_OK) st = run_case(mod, c, &img, n_greedy, &b);
        img_free(&img);
        if (st != VLM_OK || a.n != b.n) {
            if (st == VLM_OK)
                vlm_log_error("%s: the models expand the image to different token counts (%lld vs %lld)", c->image,
                              (long long)a.n, (long long)b.n);
            free(a.logits);
            free(b.logits);
            goto done;
        }
        double ckl = 0, cmax = 0;
        int64_t cagree = 0, prefix = 0;
        for (int64_t p = 0; p < a.n; p++) {
            double k = kl_row(a.logits + p * V, b.logits + p * V, V);
            ckl += k;
            cmax = k > cmax ? k : cmax;
            cagree += vlm_argmax(a.logits + p * V, V) == vlm_argmax(b.logits + p * V, V);
        }
        while (prefix < a.n_greedy && prefix < b.n_greedy && a.greedy[prefix] == b.greedy[prefix]) prefix++;
        const char *base = strrchr(c->image, '/');
        printf("| %d | %s | %lld | %.6f | %.6f | %.1f %% | %lld / %lld |\n", ci + 1, base ? base + 1 : c->image,
               (long long)a.n, ckl / (double)a.n, cmax, 100.0 * (double)cagree / (double)a.n, (long long)prefix,
               (long long)a.n_greedy);
        sum_kl += ckl;
        max_kl = cmax > max_kl ? cmax : max_kl;
        n_pos += a.n;
        n_agree += cagree;
        n_prefix += prefix;
        n_greedy_total += a.n_greedy;
        free(a.logits);
        free(b.logits);
    }
    printf("| all | %d cases | %lld | %.6f | %.6f | %.1f %% | %lld / %lld |\n", n_cases, (long long)n_pos,
           sum_kl / (double)n_pos, max_kl, 100.0 * (double)n_agree / (double)n_pos, (long long)n_prefix,
           (long long)n_greedy_total);
    rc = 0;
done:
    free(cases);
    vlm_model_free(ref);
    vlm_model_free(mod);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------------
 * VQA mode: reading the items */

struct vqa_item {
    char *image;     /* "file" joined to the JSONL's directory (or as given when absolute) */
    char *question;  /* "q" */
    char *answer;    /* "a", surrounding whitespace trimmed */
    int64_t type;    /* index into vqa_set.types */
    int64_t line;    /* 1-based line of the JSONL, for messages */
};

/* One row of the table: counts over the items of one type (or of all). */
struct vqa_stats {
    int64_t n, correct;
    int64_t ref_correct, same, n_pos, n_agree; /* with --ref */
    double sum_kl;
};

struct vqa_type {
    char *name;
    struct vqa_stats s;
};

struct vqa_set {
    struct vqa_item *items; /* (n_items), grown as the file is read; every string malloc'd */
    int64_t n_items, cap_items;
    struct vqa_type *types; /* (n_types), first-seen order */
    int64_t n_types, cap_types;
};

static void vqa_set_free(struct vqa_set *s) {
    for (int64_t i = 0; i < s->n_items; i++) {
        free(s->items[i].image);
        free(s->items[i].question);
        free(s->items[i].answer);
    }
    for (int64_t i = 0; i < s->n_types; i++) free(s->types[i].name);
    free(s->items);
    free(s->types);
    *s = (struct vqa_set){0};
}

/* Makes room for need elements of size elem in *p (capacity *cap, doubled). false after logging on overflow or
 * OOM, *p and *cap untouched. */
static bool grow(void **p, int64_t *cap, int64_t need, size_t elem, const char *what) {
    if (need <= *cap) return true;
    int64_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > INT64_MAX / 2) {
            vlm_log_error("%s: too many entries", what);
            return false;
        }
        c *= 2;
    }
    size_t bytes;
    if ((uint64_t)c > SIZE_MAX || !vlm_size_mul((size_t)c, elem, &bytes)) {
        vlm_log_error("%s: too many entries", what);
        return false;
    }
    void *q = realloc(*p, bytes);
    if (!q) {
        vlm_log_error("out of memory for %s (%zu bytes)", what, bytes);
        return false;
    }
    *p = q;
    *cap = c;
    return true;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* s[*b .. *e) without surrounding whitespace (b = 0, e = n on entry). */
static void trim_span(const char *s, size_t *b, size_t *e) {
    while (*b < *e && is_space(s[*b])) (*b)++;
    while (*e > *b && is_space(s[*e - 1])) (*e)--;
}

/* A malloc'd, NUL-terminated copy of a[0..na) followed by b[0..nb); NULL after logging. */
static char *concat(const char *a, size_t na, const char *b, size_t nb, const char *what) {
    size_t n;
    if (!vlm_size_add(na, nb, &n) || !vlm_size_add(n, 1, &n)) {
        vlm_log_error("%s: too long", what);
        return NULL;
    }
    char *s = vlm_alloc_array(n, 1, what);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb);
    s[na + nb] = 0;
    return s;
}

/* name as seen from dir[0..dir_len) ("" = the current directory; an absolute name stays as it is), malloc'd;
 * NULL after logging. */
static char *join_path(const char *dir, size_t dir_len, const char *name) {
    if (name[0] == '/' || dir_len == 0) return concat(name, strlen(name), "", 0, "path");
    const bool sep = dir[dir_len - 1] != '/';
    char *d = concat(dir, dir_len, "/", sep, "path");
    char *p = d ? concat(d, strlen(d), name, strlen(name), "path") : NULL;
    free(d);
    return p;
}

/* The string value of key in object o, or NULL after logging "FILE: line N: ...". */
static const char *item_string(const cJSON *o, const char *key, const char *path, int64_t line) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || !v->valuestring) {
        vlm_log_error(v ? "%s: line %lld: key \"%s\" is not a string" : "%s: line %lld: missing key \"%s\"", path,
                      (long long)line, key);
        return NULL;
    }
    return v->valuestring;
}

/* Parses one JSONL line (line[0..n), NUL at line[n]) into the next item of s; dir[0..dir_len) is the JSONL's
 * directory ("" for the current one). Checks that the image is a regular file now, so bad input fails before the
 * models load. false after logging. */
static bool vqa_parse_line(const char *path, const char *dir, size_t dir_len, int64_t line_no, const char *line,
                           size_t n, struct vqa_set *s) {
    size_t where;
    const char *why = vlm_json_prescan((const unsigned char *)line, n, &where);
    if (why) {
        vlm_log_error("%s: line %lld: not valid JSON: %s (byte %zu)", path, (long long)line_no, why, where);
        return false;
    }
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(line, n, &end, 0);
    if (!o) {
        size_t at = end && end >= line && end <= line + n ? (size_t)(end - line) : 0;
        vlm_log_error("%s: line %lld: not valid JSON (near byte %zu)", path, (long long)line_no, at);
        return false;
    }
    bool ok = false;
    struct vqa_item it = {.line = line_no, .type = -1};
    for (const char *p = end; p < line + n; p++) {
        if (!is_space(*p)) {
            vlm_log_error("%s: line %lld: bytes after the JSON object (byte %zu)", path, (long long)line_no,
                          (size_t)(p - line));
            goto done;
        }
    }
    if (!cJSON_IsObject(o)) {
        vlm_log_error("%s: line %lld: not a JSON object", path, (long long)line_no);
        goto done;
    }
    const char *file = item_string(o, "file", path, line_no), *type = NULL, *q = NULL, *a = NULL;
    if (!file || !(type = item_string(o, "type", path, line_no)) || !(q = item_string(o, "q", path, line_no)) ||
        !(a = item_string(o, "a", path, line_no)))
        goto done;
    char shown[512];
    if (!file[0]) {
        vlm_log_error("%s: line %lld: \"file\" is empty", path, (long long)line_no);
        goto done;
    }
    if (!(it.image = join_path(dir, dir_len, file))) goto done;
    struct stat sb;
    const int err = stat(it.image, &sb) != 0 ? errno : 0;
    if (err || !S_ISREG(sb.st_mode)) {
        vlm_log_error("%s: line %lld: image %s: %s", path, (long long)line_no,
                      vlm_printable(it.image, shown, sizeof shown), err ? strerror(err) : "not a regular file");
        goto done;
    }
    size_t b = 0, e = strlen(a);
    trim_span(a, &b, &e);
    it.question = concat(q, strlen(q), "", 0, "question");
    it.answer = concat(a + b, e - b, "", 0, "answer");
    if (!it.question || !it.answer) goto done;
    for (int64_t t = 0; t < s->n_types && it.type < 0; t++)
        if (strcmp(s->types[t].name, type) == 0) it.type = t;
    if (it.type < 0) {
        if (!grow((void **)&s->types, &s->cap_types, s->n_types + 1, sizeof *s->types, "question types")) goto done;
        char *name = concat(type, strlen(type), "", 0, "type name");
        if (!name) goto done;
        s->types[s->n_types] = (struct vqa_type){.name = name};
        it.type = s->n_types++;
    }
    if (!grow((void **)&s->items, &s->cap_items, s->n_items + 1, sizeof *s->items, "items")) goto done;
    s->items[s->n_items++] = it;
    it = (struct vqa_item){0};
    ok = true;
done:
    free(it.image);
    free(it.question);
    free(it.answer);
    cJSON_Delete(o);
    return ok;
}

/* Reads up to limit items of the JSONL at path into s (empty on entry). false after one error line naming the file
 * (and the line); an empty file (no items) is an error. */
static bool vqa_read(const char *path, int64_t limit, struct vqa_set *s) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        vlm_log_error("%s: %s", path, strerror(errno));
        return false;
    }
    const char *slash = strrchr(path, '/');
    const char *dir = path;
    size_t dir_len = slash ? (size_t)(slash - path) : 0;
    if (slash == path) dir = "/", dir_len = 1; /* "/x.jsonl": the root */
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t line_no = 0;
    bool ok = true;
    while (ok && s->n_items < limit && (len = getline(&line, &cap, f)) >= 0) {
        line_no++;
        size_t n = (size_t)len, b = 0, e = n;
        trim_span(line, &b, &e);
        if (b == e) continue; /* blank line */
        ok = vqa_parse_line(path, dir, dir_len, line_no, line, n, s);
    }
    if (ok && ferror(f)) {
        vlm_log_error("%s: read error after line %lld", path, (long long)line_no);
        ok = false;
    }
    if (ok && s->n_items == 0) {
        vlm_log_error("%s: no items (expected one JSON object per line)", path);
        ok = false;
    }
    free(line);
    fclose(f);
    return ok;
}

/* ---------------------------------------------------------------------------------------------------------------
 * VQA mode: one model, set up and asked as vlmrun does (runtime/text_mode.h: tokenizer, stop ids, decoder; the
 * template below) */

struct vqa_model {
    struct vlm_model *m;
    int64_t *stop;  /* (n_stop) */
    int n_stop;
    /* The current image's features and layout: a scene's questions are consecutive items, and encoding the image
     * again for each gave the same numbers at about a third of an item's time. NULL: not encoded yet. */
    float *feats;
    struct img_layout lay;
};

/* Forgets the current image: its pixels and both models' features. */
static void vqa_drop_image(struct vlm_image *img, struct vqa_model *mod, struct vqa_model *ref) {
    img_free(img);
    free(mod->feats);
    free(ref->feats);
    mod->feats = ref->feats = NULL;
}

/* One model on one question: the prompt is the question after the image in template tmpl (default system prompt),
 * the image placeholder expanded to m's token count for img. img is encoded into vm->feats unless they are there
 * already (the caller clears them when the image changes). gen (max_new) and *n_gen receive the greedy tokens;
 * *ids (malloc'd) and *n_ids the prompt; with logits non-NULL, *logits (malloc'd) gets (n_ids, n_vocab_rows). */
static enum vlm_status vqa_ask(struct vqa_model *vm, const struct vlm_tokenizer *t, enum chat_template tmpl,
                               const struct vlm_image *img, const char *question, int64_t max_new, int64_t *gen,
                               int64_t *n_gen, int64_t **ids, int64_t *n_ids, float **logits) {
    const struct vlm_model *m = vm->m;
    const int64_t d = m->config.text.hidden_size, V = m->w.n_vocab_rows;
    float *emb = NULL, *lg = NULL;
    int64_t *p = NULL;
    size_t n = 0;
    enum vlm_status st = vm->feats ? VLM_OK : vlm_image_encode(m, img, &vm->lay, &vm->feats);
    if (st != VLM_OK) return st;
    const struct img_layout lay = vm->lay;
    const float *feats = vm->feats;
    const struct chat_msg msg = {.role = "user", .text = question, .n_images = 1};
    if ((st = chat_render(t, tmpl, NULL, &msg, 1, &lay.n_image_tokens, 1, true, &p, &n)) != VLM_OK) goto done;
    st = VLM_ERR_OOM;
    if ((uint64_t)n > INT64_MAX || !(emb = vlm_alloc_array(n, (size_t)d * sizeof(float), "prompt embeddings")))
        goto done;
    if (logits && !(lg = vlm_alloc_array(n, (size_t)V * sizeof(float), "prompt logits"))) goto done;
    if ((st = vlm_prompt_embed(m, p, (int64_t)n, feats, lay.n_image_tokens, emb)) != VLM_OK) goto done;
    st = vlm_generate_greedy(m, emb, (int64_t)n, max_new, vm->stop, vm->n_stop, gen, n_gen, lg, NULL, NULL, NULL);
done:
    if (st == VLM_OK) {
        *ids = p, *n_ids = (int64_t)n, p = NULL;
        if (logits) *logits = lg, lg = NULL;
    }
    free(p);
    free(lg);
    free(emb);
    return st;
}

/* The text vlmrun prints for gen (vlm_text_out), into out (reset first). o is the decoder's state, reused from
 * answer to answer. false after logging. */
static bool vqa_decode(struct vlm_text_out *o, const struct vlm_tokenizer *t, const int64_t *gen, int64_t n,
                       struct vlm_str *out) {
    vlm_text_out_init(o, t, false); /* the answer is scored, not shown: no note about ids that print nothing */
    out->len = 0;
    if (!vlm_str_append(out, "", 0, "answer text")) return false;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = vlm_text_out_push(o, gen[i]);
        if (k < 0 || !vlm_str_append(out, o->buf, (size_t)k, "answer text")) return false; /* logged */
    }
    int64_t k = vlm_text_out_flush(o);
    return k >= 0 && vlm_str_append(out, o->buf, (size_t)k, "answer text");
}

/* Exact match of the decoded answer, trimmed, with the item's (already trimmed) answer. */
static bool answer_matches(const struct vlm_str *got, const char *want, size_t *b, size_t *e) {
    *b = 0, *e = got->len;
    trim_span(got->s, b, e);
    return *e - *b == strlen(want) && memcmp(got->s + *b, want, *e - *b) == 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * VQA mode: the run and the table */

/* A table cell: the type name with '|' and control bytes shown as '?' (the table stays one line per row and
 * splits on '|'). */
static void print_cell(const char *s) {
    for (; *s; s++) putchar(*s == '|' || (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static double pct(int64_t a, int64_t b) { return b ? 100.0 * (double)a / (double)b : 0.0; }

static void print_row(const char *name, const struct vqa_stats *r, bool with_ref) {
    printf("| ");
    print_cell(name);
    printf(" | %lld | %lld | %.1f |", (long long)r->n, (long long)r->correct, pct(r->correct, r->n));
    if (with_ref)
        printf(" %lld | %.1f | %.6f | %.1f | %.1f |", (long long)r->ref_correct, pct(r->ref_correct, r->n),
               r->n_pos ? r->sum_kl / (double)r->n_pos : 0.0, pct(r->n_agree, r->n_pos), pct(r->same, r->n));
    printf("\n");
}

static void add_stats(struct vqa_stats *to, const struct vqa_stats *x) {
    to->n += x->n, to->correct += x->correct, to->ref_correct += x->ref_correct, to->same += x->same;
    to->n_pos += x->n_pos, to->n_agree += x->n_agree, to->sum_kl += x->sum_kl;
}

/* --answers: the file being written (tmp, published onto path by answers_close when every item is in it). */
struct answers_out {
    const char *path;
    char *tmp;
    int fd;
    size_t off;
};

static bool answers_open(struct answers_out *a, const char *path) {
    a->path = path;
    a->off = 0;
    a->fd = vlm_file_tmp_open(path, &a->tmp);
    return a->fd >= 0;
}

/* One item's line; got/ref_got are the trimmed answers [b, e) of their strings (ref_got NULL without --ref). */
static bool answers_put(struct answers_out *a, const struct vqa_item *it, const char *type, const struct vlm_str *got,
                        size_t b, size_t e, bool ok, const struct vlm_str *ref_got, size_t rb, size_t re, bool ref_ok) {
    cJSON *o = cJSON_CreateObject();
    char *g = o ? strndup(got->s + b, e - b) : NULL, *rg = NULL;
    bool good = g != NULL && (!ref_got || (rg = strndup(ref_got->s + rb, re - rb)) != NULL) &&
                cJSON_AddNumberToObject(o, "line", (double)it->line) && cJSON_AddStringToObject(o, "file", it->image) &&
                cJSON_AddStringToObject(o, "type", type) && cJSON_AddStringToObject(o, "q", it->question) &&
                cJSON_AddStringToObject(o, "a", it->answer) && cJSON_AddStringToObject(o, "got", g) &&
                cJSON_AddBoolToObject(o, "ok", ok) &&
                (!ref_got ||
                 (cJSON_AddStringToObject(o, "ref_got", rg) && cJSON_AddBoolToObject(o, "ref_ok", ref_ok)));
    char *line = good ? cJSON_PrintUnformatted(o) : NULL;
    bool written = false;
    if (!line) {
        vlm_log_error("%s: out of memory for line %lld's answer", a->path, (long long)it->line);
    } else {
        const size_t n = strlen(line) + 1;
        line[n - 1] = '\n'; /* in place of cJSON's NUL: the line and its newline in one write */
        written = vlm_file_pwrite_all(a->fd, line, n, a->off);
        if (!written) vlm_log_error("%s: write failed: %s", a->path, strerror(errno));
        a->off += n;
    }
    free(line);
    free(g);
    free(rg);
    cJSON_Delete(o);
    return written;
}

/* keep: publish the complete file (fsync, rename); else (or when that fails) remove the temp file. */
static bool answers_close(struct answers_out *a, bool keep) {
    if (a->fd < 0) return true;
    bool ok = keep && vlm_file_tmp_publish(a->fd, a->tmp, a->path) == VLM_OK;
    if (!keep) close(a->fd);
    a->fd = -1;
    if (!ok) unlink(a->tmp);
    free(a->tmp);
    a->tmp = NULL;
    return ok || !keep;
}

/* VQA mode, after argument parsing (ref_path, answers_path may be NULL). Returns the exit status. */
static int vqa_main(const char *vqa_path, const char *model_path, const char *ref_path, int64_t limit,
                    int64_t max_new, const char *answers_path, enum vlm_kernels kernels) {
    int rc = 1;
    struct vqa_set set = {0};
    struct vqa_model mod = {0}, ref = {0};
    struct vlm_image img = {0}; /* the image of img_path, shared by its consecutive items */
    const char *img_path = NULL;
    struct vlm_tokenizer *tok = NULL;
    struct vlm_str ans_mod = {0}, ans_ref = {0};
    int64_t *gen_mod = NULL, *gen_ref = NULL;
    struct vlm_text_out *text_out = NULL;
    struct answers_out answers = {.fd = -1}; /* fd -1: no --answers file open */
    const bool with_ref = ref_path != NULL;

    /* cheap input checks first: every line parses and names an existing image before a model loads */
    if (!vqa_read(vqa_path, limit, &set)) goto done;
    if (answers_path && !answers_open(&answers, answers_path)) goto done; /* an unwritable OUT fails before a load */
    vlm_log_info("%s: %lld items, %lld question types", vqa_path, (long long)set.n_items, (long long)set.n_types);
    if (vlm_model_load(model_path, &mod.m) != VLM_OK) goto done;
    mod.m->kernels = kernels;
    if (with_ref && vlm_model_load(ref_path, &ref.m) != VLM_OK) goto done;
    if (with_ref && (ref.m->w.n_vocab_rows != mod.m->w.n_vocab_rows ||
                     ref.m->config.text.hidden_size != mod.m->config.text.hidden_size)) {
        vlm_log_error("%s and %s are not the same model (vocabulary rows %lld vs %lld)", ref_path, model_path,
                      (long long)ref.m->w.n_vocab_rows, (long long)mod.m->w.n_vocab_rows);
        goto done;
    }
    /* MODEL's tokenizer (REF's when MODEL carries none) builds every prompt and decodes every answer */
    enum vlm_status st = vlm_tokenizer_find(model_path, mod.m, NULL, &tok);
    if (st == VLM_OK && !tok && with_ref) st = vlm_tokenizer_find(ref_path, ref.m, NULL, &tok);
    if (st != VLM_OK) goto done;
    if (!tok) {
        vlm_log_error("%s%s%s has no tokenizer (tokenizer.json or tokenizer.model; a .mbq carries its own): "
                      "--vqa asks questions in text", model_path, with_ref ? " nor " : "", with_ref ? ref_path : "");
        goto done;
    }
    if (vlm_model_check_tokenizer(mod.m, tok) != VLM_OK ||
        (with_ref && vlm_model_check_tokenizer(ref.m, tok) != VLM_OK))
        goto done;
    if (vlm_model_read_stop_ids(mod.m, tok, &mod.stop, &mod.n_stop) != VLM_OK ||
        (with_ref && vlm_model_read_stop_ids(ref.m, tok, &ref.stop, &ref.n_stop) != VLM_OK))
        goto done;
    /* vlmrun's default template for the tokenizer's kind, and its default system prompt */
    const enum chat_template tmpl = tok_get_kind(tok) == TOK_KIND_SPM ? CHAT_VICUNA_V1 : CHAT_CHATML_QWEN;
    const size_t n_gen_cap = max_new ? (size_t)max_new : 1;
    gen_mod = vlm_alloc_array(n_gen_cap, sizeof(int64_t), "generated tokens");
    gen_ref = with_ref ? vlm_alloc_array(n_gen_cap, sizeof(int64_t), "generated tokens") : NULL;
    text_out = vlm_alloc_array(1, sizeof *text_out, "text output");
    if (!gen_mod || (with_ref && !gen_ref) || !text_out) goto done;

    const bool progress = isatty(STDERR_FILENO);
    const int64_t V = mod.m->w.n_vocab_rows;
    for (int64_t i = 0; i < set.n_items; i++) {
        const struct vqa_item *it = &set.items[i];
        struct vqa_stats *row = &set.types[it->type].s;
        if (progress) fprintf(stderr, "\rvlmeval: item %lld/%lld", (long long)i + 1, (long long)set.n_items);
        int64_t *ids_mod = NULL, *ids_ref = NULL, n_mod = 0, n_ref = 0, n_gen_mod = 0, n_gen_ref = 0;
        float *lg_mod = NULL, *lg_ref = NULL;
        st = VLM_OK;
        if (!img_path || strcmp(img_path, it->image) != 0) { /* a new image: decode it, encode it when asked */
            vqa_drop_image(&img, &mod, &ref);
            img_path = NULL;
            st = img_load(it->image, &img);
            if (st == VLM_OK) img_path = it->image;
        }
        if (st == VLM_OK)
            st = vqa_ask(&mod, tok, tmpl, &img, it->question, max_new, gen_mod, &n_gen_mod, &ids_mod, &n_mod,
                         with_ref ? &lg_mod : NULL);
        if (st == VLM_OK && with_ref)
            st = vqa_ask(&ref, tok, tmpl, &img, it->question, max_new, gen_ref, &n_gen_ref, &ids_ref, &n_ref,
                         &lg_ref);
        bool ok = st == VLM_OK;
        if (ok && with_ref && (n_mod != n_ref || memcmp(ids_mod, ids_ref, (size_t)n_mod * sizeof *ids_mod) != 0)) {
            vlm_log_error("%s: line %lld: %s and %s build different prompts for %s (%lld vs %lld tokens: their "
                          "vision settings differ)", vqa_path, (long long)it->line, ref_path, model_path, it->image,
                          (long long)n_ref, (long long)n_mod);
            ok = false;
        }
        size_t bm = 0, em = 0, br = 0, er = 0;
        bool right = false, ref_right = false;
        ok = ok && vqa_decode(text_out, tok, gen_mod, n_gen_mod, &ans_mod);
        if (ok) {
            row->n++;
            right = answer_matches(&ans_mod, it->answer, &bm, &em);
            row->correct += right;
        }
        if (ok && with_ref) {
            ok = vqa_decode(text_out, tok, gen_ref, n_gen_ref, &ans_ref);
            if (ok) {
                ref_right = answer_matches(&ans_ref, it->answer, &br, &er);
                row->ref_correct += ref_right;
                row->same += em - bm == er - br && memcmp(ans_mod.s + bm, ans_ref.s + br, em - bm) == 0;
                for (int64_t p = 0; p < n_mod; p++) {
                    row->sum_kl += kl_row(lg_ref + p * V, lg_mod + p * V, V);
                    row->n_agree += vlm_argmax(lg_ref + p * V, V) == vlm_argmax(lg_mod + p * V, V);
                }
                row->n_pos += n_mod;
            }
        }
        if (ok && answers.fd >= 0)
            ok = answers_put(&answers, it, set.types[it->type].name, &ans_mod, bm, em, right,
                             with_ref ? &ans_ref : NULL, br, er, ref_right);
        free(ids_mod);
        free(ids_ref);
        free(lg_mod);
        free(lg_ref);
        if (!ok) {
            if (progress) fputc('\n', stderr);
            goto done;
        }
    }
    if (progress) fputc('\n', stderr);

    printf("| type | items | correct | accuracy %% |%s\n",
           with_ref ? " ref correct | ref accuracy % | mean KL | top-1 agree % | same answer % |" : "");
    printf("|---|---|---|---|%s\n", with_ref ? "---|---|---|---|---|" : "");
    struct vqa_stats all = {0};
    for (int64_t t = 0; t < set.n_types; t++) {
        print_row(set.types[t].name, &set.types[t].s, with_ref);
        add_stats(&all, &set.types[t].s);
    }
    print_row("all", &all, with_ref);
    rc = answers_close(&answers, true) ? 0 : 1;
done:
    answers_close(&answers, false); /* after an error: no partial file is left behind */
    vqa_set_free(&set);
    tok_free(tok);
    vqa_drop_image(&img, &mod, &ref);
    free(mod.stop);
    free(ref.stop);
    vlm_model_free(mod.m);
    vlm_model_free(ref.m);
    vlm_str_free(&ans_mod);
    vlm_str_free(&ans_ref);
    free(gen_mod);
    free(gen_ref);
    free(text_out);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Command line */

/* A whole number in [lo, hi] for option opt; -1 after the usage message when it is not one. */
static int64_t parse_count(const char *opt, const char *s, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "vlmeval: %s %s: expected a whole number from %lld to %lld\n", opt, s, (long long)lo,
                (long long)hi);
        return -1;
    }
    return v;
}

int main(int argc, char **argv) {
    vlm_log_set_prog("vlmeval");
    const char *ref_path = NULL, *model_path = NULL, *cases_path = NULL, *vqa_path = NULL, *answers_path = NULL;
    int64_t n_greedy = 16, limit = INT64_MAX, max_new = 32;
    bool greedy_set = false, limit_set = false, max_new_set = false;
    enum vlm_kernels kernels = VLM_KERNELS_FAST;
    for (int i = 1; i < argc; i++) {
        bool v = i + 1 < argc;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (v && strcmp(argv[i], "--ref") == 0) {
            ref_path = argv[++i];
        } else if (v && strcmp(argv[i], "--model") == 0) {
            model_path = argv[++i];
        } else if (v && strcmp(argv[i], "--cases") == 0) {
            cases_path = argv[++i];
        } else if (v && strcmp(argv[i], "--vqa") == 0) {
            vqa_path = argv[++i];
        } else if (v && strcmp(argv[i], "--answers") == 0) {
            answers_path = argv[++i];
        } else if (v && strcmp(argv[i], "--greedy") == 0) {
            if ((n_greedy = parse_count("--greedy", argv[++i], 1, 256)) < 0) return 2;
            greedy_set = true;
        } else if (v && strcmp(argv[i], "--limit") == 0) {
            if ((limit = parse_count("--limit", argv[++i], 1, INT64_MAX)) < 0) return 2;
            limit_set = true;
        } else if (v && strcmp(argv[i], "--max-new") == 0) {
            if ((max_new = parse_count("--max-new", argv[++i], 0, 1000000)) < 0) return 2;
            max_new_set = true;
        } else if (v && strcmp(argv[i], "--kernels") == 0) {
            const char *k = argv[++i];
            if (strcmp(k, "fast") == 0) kernels = VLM_KERNELS_FAST;
            else if (strcmp(k, "ref") == 0) kernels = VLM_KERNELS_REF;
            else {
                fprintf(stderr, "vlmeval: --kernels %s: expected fast or ref\n", k);
                return 2;
            }
        } else {
            fprintf(stderr, "vlmeval: unknown or incomplete option '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (vqa_path) {
        if (cases_path || greedy_set) {
            fprintf(stderr, "vlmeval: %s belongs to cases mode: --vqa and --cases/--greedy do not mix\n",
                    cases_path ? "--cases" : "--greedy");
            return 2;
        }
        if (!model_path) {
            usage(stderr);
            return 2;
        }
        return vqa_main(vqa_path, model_path, ref_path, limit, max_new, answers_path, kernels);
    }
    if (limit_set || max_new_set || answers_path) {
        fprintf(stderr, "vlmeval: %s belongs to VQA mode (--vqa FILE)\n",
                limit_set ? "--limit" : max_new_set ? "--max-new" : "--answers");
        return 2;
    }
    if (!ref_path || !model_path) {
        usage(stderr);
        return 2;
    }
    return cases_main(ref_path, model_path, cases_path ? cases_path : "tests/data/eval_cases.txt", n_greedy,
                      kernels);
}
