/* test_demo.c — the bundled demo model (models/demo, trained by tools/train_demo.py), what `vlmrun` runs by default.
 *
 * - demo_greedy_matches_transformers: our answers on 20 test scenes are transformers' greedy answers on the same
 *   checkpoint, text for text (tests/data/demo/greedy_hf.jsonl, written by tools/make_demo_fixtures.py from
 *   LlavaOnevisionForConditionalGeneration.generate: the independent reference);
 * - demo_default_model: `vlmrun IMAGE QUESTION` with no --model runs the bundled demo (the README's first command),
 *   VLM_MODEL overrides it, and a missing default gives one error line naming the path;
 * - demo_accuracy_floor: the FP accuracy on the first DEMO_ACC_ITEMS questions of the test split
 *   (test_eval.jsonl, scenes never trained on) stays above DEMO_FLOOR_PCT, set from the training report
 *   (models/demo/README.md) minus a margin for the sample. It runs on the checkpoint converted with
 *   `vlmconvert --method f32` (no quantization: the same float32 weights, through the fast kernels) because the
 *   checkpoint directory's float32 reference path costs ~15x more CPU per answer; the greedy test above keeps the
 *   directory path, the one `vlmrun` takes by default. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

/* The accuracy over these items (models/demo/README.md) minus a margin: 8 points, over three standard errors of a
 * 350-item sample, so that a correct runtime never trips it and a broken one (wrong image path or preprocessing,
 * template, stop ids: the answers fall to the priors) does. */
#define DEMO_ACC_ITEMS 350
#define DEMO_FLOOR_PCT 39.7 /* models/demo/README.md: 47.7 % (167/350), minus 8 */

static const char *demo_dir(void) { return test_path("models/demo"); }

/* Runs a command with stdout into a temp file; returns the exit status, stdout in *out (malloc'd), stderr in err. */
static int run_capture(const char *cmd, char **out, char *err, size_t err_cap) {
    const char *path = test_tmp_path("demo_out.txt");
    char full[16384];
    snprintf(full, sizeof full, "%s >'%s'", cmd, path);
    int rc = test_run_cmd(full, err, err_cap);
    size_t len = 0;
    *out = test_read_file(path, &len);
    return rc;
}

/* The cells of the markdown row whose first cell is "all": items, correct, accuracy. false when absent. */
static bool all_row(const char *table, long *items, long *correct, double *pct) {
    const char *p = strstr(table ? table : "", "| all |");
    return p && sscanf(p, "| all | %ld | %ld | %lf", items, correct, pct) == 3;
}

/* Item k of a JSONL file (cJSON, caller deletes); NULL after a failed CHECK. */
static cJSON *jsonl_item(const char *path, int k) {
    size_t len = 0;
    char *text = test_read_file(path, &len);
    if (!CHECK(text != NULL)) return NULL;
    char *line = text;
    for (int i = 0; i < k && line; i++) line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL;
    cJSON *o = NULL;
    if (CHECK(line != NULL && *line)) {
        line[strcspn(line, "\n")] = 0;
        o = cJSON_Parse(line);
        CHECK(o != NULL);
    }
    free(text);
    return o;
}

TEST(demo_greedy_matches_transformers) {
    const char *ref = test_path("tests/data/demo/greedy_hf.jsonl");
    char cmd[4096], err[4096];
    snprintf(cmd, sizeof cmd, "%s/vlmeval --vqa '%s' --model '%s'", VLM_BUILD_DIR, ref, demo_dir());
    char *out = NULL;
    int rc = run_capture(cmd, &out, err, sizeof err);
    long items = 0, correct = 0;
    double pct = 0;
    if (!CHECK_EQ(rc, 0) || !CHECK(all_row(out, &items, &correct, &pct))) {
        fprintf(stderr, "  %s\n  %s\n", err, out ? out : "");
    } else {
        CHECK_EQ(items, 20);
        if (!CHECK_EQ(correct, items)) fprintf(stderr, "%s", out); /* the table says which types differ */
    }
    free(out);
}

TEST(demo_default_model) {
    /* the first reference item: its image, question and transformers' answer */
    cJSON *it = jsonl_item(test_path("tests/data/demo/greedy_hf.jsonl"), 0);
    if (!it) return;
    const cJSON *file = cJSON_GetObjectItem(it, "file"), *q = cJSON_GetObjectItem(it, "q"),
                *a = cJSON_GetObjectItem(it, "a");
    if (!CHECK(cJSON_IsString(file) && cJSON_IsString(q) && cJSON_IsString(a) && !strchr(q->valuestring, '\''))) {
        cJSON_Delete(it);
        return;
    }
    char image[4096], rel[4200], cmd[8192], err[4096], want[4096];
    snprintf(rel, sizeof rel, "tests/data/demo/%s", file->valuestring);
    snprintf(image, sizeof image, "%s", test_path(rel));
    snprintf(want, sizeof want, "%s\n", a->valuestring);
    char *out = NULL;
    /* no --model, no VLM_MODEL, from another directory: the bundled demo by its absolute path */
    snprintf(cmd, sizeof cmd, "cd / && env -u VLM_MODEL %s/vlmrun '%s' '%s'", VLM_BUILD_DIR, image, q->valuestring);
    if (CHECK_EQ(run_capture(cmd, &out, err, sizeof err), 0) && CHECK(out != NULL)) {
        if (!CHECK(strcmp(out, want) == 0)) fprintf(stderr, "  got '%s', transformers '%s'\n", out, want);
        CHECK(strstr(err, "models/demo") != NULL); /* the load line names what ran */
    }
    free(out);
    out = NULL;
    /* VLM_MODEL wins over the default: a model without a tokenizer cannot take a text prompt, and says so */
    snprintf(cmd, sizeof cmd, "VLM_MODEL='%s' %s/vlmrun '%s' '%s'", test_path("tests/data/models/tiny_unpad"),
             VLM_BUILD_DIR, image, q->valuestring);
    CHECK_EQ(run_capture(cmd, &out, err, sizeof err), 1);
    CHECK(strstr(err, "tiny_unpad") != NULL);
    free(out);
    out = NULL;
    /* a default that is not there: one line naming it, exit 1, nothing on stdout */
    snprintf(cmd, sizeof cmd, "VLM_MODEL=/nonexistent/demo %s/vlmrun '%s' '%s'", VLM_BUILD_DIR, image,
             q->valuestring);
    CHECK_EQ(run_capture(cmd, &out, err, sizeof err), 1);
    CHECK_ERROR_LINE(err, "/nonexistent/demo", "VLM_MODEL");
    CHECK(out != NULL && out[0] == 0);
    free(out);
    cJSON_Delete(it);
}

TEST(demo_accuracy_floor) {
    char cmd[4096], err[4096];
    const char *mbq = test_tmp_path("demo_f32.mbq");
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model '%s' --out '%s' --method f32 >/dev/null", VLM_BUILD_DIR,
             demo_dir(), mbq);
    if (!CHECK_EQ(test_run_cmd(cmd, err, sizeof err), 0)) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    snprintf(cmd, sizeof cmd, "%s/vlmeval --vqa '%s' --model '%s' --limit %d", VLM_BUILD_DIR,
             test_path("tests/data/demo/test_eval.jsonl"), mbq, DEMO_ACC_ITEMS);
    char *out = NULL;
    int rc = run_capture(cmd, &out, err, sizeof err);
    remove(mbq);
    long items = 0, correct = 0;
    double pct = 0;
    if (CHECK_EQ(rc, 0) && CHECK(all_row(out, &items, &correct, &pct))) {
        CHECK_EQ(items, DEMO_ACC_ITEMS);
        if (!CHECK(pct >= DEMO_FLOOR_PCT)) fprintf(stderr, "  accuracy %.1f %% < floor %.1f %%\n%s", pct,
                                                   DEMO_FLOOR_PCT, out);
        if (test_verbose()) fprintf(stderr, "%s", out);
    } else {
        fprintf(stderr, "  %s\n", err);
    }
    free(out);
}
