/* cuda_stub.c — the CPU-only build's stand-in for the CUDA backend, so the runtime needs no #ifdef CUDA.
 * Linked only when CUDA=0 (the Makefile swaps in the kernels/cuda objects otherwise). */
#include "cuda_backend.h"

enum vlm_status cuda_backend_probe(int *n_devices) {
    *n_devices = 0;
    return VLM_ERR_NO_DEVICE;
}
