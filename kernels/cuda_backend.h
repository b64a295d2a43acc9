/* cuda_backend.h — the small C boundary of the CUDA backend (the .cu files under kernels/cuda, extern "C").
 * CPU-only builds link kernels/cuda_stub.c instead. */
#ifndef VLM_CUDA_BACKEND_H
#define VLM_CUDA_BACKEND_H

#include "vlm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Counts usable CUDA devices. VLM_ERR_NO_DEVICE (and *n_devices = 0) when there is no driver or device:
 * a recoverable condition, the caller falls back to the CPU. */
enum vlm_status cuda_backend_probe(int *n_devices);

#ifdef __cplusplus
}
#endif
#endif
