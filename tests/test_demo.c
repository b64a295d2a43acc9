/* test_demo.c — the bundled demo model (models/demo, trained by tools/train_demo.py), what `vlmrun` runs by default.
 *
 * - demo_greedy_matches_transformers: our answers on 20 test scenes are transformers' greedy answers on the same
 *   checkpoint, text for text (tests/data/demo/greedy_hf.jsonl, written by tools/make_demo_fixtures.py from
 *   LlavaOnevisionForConditionalGeneration.generate: the independent reference);
 * - demo_default_model: `vlmrun IMAGE QUESTION` with no --model runs the bundled demo (the README's first command),
 *   VLM_MODEL overrides it, and a missing default gives one error line naming the path;
 * - demo_chat_matches_transformers: `vlmrun IMAGE` with questions on stdin answers three-turn chats as transformers
 *   does (tests/data/demo/greedy_hf_chat.jsonl), the whole chat in each prompt and the earlier turns from the cache;
 * - demo_chat_full_ends_the_chat: a chat that outgrows the model's positions ends with one line naming the question;
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

/* Interactive mode: `vlmrun IMAGE` with the questions on stdin, one per line, must print transformers' answers of
 * the same chat (tests/data/demo/greedy_hf_chat.jsonl: earlier answers kept as assistant turns) line by line, and
 * each turn's prompt must be the whole chat (its length equals transformers'), of which the KV cache kept all of
 * the previous turn's prompt. A blank line is skipped; a line of
 * invalid UTF-8 gets one error line, is left out of the chat and makes the exit status 1, and the chat goes on. */
TEST(demo_chat_matches_transformers) {
    const char *ref = test_path("tests/data/demo/greedy_hf_chat.jsonl");
    for (int k = 0; k < 3; k++) {
        cJSON *chat = jsonl_item(ref, k);
        if (!chat) return;
        const cJSON *file = cJSON_GetObjectItem(chat, "file"), *turns = cJSON_GetObjectItem(chat, "turns");
        if (!CHECK(cJSON_IsString(file) && cJSON_IsArray(turns) && cJSON_GetArraySize(turns) >= 2)) {
            cJSON_Delete(chat);
            return;
        }
        char image[4096], rel[4200], cmd[8192], err[8192], want[4096] = "", questions[4096] = "", line[200];
        snprintf(rel, sizeof rel, "tests/data/demo/%s", file->valuestring);
        snprintf(image, sizeof image, "%s", test_path(rel));
        const bool with_bad = k == 1; /* one chat also carries a blank line and an invalid UTF-8 line */
        int t = 0;
        for (const cJSON *turn = turns->child; turn; turn = turn->next, t++) {
            const cJSON *q = cJSON_GetObjectItem(turn, "q"), *a = cJSON_GetObjectItem(turn, "a");
            if (!CHECK(cJSON_IsString(q) && cJSON_IsString(a))) break;
            strncat(questions, q->valuestring, sizeof questions - strlen(questions) - 1);
            strncat(questions, with_bad && t == 0 ? "\n\n\xff\xfe bad\n" : "\n", sizeof questions - strlen(questions) - 1);
            snprintf(line, sizeof line, "%s\n", a->valuestring);
            strncat(want, line, sizeof want - strlen(want) - 1);
        }
        const char *in = test_tmp_path("chat_in.txt");
        test_write_file(in, questions, strlen(questions));
        snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' <'%s'", VLM_BUILD_DIR, demo_dir(), image, in);
        char *out = NULL;
        int rc = run_capture(cmd, &out, err, sizeof err);
        CHECK_EQ(rc, with_bad ? 1 : 0);
        if (!CHECK(out != NULL && strcmp(out, want) == 0))
            fprintf(stderr, "  chat %d: got '%s', transformers '%s'\n  %s", k, out ? out : "", want, err);
        /* each turn's prompt is the whole chat, and all of the previous turn's prompt is reused from the cache (the
         * chat only grows), none of the new question: previous n_prompt <= cached < this n_prompt */
        t = 1;
        int prev = 0;
        for (const cJSON *turn = turns->child; turn; turn = turn->next, t++) {
            const cJSON *n = cJSON_GetObjectItem(turn, "n_prompt");
            const int np = cJSON_IsNumber(n) ? n->valueint : -1;
            snprintf(line, sizeof line, "turn %d: prompt %d tokens, ", t, np);
            const char *at = strstr(err, line);
            long long cached = -1;
            if (!CHECK(at != NULL && sscanf(at + strlen(line), "%lld cached,", &cached) == 1)) {
                fprintf(stderr, "  chat %d: no '%s<N> cached' in:\n%s", k, line, err);
                continue;
            }
            if (!CHECK(t == 1 ? cached == 0 : cached >= prev && cached < np))
                fprintf(stderr, "  chat %d turn %d: %lld cached of %d (previous prompt %d)\n", k, t, cached, np, prev);
            prev = np;
        }
        if (with_bad) { /* exactly one error line, naming the bad line */
            const char *e = strstr(err, "vlmrun: error: ");
            CHECK(e && strncmp(e, "vlmrun: error: <stdin> line 3: invalid UTF-8 at byte 0\n", 55) == 0 &&
                  !strstr(e + 1, "vlmrun: error: "));
        }
        free(out);
        cJSON_Delete(chat);
    }
    /* no PROMPT and no tokenizer: one line saying so, exit 1 */
    char cmd[8192], err[4096];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' </dev/null", VLM_BUILD_DIR,
             test_path("tests/data/models/tiny_unpad"), test_path("tests/data/demo/test/test_00000.png"));
    CHECK_EQ(run_capture(cmd, &out, err, sizeof err), 1);
    CHECK_ERROR_LINE(err, "tiny_unpad", "no tokenizer");
    free(out);
}

/* A chat that outgrows the model's positions ends with one line saying so, naming the question that did it, after
 * the answers that fitted. --max-new is set so that transformers' second prompt of chat 0 leaves room for exactly
 * that many answer tokens, and the third (longer) does not. */
TEST(demo_chat_full_ends_the_chat) {
    cJSON *chat = jsonl_item(test_path("tests/data/demo/greedy_hf_chat.jsonl"), 0);
    size_t len = 0;
    char *cfg_text = test_read_file(test_path("models/demo/config.json"), &len);
    cJSON *cfg = cfg_text ? cJSON_Parse(cfg_text) : NULL;
    free(cfg_text);
    const cJSON *tc = cJSON_GetObjectItem(cfg, "text_config");
    const cJSON *max_pos = cJSON_GetObjectItem(tc, "max_position_embeddings");
    const cJSON *file = cJSON_GetObjectItem(chat, "file"), *turns = cJSON_GetObjectItem(chat, "turns");
    if (!CHECK(cJSON_IsNumber(max_pos) && cJSON_IsString(file) && cJSON_GetArraySize(turns) == 3)) goto done;
    const cJSON *t1 = cJSON_GetArrayItem(turns, 0), *t2 = cJSON_GetArrayItem(turns, 1);
    const cJSON *n2 = cJSON_GetObjectItem(t2, "n_prompt");
    if (!CHECK(cJSON_IsNumber(n2))) goto done;
    char rel[4200], image[4096], questions[4096] = "", cmd[8192], err[8192], want[512];
    snprintf(rel, sizeof rel, "tests/data/demo/%s", file->valuestring);
    snprintf(image, sizeof image, "%s", test_path(rel));
    for (const cJSON *turn = turns->child; turn; turn = turn->next) {
        strncat(questions, cJSON_GetObjectItem(turn, "q")->valuestring, sizeof questions - strlen(questions) - 2);
        strcat(questions, "\n");
    }
    strncat(questions, "Is there a circle?\n", sizeof questions - strlen(questions) - 1); /* never asked */
    const char *in = test_tmp_path("chat_full_in.txt");
    test_write_file(in, questions, strlen(questions));
    const int max_new = max_pos->valueint - n2->valueint;
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' --max-new %d '%s' <'%s'", VLM_BUILD_DIR, demo_dir(), max_new,
             image, in);
    char *out = NULL;
    CHECK_EQ(run_capture(cmd, &out, err, sizeof err), 1);
    /* the first two answers are transformers' (they end at <|im_end|>, far below max_new) */
    snprintf(want, sizeof want, "%s\n%s\n", cJSON_GetObjectItem(t1, "a")->valuestring,
             cJSON_GetObjectItem(t2, "a")->valuestring);
    if (!CHECK(out != NULL && strcmp(out, want) == 0)) fprintf(stderr, "  got '%s', want '%s'\n", out ? out : "", want);
    const char *e = strstr(err, "vlmrun: error: "); /* the info lines before it are the log */
    if (CHECK(e != NULL)) CHECK_ERROR_LINE(e, "<stdin> line 3: the chat is full", "start a new chat");
    CHECK(strstr(err, "turn 3:") == NULL);
    free(out);
done:
    cJSON_Delete(cfg);
    cJSON_Delete(chat);
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
