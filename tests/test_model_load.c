/* test_model_load.c — vlm_model_load (runtime/model_load.c): the three tiny fixtures (F32 legacy tied, BF16 untied,
 * F16 sharded) load with the right scheme, tying and values; re-named copies of tiny_single load under the other
 * naming schemes to the very same arena; every broken model directory (wrong shape, missing tensor, tying rule,
 * NaN, dtype, configs) is rejected with the right status and one line naming the tensor and file. Model dirs are
 * written in test_tmpdir() from tiny_single's tensors. */
#include "test.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/model.h"
#include "runtime/qwen2.h"
#include "runtime/safetensors.h"
#include "runtime/util.h"

#define TINY_SINGLE "tests/data/models/tiny_single"
#define TINY_UNPAD "tests/data/models/tiny_unpad"
#define TINY_POOL "tests/data/models/tiny_pool"

/* ---------------------------------------------------------------------------------------------------------------
 * helpers: a tensor list taken from a checkpoint, edited, written back as a model directory
 * ------------------------------------------------------------------------------------------------------------- */


struct wt {
    char name[ST_MAX_NAME + 1];
    const char *dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    size_t bytes;
    bool drop;
};

struct wlist {
    struct wt t[512];
    int n;
    struct st_checkpoint *ck; /* owns the data the entries point at */
};

static bool wlist_load(struct wlist *l, const char *rel_dir) {
    l->n = 0;
    l->ck = NULL;
    if (!CHECK(st_checkpoint_open(test_path(rel_dir), &l->ck) == VLM_OK)) return false;
    int64_t n = st_checkpoint_count(l->ck);
    if (!CHECK(n <= 500)) return false;
    for (int64_t i = 0; i < n; i++) {
        const struct st_tensor *s = st_checkpoint_at(l->ck, i);
        struct wt *t = &l->t[l->n++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->dtype = s->dtype_name;
        t->n_dims = s->n_dims;
        memcpy(t->shape, s->shape, sizeof t->shape);
        t->data = s->data;
        t->bytes = s->size_bytes;
    }
    return true;
}

static struct wt *wlist_find(struct wlist *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, name)) return &l->t[i];
    FAIL("fixture has no tensor '%s'", name);
    return NULL;
}

/* Renames every tensor whose name starts with `from` to start with `to` instead. */
static void wlist_rename_prefix(struct wlist *l, const char *from, const char *to) {
    size_t lf = strlen(from);
    for (int i = 0; i < l->n; i++) {
        if (strncmp(l->t[i].name, from, lf) != 0) continue;
        char tmp[ST_MAX_NAME + 1];
        snprintf(tmp, sizeof tmp, "%s%s", to, l->t[i].name + lf);
        memcpy(l->t[i].name, tmp, sizeof tmp);
    }
}

/* Drops every tensor whose name contains `part`; returns how many. */
static int wlist_drop(struct wlist *l, const char *part) {
    int k = 0;
    for (int i = 0; i < l->n; i++)
        if (strstr(l->t[i].name, part)) l->t[i].drop = true, k++;
    return k;
}

/* Appends a tensor (data must outlive the write). */
static struct wt *wlist_add(struct wlist *l, const char *name, const char *dtype, int64_t d0, int64_t d1,
                            const void *data, size_t bytes) {
    struct wt *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->n_dims = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data;
    t->bytes = bytes;
    return t;
}

/* Writes the kept tensors whose index i satisfies i % n_parts == part into dir/file (all when n_parts == 1). */
static void write_tensors(const struct wlist *l, const char *dir, const char *file, int part, int n_parts) {
    static char hdr[1 << 17];
    size_t k = 0;
    uint64_t off = 0;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (int i = 0; i < l->n; i++) {
        const struct wt *t = &l->t[i];
        if (t->drop || i % n_parts != part) continue;
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", t->name, t->dtype);
        for (int d = 0; d < t->n_dims; d++)
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "], \"data_offsets\": [%llu, %llu]}", (unsigned long long)off,
                              (unsigned long long)(off + t->bytes));
        off += t->bytes;
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    while (k % 8) hdr[k++] = ' '; /* pad like the reference writer */
    if (!CHECK(k < sizeof hdr)) return;
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f) {
        FAIL("cannot create %s", path);
        return;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)k >> (8 * i));
    bool ok = fwrite(le, 1, 8, f) == 8 && fwrite(hdr, 1, k, f) == k;
    for (int i = 0; i < l->n && ok; i++) {
        const struct wt *t = &l->t[i];
        if (t->drop || i % n_parts != part) continue;
        if (t->bytes) ok = fwrite(t->data, 1, t->bytes, f) == t->bytes;
    }
    if (fclose(f) != 0 || !ok) FAIL("cannot write %s", path);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    test_write_file(path, text, strlen(text));
}

/* Copies src's config.json (every `from` replaced by `to` when from != NULL; FAIL when absent) and
 * preprocessor_config.json (same for pfrom/pto) into dst. */
static void copy_configs(const char *src_rel, const char *dst, const char *from, const char *to, const char *pfrom,
                         const char *pto) {
    const char *names[2] = {"config.json", "preprocessor_config.json"};
    const char *froms[2] = {from, pfrom}, *tos[2] = {to, pto};
    for (int n = 0; n < 2; n++) {
        char src[700];
        snprintf(src, sizeof src, "%s/%s", test_path(src_rel), names[n]);
        char *text = NULL;
        size_t len = 0;
        if (!CHECK(vlm_file_read_all(src, 1 << 20, &text, &len) == VLM_OK)) return;
        char *out = malloc(len * 2 + 4096);
        if (!out) {
            free(text);
            FAIL("oom");
            return;
        }
        size_t k = 0;
        int hits = 0;
        for (const char *p = text; *p;) {
            if (froms[n] && !strncmp(p, froms[n], strlen(froms[n]))) {
                k += (size_t)sprintf(out + k, "%s", tos[n]);
                p += strlen(froms[n]);
                hits++;
            } else {
                out[k++] = *p++;
            }
        }
        out[k] = 0;
        if (froms[n] && !hits) FAIL("'%s' not found in %s", froms[n], src);
        write_text(dst, names[n], out);
        free(out);
        free(text);
    }
}

/* Loads dir with stderr captured into err. On failure checks *out untouched and exactly one stderr line. */
static enum vlm_status load_capture(const char *dir, struct vlm_model **out, char *err, size_t cap) {
    struct vlm_model *sentinel = (struct vlm_model *)(uintptr_t)0x5678, *m = sentinel;
    test_capture_begin();
    enum vlm_status st = vlm_model_load(dir, &m);
    test_capture_end(err, cap);
    if (test_verbose() && err[0]) fprintf(stderr, "  stderr: %s", err);
    const char *nl = strchr(err, '\n');
    if (!nl || nl[1] != '\0') FAIL("expected exactly one stderr line, got: %s", err);
    if (st != VLM_OK) {
        CHECK(m == sentinel);
        m = NULL;
    }
    *out = m;
    return st;
}

/* Expects dir to fail with `want`, the message containing each non-NULL needle. */
static void expect_load_fail(const char *dir, enum vlm_status want, const char *n1, const char *n2, const char *n3,
                             int line) {
    struct vlm_model *m = NULL;
    char err[4096];
    enum vlm_status st = load_capture(dir, &m, err, sizeof err);
    if (st != want) FAIL("line %d: status %d (%s), want %d; stderr: %s", line, st, vlm_status_str(st), want, err);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(err, needles[i])) FAIL("line %d: message lacks '%s': %s", line, needles[i], err);
    vlm_model_free(m);
}
#define EXPECT_FAIL(dir, want, n1, n2, n3) expect_load_fail((dir), (want), (n1), (n2), (n3), __LINE__)

static struct vlm_model *load_ok(const char *dir) {
    struct vlm_model *m = NULL;
    char err[4096];
    enum vlm_status st = load_capture(dir, &m, err, sizeof err);
    if (st != VLM_OK) FAIL("load %s: %s: %s", dir, vlm_status_str(st), err);
    return m;
}

/* Every weight view lies inside the arena. */
static bool views_in_arena(const struct vlm_model *m) {
    const float *lo = m->arena, *hi = m->arena + m->arena_floats;
    const float *v[] = {m->w.patch_w, m->w.patch_b, m->w.pos_emb, m->w.proj1_w, m->w.proj2_w, m->w.image_newline,
                        m->w.embed, m->w.final_norm, m->w.lm_head};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (!v[i] || v[i] < lo || v[i] >= hi) return false;
    for (int64_t l = 0; l < m->config.text.n_layers; l++)
        if (m->w.layers[l].down_w < lo || m->w.layers[l].down_w >= hi || !m->w.layers[l].q_b) return false;
    for (int64_t l = 0; l < m->w.n_vit_layers; l++)
        if (m->w.vit[l].fc2_b < lo || m->w.vit[l].fc2_b >= hi) return false;
    return true;
}

/* Converted view == the checkpoint's tensor, element by element (exact). */
static void check_same_as_file(const struct st_checkpoint *ck, const char *name, const float *view) {
    const struct st_tensor *t = st_checkpoint_find(ck, name);
    if (!t) {
        FAIL("no tensor '%s'", name);
        return;
    }
    float *ref = malloc((size_t)t->n_elements * sizeof *ref);
    if (!ref) return;
    st_tensor_to_f32(t, ref);
    CHECK_NEAR_TENSOR(name, view, ref, t->n_elements, 0, 0);
    free(ref);
}

/* ---------------------------------------------------------------------------------------------------------------
 * the committed tiny models
 * ------------------------------------------------------------------------------------------------------------- */

TEST(model_load_tiny_single) {
    struct vlm_model *m = NULL;
    char err[4096];
    if (!CHECK(load_capture(test_path(TINY_SINGLE), &m, err, sizeof err) == VLM_OK)) {
        FAIL("%s", err);
        return;
    }
    /* the summary line */
    CHECK(strstr(err, "params") && strstr(err, "MB fp32") && strstr(err, "file dtype F32") &&
          strstr(err, "fp32 reference"));
    CHECK(m->scheme == VLM_NAMES_LEGACY);
    CHECK(!strcmp(m->vision_prefix, "vision_tower.vision_model."));
    CHECK(m->lm_head_tied);
    CHECK(m->w.lm_head == m->w.embed);
    CHECK(!strcmp(m->file_dtype, "F32"));
    CHECK_EQ(m->n_files, 1);
    CHECK_EQ(m->w.n_vocab_rows, 1024);
    CHECK_EQ(m->w.n_vit_layers, 2);
    CHECK(m->w.proj1_b && m->w.proj2_b);
    CHECK(views_in_arena(m));
    /* arena = every parameter of the config except post-LN (not loaded); tied lm_head adds nothing */
    struct vlm_param_count n;
    vlm_config_count_params(&m->config, &n);
    CHECK_EQ(m->arena_floats, n.total - 2 * m->config.vision.hidden_size);
    struct st_checkpoint *ck = NULL;
    if (CHECK(st_checkpoint_open(test_path(TINY_SINGLE), &ck) == VLM_OK)) {
        check_same_as_file(ck, "image_newline", m->w.image_newline);
        /* patch_w is the [64, 3, 14, 14] conv kernel read as (64, 588): same element order */
        check_same_as_file(ck, "vision_tower.vision_model.embeddings.patch_embedding.weight", m->w.patch_w);
        check_same_as_file(ck, "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight", m->w.vit[1].fc1_w);
        check_same_as_file(ck, "language_model.model.layers.1.self_attn.k_proj.weight", m->w.layers[1].k_w);
        check_same_as_file(ck, "language_model.model.embed_tokens.weight", m->w.embed);
        check_same_as_file(ck, "multi_modal_projector.linear_2.bias", m->w.proj2_b);
    }
    st_checkpoint_close(ck);
    vlm_model_free(m);
}

TEST(model_load_tiny_unpad_bf16_untied) {
    struct vlm_model *m = load_ok(test_path(TINY_UNPAD));
    if (!m) return;
    CHECK(m->scheme == VLM_NAMES_LEGACY); /* transformers 5.24 save_pretrained: legacy text names ... */
    CHECK(!strcmp(m->vision_prefix, "vision_tower."));  /* ... and the tower without .vision_model */
    CHECK(!m->lm_head_tied);
    CHECK(m->w.lm_head != m->w.embed);
    CHECK(!strcmp(m->file_dtype, "BF16"));
    CHECK(views_in_arena(m));
    struct st_checkpoint *ck = NULL;
    if (CHECK(st_checkpoint_open(test_path(TINY_UNPAD), &ck) == VLM_OK)) {
        check_same_as_file(ck, "language_model.lm_head.weight", m->w.lm_head);
        check_same_as_file(ck, "vision_tower.embeddings.position_embedding.weight", m->w.pos_emb);
        check_same_as_file(ck, "language_model.model.norm.weight", m->w.final_norm);
    }
    st_checkpoint_close(ck);
    vlm_model_free(m);
}

TEST(model_load_tiny_pool_f16_sharded) {
    struct vlm_model *m = load_ok(test_path(TINY_POOL));
    if (!m) return;
    CHECK(m->scheme == VLM_NAMES_LEGACY);
    CHECK(!m->lm_head_tied);
    CHECK(m->w.lm_head != m->w.embed);
    CHECK(!strcmp(m->file_dtype, "F16"));
    CHECK_EQ(m->n_files, 4);
    CHECK(views_in_arena(m));
    struct st_checkpoint *ck = NULL;
    if (CHECK(st_checkpoint_open(test_path(TINY_POOL), &ck) == VLM_OK)) {
        check_same_as_file(ck, "image_newline", m->w.image_newline);
        check_same_as_file(ck, "language_model.lm_head.weight", m->w.lm_head);
        check_same_as_file(ck, "vision_tower.encoder.layers.0.self_attn.q_proj.weight", m->w.vit[0].q_w);
    }
    st_checkpoint_close(ck);
    vlm_model_free(m);
}

/* ---------------------------------------------------------------------------------------------------------------
 * other naming schemes and layouts: same values as tiny_single
 * ------------------------------------------------------------------------------------------------------------- */

/* Loads tiny_single and the model in dir, and requires identical arenas. */
static void check_same_arena_as_single(const char *dir, enum vlm_name_scheme scheme, const char *vprefix) {
    struct vlm_model *a = load_ok(test_path(TINY_SINGLE)), *b = load_ok(dir);
    if (a && b) {
        CHECK(b->scheme == scheme);
        if (!CHECK(!strcmp(b->vision_prefix, vprefix))) FAIL("vision prefix %s", b->vision_prefix);
        CHECK(b->lm_head_tied && b->w.lm_head == b->w.embed);
        CHECK_EQ(b->arena_floats, a->arena_floats);
        if (b->arena_floats == a->arena_floats)
            CHECK(memcmp(a->arena, b->arena, a->arena_floats * sizeof(float)) == 0);
    }
    vlm_model_free(a);
    vlm_model_free(b);
}

TEST(model_load_module_scheme) {
    for (int variant = 0; variant < 2; variant++) {
        struct wlist l;
        if (!wlist_load(&l, TINY_SINGLE)) return;
        wlist_rename_prefix(&l, "language_model.model.", "model.language_model.");
        wlist_rename_prefix(&l, "vision_tower.vision_model.",
                            variant ? "model.vision_tower." : "model.vision_tower.vision_model.");
        wlist_rename_prefix(&l, "multi_modal_projector.", "model.multi_modal_projector.");
        wlist_rename_prefix(&l, "image_newline", "model.image_newline");
        const char *dir = test_tmpdir();
        write_tensors(&l, dir, "model.safetensors", 0, 1);
        copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
        st_checkpoint_close(l.ck);
        check_same_arena_as_single(dir, VLM_NAMES_MODULE,
                                   variant ? "model.vision_tower." : "model.vision_tower.vision_model.");
    }
}

TEST(model_load_lmms_scheme) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    wlist_rename_prefix(&l, "language_model.model.", "model.");
    wlist_rename_prefix(&l, "vision_tower.vision_model.", "model.vision_tower.vision_tower.vision_model.");
    wlist_rename_prefix(&l, "multi_modal_projector.linear_1.", "model.mm_projector.0.");
    wlist_rename_prefix(&l, "multi_modal_projector.linear_2.", "model.mm_projector.2.");
    wlist_rename_prefix(&l, "image_newline", "model.image_newline");
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    check_same_arena_as_single(dir, VLM_NAMES_LMMS, "model.vision_tower.vision_tower.vision_model.");
}

TEST(model_load_sharded_copy) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model-00001-of-00002.safetensors", 0, 2);
    write_tensors(&l, dir, "model-00002-of-00002.safetensors", 1, 2);
    char idx[1 << 16];
    size_t k = (size_t)snprintf(idx, sizeof idx, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < l.n; i++)
        k += (size_t)snprintf(idx + k, sizeof idx - k, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "",
                              l.t[i].name, i % 2 + 1);
    snprintf(idx + k, sizeof idx - k, "}}");
    write_text(dir, "model.safetensors.index.json", idx);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    struct vlm_model *m = load_ok(dir);
    if (m) CHECK_EQ(m->n_files, 2);
    vlm_model_free(m);
    check_same_arena_as_single(dir, VLM_NAMES_LEGACY, "vision_tower.vision_model.");
}

/* ---------------------------------------------------------------------------------------------------------------
 * rejected model directories
 * ------------------------------------------------------------------------------------------------------------- */

TEST(model_load_wrong_shape) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *t = wlist_find(&l, "language_model.model.layers.0.mlp.gate_proj.weight");
    if (t) t->shape[0] = 64, t->shape[1] = 128; /* same bytes, transposed shape */
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "tensor 'language_model.model.layers.0.mlp.gate_proj.weight' has shape [64, 128]",
                "expected [128, 64]", "model.safetensors");
}

TEST(model_load_wrong_rank_patch) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *t = wlist_find(&l, "vision_tower.vision_model.embeddings.patch_embedding.weight");
    if (t) t->n_dims = 2, t->shape[1] = 588; /* pre-flattened: not the checkpoint layout */
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "patch_embedding.weight' has shape [64, 588]", "expected [64, 3, 14, 14]", NULL);
}

TEST(model_load_missing_tensor) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    CHECK_EQ(wlist_drop(&l, "language_model.model.layers.1.self_attn.k_proj.bias"), 1);
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "no tensor 'language_model.model.layers.1.self_attn.k_proj.bias'", NULL, NULL);
}

TEST(model_load_no_embed_tokens) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    CHECK_EQ(wlist_drop(&l, "embed_tokens"), 1);
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    st_checkpoint_close(l.ck);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "embed_tokens", "naming scheme", NULL);
}

TEST(model_load_tying_rule) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    /* lm_head absent, text_config.tie_word_embeddings false: a format error */
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false", NULL, NULL);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "no tensor 'language_model.lm_head.weight'", "tie_word_embeddings", NULL);
    /* lm_head present with the flag true: the tensor is used (untied) */
    struct wt *e = wlist_find(&l, "language_model.model.embed_tokens.weight");
    if (!e) goto done;
    float *lm = malloc(e->bytes);
    if (!lm) goto done;
    memcpy(lm, e->data, e->bytes);
    lm[5] = 42.0f;
    wlist_add(&l, "language_model.lm_head.weight", "F32", 1024, 64, lm, e->bytes);
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, NULL, NULL);
    struct vlm_model *m = load_ok(dir2);
    if (m) {
        CHECK(!m->lm_head_tied && m->w.lm_head != m->w.embed);
        CHECK(m->w.lm_head[5] == 42.0f && m->w.embed[5] != 42.0f);
        CHECK(m->w.lm_head[6] == m->w.embed[6]);
    }
    vlm_model_free(m);
    /* lm_head rows != embed rows */
    l.t[l.n - 1].shape[0] = 1000;
    l.t[l.n - 1].bytes = 1000 * 64 * sizeof(float);
    const char *dir3 = test_tmpdir();
    write_tensors(&l, dir3, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir3, NULL, NULL, NULL, NULL);
    EXPECT_FAIL(dir3, VLM_ERR_FORMAT, "'language_model.lm_head.weight' has shape [1000, 64]", "expected [1024, 64]",
                NULL);
    free(lm);
done:
    st_checkpoint_close(l.ck);
}

TEST(model_load_padded_embedding_rows) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *e = wlist_find(&l, "language_model.model.embed_tokens.weight");
    if (!e) goto done;
    /* 1088 rows (vocab 1024 padded to a multiple of 64, plus one block): allowed, tied lm_head follows */
    size_t bytes = 1088 * 64 * sizeof(float);
    float *big = calloc(1, bytes);
    if (!big) goto done;
    memcpy(big, e->data, e->bytes);
    big[1087 * 64] = 7.0f;
    e->data = big, e->bytes = bytes, e->shape[0] = 1088;
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    struct vlm_model *m = load_ok(dir);
    if (m) {
        CHECK_EQ(m->w.n_vocab_rows, 1088);
        CHECK(m->w.lm_head == m->w.embed && m->w.embed[1087 * 64] == 7.0f);
    }
    vlm_model_free(m);
    /* fewer rows than the vocabulary: rejected */
    e->shape[0] = 1000, e->bytes = 1000 * 64 * sizeof(float);
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, NULL, NULL);
    EXPECT_FAIL(dir2, VLM_ERR_FORMAT, "embed_tokens.weight' has shape [1000, 64]", "1024 <= rows", NULL);
    free(big);
done:
    st_checkpoint_close(l.ck);
}

TEST(model_load_non_finite) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *t = wlist_find(&l, "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight");
    if (!t) goto done;
    const float specials[2] = {NAN, -INFINITY};
    for (int s = 0; s < 2; s++) {
        float *copy = malloc(t->bytes);
        if (!copy) break;
        memcpy(copy, t->data, t->bytes);
        copy[77] = specials[s];
        const void *orig = t->data;
        t->data = copy;
        const char *dir = test_tmpdir();
        write_tensors(&l, dir, "model.safetensors", 0, 1);
        copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
        EXPECT_FAIL(dir, VLM_ERR_FORMAT, "'vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight'", "non-finite",
                    "element 77");
        t->data = orig;
        free(copy);
    }
done:
    st_checkpoint_close(l.ck);
}

TEST(model_load_dtypes) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *t = wlist_find(&l, "language_model.model.norm.weight");
    if (!t) goto done;
    /* I32 is a valid safetensors dtype the model cannot use */
    t->dtype = "I32";
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    EXPECT_FAIL(dir, VLM_ERR_UNSUPPORTED, "'language_model.model.norm.weight' has dtype I32", NULL, NULL);
    /* one F16 tensor among F32 ones: loads, summary says mixed */
    static const uint16_t ones[64] = {[0 ... 63] = 0x3c00};
    t->dtype = "F16", t->data = ones, t->bytes = sizeof ones;
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, NULL, NULL);
    struct vlm_model *m = load_ok(dir2);
    if (m) {
        CHECK(!strcmp(m->file_dtype, "mixed"));
        CHECK(m->w.final_norm[0] == 1.0f && m->w.final_norm[63] == 1.0f);
    }
    vlm_model_free(m);
done:
    st_checkpoint_close(l.ck);
}

TEST(model_load_only_needed_vision_layers) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    CHECK_EQ(wlist_drop(&l, "encoder.layers.1."), 16);
    CHECK_EQ(wlist_drop(&l, "post_layernorm"), 2);
    /* feature layer -2 = output of layer 1 (1-based): layer index 1 is never needed */
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, "\"vision_feature_layer\": -1", "\"vision_feature_layer\": -2", NULL, NULL);
    struct vlm_model *m = load_ok(dir);
    if (m) {
        CHECK_EQ(m->w.n_vit_layers, 1);
        CHECK_EQ(m->config.feature_layers[0], 1);
    }
    vlm_model_free(m);
    /* with -1 the dropped layer is required */
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, NULL, NULL);
    EXPECT_FAIL(dir2, VLM_ERR_FORMAT, "no tensor 'vision_tower.vision_model.encoder.layers.1.layer_norm1.weight'",
                NULL, NULL);
    /* feature layer 0 (embeddings only): no encoder layer at all */
    CHECK_EQ(wlist_drop(&l, "encoder.layers.0."), 16);
    const char *dir3 = test_tmpdir();
    write_tensors(&l, dir3, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir3, "\"vision_feature_layer\": -1", "\"vision_feature_layer\": 0", NULL, NULL);
    m = load_ok(dir3);
    if (m) CHECK_EQ(m->w.n_vit_layers, 0);
    vlm_model_free(m);
    st_checkpoint_close(l.ck);
}

TEST(model_load_projector_variants) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    /* two feature layers: linear_1 must be [64, 128], the fixture's [64, 64] is rejected */
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, "\"vision_feature_layer\": -1", "\"vision_feature_layer\": [-2, -1]", NULL, NULL);
    EXPECT_FAIL(dir, VLM_ERR_FORMAT, "'multi_modal_projector.linear_1.weight' has shape [64, 64]", "expected [64, 128]",
                NULL);
    /* no projector bias: the bias tensors are not needed (and ignored when present) */
    CHECK_EQ(wlist_drop(&l, "multi_modal_projector.linear_1.bias"), 1);
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, "\"multimodal_projector_bias\": true", "\"multimodal_projector_bias\": false",
                 NULL, NULL);
    struct vlm_model *m = load_ok(dir2);
    if (m) CHECK(m->w.proj1_b == NULL && m->w.proj2_b == NULL && m->w.proj1_w && m->w.proj2_w);
    vlm_model_free(m);
    st_checkpoint_close(l.ck);
}

TEST(model_load_missing_files) {
    struct vlm_model *m = (struct vlm_model *)(uintptr_t)0x77;
    CHECK_EQ(vlm_model_load(NULL, &m), VLM_ERR_ARG);
    CHECK_EQ(vlm_model_load("/tmp", NULL), VLM_ERR_ARG);
    CHECK(m == (struct vlm_model *)(uintptr_t)0x77);
    vlm_model_free(NULL); /* no-op */
    char none[700];
    snprintf(none, sizeof none, "%s/does-not-exist", test_tmpdir());
    EXPECT_FAIL(none, VLM_ERR_IO, "config.json", NULL, NULL);
    /* configs without weights */
    const char *dir = test_tmpdir();
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    EXPECT_FAIL(dir, VLM_ERR_IO, "model.safetensors", NULL, NULL);
    /* weights and config without preprocessor_config.json */
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, NULL, NULL);
    char pp[700];
    snprintf(pp, sizeof pp, "%s/preprocessor_config.json", dir2);
    CHECK(unlink(pp) == 0);
    EXPECT_FAIL(dir2, VLM_ERR_IO, "preprocessor_config.json", NULL, NULL);
    /* an empty model.safetensors */
    const char *dir3 = test_tmpdir();
    copy_configs(TINY_SINGLE, dir3, NULL, NULL, NULL, NULL);
    write_text(dir3, "model.safetensors", "");
    EXPECT_FAIL(dir3, VLM_ERR_FORMAT, "model.safetensors", "too short", NULL);
    st_checkpoint_close(l.ck);
}

TEST(model_load_config_mismatches) {
    struct wlist l;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, "\"llava_onevision\"", "\"llama\"", NULL, NULL);
    EXPECT_FAIL(dir, VLM_ERR_UNSUPPORTED, "model_type", "llama", NULL);
    /* processor crop size != vision image_size */
    const char *dir2 = test_tmpdir();
    write_tensors(&l, dir2, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir2, NULL, NULL, "\"size\": {\n    \"height\": 56,\n    \"width\": 56\n  }",
                 "\"size\": {\"height\": 28, \"width\": 28}");
    EXPECT_FAIL(dir2, VLM_ERR_FORMAT, "preprocessor_config.json", "image_size", NULL);
    /* processor pinpoints that differ from the model's */
    const char *dir3 = test_tmpdir();
    write_tensors(&l, dir3, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir3, NULL, NULL, "336,\n      336", "336,\n      280");
    EXPECT_FAIL(dir3, VLM_ERR_FORMAT, "image_grid_pinpoints", "differs", NULL);
    /* a config whose dims disagree with the weights: every tensor is checked against config.json */
    const char *dir4 = test_tmpdir();
    write_tensors(&l, dir4, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir4, "\"intermediate_size\": 128,\n    \"layer_types\"",
                 "\"intermediate_size\": 256,\n    \"layer_types\"", NULL, NULL);
    EXPECT_FAIL(dir4, VLM_ERR_FORMAT, "has shape [128, 64]", "expected [256, 64]", NULL);
    st_checkpoint_close(l.ck);
}

TEST(model_load_estimate_tiny) {
    struct vlm_config c;
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", test_path(TINY_SINGLE));
    if (!CHECK(vlm_config_parse(path, &c) == VLM_OK)) return;
    struct vlm_mem_estimate e;
    vlm_config_estimate_memory(&c, &e);
    CHECK_EQ(e.kv_bytes_per_token_fp16, 2 * 2 * 2 * 16 * 2); /* 2 layers, 2 kv heads, head_dim 16 */
    CHECK_EQ(e.fp32_bytes, 4 * e.params.total);
    /* the tiny model by hand: vision 2 x 33,472 (fc 128) + patch 64*588+64 + pos 16*64 + post-LN 128 */
    int64_t per_vit = 4 * (64 * 64 + 64) + 4 * 64 + (128 * 64 + 128) + (64 * 128 + 64);
    CHECK_EQ(e.params.vision, 2 * per_vit + 64 * 588 + 64 + 16 * 64 + 128);
    CHECK_EQ(e.params.text_linear, 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128));
    CHECK_EQ(e.params.lm_head, 0); /* tied */
}

/* Streamed decoder linears (the converter's load): the same weights as a full load, one layer at a time, and the
 * stale layer's fields cleared, a drop forgetting caller changes, and the forward refusing the model. */
TEST(model_load_streamed_layers) {
    struct vlm_model *full = load_ok(test_path(TINY_SINGLE)), *m = NULL;
    const struct vlm_load_opts lo = {.stream_decoder_linears = true};
    char err[4096];
    test_capture_begin();
    enum vlm_status st = vlm_model_load_opts(test_path(TINY_SINGLE), &lo, &m);
    test_capture_end(err, sizeof err);
    if (!full || !CHECK(st == VLM_OK)) goto done;
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t d = tc->hidden_size, f = tc->intermediate_size, qd = tc->n_heads * tc->head_dim,
                  kvd = tc->n_kv_heads * tc->head_dim;
    const int64_t layer_floats = qd * d + 2 * kvd * d + d * qd + 3 * f * d;
    CHECK(tc->n_layers >= 2);
    CHECK_EQ((int64_t)full->arena_floats - (int64_t)m->arena_floats, tc->n_layers * layer_floats);
    CHECK_EQ((int64_t)vlm_model_resident_bytes(m), ((int64_t)m->arena_floats + layer_floats) * 4);
    CHECK(m->w.layers[0].q_w == NULL && m->w.layers[1].down_w == NULL && m->w.layers[0].attn_norm != NULL);
    CHECK(memcmp(m->w.embed, full->w.embed, (size_t)(m->w.n_vocab_rows * d) * sizeof(float)) == 0);
    for (int64_t l = tc->n_layers - 1; l >= 0; l--) {
        if (!CHECK(vlm_model_layer_load(m, l) == VLM_OK)) goto done;
        const struct qwen2_layer_weights *a = &m->w.layers[l], *b = &full->w.layers[l];
        CHECK(memcmp(a->q_w, b->q_w, (size_t)(qd * d) * sizeof(float)) == 0);
        CHECK(memcmp(a->k_w, b->k_w, (size_t)(kvd * d) * sizeof(float)) == 0);
        CHECK(memcmp(a->v_w, b->v_w, (size_t)(kvd * d) * sizeof(float)) == 0);
        CHECK(memcmp(a->o_w, b->o_w, (size_t)(d * qd) * sizeof(float)) == 0);
        CHECK(memcmp(a->gate_w, b->gate_w, (size_t)(f * d) * sizeof(float)) == 0);
        CHECK(memcmp(a->up_w, b->up_w, (size_t)(f * d) * sizeof(float)) == 0);
        CHECK(memcmp(a->down_w, b->down_w, (size_t)(d * f) * sizeof(float)) == 0);
        CHECK(a->wdown.codes == a->down_w && a->wq.n == qd && a->wq.k == d);
        if (l + 1 < tc->n_layers) /* the previous layer's fields no longer point at this layer's weights */
            CHECK(m->w.layers[l + 1].q_w == NULL && m->w.layers[l + 1].wq.codes == NULL);
    }
    /* a cached layer keeps caller changes until dropped */
    m->w.layers[0].up_w[5] += 1.0f;
    CHECK(vlm_model_layer_load(m, 0) == VLM_OK && m->w.layers[0].up_w[5] == full->w.layers[0].up_w[5] + 1.0f);
    vlm_model_layer_drop(m);
    CHECK(m->w.layers[0].up_w == NULL);
    CHECK(vlm_model_layer_load(m, 0) == VLM_OK && m->w.layers[0].up_w[5] == full->w.layers[0].up_w[5]);
    CHECK(vlm_model_layer_load(m, tc->n_layers) == VLM_ERR_ARG && vlm_model_layer_load(m, -1) == VLM_ERR_ARG);
    /* a fully loaded model: every layer is already there */
    CHECK(vlm_model_layer_load(full, 1) == VLM_OK && vlm_model_resident_bytes(full) == full->arena_floats * 4);
    /* the decoder forward needs all layers */
    struct kv_cache kv;
    float *x = calloc((size_t)d, sizeof(float)), *logits = calloc((size_t)m->w.n_vocab_rows, sizeof(float));
    if (x && logits && CHECK(kv_cache_init(&kv, tc, 8) == VLM_OK)) {
        test_capture_begin();
        st = qwen2_forward(m, &kv, x, 1, logits, 0);
        test_capture_end(err, sizeof err);
        CHECK(st == VLM_ERR_UNSUPPORTED && strstr(err, "streamed"));
        kv_cache_free(&kv);
    }
    free(x), free(logits);
done:
    vlm_model_free(full);
    vlm_model_free(m);
}

/* A non-finite decoder weight in a streamed load is found when its layer is widened: one line, the tensor named. */
TEST(model_load_streamed_non_finite) {
    struct wlist l;
    struct vlm_model *m = NULL;
    float *copy = NULL;
    if (!wlist_load(&l, TINY_SINGLE)) return;
    struct wt *t = wlist_find(&l, "language_model.model.layers.1.mlp.up_proj.weight");
    if (!t || !(copy = malloc(t->bytes))) goto done;
    memcpy(copy, t->data, t->bytes);
    copy[9] = NAN;
    t->data = copy;
    const char *dir = test_tmpdir();
    write_tensors(&l, dir, "model.safetensors", 0, 1);
    copy_configs(TINY_SINGLE, dir, NULL, NULL, NULL, NULL);
    const struct vlm_load_opts lo = {.stream_decoder_linears = true};
    char err[4096];
    test_capture_begin();
    enum vlm_status st = vlm_model_load_opts(dir, &lo, &m);
    test_capture_end(err, sizeof err);
    if (!CHECK(st == VLM_OK)) goto done;
    CHECK(vlm_model_layer_load(m, 0) == VLM_OK);
    test_capture_begin();
    st = vlm_model_layer_load(m, 1);
    test_capture_end(err, sizeof err);
    CHECK(st == VLM_ERR_FORMAT);
    CHECK(strstr(err, "'language_model.model.layers.1.mlp.up_proj.weight'") && strstr(err, "element 9"));
    CHECK(strchr(err, '\n') && strchr(err, '\n')[1] == '\0');
    CHECK(m->w.layers[1].q_w == NULL && m->w.layers[1].up_w == NULL && m->w.layers[0].q_w == NULL);
done:
    vlm_model_free(m);
    free(copy);
    st_checkpoint_close(l.ck);
}
