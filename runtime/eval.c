/* eval.c — the vlmeval CLI: how far a converted (quantized) model's next-token distributions are from a reference
 * model's, over fixed image prompts — the llama-perplexity KLD method (targets.md §5.2) on multimodal prompts.
 *
 *   vlmeval --ref REF --model MODEL [--cases FILE] [--greedy N] [--kernels fast|ref]
 *
 * For every case (an image and a prompt of token ids) both models run their own vision path and the full prompt
 * (all positions' logits, float32), then greedy decoding. Per case and overall, stdout gets: mean and max
 * KL(P_ref || P_model) over prompt positions (softmax and KL in double), top-1 agreement over prompt positions,
 * and the length of the common prefix of the greedy continuations. Exit 0 on success, 1 on error, 2 on usage. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/util.h"
#include "vision/image.h"

#define MAX_CASES 256
#define MAX_IDS 4096

static void usage(FILE *f) {
    fputs("usage: vlmeval --ref REF --model MODEL [options]\n"
          "Compares MODEL's next-token distributions with REF's over image prompts: mean and max KL divergence\n"
          "KL(P_ref || P_model) per prompt position, top-1 agreement, and the common prefix of greedy continuations.\n"
          "REF and MODEL are each an HF checkpoint directory or a .mbq file (REF is normally the float32 checkpoint,\n"
          "MODEL a file from vlmconvert).\n"
          "  --cases FILE    one case per line: IMAGE <TAB> PROMPT, IMAGE relative to FILE's directory, PROMPT token\n"
          "                  ids with \"<image>\" where the image goes; '#' starts a comment line\n"
          "                  (default: tests/data/eval_cases.txt, the fixture prompts)\n"
          "  --greedy N      greedy tokens compared per case (default 16)\n"
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

int main(int argc, char **argv) {
    vlm_log_set_prog("vlmeval");
    const char *ref_path = NULL, *model_path = NULL, *cases_path = NULL;
    int64_t n_greedy = 16;
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
        } else if (v && strcmp(argv[i], "--greedy") == 0) {
            char *end;
            n_greedy = strtoll(argv[++i], &end, 10);
            if (*end || n_greedy < 1 || n_greedy > 256) {
                fprintf(stderr, "vlmeval: --greedy %s: expected 1 .. 256\n", argv[i]);
                return 2;
            }
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
    if (!ref_path || !model_path) {
        usage(stderr);
        return 2;
    }
    if (!cases_path) cases_path = "tests/data/eval_cases.txt";

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
