/* test_vqa.c — vlmeval --vqa as tools/eval.sh runs it, on tiny_q with the hand-made byte-level tokenizer of
 * tests/data/calib: the table counts the items per question type in first-seen order, an answer scores correct
 * exactly when it is what `vlmrun MODEL IMAGE QUESTION` prints (the independent check of prompt, stop ids and
 * decoding: vlmrun is run here, its stdout becomes the expected answer), --limit / --max-new / --ref do what they
 * say, and bad input gives one "vlmeval: error:" line naming the file and line, exit 1 (usage errors exit 2). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

static const char *model_dir(void) { return test_tiny_q_tokenized(true); }

/* What vlmrun prints for image + question with its defaults (malloc'd; NULL after a failed CHECK). */
static char *vlmrun_answer(const char *image, const char *question, size_t *len) {
    const char *out = test_tmp_path("vlmrun_out.txt");
    char cmd[4096], err[4096];
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' '%s' >'%s'", VLM_BUILD_DIR, model_dir(), image, question,
             out);
    if (!CHECK_EQ(test_run_cmd(cmd, err, sizeof err), 0)) {
        fprintf(stderr, "  %s\n  %s\n", cmd, err);
        return NULL;
    }
    char *s = test_read_file(out, len);
    CHECK(s != NULL);
    return s;
}

/* One JSONL line {"file", "type", "q", "a"} (+ "index", and an unknown key when extra), through cJSON so that any
 * bytes of the answer are escaped. Appends it and "\n" to buf (cap bytes). */
static void add_line(char *buf, size_t cap, const char *file, const char *type, const char *q, const char *a,
                     bool extra) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", file);
    cJSON_AddNumberToObject(o, "index", 7);
    cJSON_AddStringToObject(o, "type", type);
    cJSON_AddStringToObject(o, "q", q);
    cJSON_AddStringToObject(o, "a", a);
    if (extra) cJSON_AddItemToObject(o, "objects", cJSON_Parse("[{\"shape\": \"circle\"}, 3]"));
    char *s = cJSON_PrintUnformatted(o);
    if (CHECK(s != NULL && strlen(buf) + strlen(s) + 2 < cap)) {
        strcat(buf, s);
        strcat(buf, "\n");
    }
    free(s);
    cJSON_Delete(o);
}

/* Runs vlmeval with args; stdout into out (cap bytes), stderr into err; returns the exit status. */
static int vlmeval(const char *args, char *out, size_t cap, char *err, size_t err_cap) {
    const char *path = test_tmp_path("vlmeval_out.txt");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s/vlmeval %s >'%s'", VLM_BUILD_DIR, args, path);
    int rc = test_run_cmd(cmd, err, err_cap);
    size_t len = 0;
    char *s = test_read_file(path, &len);
    snprintf(out, cap, "%s", s ? s : "");
    free(s);
    return rc;
}

/* The cells of the table row whose first cell is name, trimmed, joined by ','; "" when there is no such row. */
static const char *row(const char *table, const char *name) {
    static char cells[1024];
    cells[0] = 0;
    for (const char *line = table; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        size_t n = strcspn(line, "\n");
        char l[1024];
        if (n >= sizeof l || line[0] != '|') continue;
        memcpy(l, line, n);
        l[n] = 0;
        char *save = NULL, joined[1024] = "";
        int k = 0;
        for (char *c = strtok_r(l, "|", &save); c; c = strtok_r(NULL, "|", &save), k++) {
            while (*c == ' ') c++;
            size_t e = strlen(c);
            while (e && c[e - 1] == ' ') c[--e] = 0;
            if (k == 0 && strcmp(c, name) != 0) break;
            if (k > 0) snprintf(joined + strlen(joined), sizeof joined - strlen(joined), "%s%s", k > 1 ? "," : "", c);
        }
        if (joined[0]) {
            snprintf(cells, sizeof cells, "%s", joined);
            return cells;
        }
    }
    return cells;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Exactly one "vlmeval: error: " line (informational lines may come before it). */
static bool one_error_line(const char *err) {
    const char *p = strstr(err, "vlmeval: error: ");
    return p && !strstr(p + 1, "vlmeval: error: ") && p[strcspn(p, "\n")] == '\n';
}

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

TEST(vqa_scores_exact_match_with_vlmrun) {
    if (!model_dir()[0]) return;
    const char *q1 = "What color is the square?", *q2 = "How many shapes?";
    const char *dir = test_tmpdir();
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/img' && cp '%s' '%s' '%s/img/'", dir,
             test_path("tests/data/images/unpad_70x150.png"), test_path("tests/data/images/single_40x50.png"), dir);
    if (!CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0)) return;
    /* the answers vlmrun gives (from the repository's copies of the images: the same bytes) */
    size_t n1 = 0, n2 = 0;
    char *a1 = vlmrun_answer(test_path("tests/data/images/unpad_70x150.png"), q1, &n1);
    char *a2 = vlmrun_answer(test_path("tests/data/images/single_40x50.png"), q2, &n2);
    if (!a1 || !a2) goto done;
    /* preconditions of a meaningful check: text a JSON string can carry, something to score, vlmrun's newline */
    if (!CHECK(strlen(a1) == n1 && strlen(a2) == n2 && n1 > 1 && n2 > 1 && a1[n1 - 1] == '\n')) goto done;
    /* wrong answers: a1 with its first lowercase letter upper-cased (exact match is case-sensitive), else with a
     * character in front; "~" + a2 */
    char a1_case[4096], a2_wrong[4096], a2_padded[4096];
    snprintf(a1_case, sizeof a1_case, "%s", a1);
    char *lc = a1_case + strcspn(a1_case, "abcdefghijklmnopqrstuvwxyz");
    if (*lc) *lc = (char)(*lc - 'a' + 'A');
    else snprintf(a1_case, sizeof a1_case, "~%s", a1);
    snprintf(a2_wrong, sizeof a2_wrong, "~%s", a2);
    snprintf(a2_padded, sizeof a2_padded, " \t%s  ", a2); /* surrounding whitespace does not count */
    char jsonl[32768] = "";
    add_line(jsonl, sizeof jsonl, "img/unpad_70x150.png", "color", q1, a1, false);        /* correct */
    add_line(jsonl, sizeof jsonl, "img/single_40x50.png", "shape", q2, a2_padded, true);  /* correct */
    strcat(jsonl, "\n");                                                                   /* blank line */
    add_line(jsonl, sizeof jsonl, "img/unpad_70x150.png", "color", q1, a1_case, false);   /* wrong */
    add_line(jsonl, sizeof jsonl, test_path("tests/data/images/single_40x50.png"), "count", q2, a2_wrong,
             false);                                                                       /* absolute, wrong */
    char path[1024];
    snprintf(path, sizeof path, "%s/items.jsonl", dir);
    test_write_file(path, jsonl, strlen(jsonl));

    char args[4096], out[8192], err[8192];
    snprintf(args, sizeof args, "--vqa '%s' --model '%s'", path, model_dir());
    int rc = vlmeval(args, out, sizeof out, err, sizeof err);
    if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
    /* stdout is the table alone: header, rule, three types in first-seen order, all */
    CHECK_EQ(count_lines(out), 6);
    CHECK(starts_with(out, "| type | items | correct | accuracy % |\n|---|---|---|---|\n| color |"));
    CHECK(strstr(out, "| color |") < strstr(out, "| shape |") && strstr(out, "| shape |") < strstr(out, "| count |") &&
          strstr(out, "| count |") < strstr(out, "| all |"));
    CHECK(strcmp(row(out, "color"), "2,1,50.0") == 0);
    CHECK(strcmp(row(out, "shape"), "1,1,100.0") == 0);
    CHECK(strcmp(row(out, "count"), "1,0,0.0") == 0);
    CHECK(strcmp(row(out, "all"), "4,2,50.0") == 0);
    if (test_verbose()) fprintf(stderr, "%s", out);

    /* --limit: the first items only */
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --limit 2", path, model_dir());
    CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 0);
    CHECK_EQ(count_lines(out), 5);
    CHECK(strcmp(row(out, "color"), "1,1,100.0") == 0 && strcmp(row(out, "shape"), "1,1,100.0") == 0);
    CHECK(row(out, "count")[0] == 0 && strcmp(row(out, "all"), "2,2,100.0") == 0);

    /* --max-new 0: every answer is empty, and no expected answer is */
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --max-new 0", path, model_dir());
    CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 0);
    CHECK(strcmp(row(out, "all"), "4,0,0.0") == 0);

    /* --ref with the same model: same scores, zero KL, full agreement, identical answers */
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --ref '%s'", path, model_dir(), model_dir());
    rc = vlmeval(args, out, sizeof out, err, sizeof err);
    if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
    CHECK(starts_with(out, "| type | items | correct | accuracy % | ref correct | ref accuracy % | mean KL | "
                           "top-1 agree % | same answer % |\n|---|---|---|---|---|---|---|---|---|\n| color |"));
    CHECK(strcmp(row(out, "color"), "2,1,50.0,1,50.0,0.000000,100.0,100.0") == 0);
    CHECK(strcmp(row(out, "all"), "4,2,50.0,2,50.0,0.000000,100.0,100.0") == 0);
    CHECK(strstr(err, "error") == NULL);

    /* --answers: one object per item, in order, with the line it came from, vlmrun's answer (trimmed) as "got" and
     * the verdict the table counted; REF's answer too with --ref; the file appears whole and no temp file stays */
    char ans_path[1024];
    snprintf(ans_path, sizeof ans_path, "%s/answers.jsonl", dir);
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --ref '%s' --answers '%s'", path, model_dir(), model_dir(),
             ans_path);
    rc = vlmeval(args, out, sizeof out, err, sizeof err);
    if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
    size_t alen = 0;
    char *ans = test_read_file(ans_path, &alen);
    if (CHECK(ans != NULL) && CHECK_EQ(count_lines(ans), 4)) {
        a1[n1 - 1] = 0, a2[strcspn(a2, "\n")] = 0; /* vlmrun's newline is not part of the answer */
        const int want_line[4] = {1, 2, 4, 5};
        const char *want_type[4] = {"color", "shape", "color", "count"}, *want_got[4] = {a1, a2, a1, a2};
        const bool want_ok[4] = {true, true, false, false};
        char *save = NULL;
        int k = 0;
        for (char *l = strtok_r(ans, "\n", &save); l && k < 4; l = strtok_r(NULL, "\n", &save), k++) {
            cJSON *o = cJSON_Parse(l);
            if (!CHECK(o != NULL)) continue;
            const cJSON *got = cJSON_GetObjectItemCaseSensitive(o, "got"),
                        *rgot = cJSON_GetObjectItemCaseSensitive(o, "ref_got"),
                        *type = cJSON_GetObjectItemCaseSensitive(o, "type");
            CHECK_EQ((int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "line")), want_line[k]);
            CHECK(cJSON_IsString(type) && strcmp(type->valuestring, want_type[k]) == 0);
            CHECK(cJSON_IsString(got) && strcmp(got->valuestring, want_got[k]) == 0);
            CHECK(cJSON_IsString(rgot) && strcmp(rgot->valuestring, want_got[k]) == 0);
            CHECK(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(o, "ok")) &&
                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ok")) == want_ok[k]);
            CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ref_ok")) == want_ok[k]);
            cJSON_Delete(o);
        }
    }
    free(ans);
    /* an unwritable OUT: one error line naming it, exit 1, before any model loads */
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --answers '%s/no_such_dir/a.jsonl'", path, model_dir(), dir);
    CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 1);
    CHECK(one_error_line(err) && strstr(err, "no_such_dir/a.jsonl") != NULL);
    /* a failure after OUT was opened leaves neither OUT nor its temp file: an empty image file exists (the JSONL
     * check passes it) but fails to decode when its item is asked, after one good item was written */
    snprintf(cmd, sizeof cmd, "rm -f '%s' && : >'%s/img/empty.png'", ans_path, dir);
    if (CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0)) {
        char jl2[4096] = "", path2[1024];
        add_line(jl2, sizeof jl2, "img/single_40x50.png", "shape", q2, a2, false);
        add_line(jl2, sizeof jl2, "img/empty.png", "shape", q2, a2, false);
        snprintf(path2, sizeof path2, "%s/gone.jsonl", dir);
        test_write_file(path2, jl2, strlen(jl2));
        snprintf(args, sizeof args, "--vqa '%s' --model '%s' --answers '%s'", path2, model_dir(), ans_path);
        CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 1);
        snprintf(cmd, sizeof cmd, "test -z \"$(ls '%s' | grep answers)\"", dir);
        CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    }
done:
    free(a1);
    free(a2);
}

/* Writes text as dir/name and runs --vqa on it; checks exit 1 and one error line holding name and needle. */
/* A scene's questions are consecutive items, and vlmeval encodes their image once: several questions on one image, a
 * switch to another image and back must each still get vlmrun's answer for that image and question (a stale image
 * would give another image's answer, or a token-count error). */
TEST(vqa_consecutive_items_share_the_image) {
    if (!model_dir()[0]) return;
    const char *img[2] = {test_path("tests/data/images/unpad_70x150.png"),
                          test_path("tests/data/images/single_40x50.png")};
    const char *q[2] = {"What color is the square?", "How many shapes?"};
    char *want[2][2] = {{NULL, NULL}, {NULL, NULL}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            size_t n = 0;
            want[i][j] = vlmrun_answer(img[i], q[j], &n);
            if (!want[i][j]) goto done;
            want[i][j][strcspn(want[i][j], "\n")] = 0;
        }
    /* the two images differ in answers somewhere, or the check could not see a stale image */
    if (!CHECK(strcmp(want[0][0], want[1][0]) != 0 || strcmp(want[0][1], want[1][1]) != 0)) goto done;
    const int seq[6][2] = {{0, 0}, {0, 1}, {0, 0}, {1, 1}, {1, 0}, {0, 1}};
    char jsonl[8192] = "", path[1024], ans_path[1024], args[4096], out[8192], err[8192];
    for (int k = 0; k < 6; k++) add_line(jsonl, sizeof jsonl, img[seq[k][0]], "t", q[seq[k][1]], "x", false);
    snprintf(path, sizeof path, "%s/shared.jsonl", test_tmpdir());
    snprintf(ans_path, sizeof ans_path, "%s/shared_answers.jsonl", test_tmpdir());
    test_write_file(path, jsonl, strlen(jsonl));
    snprintf(args, sizeof args, "--vqa '%s' --model '%s' --ref '%s' --answers '%s'", path, model_dir(), model_dir(),
             ans_path);
    if (!CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 0)) fprintf(stderr, "  stderr: %s\n", err);
    size_t alen = 0;
    char *ans = test_read_file(ans_path, &alen), *save = NULL;
    int k = 0;
    if (CHECK(ans != NULL) && CHECK_EQ(count_lines(ans), 6))
        for (char *l = strtok_r(ans, "\n", &save); l && k < 6; l = strtok_r(NULL, "\n", &save), k++) {
            cJSON *o = cJSON_Parse(l);
            const cJSON *got = cJSON_GetObjectItemCaseSensitive(o, "got");
            const cJSON *rgot = cJSON_GetObjectItemCaseSensitive(o, "ref_got");
            const char *w = want[seq[k][0]][seq[k][1]];
            if (!CHECK(cJSON_IsString(got) && strcmp(got->valuestring, w) == 0 && cJSON_IsString(rgot) &&
                       strcmp(rgot->valuestring, w) == 0))
                fprintf(stderr, "  item %d: got '%s', vlmrun '%s'\n", k + 1, cJSON_IsString(got) ? got->valuestring : "",
                        w);
            cJSON_Delete(o);
        }
    free(ans);
done:
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) free(want[i][j]);
}

static void expect_bad_n(const char *dir, const char *name, const char *text, size_t len, const char *needle) {
    char path[1024], args[4096], out[4096], err[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    test_write_file(path, text, len);
    snprintf(args, sizeof args, "--vqa '%s' --model '%s'", path, model_dir());
    int rc = vlmeval(args, out, sizeof out, err, sizeof err);
    bool ok = CHECK_EQ(rc, 1);
    ok &= CHECK(one_error_line(err));
    ok &= CHECK(strstr(err, name) != NULL);
    if (needle) ok &= CHECK(strstr(err, needle) != NULL);
    ok &= CHECK(out[0] == 0 && strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error") == NULL);
    if (!ok) fprintf(stderr, "  %s: want '%s'; stderr: %s\n", name, needle ? needle : "", err);
}

static void expect_bad(const char *dir, const char *name, const char *text, const char *needle) {
    expect_bad_n(dir, name, text, strlen(text), needle);
}

TEST(vqa_bad_input_names_file_and_line) {
    if (!model_dir()[0]) return;
    const char *dir = test_tmpdir();
    char good[2048], img[1100];
    snprintf(img, sizeof img, "%s", test_path("tests/data/images/odd_122x85.png"));
    snprintf(good, sizeof good, "{\"file\": \"%s\", \"type\": \"color\", \"q\": \"What color?\", \"a\": \"red\"}\n",
             img);
    char text[8192];
    snprintf(text, sizeof text, "%s%s{\"file\": \"x.png\", \"q\": \n%s", good, good, good);
    expect_bad(dir, "malformed.jsonl", text, "line 3");
    snprintf(text, sizeof text, "%s\n{\"file\": \"%s\", \"type\": \"t\", \"q\": 5, \"a\": \"x\"}\n", good, img);
    expect_bad(dir, "number_q.jsonl", text, "line 3: key \"q\" is not a string");
    snprintf(text, sizeof text, "{\"file\": \"%s\", \"type\": \"t\", \"q\": \"x\"}\n", img);
    expect_bad(dir, "no_answer.jsonl", text, "line 1: missing key \"a\"");
    snprintf(text, sizeof text, "%s[\"%s\", \"t\", \"q\", \"a\"]\n", good, img);
    expect_bad(dir, "array.jsonl", text, "line 2: not a JSON object");
    snprintf(text, sizeof text, "%.*s x\n", (int)strcspn(good, "\n"), good);
    expect_bad(dir, "trailing.jsonl", text, "line 1: bytes after");
    snprintf(text, sizeof text, "%s{\"file\": \"img/nope.png\", \"type\": \"t\", \"q\": \"x\", \"a\": \"y\"}\n", good);
    expect_bad(dir, "missing_image.jsonl", text, "line 2: image");
    expect_bad(dir, "missing_image.jsonl", text, "nope.png");
    expect_bad(dir, "empty.jsonl", "", "no items");
    expect_bad(dir, "blank.jsonl", "\n  \n\n", "no items");
    expect_bad_n(dir, "nul.jsonl", "{\"file\": \"a\0b\"}\n", 15, "line 1: not valid JSON");

    char args[4096], out[4096], err[4096];
    /* a model directory without a tokenizer cannot be asked questions */
    snprintf(args, sizeof args, "--vqa '%s/malformed.jsonl' --model '%s' --limit 2", dir,
             test_path("tests/data/models/tiny_q"));
    CHECK_EQ(vlmeval(args, out, sizeof out, err, sizeof err), 1);
    CHECK(one_error_line(err) && strstr(err, "has no tokenizer") != NULL);
    /* usage errors: exit 2 */
    const char *usage[] = {"--vqa x.jsonl --cases tests/data/eval_cases.txt --model m",
                           "--vqa x.jsonl --model m --greedy 4", "--vqa x.jsonl", "--vqa x.jsonl --model m --limit 0",
                           "--vqa x.jsonl --model m --max-new -1", "--ref a --model m --limit 3", "--vqa"};
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        if (!CHECK_EQ(vlmeval(usage[i], out, sizeof out, err, sizeof err), 2)) fprintf(stderr, "  %s\n", usage[i]);
        CHECK(out[0] == 0);
    }
}
