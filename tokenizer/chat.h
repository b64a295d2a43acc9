/* chat.h — prompt templates: the LLaVA-OneVision ChatML prompt (spec llava-onevision.md §7) and the LLaVA-1.5
 * Vicuna prompt for SentencePiece models, rendered straight to token ids with each image placeholder expanded to
 * the number of image tokens the vision path produces (the caller passes img_num_image_tokens' result: there is
 * no second formula here). */
#ifndef VLM_CHAT_H
#define VLM_CHAT_H

#include <stdbool.h>
#include <stdint.h>

#include "tokenizer.h"

enum chat_template {
    CHAT_CHATML_QWEN,  /* spec §7.2: default system "You are a helpful assistant." (training/eval template) */
    CHAT_CHATML_HF,    /* spec §7.1: the HF processor's chat_template, no system message unless given */
    CHAT_VICUNA_V1,    /* LLaVA-1.5: "A chat between ... USER: <image>\n... ASSISTANT:" */
};

struct chat_msg {
    const char *role;  /* "user" or "assistant" (or "system" as the first message) */
    const char *text;  /* UTF-8 */
    int n_images;      /* images attached to this message: one <image>\n each, before the text */
};

/* Renders msgs into token ids. image_tokens[k] is the expanded length of the k-th image over the whole
 * conversation (n_images_total entries). system may be NULL (template default). With add_generation_prompt the
 * prompt ends ready for the assistant's answer. *ids malloc'd. VLM_ERR_ARG when the image count differs from
 * n_images_total or the tokenizer lacks the image token. */
enum vlm_status chat_render(const struct vlm_tokenizer *t, enum chat_template tmpl, const char *system,
                            const struct chat_msg *msgs, int n_msgs, const int64_t *image_tokens,
                            int n_images_total, bool add_generation_prompt, int64_t **ids, size_t *n_ids);

/* The rendered text with one "<image>" per image (unexpanded), for logs and tests. *out malloc'd. */
enum vlm_status chat_render_text(enum chat_template tmpl, const char *system, const struct chat_msg *msgs,
                                 int n_msgs, bool add_generation_prompt, char **out);

#endif
