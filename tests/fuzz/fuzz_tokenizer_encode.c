/* fuzz_tokenizer_encode.c — libFuzzer target for encode and decode with the real Qwen2 tokenizer
 * (tests/data/tokenizers/qwen2/tokenizer.json.gz, decompressed once at start-up; VLM_FUZZ_TOKENIZER may name a
 * plain tokenizer.json instead). Input: one flag byte (bit 0: parse_special, bit 1: skip_special) then the text.
 * Besides "no crash, no leak, no out-of-bounds access" it checks what must hold for any bytes:
 *   - without parse_special, decode(encode(text)) == NFC(text with invalid UTF-8 replaced): byte-level BPE loses
 *     nothing, so a difference is a bug in the splitter, the merge loop or the byte map;
 *   - streaming decode gives the same bytes as decode;
 *   - decoding arbitrary ids (taken from the input, some out of range) succeeds or fails cleanly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

static struct vlm_tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *plain = getenv("VLM_FUZZ_TOKENIZER");
    if (plain) {
        if (tok_load_file(plain, &g_tok) != VLM_OK) abort();
        return 0;
    }
    FILE *p = popen("gzip -dc tests/data/tokenizers/qwen2/tokenizer.json.gz", "r");
    if (!p) abort();
    size_t cap = 8u << 20, n = 0;
    uint8_t *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, p)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (pclose(p) != 0 || !buf || n == 0) {
        fprintf(stderr, "fuzz_tokenizer_encode: run from the repository root (needs %s)\n",
                "tests/data/tokenizers/qwen2/tokenizer.json.gz");
        abort();
    }
    char path[64];
    int fd = fuzz_memfile(buf, n, path, sizeof path);
    free(buf);
    if (fd < 0 || tok_load_file(path, &g_tok) != VLM_OK) abort();
    close(fd);
    return 0;
}

static void check_stream(const int64_t *ids, size_t n, bool skip, const char *full, size_t n_full) {
    struct tok_stream s;
    tok_stream_init(&s, g_tok, skip);
    char piece[4096];
    size_t at = 0;
    for (size_t i = 0; i <= n; i++) {
        int64_t k =
            i < n ? tok_stream_push(&s, ids[i], piece, sizeof piece) : tok_stream_flush(&s, piece, sizeof piece);
        if (k < 0 || at + (size_t)k > n_full || memcmp(full + at, piece, (size_t)k) != 0) abort();
        at += (size_t)k;
    }
    if (at != n_full) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    bool parse_special = data[0] & 1, skip = (data[0] & 2) != 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int64_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(g_tok, text, len, parse_special, &ids, &n) != VLM_OK) abort();
    char *out = NULL;
    size_t n_out = 0;
    if (tok_decode(g_tok, ids, n, skip, &out, &n_out) != VLM_OK) abort();
    check_stream(ids, n, skip, out, n_out);
    if (!parse_special && !skip) { /* lossless: decode(encode(x)) == NFC(repair(x)) */
        bool valid;
        size_t rl = uni_utf8_repaired_len((const unsigned char *)text, len, &valid);
        unsigned char *fixed = malloc(rl + 1);
        unsigned char *nfc = NULL;
        size_t n_nfc = 0;
        uni_utf8_repair((const unsigned char *)text, len, fixed);
        if (uni_nfc(fixed, rl, &nfc, &n_nfc) != VLM_OK) abort();
        if (n_nfc != n_out || memcmp(nfc, out, n_out) != 0) abort();
        free(fixed);
        free(nfc);
    }
    free(out);
    free(ids);
    /* arbitrary ids: 3 input bytes each, around the vocabulary's end so some are out of range */
    int64_t raw[64];
    size_t k = 0;
    for (size_t i = 1; i + 3 <= size && k < 64; i += 3)
        raw[k++] = ((int64_t)data[i] << 16 | (int64_t)data[i + 1] << 8 | data[i + 2]) - 8;
    if (tok_decode(g_tok, raw, k, skip, &out, &n_out) == VLM_OK) {
        check_stream(raw, k, skip, out, n_out);
        free(out);
    }
    return 0;
}
