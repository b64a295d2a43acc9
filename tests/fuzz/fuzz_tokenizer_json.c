/* fuzz_tokenizer_json.c — libFuzzer target for the tokenizer.json loader (tokenizer/bpe.c): any byte string must
 * load or fail cleanly (one error line), never crash, leak or read out of bounds. A file that loads must then
 * encode and decode a few texts (with and without special tokens) within its own vocabulary. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tokenizer/tok_internal.h"

static const char *const k_texts[] = {"Hello, world! I'm here.\n\n  x", "<|im_start|>user\n<image>\nhi<|im_end|>",
                                      "e\xcc\x81 \xe4\xb8\xad\xe6\x96\x87 12345",
                                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "\xff\xfe \xed\xa0\x80 <tool>x <|im"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct vlm_tokenizer t = {.kind = TOK_KIND_BPE};
    if (bpe_load(path, &t.bpe, &t.special, &t.vocab_size) == VLM_OK) {
        for (size_t k = 0; k < sizeof k_texts / sizeof k_texts[0]; k++) {
            for (int ps = 0; ps < 2; ps++) {
                int64_t *ids = NULL;
                size_t n = 0;
                if (tok_encode(&t, k_texts[k], strlen(k_texts[k]), ps, &ids, &n) != VLM_OK) abort();
                for (size_t i = 0; i < n; i++)
                    if (ids[i] < 0 || ids[i] >= t.vocab_size) abort();
                char *out = NULL;
                size_t n_out = 0;
                if (tok_decode(&t, ids, n, ps, &out, &n_out) != VLM_OK) abort();
                free(out);
                free(ids);
            }
        }
        (void)tok_token_to_id(&t, "<|im_start|>");
        bpe_free(t.bpe);
    }
    close(fd);
    return 0;
}
