# cuda_emu.mk — the build of `make test-cuda-emu` (included by the Makefile; see tests/cuda_emu/README.md): every
# kernels/cuda/*.cu rewritten by rewrite.pl and compiled for the CPU against the emulator's CUDA headers, linked with
# the emulator, the sanitizer build's CPU library (the references; its CUDA stub removed) and the CUDA tests. All of
# it under ASan+UBSan; outputs in build-emu/. x86-64 only (switch.S).
EMU_OUT      := build-emu
EMU_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
EMU_CXXFLAGS := -std=c++17 -g -O2 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -DVLM_CUDA_EMU=1 \
                -Itests/cuda_emu/include -Iinclude -I. -Ikernels/cuda $(EMU_SAN)

# Inline PTX (asm) has no meaning on the CPU: a .cu that uses it is left out (test-cuda-emu says so), the CUDA stub
# (kernels/cuda_stub.c, its symbols made weak) answers for its entry points, and the tests that need it are not run
# here: its own tests/test_cuda_<name>.c, and test_cuda_model.c (the whole model needs every kernel).
EMU_ASM_RE   := (^|[^_[:alnum:]])asm[[:space:]]*(volatile[[:space:]]*)?[(]
# a .cu whose PTX sits behind `#if defined(VLM_CUDA_EMU)` fallbacks (linear.cu) is emulated through them
EMU_PTX_SRC  := $(shell grep -lE '$(EMU_ASM_RE)' $(CU_SRC) /dev/null | xargs -r grep -L 'VLM_CUDA_EMU')
EMU_NOT_RUN  := $(if $(EMU_PTX_SRC),tests/test_cuda_model.c $(EMU_PTX_SRC:kernels/cuda/%.cu=tests/test_cuda_%.c))
EMU_LEFT_OUT := $(if $(EMU_PTX_SRC),not emulated (inline PTX): $(EMU_PTX_SRC); so not run: $(EMU_NOT_RUN))

EMU_CU_OBJ   := $(patsubst %.cu,$(EMU_OUT)/%.o,$(filter-out $(EMU_PTX_SRC),$(CU_SRC)))
EMU_RT_OBJ   := $(EMU_OUT)/cuda_emu/emu.o $(EMU_OUT)/cuda_emu/cublas.o $(EMU_OUT)/cuda_emu/switch.o \
                $(if $(EMU_PTX_SRC),$(EMU_OUT)/cuda_emu/cuda_stub_weak.o)
EMU_TEST_SRC := tests/test_main.c tests/golden.c $(filter-out $(EMU_NOT_RUN),$(sort $(wildcard tests/test_cuda_*.c)))
EMU_TEST_OBJ := $(EMU_TEST_SRC:%.c=$(EMU_OUT)/%.o)
EMU_LINK     := $(EMU_CU_OBJ) $(EMU_RT_OBJ) $(EMU_OUT)/libcpu.a
EMU_BIN      := $(EMU_OUT)/tests/run_tests $(EMU_OUT)/vlmrun $(EMU_OUT)/vlmconvert

# the CPU library of the sanitizer build (made by `make SAN=1` first) without the CUDA stub
$(EMU_OUT)/libcpu.a: build-san/libvlm.a
	@mkdir -p $(dir $@)
	$(Q)cp $< $@.tmp && ar d $@.tmp cuda_stub.o && mv $@.tmp $@

$(EMU_OUT)/cuda_emu/cuda_stub_weak.o: build-san/kernels/cuda_stub.o
	@mkdir -p $(dir $@)
	$(Q)objcopy --weaken $< $@

$(EMU_OUT)/%.cpp: %.cu tests/cuda_emu/rewrite.pl
	@mkdir -p $(dir $@)
	$(Q)perl tests/cuda_emu/rewrite.pl $< > $@.tmp && mv $@.tmp $@

$(EMU_OUT)/kernels/cuda/%.o: $(EMU_OUT)/kernels/cuda/%.cpp
	@echo "  EMU   kernels/cuda/$*.cu"
	$(Q)$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c -o $@ $<

$(EMU_OUT)/cuda_emu/%.o: tests/cuda_emu/%.cpp
	@mkdir -p $(dir $@)
	@echo "  CXX   $<"
	$(Q)$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c -o $@ $<

$(EMU_OUT)/cuda_emu/switch.o: tests/cuda_emu/switch.S
	@mkdir -p $(dir $@)
	$(Q)$(CC) -c -o $@ $<

$(EMU_OUT)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) $(EMU_SAN) -DVLM_SRC_DIR='"$(CURDIR)"' -DVLM_BUILD_DIR='"$(CURDIR)/$(EMU_OUT)"' -MMD -MP \
	    -c -o $@ $<

$(EMU_OUT)/tests/run_tests: $(EMU_TEST_OBJ) $(EMU_LINK)
	@echo "  LD    $@"
	$(Q)$(CXX) $(EMU_SAN) -o $@ $^ $(LDLIBS)

$(EMU_OUT)/vlmrun: build-san/runtime/main.o $(EMU_LINK)
	@echo "  LD    $@"
	$(Q)$(CXX) $(EMU_SAN) -o $@ $^ $(LDLIBS)

$(EMU_OUT)/vlmconvert: build-san/converter/convert.o $(EMU_LINK)
	@echo "  LD    $@"
	$(Q)$(CXX) $(EMU_SAN) -o $@ $^ $(LDLIBS)

.SECONDARY: $(EMU_CU_OBJ:.o=.cpp)
-include $(shell find $(EMU_OUT) -name '*.d' 2>/dev/null)
