/* spm_wrap.cc — the C boundary over sentencepiece::SentencePieceProcessor (see spm_wrap.h).
 *
 * Promises: every extern "C" function catches every exception (std::bad_alloc becomes VLM_ERR_OOM); everything
 * else in this file is static. The processor itself does all the encoding; this file adds per-id tables (piece
 * string, type) built once at load, an exact piece -> id map, and the piece types the public API does not expose
 * (user-defined), read from the serialized ModelProto with a tiny protobuf walk. */
#include "tokenizer/spm_wrap.h"

#include <sentencepiece_processor.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

struct spmw {
    sentencepiece::SentencePieceProcessor sp;
    std::vector<std::string> pieces;                  // (n_pieces) piece string of each id
    std::vector<unsigned char> types;                 // (n_pieces) enum spmw_type of each id
    std::unordered_map<std::string, int64_t> by_piece; // exact piece string -> id
    int64_t bos = -1, eos = -1, unk = -1, pad = -1;
    std::string unk_surface;                          // what the decoder prints for the unknown piece
};

static void set_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t cap, const char *fmt, ...) {
    if (!err || !cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++) // keep it one line whatever the library said
        if (*p == '\n' || *p == '\r') *p = ' ';
}

// ---------------------------------------------------------------------------------------------------------------
// Piece types and the unknown surface from the serialized ModelProto
//
// ModelProto field 1 is `repeated SentencePiece pieces`; in SentencePiece, field 1 is the piece, field 2 the score
// (fixed32) and field 3 the type (varint, NORMAL when absent). The processor has already parsed and accepted the
// same bytes, so a walk that fails here only means "no user-defined information" (and the default unknown
// surface), never a crash.

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

/* Skips one field of wire type wt; false when it runs past end or the wire type is not one we accept. */
static bool pb_skip(const uint8_t **p, const uint8_t *end, unsigned wt) {
    uint64_t v;
    switch (wt) {
    case 0: return pb_varint(p, end, &v);
    case 1:
        if (end - *p < 8) return false;
        *p += 8;
        return true;
    case 2:
        if (!pb_varint(p, end, &v) || v > (uint64_t)(end - *p)) return false;
        *p += v;
        return true;
    case 5:
        if (end - *p < 4) return false;
        *p += 4;
        return true;
    default: return false; // groups (3, 4) and reserved types
    }
}

/* Reads a length-delimited field's bounds at *p (the key already consumed). */
static bool pb_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **b, const uint8_t **bend) {
    uint64_t len;
    if (!pb_varint(p, end, &len) || len > (uint64_t)(end - *p)) return false;
    *b = *p;
    *bend = *p + len;
    *p += len;
    return true;
}

/* What the public API hides: the type of each piece (field 1 of ModelProto, field 3 in each SentencePiece) and
 * TrainerSpec.unk_surface (field 2 of ModelProto, field 44 in it). types receives one entry per piece. */
static bool walk_model_proto(const uint8_t *p, const uint8_t *end, std::vector<unsigned char> *types,
                             std::string *unk_surface) {
    while (p < end) {
        uint64_t key;
        const uint8_t *b, *bend;
        if (!pb_varint(&p, end, &key)) return false;
        if ((key & 7) != 2 || (key >> 3 != 1 && key >> 3 != 2)) {
            if (!pb_skip(&p, end, (unsigned)(key & 7))) return false;
            continue;
        }
        if (!pb_bytes(&p, end, &b, &bend)) return false;
        uint64_t type = SPMW_NORMAL;
        while (b < bend) {
            uint64_t k, v;
            const uint8_t *s, *send;
            if (!pb_varint(&b, bend, &k)) return false;
            if (key >> 3 == 1 && k == (3 << 3 | 0)) {
                if (!pb_varint(&b, bend, &v)) return false;
                type = v;
            } else if (key >> 3 == 2 && k == (44 << 3 | 2)) {
                if (!pb_bytes(&b, bend, &s, &send)) return false;
                unk_surface->assign((const char *)s, (size_t)(send - s));
            } else if (!pb_skip(&b, bend, (unsigned)(k & 7))) {
                return false;
            }
        }
        if (key >> 3 == 1) types->push_back(type <= SPMW_BYTE ? (unsigned char)type : 0);
    }
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Load

static enum vlm_status load(const void *data, size_t len, struct spmw **out, char *err, size_t err_cap) {
    std::unique_ptr<spmw> w(new spmw); // freed on every early return and on a throw
    const auto st = w->sp.LoadFromSerializedProto(absl::string_view((const char *)data, len));
    if (!st.ok()) {
        if (strstr(st.message(), "ParseFromArray")) // the library's message is just its source line
            set_err(err, err_cap, "not a SentencePiece model (the protobuf does not parse: corrupt or truncated?)");
        else
            set_err(err, err_cap, "not a SentencePiece model (%s)", st.message());
        return VLM_ERR_FORMAT;
    }
    const int n = w->sp.GetPieceSize();
    if (n <= 0) {
        set_err(err, err_cap, "SentencePiece model has no pieces");
        return VLM_ERR_FORMAT;
    }
    w->pieces.reserve((size_t)n);
    w->types.reserve((size_t)n);
    for (int id = 0; id < n; id++) {
        w->pieces.push_back(w->sp.IdToPiece(id));
        unsigned char t = SPMW_NORMAL;
        if (w->sp.IsControl(id)) t = SPMW_CONTROL;
        else if (w->sp.IsUnknown(id)) t = SPMW_UNKNOWN;
        else if (w->sp.IsByte(id)) t = SPMW_BYTE;
        else if (w->sp.IsUnused(id)) t = SPMW_UNUSED;
        w->types.push_back(t);
        w->by_piece.emplace(w->pieces.back(), (int64_t)id); // first id wins (the trainer forbids duplicates)
    }
    std::vector<unsigned char> walked;
    std::string unk_surface = " \xe2\x81\x87 "; // sentencepiece's kDefaultUnknownSymbol, " ⁇ "
    const uint8_t *b = (const uint8_t *)data;
    if (walk_model_proto(b, b + len, &walked, &unk_surface) && walked.size() == (size_t)n)
        for (int id = 0; id < n; id++)
            if (walked[(size_t)id] == SPMW_USER_DEFINED && w->types[(size_t)id] == SPMW_NORMAL)
                w->types[(size_t)id] = SPMW_USER_DEFINED;
    auto in_range = [n](int id) { return id >= 0 && id < n ? (int64_t)id : (int64_t)-1; };
    w->bos = in_range(w->sp.bos_id());
    w->eos = in_range(w->sp.eos_id());
    w->unk = in_range(w->sp.unk_id());
    w->pad = in_range(w->sp.pad_id());
    w->unk_surface = unk_surface;
    *out = w.release();
    return VLM_OK;
}

extern "C" enum vlm_status spmw_load(const void *data, size_t len, struct spmw **out, char *err, size_t err_cap) {
    try {
        if (!data && len) {
            set_err(err, err_cap, "no model bytes");
            return VLM_ERR_ARG;
        }
        return load(data ? data : "", len, out, err, err_cap);
    } catch (const std::bad_alloc &) {
        set_err(err, err_cap, "out of memory while loading the SentencePiece model");
        return VLM_ERR_OOM;
    } catch (const std::exception &e) {
        set_err(err, err_cap, "not a SentencePiece model (%s)", e.what());
        return VLM_ERR_FORMAT;
    } catch (...) {
        set_err(err, err_cap, "not a SentencePiece model (unknown C++ exception)");
        return VLM_ERR_FORMAT;
    }
}

extern "C" void spmw_free(struct spmw *w) {
    try {
        delete w;
    } catch (...) {
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Vocabulary

extern "C" int64_t spmw_vocab_size(const struct spmw *w) { return (int64_t)w->pieces.size(); }
extern "C" int64_t spmw_bos_id(const struct spmw *w) { return w->bos; }
extern "C" int64_t spmw_eos_id(const struct spmw *w) { return w->eos; }
extern "C" int64_t spmw_unk_id(const struct spmw *w) { return w->unk; }
extern "C" int64_t spmw_pad_id(const struct spmw *w) { return w->pad; }

extern "C" const char *spmw_id_to_piece(const struct spmw *w, int64_t id, size_t *len) {
    if (id < 0 || (uint64_t)id >= w->pieces.size()) return NULL;
    const std::string &s = w->pieces[(size_t)id];
    if (len) *len = s.size();
    return s.c_str();
}

extern "C" int64_t spmw_piece_to_id(const struct spmw *w, const char *piece, size_t len) {
    try {
        auto it = w->by_piece.find(std::string(piece, len));
        return it == w->by_piece.end() ? -1 : it->second;
    } catch (...) { // only std::bad_alloc is possible: treat as "no such piece"
        return -1;
    }
}

extern "C" const char *spmw_unk_surface(const struct spmw *w, size_t *len) {
    *len = w->unk_surface.size();
    return w->unk_surface.c_str();
}

extern "C" enum spmw_type spmw_type_of(const struct spmw *w, int64_t id) {
    if (id < 0 || (uint64_t)id >= w->types.size()) return (enum spmw_type)0;
    return (enum spmw_type)w->types[(size_t)id];
}
extern "C" bool spmw_is_control(const struct spmw *w, int64_t id) { return spmw_type_of(w, id) == SPMW_CONTROL; }
extern "C" bool spmw_is_unknown(const struct spmw *w, int64_t id) { return spmw_type_of(w, id) == SPMW_UNKNOWN; }
extern "C" bool spmw_is_byte(const struct spmw *w, int64_t id) { return spmw_type_of(w, id) == SPMW_BYTE; }
extern "C" bool spmw_is_user_defined(const struct spmw *w, int64_t id) {
    return spmw_type_of(w, id) == SPMW_USER_DEFINED;
}

// ---------------------------------------------------------------------------------------------------------------
// Encode

static enum vlm_status encode(const struct spmw *w, const char *text, size_t len, int64_t **ids, size_t *n_ids,
                              uint32_t **spans, char *err, size_t err_cap) {
    if (len > UINT32_MAX) { // the processor's byte offsets are 32-bit
        set_err(err, err_cap, "text of %zu bytes is too long for SentencePiece", len);
        return VLM_ERR_ARG;
    }
    const absl::string_view in(text ? text : "", len);
    std::vector<int> v;
    std::vector<uint32_t> sp_spans;
    if (spans) {
        sentencepiece::ImmutableSentencePieceText spt;
        const auto st = w->sp.Encode(in, spt.mutable_proto());
        if (!st.ok()) {
            set_err(err, err_cap, "SentencePiece could not encode the text (%s)", st.message());
            return VLM_ERR_ARG;
        }
        const size_t n = spt.pieces_size();
        v.reserve(n);
        sp_spans.reserve(2 * n);
        for (size_t i = 0; i < n; i++) {
            const auto piece = spt.pieces((int)i);
            v.push_back((int)piece.id());
            sp_spans.push_back(piece.begin());
            sp_spans.push_back(piece.end());
        }
    } else {
        const auto st = w->sp.Encode(in, &v);
        if (!st.ok()) {
            set_err(err, err_cap, "SentencePiece could not encode the text (%s)", st.message());
            return VLM_ERR_ARG;
        }
    }
    int64_t *r = (int64_t *)malloc((v.size() ? v.size() : 1) * sizeof(int64_t));
    uint32_t *s = spans ? (uint32_t *)malloc((v.size() ? v.size() : 1) * 2 * sizeof(uint32_t)) : NULL;
    if (!r || (spans && !s)) {
        free(r);
        free(s);
        set_err(err, err_cap, "out of memory for %zu token ids", v.size());
        return VLM_ERR_OOM;
    }
    for (size_t i = 0; i < v.size(); i++) r[i] = v[i];
    if (spans) {
        if (!sp_spans.empty()) memcpy(s, sp_spans.data(), sp_spans.size() * sizeof(uint32_t));
        *spans = s;
    }
    *ids = r;
    *n_ids = v.size();
    return VLM_OK;
}

extern "C" enum vlm_status spmw_encode(const struct spmw *w, const char *text, size_t len, int64_t **ids,
                                       size_t *n_ids, uint32_t **spans, char *err, size_t err_cap) {
    try {
        return encode(w, text, len, ids, n_ids, spans, err, err_cap);
    } catch (const std::bad_alloc &) {
        set_err(err, err_cap, "out of memory while encoding %zu bytes", len);
        return VLM_ERR_OOM;
    } catch (const std::exception &e) {
        set_err(err, err_cap, "SentencePiece could not encode the text (%s)", e.what());
        return VLM_ERR_ARG;
    } catch (...) {
        set_err(err, err_cap, "SentencePiece could not encode the text (unknown C++ exception)");
        return VLM_ERR_ARG;
    }
}
