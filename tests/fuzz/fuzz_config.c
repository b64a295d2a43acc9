/* fuzz_config.c — libFuzzer target for the config.json and preprocessor_config.json parsers; an accepted
 * config must also survive the parameter count and the image-token count of a few sizes. */
#include "fuzz_common.h"
#include "runtime/config.h"
#include "vision/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct vlm_config c;
    struct vlm_preproc_config pp;
    if (vlm_config_parse(path, &c) == VLM_OK) {
        struct vlm_param_count pc;
        vlm_config_count_params(&c, &pc);
        struct vlm_preproc_config sq = {.size_h = c.vision.image_size, .size_w = c.vision.image_size};
        struct img_layout lay;
        (void)img_compute_layout(&c, &sq, 1, 1, &lay);
        (void)img_compute_layout(&c, &sq, 3000, 17, &lay);
    }
    (void)vlm_preproc_parse(path, &pp);
    close(fd);
    return 0;
}
