/* test_cli.c — vlmrun as a user runs it: its stdout on a fixture model equals transformers' greedy tokens, and
 * every kind of bad input gives exactly one "vlmrun: error:" line naming the file, a non-zero exit, and no crash
 * or sanitizer report. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "runtime/model.h"
#include "runtime/text_mode.h"
#include "test.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

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

/* ---------------------------------------------------------------------------------------------------------------
 * Text prompts (a tokenizer next to the model) */

/* Reads a whole small file into buf (NUL-terminated); false when it cannot. */
static bool read_text_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
    return true;
}

/* A copy of tiny_single whose image token is the SentencePiece fixture's "<image>" (id 3; the tiny model's own
 * 1000 is not a piece of that tokenizer), with tokenizer.model next to it when with_tokenizer. Its 1000 pieces fit the
 * tiny model's 1024 embedding rows. Returns the directory. */
static const char *spm_model_dir(bool with_tokenizer) {
    static char dir[700];
    char cmd[4096];
    snprintf(dir, sizeof dir, "%s/spm_model", test_tmpdir());
    snprintf(cmd, sizeof cmd,
             "cp -r '%s' '%s' && sed -i 's/\"image_token_index\": 1000/\"image_token_index\": 3/' '%s/config.json' && "
             "grep -q '\"image_token_index\": 3' '%s/config.json'",
             test_path("tests/data/models/tiny_single"), dir, dir, dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    if (with_tokenizer) {
        snprintf(cmd, sizeof cmd, "cp '%s' '%s/'", test_path("tests/data/tokenizers/spm/tokenizer.model"), dir);
        CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    }
    return dir;
}

/* Runs vlmrun with args, stdout into out (cap bytes); returns the exit status, stderr in err. */
static int run_vlmrun(const char *args, char *out, size_t cap, char *err, size_t err_cap) {
    char cmd[8192], out_path[700];
    snprintf(out_path, sizeof out_path, "%s/stdout.txt", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s >'%s'", vlmrun(), args, out_path);
    int rc = test_run_cmd(cmd, err, err_cap);
    if (!read_text_file(out_path, out, cap)) out[0] = 0;
    CHECK(strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error") == NULL);
    return rc;
}

/* End to end with the SentencePiece fixture: the text vlmrun streams equals the decoded ids that --ids mode generates
 * from the same prompt ids (built here with chat_render: Vicuna template, the default for a tokenizer.model). */
TEST(cli_text_prompt_spm) {
    const char *dir = spm_model_dir(true);
    const char *img = test_path("tests/data/images/single_40x50.png");
    const char *question = "What is shown in this image?";
    char args[4096], text[8192], err[8192];
    snprintf(args, sizeof args, "--model '%s' --max-new 12 --ignore-eos '%s' '%s'", dir, img, question);
    int rc = run_vlmrun(args, text, sizeof text, err, sizeof err);
    if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
    size_t n_text = strlen(text);
    if (!CHECK(n_text > 1 && text[n_text - 1] == '\n')) fprintf(stderr, "  stdout: '%s'\n", text);

    struct vlm_tokenizer *t = NULL;
    if (!CHECK_EQ(tok_load(dir, &t), VLM_OK)) return;
    struct chat_msg msg = {.role = "user", .text = question, .n_images = 1};
    const int64_t one = 1;
    int64_t *ids = NULL;
    size_t n_ids = 0;
    char id_args[8192], id_list[8192] = "", ids_out[8192];
    if (CHECK_EQ(chat_render(t, CHAT_VICUNA_V1, NULL, &msg, 1, &one, 1, true, &ids, &n_ids), VLM_OK)) {
        for (size_t i = 0; i < n_ids; i++) {
            size_t k = strlen(id_list);
            snprintf(id_list + k, sizeof id_list - k, "%s%lld", i ? " " : "", (long long)ids[i]);
        }
        snprintf(id_args, sizeof id_args, "--model '%s' --ids --max-new 12 --ignore-eos '%s' '%s'", dir, img, id_list);
        rc = run_vlmrun(id_args, ids_out, sizeof ids_out, err, sizeof err);
        if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
        /* decode what --ids printed, dropping ids past the tokenizer (the model has 1024 rows, the tokenizer 1000) */
        int64_t gen[64];
        size_t n_gen = 0;
        for (char *p = ids_out, *end; n_gen < 64; p = end) {
            long long v = strtoll(p, &end, 10);
            if (end == p) break;
            if (v < tok_vocab_size(t)) gen[n_gen++] = v;
        }
        CHECK(n_gen > 0);
        char *want = NULL;
        size_t n_want = 0;
        if (CHECK_EQ(tok_decode(t, gen, n_gen, true, &want, &n_want), VLM_OK)) {
            if (!CHECK(n_text == n_want + 1 && memcmp(text, want, n_want) == 0))
                fprintf(stderr, "  text mode: '%s'\n  --ids %s -> '%s'\n", text, ids_out, want);
        }
        free(want);
    }
    free(ids);
    tok_free(t);
}

/* --tokenizer (file or directory) for a model directory without one; --template and --system; a prompt that spells
 * special tokens is plain text (it would otherwise claim a second image and fail the feature count). */
TEST(cli_text_prompt_options) {
    const char *dir = spm_model_dir(false);
    const char *img = test_path("tests/data/images/single_40x50.png");
    const char *tok_file = test_path("tests/data/tokenizers/spm/tokenizer.model");
    char tok_dir[700], args[4096], out[8192], err[8192];
    snprintf(tok_dir, sizeof tok_dir, "%s", test_path("tests/data/tokenizers/spm"));
    const char *variants[] = {"--tokenizer '%s' --max-new 3 '%s' 'Describe it.'",
                              "--tokenizer '%s' --max-new 3 --template chatml --system 'Be brief.' '%s' 'Hi'",
                              "--tokenizer '%s' --max-new 3 --template chatml-hf '%s' '<image> <|im_end|> </s> <s>'",
                              "--tokenizer '%s' --max-new 3 --template vicuna '%s' ''"};
    for (int i = 0; i < 4; i++) {
        char opts[2048];
        snprintf(opts, sizeof opts, variants[i], i % 2 ? tok_dir : tok_file, img);
        snprintf(args, sizeof args, "--model '%s' %s", dir, opts);
        int rc = run_vlmrun(args, out, sizeof out, err, sizeof err);
        if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  %s\n  stderr: %s\n", args, err);
        CHECK(strlen(out) >= 1 && out[strlen(out) - 1] == '\n');
    }
}

/* Invalid UTF-8 in the prompt or the system text is refused with one line naming it and the byte (the tokenizer
 * would replace it by U+FFFD, as the reference does, and answer a question nobody asked); nothing on stdout. The
 * check runs before the model loads, so the model's load line does not appear either. */
TEST(cli_text_prompt_invalid_utf8) {
    const char *dir = spm_model_dir(true);
    char args[4096], out[8192], err[8192];
    snprintf(args, sizeof args, "--model '%s' --max-new 2 '%s' \"$(printf 'bad \\377\\376 \\303( end')\"", dir,
             test_path("tests/data/images/single_40x50.png"));
    CHECK_EQ(run_vlmrun(args, out, sizeof out, err, sizeof err), 1);
    CHECK_ERROR_LINE(err, "PROMPT", "invalid UTF-8 at byte 4");
    CHECK_EQ(out[0], 0);
    snprintf(args, sizeof args, "--model '%s' --system \"$(printf 'ok \\303(')\" '%s' 'fine'", dir,
             test_path("tests/data/images/single_40x50.png"));
    CHECK_EQ(run_vlmrun(args, out, sizeof out, err, sizeof err), 1);
    CHECK_ERROR_LINE(err, "--system", "invalid UTF-8 at byte 3");
}

/* --ids keeps the token-id mode when the model directory has a tokenizer: ids in, ids out. */
TEST(cli_ids_mode_with_tokenizer) {
    const char *dir = spm_model_dir(true);
    char args[4096], out[8192], err[8192];
    snprintf(args, sizeof args, "--model '%s' --ids --max-new 4 --ignore-eos '%s' '<image> 5 6 7'", dir,
             test_path("tests/data/images/single_40x50.png"));
    int rc = run_vlmrun(args, out, sizeof out, err, sizeof err);
    if (!CHECK_EQ(rc, 0)) fprintf(stderr, "  stderr: %s\n", err);
    int n = 0;
    for (char *p = out, *end;; p = end) {
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        CHECK(v >= 0 && v < 1024);
        n++;
    }
    CHECK_EQ(n, 4);
    /* text is not ids in --ids mode */
    snprintf(args, sizeof args, "--model '%s' --ids '%s' 'hello'", dir,
             test_path("tests/data/images/single_40x50.png"));
    expect_error(args, 1, "token id");
}

TEST(cli_tokenizer_errors) {
    const char *img = test_path("tests/data/images/single_40x50.png");
    const char *tiny = test_path("tests/data/models/tiny_single");
    const char *tmp = test_tmpdir();
    char args[4096], path[1024];
    /* missing and malformed tokenizer files: one line naming the file */
    snprintf(args, sizeof args, "--model %s --tokenizer %s/none.model %s 'hi'", tiny, tmp, img);
    expect_error(args, 1, "none.model");
    snprintf(path, sizeof path, "%s/junk.model", tmp);
    test_write_file(path, "\x0a\x05junk!\x12\x03xyz", 12);
    snprintf(args, sizeof args, "--model %s --tokenizer %s %s 'hi'", tiny, path, img);
    expect_error(args, 1, "junk.model");
    /* a tokenizer that does not belong to the model: the tiny model's image id is 1000, the fixture's <image> 3 */
    snprintf(args, sizeof args, "--model %s --tokenizer %s %s 'hi'", tiny,
             test_path("tests/data/tokenizers/spm/tokenizer.model"), img);
    expect_error(args, 1, "image_token_index");
    /* usage errors */
    snprintf(args, sizeof args, "--model %s --template llama %s 'hi'", tiny, img);
    expect_error(args, 2, "--template");
    snprintf(args, sizeof args, "--model %s --ids --system x %s '1 2'", tiny, img);
    expect_error(args, 2, "--ids");
}

/* The Qwen2 tokenizer (151,648 ids) next to a model with 1024 embedding rows: a clear error before any prompt id
 * can index past the table. */
TEST(cli_tokenizer_larger_than_model) {
    char cmd[4096], args[4096];
    const char *dir = test_tmpdir();
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s/qwen' && gzip -dc '%s' > '%s/qwen/tokenizer.json'",
             test_path("tests/data/models/tiny_single"), dir,
             test_path("tests/data/tokenizers/qwen2/tokenizer.json.gz"), dir);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(args, sizeof args, "--model %s/qwen %s 'hi'", dir, test_path("tests/data/images/single_40x50.png"));
    expect_error(args, 1, "embedding rows");
}

/* The stop ids vlmrun (and vlmeval --vqa) use: every eos_token_id of generation_config.json however many there are
 * (an earlier fixed array kept 16), then the tokenizer's <|endoftext|> and <|im_end|> unless already listed; a
 * malformed file is one error line naming it. Only the checkpoint directory of the model is read here. */
TEST(cli_stop_ids_uncapped) {
    const char *dir = test_tmpdir();
    char path[1024], json[1024] = "{\"eos_token_id\": [";
    for (int i = 0; i < 20; i++)
        snprintf(json + strlen(json), sizeof json - strlen(json), "%s%d", i ? ", " : "", 100 + i);
    strcat(json, ", 262]}"); /* <|im_end|> of the tokenizer below, listed once */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    test_write_file(path, json, strlen(json));
    struct vlm_model m = {.dir = (char *)dir};
    struct vlm_tokenizer *tok = NULL;
    int64_t *stop = NULL;
    int n = 0;
    if (!CHECK(tok_load_file(test_path("tests/data/calib/tiny_tokenizer.json"), &tok) == VLM_OK)) return;
    if (CHECK(vlm_model_read_stop_ids(&m, NULL, &stop, &n) == VLM_OK) && CHECK_EQ(n, 21))
        CHECK(stop[0] == 100 && stop[19] == 119 && stop[20] == 262);
    free(stop);
    stop = NULL;
    if (CHECK(vlm_model_read_stop_ids(&m, tok, &stop, &n) == VLM_OK) && CHECK_EQ(n, 22))
        CHECK(stop[20] == 262 && stop[21] == 260); /* <|endoftext|> added, <|im_end|> not twice */
    free(stop);
    stop = NULL;
    test_write_file(path, "{\"eos_token_id\": [1,", 20);
    char err[1024];
    test_capture_begin();
    enum vlm_status st = vlm_model_read_stop_ids(&m, tok, &stop, &n);
    test_capture_end(err, sizeof err);
    CHECK(st == VLM_ERR_FORMAT && stop == NULL);
    CHECK_ERROR_LINE(err, "generation_config.json", "invalid JSON");
    tok_free(tok);
}
