/* test_cli.c — vlmrun as a user runs it: its stdout on a fixture model equals transformers' greedy tokens, and
 * every kind of bad input gives exactly one "vlmrun: error:" line naming the file, a non-zero exit, and no crash
 * or sanitizer report. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "test.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

static const char *vlmrun(void) { return VLM_BUILD_DIR "/vlmrun"; }

/* Runs vlmrun with args; checks the exit status and that stderr holds one error line containing `needle`. */
static void expect_error(const char *args, int want_rc, const char *needle) {
    char cmd[8192], err[8192];
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null", vlmrun(), args);
    int rc = test_run_cmd(cmd, err, sizeof err);
    if (!CHECK_EQ(rc, want_rc)) fprintf(stderr, "  command: %s\n  stderr: %s\n", cmd, err);
    int n_err = 0;
    for (const char *p = err; (p = strstr(p, "vlmrun: error:")); p++) n_err++;
    if (want_rc == 1 && !CHECK_EQ(n_err, 1)) fprintf(stderr, "  stderr: %s\n", err);
    if (needle && !CHECK(strstr(err, needle) != NULL)) fprintf(stderr, "  want '%s' in stderr: %s\n", needle, err);
    CHECK(strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error") == NULL && strstr(err, "assertion") == NULL);
}



static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v; }

/* A valid-looking PNG whose IHDR claims w x h (correct CRCs, no image data). */
static void write_png_header(const char *path, uint32_t w, uint32_t h) {
    uint8_t b[8 + 25 + 12] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t *ihdr = b + 8;
    put_be32(ihdr, 13);
    memcpy(ihdr + 4, "IHDR", 4);
    put_be32(ihdr + 8, w);
    put_be32(ihdr + 12, h);
    ihdr[16] = 8, ihdr[17] = 2, ihdr[18] = 0, ihdr[19] = 0, ihdr[20] = 0;
    put_be32(ihdr + 21, test_crc32(ihdr + 4, 17));
    uint8_t *iend = ihdr + 25;
    put_be32(iend, 0);
    memcpy(iend + 4, "IEND", 4);
    put_be32(iend + 8, test_crc32(iend + 4, 4));
    test_write_file(path, b, sizeof b);
}

TEST(cli_greedy_matches_transformers) {
    struct golden_file g;
    if (golden_load("tests/golden/unpad_png.bin", &g) != 0) return;
    const struct golden_tensor *prompt = golden_get(&g, "prompt_ids", GOLDEN_I64);
    const struct golden_tensor *greedy = golden_get(&g, "greedy", GOLDEN_I64);
    if (prompt && greedy) {
        char ids[2048] = "", want[2048] = "", cmd[4096], out_path[700];
        for (int64_t i = 0; i < prompt->n; i++) {
            int64_t v = ((const int64_t *)prompt->data)[i];
            char tok[32];
            if (v == 1000) snprintf(tok, sizeof tok, "%s<image>", i ? " " : ""); /* the tiny models' image id */
            else snprintf(tok, sizeof tok, "%s%lld", i ? " " : "", (long long)v);
            strcat(ids, tok);
        }
        for (int64_t i = 0; i < greedy->n; i++) {
            char tok[32];
            snprintf(tok, sizeof tok, "%s%lld", i ? " " : "", (long long)((const int64_t *)greedy->data)[i]);
            strcat(want, tok);
        }
        strcat(want, "\n");
        snprintf(out_path, sizeof out_path, "%s/out.txt", test_tmpdir());
        snprintf(cmd, sizeof cmd, "%s --model %s --max-new %lld --ignore-eos %s '%s' >'%s'", vlmrun(),
                 test_path("tests/data/models/tiny_unpad"), (long long)greedy->n,
                 test_path("tests/data/images/unpad_70x150.png"), ids, out_path);
        char err[4096];
        int rc = test_run_cmd(cmd, err, sizeof err);
        if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
        char got[2048] = "";
        FILE *f = fopen(out_path, "rb");
        if (CHECK(f != NULL)) {
            size_t n = fread(got, 1, sizeof got - 1, f);
            got[n] = 0;
            fclose(f);
        }
        if (!CHECK(strcmp(got, want) == 0)) fprintf(stderr, "  got:  %s  want: %s", got, want);
    }
    golden_free(&g);
}

TEST(cli_usage_errors) {
    expect_error("", 2, "usage");
    expect_error("--bogus", 2, "unknown option");
    expect_error("--model x --max-new -3 a b", 2, "--max-new");
    char out[256];
    int rc = test_run_cmd(VLM_BUILD_DIR "/vlmrun --help >/dev/null", out, sizeof out);
    CHECK_EQ(rc, 0);
}

TEST(cli_bad_images) {
    const char *dir = test_tmpdir();
    char args[4096], path[700];
    const char *model = test_path("tests/data/models/tiny_single");
    /* missing file */
    snprintf(args, sizeof args, "--model %s %s/nope.png '1 2'", model, dir);
    expect_error(args, 1, "nope.png");
    /* not an image */
    snprintf(path, sizeof path, "%s/text.png", dir);
    test_write_file(path, "hello, this is text\n", 20);
    snprintf(args, sizeof args, "--model %s %s '1 2'", model, path);
    expect_error(args, 1, "text.png");
    /* empty file */
    snprintf(path, sizeof path, "%s/empty.jpg", dir);
    test_write_file(path, "", 0);
    snprintf(args, sizeof args, "--model %s %s '1 2'", model, path);
    expect_error(args, 1, "empty.jpg");
    /* header claiming 100000 x 100000 pixels: rejected before decoding */
    snprintf(path, sizeof path, "%s/huge.png", dir);
    write_png_header(path, 100000, 100000);
    snprintf(args, sizeof args, "--model %s %s '1 2'", model, path);
    expect_error(args, 1, "huge.png");
    /* a PNG cut short after its header */
    snprintf(path, sizeof path, "%s/cut.png", dir);
    write_png_header(path, 64, 64);
    snprintf(args, sizeof args, "--model %s %s '1 2'", model, path);
    expect_error(args, 1, "cut.png");
}

TEST(cli_bad_models) {
    const char *dir = test_tmpdir();
    char args[4096], cmd[4096];
    const char *img = test_path("tests/data/images/single_40x50.png");
    /* missing model directory */
    snprintf(args, sizeof args, "--model %s/absent %s '1 2'", dir, img);
    expect_error(args, 1, "absent");
    /* truncated safetensors */
    snprintf(cmd, sizeof cmd, "cp -r %s %s/trunc && truncate -s -100 %s/trunc/model.safetensors",
             test_path("tests/data/models/tiny_single"), dir, dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(args, sizeof args, "--model %s/trunc %s '1 2'", dir, img);
    expect_error(args, 1, "model.safetensors");
    /* header length that points past the end of the file */
    snprintf(cmd, sizeof cmd,
             "cp -r %s %s/hdr && printf '\\377\\377\\377\\000\\000\\000\\000\\000' | "
             "dd of=%s/hdr/model.safetensors bs=1 count=8 conv=notrunc status=none",
             test_path("tests/data/models/tiny_single"), dir, dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(args, sizeof args, "--model %s/hdr %s '1 2'", dir, img);
    expect_error(args, 1, "model.safetensors");
    /* absurd config value */
    snprintf(cmd, sizeof cmd,
             "cp -r %s %s/cfg && sed -i 's/\"hidden_size\": 64/\"hidden_size\": -5/' %s/cfg/config.json",
             test_path("tests/data/models/tiny_single"), dir, dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(args, sizeof args, "--model %s/cfg %s '1 2'", dir, img);
    expect_error(args, 1, "config.json");
    /* config that is not JSON */
    snprintf(cmd, sizeof cmd, "cp -r %s %s/json && echo '{oops' > %s/json/config.json",
             test_path("tests/data/models/tiny_single"), dir, dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(args, sizeof args, "--model %s/json %s '1 2'", dir, img);
    expect_error(args, 1, "config.json");
}

TEST(cli_bad_prompts) {
    char args[4096];
    const char *model = test_path("tests/data/models/tiny_single");
    const char *img = test_path("tests/data/images/single_40x50.png");
    snprintf(args, sizeof args, "--model %s %s 'hello world'", model, img);
    expect_error(args, 1, "token id");
    snprintf(args, sizeof args, "--model %s %s '5 99999'", model, img);
    expect_error(args, 1, "99999");
    snprintf(args, sizeof args, "--model %s %s '<image> 5 <image>'", model, img);
    expect_error(args, 1, "image placeholders");
}

/* --info on configs with the published dimensions: the counts are the spec's derived figures
 * (shared/spec/llava-onevision.md §2.1), not values this code produced. */
TEST(cli_info_published_configs) {
    static const struct {
        const char *dir, *linear, *kv;
    } k[] = {
        {"tests/data/configs/0.5b", "text linear 357.8 M", "kv cache 12288 B/token"},
        {"tests/data/configs/7b", "text linear 6525.3 M", "kv cache 57344 B/token"},
        {"tests/data/configs/72b", "text linear 70212.6 M", "kv cache 327680 B/token"},
    };
    for (int i = 0; i < 3; i++) {
        char cmd[2048], out_path[700], out[4096] = "";
        snprintf(out_path, sizeof out_path, "%s/info.txt", test_tmpdir());
        snprintf(cmd, sizeof cmd, "%s --model %s --info >'%s'", vlmrun(), test_path(k[i].dir), out_path);
        CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
        FILE *f = fopen(out_path, "rb");
        if (!CHECK(f != NULL)) continue;
        size_t n = fread(out, 1, sizeof out - 1, f);
        out[n] = 0;
        fclose(f);
        if (!CHECK(strstr(out, k[i].linear) != NULL) || !CHECK(strstr(out, k[i].kv) != NULL))
            fprintf(stderr, "  %s --info printed:\n%s", k[i].dir, out);
    }
}
