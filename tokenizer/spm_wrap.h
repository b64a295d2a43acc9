/* spm_wrap.h — a small C interface over sentencepiece::SentencePieceProcessor (tokenizer/spm_wrap.cc, the only
 * C++ in the tokenizer). It loads a model from its serialized bytes, encodes text to ids (with the byte span of
 * each piece when asked) and answers vocabulary questions. No C++ exception crosses this boundary: every entry
 * point catches everything and turns it into a status. The wrapper never logs: failures are described in the
 * caller's err buffer (one line, no prefix, no newline) and spm.c logs them once, with the file name. */
#ifndef VLM_SPM_WRAP_H
#define VLM_SPM_WRAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct spmw; /* opaque: the processor plus per-id tables */

/* Piece types as sentencepiece's ModelProto numbers them. */
enum spmw_type {
    SPMW_NORMAL = 1,
    SPMW_UNKNOWN = 2,
    SPMW_CONTROL = 3,       /* <s>, </s>: never produced by encoding, decode to nothing */
    SPMW_USER_DEFINED = 4,  /* e.g. <image>: always matched as one piece when it appears in the text */
    SPMW_UNUSED = 5,
    SPMW_BYTE = 6,          /* <0xNN> byte-fallback pieces */
};

/* Builds a processor from data[0..len) (the content of a tokenizer.model file). VLM_ERR_FORMAT when the bytes are
 * not a usable model, VLM_ERR_OOM when memory runs out; err (err_cap bytes, may be NULL) then says why. *out is
 * untouched on failure. */
enum vlm_status spmw_load(const void *data, size_t len, struct spmw **out, char *err, size_t err_cap);
void spmw_free(struct spmw *w); /* NULL is a no-op */

int64_t spmw_vocab_size(const struct spmw *w);
/* Reserved ids from the model's trainer spec; -1 when the model defines none. */
int64_t spmw_bos_id(const struct spmw *w);
int64_t spmw_eos_id(const struct spmw *w);
int64_t spmw_unk_id(const struct spmw *w);
int64_t spmw_pad_id(const struct spmw *w);

/* The piece string of id (NUL-terminated, owned by w) and its length in *len; NULL for an id out of range. */
const char *spmw_id_to_piece(const struct spmw *w, int64_t id, size_t *len);
/* The id whose piece is exactly piece[0..len), or -1 (sentencepiece's own PieceToId answers unk instead). */
int64_t spmw_piece_to_id(const struct spmw *w, const char *piece, size_t len);
/* What sentencepiece's decoder prints for the unknown piece (TrainerSpec.unk_surface, default " \u2047 "). */
const char *spmw_unk_surface(const struct spmw *w, size_t *len);
/* Type of id; 0 for an id out of range. */
enum spmw_type spmw_type_of(const struct spmw *w, int64_t id);
bool spmw_is_control(const struct spmw *w, int64_t id);
bool spmw_is_unknown(const struct spmw *w, int64_t id);
bool spmw_is_byte(const struct spmw *w, int64_t id);
bool spmw_is_user_defined(const struct spmw *w, int64_t id);

/* Encodes text[0..len) exactly as SentencePieceProcessor::Encode (normalisation, user-defined symbols, byte
 * fallback). *ids (malloc'd; caller frees; non-NULL even when empty) and *n_ids receive the result. When spans is
 * non-NULL, *spans (malloc'd, 2 * n_ids entries) receives each piece's [begin, end) byte range in text. VLM_ERR_ARG
 * when sentencepiece rejects the input, VLM_ERR_OOM on allocation failure; err says why. */
enum vlm_status spmw_encode(const struct spmw *w, const char *text, size_t len, int64_t **ids, size_t *n_ids,
                            uint32_t **spans, char *err, size_t err_cap);

#ifdef __cplusplus
}
#endif
#endif
