/* bench_tokenizer.c — single-thread throughput of the Qwen2 byte-level BPE tokenizer (tokenizer/bpe.c).
 *
 * Usage: bench_tokenizer [tokenizer.json|-] [reps] [input name]
 *   Without a path (or with "-") it decompresses tests/data/tokenizers/qwen2/tokenizer.json.gz (gzip -dc) into a
 *   temporary file. An input name runs only that input (for profiling).
 * Inputs (1 MiB each, generated deterministically):
 *   mixed     prose-like text: English words with punctuation, digits, newlines, plus code, Chinese, Japanese,
 *             Russian, Arabic and emoji runs (roughly 75 % ASCII bytes)
 *   english   English words and punctuation only
 *   cjk       Chinese and Japanese sentences (3-byte characters, NFC work on every segment)
 *   one_piece 1 MiB of random letters a-j without a space: one pre-token, the O(m log m) merge path
 * For each: best-of-reps encode time, MB/s (10^6 bytes per second) and tokens/s; then decode of the mixed ids.
 * Results go to stdout (one line per input) and to bench/tokenizer.txt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/util.h"
#include "tokenizer/tokenizer.h"

#ifndef VLM_SRC_DIR
#define VLM_SRC_DIR "."
#endif

#define BENCH_BYTES (1u << 20)

static uint64_t g_seed = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(uint32_t n) {
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((g_seed >> 33) % n);
}

struct buf {
    char *p;
    size_t n, cap;
};

static void put(struct buf *b, const char *s) {
    size_t l = strlen(s);
    if (b->n + l > b->cap) l = b->cap - b->n;
    memcpy(b->p + b->n, s, l);
    b->n += l;
}

/* clang-format off */
static const char *const k_words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "I", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who",
    "so", "no", "model", "image", "language", "vision", "token", "tokenizer", "throughput", "benchmark", "encoder",
    "Transformer", "attention", "OneVision", "LLaVA", "Qwen2", "don't", "it's", "we're", "they'll", "I've",
    "internationalization", "characteristically", "photosynthesis", "approximately", "nevertheless"};
static const char *const k_punct[] = {",", ".", ";", ":", "!", "?", " -", " (see below)", "\"", "'"};
static const char *const k_code[] = {
    "for (int i = 0; i < n; i++) {\n    sum += x[i] * w[i];\n}\n",
    "def forward(self, x):\n    return self.proj(F.gelu(self.fc(x)))\n",
    "    if (st != VLM_OK) goto fail;\n", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n", "<div class=\"row\"><span>42</span></div>\n"};
static const char *const k_cjk[] = {"我们提出了一种新的多模态模型。", "这张图片显示了一只猫坐在窗台上。",
                                    "日本語のテキストも含まれています。", "東京は日本の首都です。",
                                    "모델은 이미지를 이해합니다. "};
static const char *const k_other[] = {"Привет, мир! ", "Это тест токенизатора. ", "مرحبا بالعالم. ",
                                      "😀 👍🏽 ❤️ 🇫🇷 ", "Ελληνικά κείμενα. ", "नमस्ते दुनिया। "};

/* clang-format on */

static void gen_english(struct buf *b, bool mixed) {
    while (b->n < b->cap) {
        uint32_t r = rnd(100);
        if (!mixed || r < 78) {
            put(b, k_words[rnd(sizeof k_words / sizeof k_words[0])]);
            uint32_t q = rnd(20);
            if (q < 3) put(b, k_punct[rnd(sizeof k_punct / sizeof k_punct[0])]);
            put(b, q == 19 ? "\n\n" : q == 18 ? "\n" : " ");
        } else if (r < 84) {
            put(b, k_code[rnd(sizeof k_code / sizeof k_code[0])]);
        } else if (r < 89) {
            char num[32];
            snprintf(num, sizeof num, "%u.%02u ", rnd(100000), rnd(100));
            put(b, num);
        } else if (r < 95) {
            put(b, k_cjk[rnd(sizeof k_cjk / sizeof k_cjk[0])]);
        } else {
            put(b, k_other[rnd(sizeof k_other / sizeof k_other[0])]);
        }
    }
}

static void gen_cjk(struct buf *b) {
    while (b->n < b->cap) put(b, k_cjk[rnd(4)]);
}

static void gen_one_piece(struct buf *b) {
    while (b->n < b->cap) b->p[b->n++] = (char)('a' + rnd(10));
}

/* Cuts b back to whole UTF-8 characters (the generators may stop inside one). */
static void trim_utf8(struct buf *b) {
    size_t k = b->n;
    while (k > 0 && ((unsigned char)b->p[k - 1] & 0xC0) == 0x80) k--;
    if (k > 0 && (unsigned char)b->p[k - 1] >= 0xC0) b->n = k - 1;
}

/* Decompresses the fixture into a temporary file; returns its path (static) or NULL. */
static const char *fixture_json(void) {
    static char path[] = "/tmp/vlm_bench_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    close(fd);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s/tests/data/tokenizers/qwen2/tokenizer.json.gz' > '%s'", VLM_SRC_DIR, path);
    if (system(cmd) != 0) {
        unlink(path);
        return NULL;
    }
    return path;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    const char *only = argc > 3 ? argv[3] : NULL; /* run one input (for profiling) */
    if (reps < 1) reps = 1;
    const char *tmp = NULL;
    if (!path) {
        tmp = path = fixture_json();
        if (!path) {
            fprintf(stderr, "bench_tokenizer: cannot decompress the Qwen2 fixture (give a tokenizer.json path)\n");
            return 1;
        }
    }
    double t0 = vlm_time_ms();
    struct vlm_tokenizer *t = NULL;
    enum vlm_status st = tok_load_file(path, &t);
    double load_ms = vlm_time_ms() - t0;
    if (tmp) unlink(tmp);
    if (st != VLM_OK) return 1;

    FILE *rec = fopen(VLM_SRC_DIR "/bench/tokenizer.txt", "w");
    printf("tokenizer: %s, vocab %lld, load %.0f ms, best of %d runs, 1 thread\n", tmp ? "qwen2 fixture" : path,
           (long long)tok_vocab_size(t), load_ms, reps);
    if (rec) fprintf(rec, "load_ms %.1f\n", load_ms);
    static const char *const names[] = {"mixed", "english", "cjk", "one_piece"};
    int64_t *mixed_ids = NULL;
    size_t n_mixed_ids = 0;
    int rc = 0;
    for (int k = 0; k < 4; k++) {
        if (only && strcmp(only, names[k]) != 0) continue;
        struct buf b = {malloc(BENCH_BYTES), 0, BENCH_BYTES};
        if (!b.p) return 1;
        g_seed = 0x2545F4914F6CDD1Dull + (uint64_t)k;
        if (k == 0 || k == 1) gen_english(&b, k == 0);
        else if (k == 2) gen_cjk(&b);
        else gen_one_piece(&b);
        trim_utf8(&b);
        double best = 1e30;
        size_t n_ids = 0;
        for (int r = 0; r < reps; r++) {
            int64_t *ids = NULL;
            double s0 = vlm_time_ms();
            if (tok_encode(t, b.p, b.n, true, &ids, &n_ids) != VLM_OK) {
                rc = 1;
                break;
            }
            double ms = vlm_time_ms() - s0;
            if (ms < best) best = ms;
            if (k == 0 && r == 0) {
                mixed_ids = ids;
                n_mixed_ids = n_ids;
            } else {
                free(ids);
            }
        }
        double mbps = (double)b.n / 1e6 / (best / 1e3);
        printf("encode %-9s %8zu bytes -> %7zu ids  %7.2f ms  %7.1f MB/s  %6.2f M tokens/s\n", names[k], b.n, n_ids,
               best, mbps, (double)n_ids / 1e6 / (best / 1e3));
        if (rec) fprintf(rec, "encode_%s_mbps %.2f\n", names[k], mbps);
        free(b.p);
    }
    if (mixed_ids) {
        double best = 1e30;
        size_t len = 0;
        for (int r = 0; r < reps; r++) {
            char *out = NULL;
            double s0 = vlm_time_ms();
            if (tok_decode(t, mixed_ids, n_mixed_ids, false, &out, &len) != VLM_OK) {
                rc = 1;
                break;
            }
            double ms = vlm_time_ms() - s0;
            if (ms < best) best = ms;
            free(out);
        }
        printf("decode mixed     %8zu ids -> %7zu bytes  %7.2f ms  %7.1f MB/s\n", n_mixed_ids, len, best,
               (double)len / 1e6 / (best / 1e3));
        if (rec) fprintf(rec, "decode_mixed_mbps %.2f\n", (double)len / 1e6 / (best / 1e3));
    }
    if (rec) fclose(rec);
    free(mixed_ids);
    tok_free(t);
    return rc;
}
