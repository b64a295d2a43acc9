/* tokenizer.h — one interface over the two tokenizer families a LLaVA checkpoint can carry:
 *   - tokenizer.json (Qwen2 byte-level BPE, HF `tokenizers` format) — tokenizer/bpe.c;
 *   - tokenizer.model (SentencePiece, LLaVA-1.5 family) — tokenizer/spm.c over the C++ library through the
 *     small C wrapper tokenizer/spm_wrap.cc + spm_wrap.h.
 * Token ids are int64_t everywhere, as in the runtime. Exactness target: Hugging Face `tokenizers` /
 * transformers and the sentencepiece Python package (tests/test_tokenizer*.c against tests/golden/tok_*.bin). */
#ifndef VLM_TOKENIZER_H
#define VLM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm.h"

#define TOK_MAX_TEXT_BYTES (64ull << 20) /* encode refuses larger inputs (VLM_ERR_ARG) */

struct vlm_tokenizer; /* opaque */

enum tok_kind { TOK_KIND_BPE, TOK_KIND_SPM };

/* Special ids; -1 when the tokenizer has no such token. */
struct tok_special {
    int64_t bos, eos, pad, unk;
    int64_t im_start, im_end; /* "<|im_start|>", "<|im_end|>" (ChatML) */
    int64_t image, video;     /* "<image>", "<video>" */
};

/* Loads dir/tokenizer.json (preferred) or dir/tokenizer.model. VLM_ERR_IO when neither exists, VLM_ERR_FORMAT
 * (one line naming the file and the problem) for malformed content, VLM_ERR_UNSUPPORTED for a tokenizer.json
 * model/pre-tokenizer type we do not implement. */
enum vlm_status tok_load(const char *dir, struct vlm_tokenizer **out);
/* Same, from one file path (tokenizer.json or *.model by its content). */
enum vlm_status tok_load_file(const char *path, struct vlm_tokenizer **out);
/* Same, from the bytes of a tokenizer.json (TOK_KIND_BPE) or tokenizer.model (TOK_KIND_SPM) held in memory (the
 * tokenizer inside a .mbq file); name is used in messages. The bytes are not referenced after return. */
enum vlm_status tok_load_mem(enum tok_kind kind, const char *name, const void *data, size_t len,
                             struct vlm_tokenizer **out);
void tok_free(struct vlm_tokenizer *t); /* NULL is a no-op */

enum tok_kind tok_get_kind(const struct vlm_tokenizer *t);
int64_t tok_vocab_size(const struct vlm_tokenizer *t); /* number of ids, added tokens included */
const struct tok_special *tok_special_ids(const struct vlm_tokenizer *t);
/* Id of an exact token string (vocab or added token), or -1. */
int64_t tok_token_to_id(const struct vlm_tokenizer *t, const char *token);

/* Encodes text[0..len) (any bytes: invalid UTF-8 is replaced by U+FFFD as the reference does). With
 * parse_special, added/special tokens written in the text are recognised as single ids; otherwise they are
 * tokenized as plain text. No BOS/EOS is added (the chat template adds what the model needs).
 * *ids (malloc'd, caller frees) and *n_ids receive the result. VLM_ERR_ARG for len > TOK_MAX_TEXT_BYTES. */
enum vlm_status tok_encode(const struct vlm_tokenizer *t, const char *text, size_t len, bool parse_special,
                           int64_t **ids, size_t *n_ids);

/* Decodes ids into UTF-8 text (invalid sequences become U+FFFD, as HF's decoder does). skip_special drops
 * special/added tokens. VLM_ERR_ARG (one line naming the id) for an id outside 0 .. vocab_size-1.
 * *out (malloc'd, NUL-terminated) and *out_len receive the text. */
enum vlm_status tok_decode(const struct vlm_tokenizer *t, const int64_t *ids, size_t n, bool skip_special,
                           char **out, size_t *out_len);

/* Streaming decoder: push generated ids one at a time; text is released as soon as it is complete UTF-8, an
 * incomplete trailing sequence is held back until a later token completes it (or flush turns it into U+FFFD). */
struct tok_stream {
    const struct vlm_tokenizer *t;
    bool skip_special;
    unsigned char pending[16];
    size_t n_pending;
    bool started; /* SentencePiece drops the leading space of the first piece */
};
void tok_stream_init(struct tok_stream *s, const struct vlm_tokenizer *t, bool skip_special);
/* Writes the newly complete text for id into out (cap bytes; 64 + the longest token always suffice) and returns
 * its length (not NUL-terminated), or -1 for an out-of-range id (after logging). */
int64_t tok_stream_push(struct tok_stream *s, int64_t id, char *out, size_t cap);
/* Emits whatever is held back (as U+FFFD per invalid sequence). Returns the length written. */
int64_t tok_stream_flush(struct tok_stream *s, char *out, size_t cap);

#endif
