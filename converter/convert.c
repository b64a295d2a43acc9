/* convert.c — the vlmconvert CLI: vlmconvert --model HF_DIR --out model.mbq [options], or
 * vlmconvert --random 0.5b|7b|72b|CONFIG.json --out model.mbq [options] (random weights, for benchmarks).
 * Exit status: 0 written, 1 failed (one line on stderr, no output file), 2 usage error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "converter/conv.h"
#include "runtime/util.h"

static void usage(FILE *f) {
    fputs("usage: vlmconvert --model HF_DIR --out FILE.mbq [options]\n"
          "       vlmconvert --random 0.5b|7b|72b|CONFIG.json --out FILE.mbq [--wbits B] [--abits 8]\n"
          "                  [--method f16|f32] [--layers N] [--vision-layers N] [--seed S] [options]\n"
          "Converts a Hugging Face LLaVA-OneVision checkpoint into one .mbq file that vlmrun runs: config,\n"
          "preprocessor settings, tokenizer and every tensor in one file, the decoder's linear layers quantized.\n"
          "  --model DIR      the checkpoint directory (config.json, preprocessor_config.json, *.safetensors,\n"
          "                   tokenizer.json or tokenizer.model)\n"
          "  --random ARCH    instead of --model: a model with RANDOM weights, for benchmarks at any size: the\n"
          "                   published 0.5b, 7b or 72b dimensions, or an HF config.json (with the\n"
          "                   preprocessor_config.json beside it, if any); weights generated directly in the\n"
          "                   formats the options select (default --wbits 4), no tokenizer; quant.method \"random\"\n"
          "                   in the header. --seed S (default 42) decides every value: same seed, same bytes\n"
          "  --layers N       with --random: keep only the first N decoder layers (the config says N)\n"
          "  --vision-layers N  with --random: keep only the first N vision-tower layers\n"
          "  --out FILE       the .mbq to write; written to a temporary file and renamed, so a failed run never\n"
          "                   leaves a partial file (an existing FILE is replaced only on success)\n"
          "  --method M       f32: no quantization, float32 everywhere (bit-exact with the checkpoint's float32 run)\n"
          "                   fp16: no quantization, 16-bit floats (see --dtype)\n"
          "                   rtn: round-to-nearest quantization of the decoder linears (q, k, v, o, gate, up,\n"
          "                   down), no calibration (default)\n"
          "                   awq: per-channel scales searched on calibration data (20 alphas per group, L1 error\n"
          "                   of the block output over all tokens), folded into the model, then quantized\n"
          "                   mbq: as awq, but the error on vision tokens is weighted by each layer's ratio of\n"
          "                   gradient magnitudes (vision / answer tokens) from one backward pass per sample\n"
          "                   smoothquant: fixed alpha 0.5 scales from activation and weight maxima (W4A8)\n"
          "  --calib FILE     calibration data for awq / mbq / smoothquant: a JSON list of {\"image\": path\n"
          "                   relative to FILE, \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\n...\"},\n"
          "                   {\"from\": \"gpt\", \"value\": \"...\"}]} (ShareGPT4V / LLaVA form); the model\n"
          "                   directory must hold its tokenizer\n"
          "  --n-samples N    calibration samples drawn from FILE (default 128; fewer available is an error)\n"
          "  --seed S         the draw's seed (default 42): the same seed gives the same file\n"
          "  --wbits B        3 or 4: weight bits of rtn (default 4); asymmetric, one fp16 scale and integer zero\n"
          "                   per group of --group input columns\n"
          "  --abits A        16 (default) or 8: with 8, W4A8 — 4-bit symmetric per-output-channel weights and 8-bit\n"
          "                   per-token activations computed at run time (needs --wbits 4)\n"
          "  --group G        quantization group size along the input dimension; 128 (the only one defined)\n"
          "  --dtype T        auto (default: bf16 for a BF16 checkpoint, else f16), f16, bf16 or f32: storage of\n"
          "                   the vision tower, projector and (for --method fp16) the decoder linears\n"
          "  --embed T        embedding table: f16 (default; follows --dtype), bf16, f32 or q8r (int8 per row)\n"
          "  --head T         lm_head: same choices (default: as --embed); a head format other than the\n"
          "                   embedding's stores a separate head even for a tied model. q8r halves the head's\n"
          "                   bytes per decoded token (an extension beyond MBQ; report it separately)\n"
          "  --quiet          no progress or summary on stderr\n"
          "  -h, --help       show this help\n",
          f);
}

static int parse_fmt(const char *s, enum vlm_qformat *out) {
    if (strcmp(s, "f16") == 0 || strcmp(s, "fp16") == 0) *out = VLM_QF_F16;
    else if (strcmp(s, "bf16") == 0) *out = VLM_QF_BF16;
    else if (strcmp(s, "f32") == 0 || strcmp(s, "fp32") == 0) *out = VLM_QF_F32;
    else if (strcmp(s, "q8r") == 0 || strcmp(s, "int8") == 0) *out = VLM_QF_Q8R;
    else return -1;
    return 0;
}

/* "auto" storage: the checkpoint's 16-bit type when it has one, so no value changes range. path: its config.json
 * (f16 when it cannot be read). */
static enum vlm_qformat auto_dtype(const char *path) {
    char *buf = NULL;
    size_t len;
    enum vlm_qformat f = VLM_QF_F16;
    FILE *fp = fopen(path, "rb");
    if (!fp) return f;
    fclose(fp);
    if (vlm_file_read_all(path, 16u << 20, &buf, &len) != VLM_OK) return f;
    /* the dtype key ("torch_dtype" before transformers 5, "dtype" after) as it appears in the file */
    if (strstr(buf, "\"bfloat16\"")) f = VLM_QF_BF16;
    free(buf);
    return f;
}

int main(int argc, char **argv) {
    vlm_log_set_prog("vlmconvert");
    struct conv_options o = {.method = CONV_RTN, .wbits = 4, .abits = 16, .group = 128, .n_samples = 128, .seed = 42};
    const char *dtype = "auto", *embed = NULL, *head = NULL, *method = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--quiet") == 0) {
            o.quiet = true;
        } else if (has_val && strcmp(a, "--model") == 0) {
            o.model_dir = argv[++i];
        } else if (has_val && strcmp(a, "--out") == 0) {
            o.out_path = argv[++i];
        } else if (has_val && strcmp(a, "--method") == 0) {
            const char *m = method = argv[++i];
            if (strcmp(m, "f32") == 0) o.method = CONV_F32;
            else if (strcmp(m, "fp16") == 0 || strcmp(m, "f16") == 0) o.method = CONV_F16;
            else if (strcmp(m, "rtn") == 0) o.method = CONV_RTN;
            else if (strcmp(m, "awq") == 0) o.method = CONV_AWQ;
            else if (strcmp(m, "mbq") == 0) o.method = CONV_MBQ;
            else if (strcmp(m, "smoothquant") == 0) o.method = CONV_SMOOTHQUANT;
            else {
                fprintf(stderr, "vlmconvert: --method %s: expected f32, fp16, rtn, awq, smoothquant or mbq\n", m);
                return 2;
            }
        } else if (has_val && strcmp(a, "--random") == 0) {
            o.random = argv[++i];
        } else if (has_val && (strcmp(a, "--layers") == 0 || strcmp(a, "--vision-layers") == 0)) {
            char *end;
            long long v = strtoll(argv[++i], &end, 10);
            if (*end || end == argv[i] || v < 1 || v > 1000000) {
                fprintf(stderr, "vlmconvert: %s %s: expected a positive integer\n", a, argv[i]);
                return 2;
            }
            if (strcmp(a, "--layers") == 0) o.n_layers = v;
            else o.n_vision_layers = v;
        } else if (has_val && strcmp(a, "--calib") == 0) {
            o.calib_path = argv[++i];
        } else if (has_val && (strcmp(a, "--n-samples") == 0 || strcmp(a, "--seed") == 0)) {
            char *end;
            long long v = strtoll(argv[++i], &end, 10);
            if (*end || end == argv[i] || v < (strcmp(a, "--seed") == 0 ? 0 : 1)) {
                fprintf(stderr, "vlmconvert: %s %s: expected a %s integer\n", a, argv[i],
                        strcmp(a, "--seed") == 0 ? "non-negative" : "positive");
                return 2;
            }
            if (strcmp(a, "--seed") == 0) o.seed = (uint64_t)v;
            else o.n_samples = v;
        } else if (has_val && (strcmp(a, "--wbits") == 0 || strcmp(a, "--abits") == 0 ||
                               strcmp(a, "--group") == 0)) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i]) {
                fprintf(stderr, "vlmconvert: %s %s: not a number\n", a, argv[i]);
                return 2;
            }
            if (strcmp(a, "--wbits") == 0) o.wbits = (int)v;
            else if (strcmp(a, "--abits") == 0) o.abits = (int)v;
            else o.group = (int)v;
        } else if (has_val && strcmp(a, "--dtype") == 0) {
            dtype = argv[++i];
        } else if (has_val && strcmp(a, "--embed") == 0) {
            embed = argv[++i];
        } else if (has_val && strcmp(a, "--head") == 0) {
            head = argv[++i];
        } else {
            fprintf(stderr, "vlmconvert: unknown or incomplete option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (o.model_dir && o.random) {
        fprintf(stderr, "vlmconvert: --model and --random exclude each other\n");
        return 2;
    }
    if ((!o.model_dir && !o.random) || !o.out_path) {
        usage(stderr);
        return 2;
    }
    if (!o.random && (o.n_layers || o.n_vision_layers)) {
        fprintf(stderr, "vlmconvert: --layers and --vision-layers cut a --random model; a conversion keeps every "
                        "layer\n");
        return 2;
    }
    struct stat sb;
    cJSON *preset = o.random ? conv_random_preset(o.random) : NULL;
    const bool is_preset = preset != NULL;
    cJSON_Delete(preset);
    if (o.random && !is_preset && (stat(o.random, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        fprintf(stderr, "vlmconvert: --random %s: expected 0.5b, 7b, 72b or the path of a config.json\n", o.random);
        return 2;
    }
    if (o.random && (o.calib_path || (o.method != CONV_F32 && o.method != CONV_F16 && o.method != CONV_RTN))) {
        fprintf(stderr, "vlmconvert: --random writes f32, fp16 or quantized weights (--wbits / --abits): %s%s needs "
                        "a checkpoint\n", o.calib_path ? "--calib" : "--method ", o.calib_path ? "" : method);
        return 2;
    }
    if (o.wbits != 3 && o.wbits != 4) {
        fprintf(stderr, "vlmconvert: --wbits %d: expected 3 or 4\n", o.wbits);
        return 2;
    }
    if (o.abits != 16 && o.abits != 8) {
        fprintf(stderr, "vlmconvert: --abits %d: expected 16 or 8\n", o.abits);
        return 2;
    }
    if (o.abits == 8 && o.wbits != 4) {
        fprintf(stderr, "vlmconvert: --abits 8 is W4A8: it needs --wbits 4\n");
        return 2;
    }
    if (!o.random &&
        (o.method == CONV_AWQ || o.method == CONV_MBQ || o.method == CONV_SMOOTHQUANT) != (o.calib_path != NULL)) {
        fprintf(stderr, "vlmconvert: %s\n", o.calib_path ? "--calib is only for --method awq, mbq or smoothquant"
                                                          : "--method awq, mbq and smoothquant need --calib FILE");
        return 2;
    }
    if (o.method == CONV_SMOOTHQUANT && (o.abits != 8 || o.wbits != 4)) {
        fprintf(stderr, "vlmconvert: --method smoothquant is a W4A8 method: use --wbits 4 --abits 8\n");
        return 2;
    }
    char cfg_path[4096];
    if (strcmp(dtype, "auto") == 0) {
        o.float_fmt = VLM_QF_F16; /* also a preset's: the published checkpoints are fp16 */
        if (o.random && !is_preset) o.float_fmt = auto_dtype(o.random);
        else if (!o.random && vlm_path_join(cfg_path, sizeof cfg_path, o.model_dir, "config.json"))
            o.float_fmt = auto_dtype(cfg_path);
    } else if (parse_fmt(dtype, &o.float_fmt) != 0 || o.float_fmt == VLM_QF_Q8R) {
        fprintf(stderr, "vlmconvert: --dtype %s: expected auto, f16, bf16 or f32\n", dtype);
        return 2;
    }
    if (o.method == CONV_F32) o.float_fmt = VLM_QF_F32;
    o.embed_fmt = o.float_fmt;
    if (embed && parse_fmt(embed, &o.embed_fmt) != 0) {
        fprintf(stderr, "vlmconvert: --embed %s: expected f16, bf16, f32 or q8r\n", embed);
        return 2;
    }
    o.head_fmt = o.embed_fmt;
    if (head && parse_fmt(head, &o.head_fmt) != 0) {
        fprintf(stderr, "vlmconvert: --head %s: expected f16, bf16, f32 or q8r\n", head);
        return 2;
    }
    if (o.quiet) vlm_log_set_info(false);
    return (o.random ? conv_random_run(&o) : conv_run(&o)) == VLM_OK ? 0 : 1;
}
