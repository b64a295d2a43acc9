/* main.c — the vlmrun CLI: vlmrun [--model PATH] IMAGE [PROMPT] (default model: $VLM_MODEL, else the bundled demo).
 *
 * Runs one image + prompt through the float32 reference model and streams the generated text to stdout.
 * Text mode (the model directory, or --tokenizer, has a tokenizer.json or tokenizer.model): PROMPT is the user's
 * message; it is put into the chat template (tokenizer/chat.h) with the image before it, the image placeholder is
 * expanded to the image's token count, and the generated tokens are decoded and streamed as text.
 * Id mode (no tokenizer, or --ids): PROMPT is a list of token ids (spaces or commas between them) in which
 * "<image>" or the model's image token id marks the image; stdout then carries the generated ids.
 * Without PROMPT (text mode): a chat, one question per stdin line, earlier turns kept in the KV cache (chat_loop).
 * Logs and timings go to stderr. Exit status: 0 success, 1 runtime error (one line on stderr), 2 usage error. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/cpu/pool.h"
#include "kernels/cuda_backend.h"
#include "kernels/cpu/qgemm.h"
#include "runtime/gpu.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/text_mode.h"
#include "runtime/util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "vision/image.h"

#define MAX_PROMPT_IDS 65536

/* The Makefile sets it to the checkout's models/demo as an absolute path, so the built binary finds the bundled
 * model from any working directory. */
#ifndef VLM_DEFAULT_MODEL
#define VLM_DEFAULT_MODEL "models/demo"
#endif

static void usage(FILE *f) {
    fputs("usage: vlmrun [--model PATH] [options] IMAGE [PROMPT]\n"
          "  --model PATH    a .mbq file written by vlmconvert (quantized or not; carries its tokenizer), or a\n"
          "                  Hugging Face LLaVA-OneVision checkpoint directory (config.json,\n"
          "                  preprocessor_config.json, model.safetensors or sharded with an index)\n"
          "                  (default: $VLM_MODEL if set, else the bundled demo model " VLM_DEFAULT_MODEL ")\n"
          "  --max-new N     generate at most N tokens (default 32)\n"
          "  --device D      cuda or cpu (default: cuda when this build has the CUDA backend and a GPU is\n"
          "                  present, else cpu)\n"
          "  --ctx N         tokens the GPU's KV cache holds, prompt (image tokens included) + answer\n"
          "                  (default: 16384, at most the model's max_position_embeddings)\n"
          "  --ignore-eos    do not stop at the end-of-sequence tokens (generation_config.json and the\n"
          "                  tokenizer's <|im_end|>, <|endoftext|>, </s>)\n"
          "  --template T    chat template for a text prompt: chatml (Qwen/LLaVA-OneVision training template,\n"
          "                  default system prompt \"You are a helpful assistant.\"), chatml-hf (the HF\n"
          "                  processor's template, no system turn unless --system), vicuna (LLaVA-1.5).\n"
          "                  Default: chatml with a tokenizer.json, vicuna with a SentencePiece tokenizer.model\n"
          "  --system TEXT   system prompt (replaces the template's default)\n"
          "  --tokenizer P   tokenizer directory or file (tokenizer.json / tokenizer.model) to use instead of\n"
          "                  the one in the model directory\n"
          "  --ids           PROMPT is token ids even when a tokenizer is available (output: token ids)\n"
          "  --info          print the model's dimensions, parameter counts and memory needs from its\n"
          "                  config alone (no weights, image or prompt needed; for a .mbq also what the file holds)\n"
          "                  and exit\n"
          "  -h, --help      show this help\n"
          "IMAGE is a PNG or JPEG file. With a tokenizer (tokenizer.json or tokenizer.model in the model\n"
          "directory, or --tokenizer), PROMPT is the question in plain text: it goes into the chat template\n"
          "after the image, and the answer is printed to stdout as it is generated. PROMPT is always plain\n"
          "text: special-token strings in it (\"<|im_end|>\", \"<image>\") are not turned into special tokens.\n"
          "Without a tokenizer (or with --ids), PROMPT is a list of token ids separated by spaces or commas;\n"
          "\"<image>\" (or the model's image token id) marks where the image goes, and without a marker the\n"
          "image goes first. Generated token ids are then printed to stdout as they are produced.\n"
          "Without PROMPT (text mode only): a chat about IMAGE. Questions are read from stdin, one per line,\n"
          "and each answer is printed on its own line; earlier questions and answers stay in the chat. The\n"
          "whole chat is prefilled again for each question. End with end-of-file (Ctrl-D).\n",
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
            vlm_log_error("prompt: '%.20s' is not a token id (id mode, as there is no tokenizer.json or "
                          "tokenizer.model in the model directory, or --ids: give ids, e.g. \"<image> 12 34\")", p);
            return -1;
        }
        ids[n++] = v;
        p = end;
    }
    return n;
}

/* --info: what a checkpoint is and what it needs, from config.json alone (so it also works for configs of
 * models too large for this machine). Prints to stdout; one error line and 1 on failure. */
static int print_info(const char *dir) {
    char path[4096];
    struct vlm_config c;
    struct stat sb;
    struct mbq_file *mf = NULL;
    if (stat(dir, &sb) == 0 && S_ISREG(sb.st_mode)) { /* a .mbq: its header has the config */
        if (mbq_file_open(dir, &mf) != VLM_OK) return 1;
        snprintf(path, sizeof path, "%s: header.config", dir);
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(mbq_file_header(mf), "config");
        if (!cJSON_IsObject(cfg)) {
            vlm_log_error("%s: header has no 'config' object", dir);
            mbq_file_close(mf);
            return 1;
        }
        if (vlm_config_parse_json(cfg, path, &c) != VLM_OK) {
            mbq_file_close(mf);
            return 1;
        }
    } else if (!vlm_path_join(path, sizeof path, dir, "config.json")) {
        vlm_log_error("%s: path too long", dir);
        return 1;
    } else if (vlm_config_parse(path, &c) != VLM_OK) {
        return 1;
    }
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
    if (mf) { /* what the file holds: bytes per stored format, and the method */
        double bytes[VLM_MBQ_DTYPE_U8 + 1] = {0}, total = 0;
        for (int64_t i = 0; i < mbq_file_count(mf); i++) {
            const struct mbq_tensor *te = mbq_file_at(mf, i);
            bytes[te->dtype] += (double)te->size;
            total += (double)te->size;
        }
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(mbq_file_header(mf), "quant");
        char *qs = q ? cJSON_PrintUnformatted(q) : NULL;
        printf("file: %lld bytes, %lld tensors, %.2f MB of tensor data:", (long long)sb.st_size,
               (long long)mbq_file_count(mf), total / 1e6);
        for (int f = 0; f <= VLM_MBQ_DTYPE_U8; f++)
            if (bytes[f] > 0) printf(" %s %.2f MB", mbq_dtype_name(f), bytes[f] / 1e6);
        printf("\nquant: %s\n", qs ? qs : "(none recorded)");
        free(qs);
        mbq_file_close(mf);
    }
    return 0;
}

static int print_token(int64_t id, void *user) {
    int *first = user;
    printf(*first ? "%lld" : " %lld", (long long)id);
    *first = 0;
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Text mode */

/* Streams generated tokens as text. */
static int print_text(int64_t id, void *user) {
    struct vlm_text_out *o = user;
    int64_t n = vlm_text_out_push(o, id);
    if (n > 0) fwrite(o->buf, 1, (size_t)n, stdout);
    fflush(stdout);
    return 0;
}

/* The user's text must be UTF-8: the tokenizer would quietly replace bad bytes by U+FFFD, as the reference does,
 * and answer a question nobody asked. false with one error line naming what (and the byte) otherwise. */
static bool text_is_utf8(const char *what, const char *s) {
    const size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len;
        if (uni_utf8_scan((const unsigned char *)s + i, n - i, &cp, &len) != UNI_SCAN_OK) {
            vlm_log_error("%s: invalid UTF-8 at byte %zu", what, i);
            return false;
        }
        i += len;
    }
    return true;
}

/* What every text turn needs: the model, its tokenizer and template, the encoded image, the generation limits. */
struct text_ctx {
    const struct vlm_model *m;
    const struct vlm_tokenizer *tok;
    enum chat_template tmpl;
    const char *system;
    const struct img_layout *lay;
    const float *feats;
    int64_t max_new;
    const int64_t *stop;
    int n_stop;
    int64_t *gen; /* max_new generated tokens */
};

/* One answer: renders the chat msgs[0..n_msgs) (the image in the first message), generates greedily and streams the
 * text to stdout, newline-terminated. c->gen receives the tokens, *n_gen their count, *n_prompt the prompt length,
 * *n_cached the prompt tokens the session already held (not prefilled again), *gs the timings. With chat_full
 * non-NULL, a prompt that leaves no room for c->max_new answer tokens sets *chat_full and returns VLM_ERR_ARG without
 * a message (the caller names the question). */
static enum vlm_status text_turn(const struct text_ctx *c, struct vlm_session *s, const struct chat_msg *msgs,
                                 int n_msgs, int64_t *n_gen, int64_t *n_prompt, int64_t *n_cached,
                                 struct vlm_gen_stats *gs, bool *chat_full) {
    int64_t *full = NULL;
    size_t n = 0;
    struct vlm_text_out *out = NULL;
    enum vlm_status st = chat_render(c->tok, c->tmpl, c->system, msgs, n_msgs, &c->lay->n_image_tokens, 1, true,
                                     &full, &n);
    if (st != VLM_OK) goto done;
    *n_prompt = (int64_t)n;
    if (chat_full && !vlm_context_fits(c->m, (int64_t)n, c->max_new)) {
        *chat_full = true; /* the caller says so: only it knows which question did it */
        st = VLM_ERR_ARG;
        goto done;
    }
    st = VLM_ERR_OOM;
    out = vlm_alloc_array(1, sizeof *out, "text output");
    if (!out) goto done;
    vlm_text_out_init(out, c->tok, true);
    st = vlm_session_generate(c->m, s, full, (int64_t)n, c->feats, c->lay->n_image_tokens, c->max_new, c->stop,
                              c->n_stop, c->gen, n_gen, print_text, out, gs, n_cached);
    if (st != VLM_OK) goto done;
    int64_t k = vlm_text_out_flush(out);
    if (k > 0) fwrite(out->buf, 1, (size_t)k, stdout);
    printf("\n");
    fflush(stdout);
done:
    free(out);
    free(full);
    return st;
}

/* Interactive mode (IMAGE without PROMPT): one question per stdin line, each answered after the earlier questions
 * and answers, which stay in the chat as user and assistant turns (the first user turn carries the image, encoded
 * once). Blank lines are skipped; a question that fails (e.g. invalid UTF-8) gets its one error line and is dropped
 * from the chat. Returns 0 at end of input, 1 when any question failed. */
static int chat_loop(const struct text_ctx *c) {
    struct chat_msg *msgs = NULL;
    int n_msgs = 0, cap = 0, rc = 0;
    char *line = NULL;
    size_t line_cap = 0;
    const bool tty = isatty(STDIN_FILENO);
    long long n_lines = 0;
    struct vlm_session session = {0}; /* the chat so far stays in the KV cache: a question prefills only itself */
    for (;;) {
        if (tty) fputs("> ", stderr);
        ssize_t len = getline(&line, &line_cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        n_lines++;
        if (len == 0) continue;
        char what[64];
        snprintf(what, sizeof what, "<stdin> line %lld", n_lines);
        if (!text_is_utf8(what, line)) {
            rc = 1;
            continue;
        }
        if (n_msgs + 2 > cap) { /* room for this question and its answer */
            const int ncap = cap ? 2 * cap : 16; /* n_msgs == cap (both even) here: 2 * cap >= n_msgs + 2 */
            struct chat_msg *nm = ncap < (1 << 20) ? realloc(msgs, (size_t)ncap * sizeof *nm) : NULL;
            if (!nm) {
                vlm_log_error("out of memory for the chat history (%d turns)", n_msgs);
                rc = 1;
                break;
            }
            msgs = nm, cap = ncap;
        }
        char *q = strdup(line), *answer = NULL;
        if (!q) {
            vlm_log_error("out of memory for a question");
            rc = 1;
            break;
        }
        msgs[n_msgs] = (struct chat_msg){.role = "user", .text = q, .n_images = n_msgs == 0};
        int64_t n_gen = 0, n_prompt = 0, n_cached = 0;
        struct vlm_gen_stats gs;
        size_t n_answer;
        bool full = false;
        const enum vlm_status st = text_turn(c, &session, msgs, n_msgs + 1, &n_gen, &n_prompt, &n_cached, &gs, &full);
        if (full) {
            /* every later question would fail the same way: end the chat with one line saying why */
            vlm_log_error("%s: the chat is full: with this question the prompt is %lld tokens, which leaves no room "
                          "for a %lld-token answer in the %lld positions of the %s; start a new chat", what,
                          (long long)n_prompt, (long long)c->max_new, (long long)vlm_context_len(c->m),
                          c->m->gpu ? "GPU's KV cache (--ctx)" : "model");
            free(q);
            rc = 1;
            break;
        }
        if (st != VLM_OK || tok_decode(c->tok, c->gen, (size_t)n_gen, true, &answer, &n_answer) != VLM_OK) {
            free(q); /* said why in one line; the chat goes on without this question */
            rc = 1;
            continue;
        }
        msgs[n_msgs + 1] = (struct chat_msg){.role = "assistant", .text = answer};
        n_msgs += 2;
        vlm_log_info("turn %d: prompt %lld tokens, %lld cached, prefill %.1f ms, %lld tokens decoded in %.1f ms",
                     n_msgs / 2, (long long)n_prompt, (long long)n_cached, gs.prefill_ms,
                     (long long)(n_gen > 0 ? n_gen - 1 : 0), gs.decode_ms);
    }
    if (ferror(stdin)) {
        vlm_log_error("<stdin>: read failed: %s", strerror(errno));
        rc = 1;
    }
    for (int i = 0; i < n_msgs; i++) free((char *)msgs[i].text);
    free(msgs);
    free(line);
    vlm_session_free(&session);
    return rc;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *image_path = NULL, *prompt = NULL, *tok_path = NULL, *system = NULL;
    long long max_new = 32;
    int ignore_eos = 0, info = 0, ids_mode = 0, tmpl = -1; /* -1: chosen by the tokenizer's kind */
    int device = -1; /* -1: cuda when present, 0: cpu, 1: cuda */
    long long ctx_len = 0;
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
        } else if (!strcmp(a, "--device") && i + 1 < argc) {
            const char *dv = argv[++i];
            if (!strcmp(dv, "cpu")) device = 0;
            else if (!strcmp(dv, "cuda")) device = 1;
            else {
                fprintf(stderr, "vlmrun: --device takes cuda or cpu, not '%s'\n", dv);
                return 2;
            }
        } else if (!strcmp(a, "--ctx") && i + 1 < argc) {
            char *end;
            ctx_len = strtoll(argv[++i], &end, 10);
            if (*end || ctx_len < 1 || ctx_len > INT32_MAX) {
                fprintf(stderr, "vlmrun: --ctx takes a whole number of tokens from 1 to %d\n", INT32_MAX);
                return 2;
            }
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
        } else if (!strcmp(a, "--ids")) {
            ids_mode = 1;
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) {
            tok_path = argv[++i];
        } else if (!strcmp(a, "--system") && i + 1 < argc) {
            system = argv[++i];
        } else if (!strcmp(a, "--template") && i + 1 < argc) {
            const char *t = argv[++i];
            if (!strcmp(t, "chatml")) tmpl = CHAT_CHATML_QWEN;
            else if (!strcmp(t, "chatml-hf")) tmpl = CHAT_CHATML_HF;
            else if (!strcmp(t, "vicuna")) tmpl = CHAT_VICUNA_V1;
            else {
                fprintf(stderr, "vlmrun: --template takes chatml, chatml-hf or vicuna, not '%s'\n", t);
                return 2;
            }
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
    if (!model_dir) { /* the bundled demo model (or $VLM_MODEL), so a first run needs no download and no flag */
        const char *env = getenv("VLM_MODEL");
        model_dir = env && *env ? env : VLM_DEFAULT_MODEL;
        if ((info || image_path) && access(model_dir, R_OK) != 0) {
            fprintf(stderr, "vlmrun: error: %s: no --model given and the default model %s is not readable (%s); "
                            "pass --model PATH or set VLM_MODEL\n",
                    model_dir, env && *env ? "from VLM_MODEL" : "(the bundled demo)", strerror(errno));
            return 1;
        }
    }
    if (info) return print_info(model_dir);
    if (!image_path || (!prompt && ids_mode)) {
        usage(stderr);
        return 2;
    }
    if (ids_mode && (tok_path || system || tmpl >= 0)) {
        fprintf(stderr, "vlmrun: --ids takes token ids: --tokenizer, --system and --template need a text prompt\n");
        return 2;
    }

    int rc = 1;
    struct vlm_model *m = NULL;
    struct vlm_tokenizer *tok = NULL;
    struct vlm_image img = {0};
    int64_t *ids = NULL, *full = NULL, *gen = NULL, *stop = NULL;
    float *feats = NULL, *emb = NULL;
    int n_stop = 0;

    /* Cheap input checks first, so a bad image, tokenizer or prompt fails before a long model load. */
    if ((prompt && !text_is_utf8("PROMPT", prompt)) || (system && !text_is_utf8("--system", system))) goto done;
    if (img_load(image_path, &img) != VLM_OK) goto done;
    if (!ids_mode && vlm_tokenizer_find(model_dir, NULL, tok_path, &tok) != VLM_OK) goto done;
    struct stat sb; /* a checkpoint directory without a tokenizer cannot chat: say so before the long load */
    if (!tok && !prompt && stat(model_dir, &sb) == 0 && S_ISDIR(sb.st_mode)) goto no_tokenizer;
    int n_dev = 0;
    const bool have_gpu = device != 0 && cuda_backend_probe(&n_dev) == VLM_OK && n_dev > 0;
    if (device == 1 && !have_gpu) { /* before a long model load */
        vlm_log_error("--device cuda: %s", cuda_backend_compiled()
                                               ? "no CUDA device or driver found"
                                               : "this build has no CUDA backend (nvcc was not found, or CUDA=0)");
        goto done;
    }
    if (vlm_model_load(model_dir, &m) != VLM_OK) goto done;
    /* a .mbq carries its tokenizer: look again now that the model is open */
    if (!ids_mode && !tok && vlm_tokenizer_find(model_dir, m, tok_path, &tok) != VLM_OK) goto done;
    if (!tok && !prompt) goto no_tokenizer;
    if (!ignore_eos && vlm_model_read_stop_ids(m, tok, &stop, &n_stop) != VLM_OK) goto done;
    if (have_gpu) { /* the GPU when asked, or by default when there is one */
        const int64_t max_pos = m->config.text.max_position_embeddings;
        const int64_t n_ctx = ctx_len ? ctx_len : (max_pos < 16384 ? max_pos : 16384);
        if (vlm_model_use_gpu(m, 0, n_ctx) != VLM_OK) goto done; /* said why, in one line */
        vlm_log_info("device: cuda, %s", vlm_gpu_describe(m->gpu));
    }
    const int64_t img_tok = m->config.image_token_index, d = m->config.text.hidden_size;
    int64_t n_ids = 0, *p_ids = NULL;
    if (tok) {
        if (vlm_model_check_tokenizer(m, tok) != VLM_OK) goto done;
    } else {
        ids = vlm_alloc_array(MAX_PROMPT_IDS + 1, sizeof(int64_t), "prompt ids");
        if (!ids) goto done;
        n_ids = parse_prompt(prompt, img_tok, ids + 1, MAX_PROMPT_IDS);
        if (n_ids < 0) goto done;
        int has_marker = 0;
        for (int64_t i = 1; i <= n_ids; i++) has_marker += ids[i] == img_tok;
        p_ids = ids + 1;
        if (!has_marker) { /* no marker: the image goes first */
            ids[0] = img_tok;
            p_ids = ids;
            n_ids++;
        }
    }

    double t0 = vlm_time_ms();
    struct img_layout lay;
    if (vlm_image_encode(m, &img, &lay, &feats) != VLM_OK) goto done;
    double t1 = vlm_time_ms();
    vlm_log_info("image %lld x %lld (w x h): %lld crops, %lld image tokens, vision encode %.1f ms",
                 (long long)img.width, (long long)img.height, (long long)lay.n_crops, (long long)lay.n_image_tokens,
                 t1 - t0);
    int64_t n_full = 0, n_gen = 0;
    struct vlm_gen_stats gs;
    gen = vlm_alloc_array(max_new ? (size_t)max_new : 1, sizeof(int64_t), "generated tokens");
    if (!gen) goto done;
    if (tok) { /* the user's text after the image, in the chat template; the placeholder expanded by chat_render */
        const enum chat_template t = tmpl >= 0 ? (enum chat_template)tmpl
                                     : tok_get_kind(tok) == TOK_KIND_SPM ? CHAT_VICUNA_V1 : CHAT_CHATML_QWEN;
        static const char *const tmpl_names[] = {"chatml", "chatml-hf", "vicuna"};
        vlm_log_info("tokenizer %s (%lld ids), template %s",
                     tok_get_kind(tok) == TOK_KIND_SPM ? "SentencePiece" : "byte-level BPE",
                     (long long)tok_vocab_size(tok), tmpl_names[t]);
        const struct text_ctx c = {.m = m, .tok = tok, .tmpl = t, .system = system, .lay = &lay, .feats = feats,
                                   .max_new = max_new, .stop = stop, .n_stop = n_stop, .gen = gen};
        if (!prompt) {
            rc = chat_loop(&c);
            goto done;
        }
        const struct chat_msg msg = {.role = "user", .text = prompt, .n_images = 1};
        struct vlm_session one = {0};
        int64_t n_cached;
        enum vlm_status st = text_turn(&c, &one, &msg, 1, &n_gen, &n_full, &n_cached, &gs, NULL);
        vlm_session_free(&one);
        if (st != VLM_OK) goto done;
    } else {
        if (vlm_prompt_expand(p_ids, n_ids, img_tok, 1, lay.n_image_tokens, &full, &n_full) != VLM_OK) goto done;
        emb = vlm_alloc_array((size_t)n_full, (size_t)d * sizeof(float), "prompt embeddings");
        if (!emb) goto done;
        if (vlm_prompt_embed(m, full, n_full, feats, lay.n_image_tokens, emb) != VLM_OK) goto done;
        int first = 1;
        if (vlm_generate_greedy(m, emb, n_full, max_new, stop, n_stop, gen, &n_gen, NULL, print_token, &first, &gs) !=
            VLM_OK)
            goto done;
        printf("\n");
    }
    /* the first token comes out of the prefill pass; the other n_gen - 1 are decode steps */
    vlm_log_info("prefill %lld tokens in %.1f ms (%.1f tok/s); decode %lld tokens in %.1f ms (%.1f tok/s); %s, "
                 "decoder %s", (long long)n_full, gs.prefill_ms, n_full / (gs.prefill_ms * 1e-3),
                 (long long)(n_gen > 0 ? n_gen - 1 : 0), gs.decode_ms,
                 n_gen > 1 ? (n_gen - 1) / (gs.decode_ms * 1e-3) : 0.0, m->gpu ? "cuda" : "cpu",
                 vlm_model_kernels_str(m));
    rc = 0;
    goto done;
no_tokenizer:
    vlm_log_error("%s: no tokenizer (tokenizer.json or tokenizer.model) found for a chat without PROMPT; pass "
                  "--tokenizer PATH, or give the prompt as token ids", model_dir);
done:
    tok_free(tok);
    free(ids);
    free(full);
    free(gen);
    free(stop);
    free(feats);
    free(emb);
    img_free(&img);
    vlm_model_free(m);
    return rc;
}
