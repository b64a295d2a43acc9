/* text_mode.h — what vlmrun does around the model when it talks in text: which tokenizer it uses, whether that
 * tokenizer belongs to the model, which ids end generation, and how generated ids become the text it prints.
 * vlmrun (runtime/main.c) and vlmeval --vqa (runtime/eval.c) both call these, so an answer vlmeval scores is the
 * answer vlmrun would print for the same image and question. */
#ifndef VLM_TEXT_MODE_H
#define VLM_TEXT_MODE_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "tokenizer/tokenizer.h"

/* The tokenizer vlmrun uses for the model at model_path: tok_path when given (a directory, or a tokenizer.json /
 * tokenizer.model file), else the model's own — tokenizer.json / tokenizer.model in the checkpoint directory
 * model_path or, when m (the loaded model_path) is non-NULL, the tokenizer a .mbq file carries. *out (tok_free)
 * stays NULL when there is none. Call it with m NULL before the (slow) model load, so that a bad tokenizer fails
 * first, and again with m when *out is still NULL: a .mbq's tokenizer is only known once the file is open.
 * Statuses as tok_load / vlm_model_load_tokenizer, logged by them. */
enum vlm_status vlm_tokenizer_find(const char *model_path, const struct vlm_model *m, const char *tok_path,
                                   struct vlm_tokenizer **out);

/* VLM_OK when t belongs to m: every tokenizer id has an embedding row (else a prompt id would index past the
 * table) and both agree on the image token (else the image features would land on the wrong positions).
 * VLM_ERR_ARG after one line naming the mismatch. */
enum vlm_status vlm_model_check_tokenizer(const struct vlm_model *m, const struct vlm_tokenizer *t);

/* The ids after which vlmrun stops generating: eos_token_id (an int or a list) of the checkpoint's
 * generation_config.json, or of a .mbq header's "generation" object (carried over from that file; absent = none),
 * then, when t is non-NULL, the tokenizer's eos, "<|im_end|>" and "<|endoftext|>" not already listed (generation
 * configs list only some of the end-of-turn tokens). *ids (malloc'd, caller frees, even when *n is 0) and *n
 * receive every one of them; both stay untouched on failure. Statuses as vlm_file_read_all for an unreadable
 * generation_config.json, VLM_ERR_FORMAT when it is not JSON, VLM_ERR_OOM; logged. */
enum vlm_status vlm_model_read_stop_ids(const struct vlm_model *m, const struct vlm_tokenizer *t, int64_t **ids,
                                        int *n);

/* Generated ids turned into text as vlmrun prints them: the tokenizer's streaming decoder with special tokens
 * skipped, so text is released as soon as it is whole UTF-8. An id the tokenizer does not have (an embedding row
 * beyond it: spec §7.3, such rows are not masked) gives no text. Large (the buffer): allocate it. */
struct vlm_text_out {
    struct tok_stream stream;
    int64_t n_vocab;
    bool log_unknown; /* say once on stderr (vlm_log_info) that an id without a token printed nothing */
    bool warned;
    char buf[1 << 16]; /* one push's text; tok_stream_push needs 64 + the longest token */
};

/* Starts a new text (any earlier state is dropped). log_unknown: see the struct. */
void vlm_text_out_init(struct vlm_text_out *o, const struct vlm_tokenizer *t, bool log_unknown);
/* The text that id completes, in o->buf: returns its length (0 for none), or -1 after logging. */
int64_t vlm_text_out_push(struct vlm_text_out *o, int64_t id);
/* The end of the text: what is still held back (an incomplete UTF-8 sequence becomes U+FFFD), in o->buf; returns
 * its length, or -1 after logging. */
int64_t vlm_text_out_flush(struct vlm_text_out *o);

#endif
