/* fuzz_spm_load.c — libFuzzer target for SentencePiece model loading (tokenizer/spm.c over spm_wrap.cc and the
 * sentencepiece library): any bytes either load or fail with a status; an accepted model must also survive
 * encoding (both parse_special modes; text with special-token strings and invalid UTF-8), giving ids inside its
 * vocabulary, and the per-id piece bytes. Seed: the SentencePiece test fixture. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tokenizer/tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct spm_model *m = NULL;
    struct tok_special sp;
    int64_t vocab = 0;
    if (spm_load(path, &m, &sp, &vocab) == VLM_OK) {
        static const char text[] = "Hello <image> w\xc3\xb6rld </s><s> \xff\xfe 123\n\t <unk>";
        for (int mode = 0; mode < 2; mode++) {
            int64_t *ids = NULL;
            size_t n = 0;
            if (spm_encode(m, text, sizeof text - 1, mode == 1, &ids, &n) == VLM_OK)
                for (size_t i = 0; i < n; i++)
                    if (ids[i] < 0 || ids[i] >= vocab) abort();
            free(ids);
        }
        for (int64_t id = 0; id < vocab && id < 4096; id++) {
            size_t len;
            bool special;
            if (!spm_token_bytes(m, id, &len, &special)) abort();
        }
        spm_free(m);
    }
    close(fd);
    return 0;
}
