/* fuzz_image.c — libFuzzer target for the image decode wrapper (stb_image, PNG/JPEG only, capped) and the
 * bicubic resize of whatever decodes. */
#include <stdlib.h>

#include "vision/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct vlm_image img;
    if (img_decode_memory(data, size, "fuzz", &img) != VLM_OK) return 0;
    uint8_t out[7 * 5 * 3];
    (void)img_resize_bicubic_u8(img.rgb, img.height, img.width, 3, out, 7, 5);
    img_free(&img);
    return 0;
}
