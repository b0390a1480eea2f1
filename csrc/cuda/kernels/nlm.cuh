// Typed launcher of the non-local means CUDA kernel. Pure CUDA: no torch headers.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace fastdenoise {
namespace cuda {

// x, out: (batch, channels, H, W) float32, contiguous; sigma, h: (batch,) float32 on the device.
// patch and search odd. Returns cudaErrorInvalidValue for arguments the kernel cannot take
// (shared memory of one tile too large).
// Any batch and H: images and row tiles beyond the grid's y / z limit (``max_grid_yz``, CUDA's
// 65535; lower only in tests) are covered by further launches.
cudaError_t launch_nlm(const float* x, const float* sigma, const float* h, float* out, int64_t batch,
                       int channels, int64_t H, int64_t W, int patch, int search, cudaStream_t stream,
                       int64_t max_grid_yz = 65535);

// Bytes of shared memory one thread block needs (the glue checks it against the device limit).
size_t nlm_shared_bytes(int channels, int patch, int search);

}  // namespace cuda
}  // namespace fastdenoise
