// Typed launcher of the BM3D collaborative-filtering CUDA kernel. Pure CUDA: no torch headers.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace fastdenoise {
namespace cuda {

// One stage of BM3D (fastdenoise/ops/bm3d.py is the spec; csrc/include/fastdenoise/bm3d.h fixes
// the arithmetic). noisy, pilot (nullptr: hard thresholding), out: (batch, channels, H, W)
// float32 contiguous; index (batch, ny, nx, K) int64; size (batch, ny, nx) int64; sigma
// (batch, channels) float32; transform, inverse, window: 8x8 float32 row-major, all on the device.
// acc: (batch, channels + 1, H, W) int64, zero on entry (the fixed-point sums); bad_group: one
// int32, zero on entry, set to 1 + the index of a group whose size or matches are invalid (such
// groups are skipped). channels <= 3, K <= 32, H * W < 2^31.
cudaError_t launch_bm3d_filter(const float* noisy, const float* pilot, const int64_t* index, const int64_t* size,
                               const float* sigma, const float* transform, const float* inverse,
                               const float* window, double threshold_factor, int64_t batch, int channels,
                               int64_t H, int64_t W, int64_t ny, int64_t nx, int K, long long* acc,
                               int* bad_group, float* out, cudaStream_t stream);

// Bytes of dynamic shared memory one thread block takes (the glue checks the device's limit).
size_t bm3d_shared_bytes(int channels, int K, bool wiener);

}  // namespace cuda
}  // namespace fastdenoise
