# vlmrun — build. CPU runtime always; CUDA objects too when nvcc is found (CUDA=0 turns that off).
# Switches: CUDA=0|1, SAN=1 (ASan+UBSan, CPU-only, separate build dir), DEBUG=1, V=1.
.DEFAULT_GOAL := all

CC      ?= cc
CXX     ?= c++
NVCC    ?= nvcc
DEBUG   ?= 0
SAN     ?= 0
V       ?= 0
ifneq ($(filter-out 0 1,$(DEBUG) $(SAN) $(V)),)
$(error DEBUG, SAN and V take 0 or 1)
endif

NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(SAN),1)
CUDA := 0
endif
ifeq ($(origin CUDA),undefined)
CUDA := $(if $(NVCC_PATH),1,0)
endif
ifeq ($(filter $(CUDA),0 1),)
$(error CUDA takes 0 or 1)
endif
ifeq ($(CUDA),1)
ifeq ($(NVCC_PATH),)
$(error CUDA=1 but nvcc was not found on PATH)
endif
endif
$(info vlmrun: nvcc $(if $(NVCC_PATH),found at $(NVCC_PATH),not found); CUDA backend objects $(if $(filter 1,$(CUDA)),on,off); sanitizers $(if $(filter 1,$(SAN)),on (ASan+UBSan),off))

BUILD := build$(if $(filter 1,$(SAN)),-san)
Q := $(if $(filter 1,$(V)),,@)

CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter -g -ffp-contract=off -fopenmp \
           -Iinclude -I. $(if $(filter 1,$(DEBUG)),-O0,-O2) $(EXTRA_CFLAGS)
CXXFLAGS := -std=c++17 -Wall -Wextra -g -Iinclude -I. $(if $(filter 1,$(DEBUG)),-O0,-O2) $(EXTRA_CXXFLAGS)
LDLIBS  := -lcjson -lutf8proc -lsentencepiece -lstdc++ -lm -lpthread -fopenmp
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
CXXFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDLIBS  += -fsanitize=address,undefined
endif
# CUDA_ARCH: the GPU generations compiled for (A100, L4/RTX 40xx, H100/H200); one arch compiles 3x faster while
# developing, e.g. CUDA_ARCH=90.
CUDA_ARCH ?= 80 89 90
NVFLAGS := -O2 -std=c++17 -Iinclude -I. -Xcompiler -Wall $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
           $(EXTRA_NVFLAGS)

LIB_SRC  := $(sort $(wildcard runtime/*.c kernels/*.c kernels/cpu/*.c vision/*.c tokenizer/*.c converter/*.c))
LIB_SRC  := $(filter-out runtime/main.c runtime/eval.c converter/convert.c,$(LIB_SRC))
CXX_SRC  := $(sort $(wildcard tokenizer/*.cc))
CU_SRC   := $(sort $(wildcard kernels/cuda/*.cu))
TEST_SRC := $(sort $(wildcard tests/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CXX_SRC:%.cc=$(BUILD)/%.o)
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
ifeq ($(CUDA),1)
LIB_OBJ  := $(filter-out $(BUILD)/kernels/cuda_stub.o,$(LIB_OBJ)) $(CU_OBJ)
CUDA_LIB := $(abspath $(dir $(NVCC_PATH))../lib64)
# cudart static (no runtime file to find); cuBLAS dynamic (the static one adds ~100 MB per binary), found via rpath
LDLIBS   += -L$(CUDA_LIB) -Wl,-rpath,$(CUDA_LIB) -lcublas -lcudart_static -ldl -lrt -lstdc++
endif

VLMRUN   := $(BUILD)/vlmrun
VLMCONV  := $(BUILD)/vlmconvert
VLMEVAL  := $(BUILD)/vlmeval
RUNTESTS := $(BUILD)/tests/run_tests

all: $(VLMRUN) $(VLMCONV) $(VLMEVAL) ## build vlmrun, vlmconvert, vlmeval (and the CUDA objects when enabled)

# CUDA=0 and CUDA=1 share $(BUILD): a stamp per setting makes switching rebuild the archive (else a stale one could
# link the stubs, or the CUDA objects, silently)
CUDA_STAMP := $(BUILD)/.cuda-$(CUDA)
$(CUDA_STAMP):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.cuda-0 $(BUILD)/.cuda-1 && touch $@
$(BUILD)/libvlm.a: $(LIB_OBJ) $(CUDA_STAMP)
	$(Q)rm -f $@ && ar rcs $@ $(LIB_OBJ)  # from scratch: `ar r` would keep members of deleted sources

$(VLMRUN): $(BUILD)/runtime/main.o $(BUILD)/libvlm.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(VLMCONV): $(BUILD)/converter/convert.o $(BUILD)/libvlm.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(VLMEVAL): $(BUILD)/runtime/eval.o $(BUILD)/libvlm.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(RUNTESTS): $(TEST_OBJ) $(BUILD)/libvlm.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# stb_image v2.27 (Debian's libstb-dev) shifts a 32-bit value by 32 in stbi__grow_buffer_unsafe once
# stbi__jpeg_huff_decode has met a code that is not in the Huffman table (it then leaves code_bits at -8): an upstream
# bug reached only by corrupt entropy-coded data, which no marker walk can see (tests/data/bad/
# jpeg_prog_missing_code.jpg, a fuzz_image find). The shift is undefined in C; gcc and clang on x86-64 and arm64 take
# it mod 32, which puts garbage bits into a scan that is already corrupt, and stb then fails the file ("corrupt JPEG
# data"). Only that check is off, only in the file that holds stb (whose own code has no shifts): ASan and the other
# UBSan checks stay on there, in the SAN build and the fuzzers. gcc 12 ignores -fno-sanitize=shift-exponent (measured:
# the report stays) and needs the whole shift group off; clang takes the narrower one.
$(BUILD)/vision/image_decode.o: CFLAGS += -fno-sanitize=shift
build-fuzz/obj/vision/image_decode.o: FUZZ_FLAGS += -fno-sanitize=shift-exponent

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# vlmrun's default model: the checkout's bundled demo, by absolute path so the binary works from any directory
$(BUILD)/runtime/main.o: CFLAGS += -DVLM_DEFAULT_MODEL='"$(CURDIR)/models/demo"'

$(BUILD)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -DVLM_SRC_DIR='"$(CURDIR)"' -DVLM_BUILD_DIR='"$(CURDIR)/$(BUILD)"' -MMD -MP -c -o $@ $<

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	@echo "  CXX   $<"
	$(Q)$(CXX) $(CXXFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC  $<"
	$(Q)$(NVCC) $(NVFLAGS) -MMD -MP -c -o $@ $<

test: $(VLMRUN) $(VLMCONV) $(VLMEVAL) $(RUNTESTS) ## run every test (SAN=1: under ASan+UBSan)
	$(RUNTESTS)

# The CUDA kernels and tests on the CPU, every CUDA thread a coroutine (tests/cuda_emu/README.md); the library comes
# from the SAN=1 build, so that runs first. Twice: warps scheduled first-to-last, then last-to-first.
include tests/cuda_emu/cuda_emu.mk
# schedules the emulator runs every warp in: forward and reverse between barriers expose different missing ones
EMU_ORDERS ?= forward reverse
test-cuda-emu: ## run the CUDA tests under the CPU emulator with ASan+UBSan (no GPU or nvcc needed; build-emu/)
	$(Q)$(MAKE) --no-print-directory SAN=1 build-san/libvlm.a build-san/runtime/main.o build-san/converter/convert.o
	$(Q)$(MAKE) --no-print-directory $(EMU_BIN)
	$(if $(EMU_LEFT_OUT),@echo "test-cuda-emu: $(EMU_LEFT_OUT)")
	$(Q)for o in $(EMU_ORDERS); do echo "test-cuda-emu: warps $$o"; VLM_EMU_ORDER=$$o $(EMU_OUT)/tests/run_tests -k cuda \
	    || exit 1; done

cuda-objs: $(CU_OBJ) ## compile (not run) the CUDA objects
	@echo "CUDA objects compiled: $(words $(CU_OBJ))"

FUZZ_CC   ?= clang
FUZZ_CXX  ?= clang++
FUZZ_TIME ?= 20
FUZZ_SEED ?= 1
FUZZ_SRC  := $(sort $(wildcard tests/fuzz/*.c))
FUZZ_BIN  := $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)
FUZZ_OBJ  := $(LIB_SRC:%.c=build-fuzz/obj/%.o) $(CXX_SRC:%.cc=build-fuzz/obj/%.o)
FUZZ_FLAGS := -g -O1 -Iinclude -I. -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
fuzz: $(FUZZ_BIN) ## build the libFuzzer targets (clang) and run each for FUZZ_TIME seconds (FUZZ_SEED: 1, so CI repeats)
	@for f in $(FUZZ_BIN); do echo "  FUZZ  $$f ($(FUZZ_TIME) s)"; mkdir -p $$f.corpus; \
	  if ! $$f -max_total_time=$(FUZZ_TIME) -seed=$(FUZZ_SEED) -close_fd_mask=2 -artifact_prefix=build-fuzz/ \
	      $$f.corpus tests/fuzz/seeds/$$(basename $$f) >$$f.log 2>&1; then \
	    tail -n 40 $$f.log; echo "fuzz: $$f failed; the input is in build-fuzz/"; exit 1; fi; \
	  tail -n 1 $$f.log; done

build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -Wno-unknown-pragmas $(FUZZ_FLAGS) -c -o $@ $<

build-fuzz/obj/%.o: %.cc
	@mkdir -p $(dir $@)
	$(Q)$(FUZZ_CXX) -std=c++17 $(FUZZ_FLAGS) -c -o $@ $<

build-fuzz/%: tests/fuzz/%.c $(FUZZ_OBJ) $(wildcard tests/fuzz/*.h)
	@echo "  FUZZLD $@"
	$(Q)$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) -c -o $@.o $<
	$(Q)$(FUZZ_CXX) -fsanitize=fuzzer,address,undefined -o $@ $@.o $(FUZZ_OBJ) -lcjson -lutf8proc -lsentencepiece -lm

.SECONDARY: $(FUZZ_OBJ)

BENCH_SRC := $(sort $(wildcard tools/bench_*.c))
BENCH_BIN := $(BENCH_SRC:tools/%.c=$(BUILD)/tools/%)
$(BUILD)/tools/%: tools/%.c $(BUILD)/libvlm.a $(wildcard tools/*.h)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -DVLM_SRC_DIR='"$(CURDIR)"' -o $@ $< $(BUILD)/libvlm.a $(LDLIBS)

BENCH_CPU := $(filter-out $(BUILD)/tools/bench_cuda%,$(BENCH_BIN))
bench: $(BENCH_CPU) ## run the CPU benchmarks (tools/bench_*.c but bench_cuda*); results go to stdout and bench/
	@for b in $(BENCH_CPU); do echo "  BENCH $$b"; $$b || exit 1; done

bench-cuda: $(BUILD)/tools/bench_cuda $(BUILD)/tools/bench_cuda_model $(VLMCONV) ## GPU benchmarks -> bench/cuda_*.md
	BUILD=$(BUILD) tools/bench_cuda.sh bench

eval: $(VLMCONV) $(VLMEVAL) ## quantize with every method and compare to FP32 (vlmeval); writes bench/eval.md
	BUILD=$(BUILD) tools/eval.sh

fixtures: ## regenerate tests/golden and tests/data fixtures (needs tools/requirements.txt)
	python3 tools/make_fixtures.py

clean: ## remove build outputs
	rm -rf build build-san build-fuzz build-emu

.PHONY: all test test-cuda-emu cuda-objs fuzz bench bench-cuda eval fixtures clean
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
