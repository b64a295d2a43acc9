/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: any byte string must give VLM_OK or an
 * error status, never a crash, a leak or an out-of-bounds read (run under ASan+UBSan by `make fuzz`). */
#include <stdlib.h>

#include "fuzz_common.h"
#include "runtime/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct st_checkpoint *ck = NULL;
    if (st_file_open(path, &ck) == VLM_OK) {
        /* touch every accepted tensor's bytes, as a loader would */
        for (int64_t i = 0; i < st_checkpoint_count(ck); i++) {
            const struct st_tensor *t = st_checkpoint_at(ck, i);
            if (t->dtype == VLM_DTYPE_OTHER || t->n_elements > (1 << 20)) continue;
            float *f = malloc((size_t)t->n_elements * sizeof(float) + 1);
            if (f) st_tensor_to_f32(t, f);
            free(f);
            (void)st_checkpoint_find(ck, t->name);
        }
        st_checkpoint_close(ck);
    }
    close(fd);
    return 0;
}
