// Typed launchers of the Haar CUDA kernels. Pure CUDA: no torch headers.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

#include "fastdenoise/haar.h"

namespace fastdenoise {
namespace cuda {

// Memory layout of both the input and the output (dense, no padding).
enum class Layout : int { NCHW = 0, NHWC = 1 };

// Forward: x (n, c, 2h, 2w) -> y (n, 4c, h, w), sub-band-major. T: float, double, __half,
// __nv_bfloat16. Returns the launch error (cudaSuccess when queued).
template <typename T>
cudaError_t launch_haar_dwt2d(const T* x, T* y, HaarShape shape, Layout layout, int variant,
                              cudaStream_t stream);

// Inverse: y (n, 4c, h, w) -> x (n, c, 2h, 2w).
template <typename T>
cudaError_t launch_haar_idwt2d(const T* y, T* x, HaarShape shape, Layout layout, int variant,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdenoise
