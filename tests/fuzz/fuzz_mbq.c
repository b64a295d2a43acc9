/* fuzz_mbq.c — libFuzzer target for the .mbq reader: any byte string must give VLM_OK or an error status, never a
 * crash, a leak or an out-of-bounds read (run under ASan+UBSan by `make fuzz`). The input is copied to a 4096-byte
 * aligned buffer (as mmap would give) so that accepted tensor data is 64-byte aligned and the views can be formed.
 * On success every tensor's bytes are read, every name is looked up, and each rank-2 weight is viewed and its
 * values checked, as a loader would. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quant.h"
#include "runtime/mbq_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t cap = (size + 4095) / 4096 * 4096;
    unsigned char *buf = aligned_alloc(4096, cap ? cap : 4096);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    struct mbq_file *f = NULL;
    if (mbq_file_parse(buf, size, "fuzz.mbq", &f) == VLM_OK) {
        volatile unsigned sum = 0;
        for (int64_t i = 0; i < mbq_file_count(f); i++) {
            const struct mbq_tensor *t = mbq_file_at(f, i);
            const unsigned char *p = t->data;
            for (size_t k = 0; k < t->size; k++) sum += p[k];
            if (mbq_file_find(f, t->name) != t) abort(); /* names are unique: lookup must find this very entry */
            if (t->dtype == VLM_MBQ_DTYPE_U8 || t->n_dims != 2) continue;
            if (t->shape[0] * t->shape[1] > (1 << 20)) continue; /* keep each run fast */
            struct vlm_qmat m;
            const char *why = NULL;
            /* the reader checked the size against vlm_qlayout, so the view must form */
            if (!vlm_qmat_view((enum vlm_qformat)t->dtype, t->shape[0], t->shape[1], t->data, t->size, &m, &why))
                abort();
            (void)vlm_qmat_check(&m, &why);
        }
        (void)mbq_file_header(f);
        (void)mbq_file_find(f, "");
        (void)sum;
        mbq_file_close(f);
    }
    free(buf);
    return 0;
}
