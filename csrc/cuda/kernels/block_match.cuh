// Typed launcher of the block matching CUDA kernel. Pure CUDA: no torch headers.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace fastdenoise {
namespace cuda {

// Largest search window the CUDA kernel takes (its candidates live in shared memory).
constexpr int kBlockMatchMaxSearch = 63;

// guide: (batch, H, W) float32, contiguous. index / dist: (batch, ny, nx, k), ny and nx from
// bm_grid_count. H * W < 2^31; search odd and <= kBlockMatchMaxSearch; k <= the smallest window.
// Any batch: images beyond the grid's y limit (``max_grid_yz``, CUDA's 65535; lower only in
// tests) are matched by further launches.
cudaError_t launch_block_match(const float* guide, int64_t batch, int64_t H, int64_t W, int patch,
                               int search, int k, int stride, int64_t* index, float* dist,
                               cudaStream_t stream, int64_t max_grid_yz = 65535);

}  // namespace cuda
}  // namespace fastdenoise
