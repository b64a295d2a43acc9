/* tok_internal.h — how tokenizer.c dispatches to the two implementations. Not public: the runtime includes
 * tokenizer.h only. Each implementation owns its state behind `impl`; tokenizer.c owns the struct. */
#ifndef VLM_TOK_INTERNAL_H
#define VLM_TOK_INTERNAL_H

#include "tokenizer.h"

struct bpe_model; /* bpe.c */
struct spm_model; /* spm.c (over spm_wrap.cc) */

struct vlm_tokenizer {
    enum tok_kind kind;
    struct tok_special special;
    int64_t vocab_size;
    struct bpe_model *bpe; /* kind == TOK_KIND_BPE */
    struct spm_model *spm; /* kind == TOK_KIND_SPM */
};

/* Byte-level BPE (tokenizer.json). Contracts as the tok_* functions of tokenizer.h. */
enum vlm_status bpe_load(const char *path, struct bpe_model **out, struct tok_special *special, int64_t *vocab_size);
/* The same from a buffer holding the file's bytes; name is used in messages. */
enum vlm_status bpe_load_mem(const char *name, const void *data, size_t len, struct bpe_model **out,
                             struct tok_special *special, int64_t *vocab_size);
void bpe_free(struct bpe_model *b);
enum vlm_status bpe_encode(const struct bpe_model *b, const char *text, size_t len, bool parse_special, int64_t **ids,
                           size_t *n_ids);
/* Raw bytes of token id (byte map undone); NULL for an id outside the vocabulary. *is_special set. */
const unsigned char *bpe_token_bytes(const struct bpe_model *b, int64_t id, size_t *len, bool *is_special);
int64_t bpe_token_to_id(const struct bpe_model *b, const char *token);

/* SentencePiece (tokenizer.model). */
enum vlm_status spm_load(const char *path, struct spm_model **out, struct tok_special *special, int64_t *vocab_size);
enum vlm_status spm_load_mem(const char *name, const void *data, size_t len, struct spm_model **out,
                             struct tok_special *special, int64_t *vocab_size);
void spm_free(struct spm_model *s);
enum vlm_status spm_encode(const struct spm_model *s, const char *text, size_t len, bool parse_special, int64_t **ids,
                           size_t *n_ids);
/* Raw bytes of piece id as it decodes ("▁" -> ' ', <0xNN> byte pieces -> that byte); NULL when out of range. */
const unsigned char *spm_token_bytes(const struct spm_model *s, int64_t id, size_t *len, bool *is_special);
int64_t spm_token_to_id(const struct spm_model *s, const char *token);

#endif
