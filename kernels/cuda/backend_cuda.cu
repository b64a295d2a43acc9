// backend_cuda.cu — CUDA backend entry points (skeleton: device discovery only; kernels come with the CUDA
// issue). Everything but the extern "C" boundary stays static.
#include <cuda_runtime.h>

#include "kernels/cuda_backend.h"

extern "C" enum vlm_status cuda_backend_probe(int *n_devices) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError(); // clear the sticky "no driver" error so a later probe starts clean
        *n_devices = 0;
        return VLM_ERR_NO_DEVICE;
    }
    *n_devices = n;
    return VLM_OK;
}
