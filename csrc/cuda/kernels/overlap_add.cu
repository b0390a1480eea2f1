// CUDA kernel of the overlap-add of tiles. Pure CUDA: `nvcc -c` compiles this file alone.
//
// One launch per tile (the glue queues them in tile order on one stream, so a pixel covered by
// several tiles receives them in order); one thread per output element of the tile's region:
// C channel planes of out and one of the weight map. Each element gets exactly the CPU kernel's
// operations: the tile value converted to the accumulation type, times the window (rounded,
// __fmul_rn / __dmul_rn: never contracted into an FMA), plus the old value (rounded). So both
// backends give the bits of the reference (fastdenoise/ops/overlap_add.py). Offsets are int64.
#include "overlap_add.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fastdenoise {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

// Tile values in the accumulation type: exact from float16 / bfloat16 / float32, rounded to
// nearest from float64 into float.
template <typename Acc> __device__ __forceinline__ Acc to_acc(float v);
template <> __device__ __forceinline__ float to_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double to_acc<double>(float v) { return static_cast<double>(v); }

template <typename Acc> __device__ __forceinline__ Acc load_acc(const float* p) { return to_acc<Acc>(*p); }
template <typename Acc> __device__ __forceinline__ Acc load_acc(const __half* p) { return to_acc<Acc>(__half2float(*p)); }
template <typename Acc> __device__ __forceinline__ Acc load_acc(const __nv_bfloat16* p) {
  return to_acc<Acc>(__bfloat162float(*p));
}
template <typename Acc> __device__ __forceinline__ Acc load_acc(const double* p);
template <> __device__ __forceinline__ float load_acc<float>(const double* p) { return __double2float_rn(*p); }
template <> __device__ __forceinline__ double load_acc<double>(const double* p) { return *p; }

// Explicitly rounded product and sum: nvcc may not fuse these into an FMA.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// Element e in [0, (C + 1) * rows * cols): column j = e % cols, row i, plane c; c == C is the
// weight map. Consecutive threads take consecutive columns (coalesced loads and stores).
template <typename Tile, typename Acc>
__global__ void overlap_add_kernel(const Tile* __restrict__ tile, const Acc* __restrict__ window,
                                   Acc* __restrict__ out, Acc* __restrict__ weight, OverlapAddRegion r,
                                   int64_t total) {
  const int64_t plane = r.H * r.W, tile_plane = r.th * r.tw, per_plane = r.rows * r.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e / per_plane, k = e - c * per_plane;
    const int64_t i = k / r.cols, j = k - i * r.cols;
    const int64_t src = (r.ty + i) * r.tw + r.tx + j;   // in the tile's plane and its window
    const int64_t dst = (r.y0 + i) * r.W + r.x0 + j;    // in the image's plane
    const Acc w = window[src];
    if (c < r.channels) {
      Acc* o = out + c * plane + dst;
      *o = add_rn(*o, mul_rn(load_acc<Acc>(tile + c * tile_plane + src), w));
    } else {
      weight[dst] = add_rn(weight[dst], w);
    }
  }
}

}  // namespace

template <typename Tile, typename Acc>
cudaError_t launch_overlap_add(const Tile* tile, const Acc* window, Acc* out, Acc* weight, OverlapAddRegion r,
                               cudaStream_t stream) {
  if (r.rows <= 0 || r.cols <= 0 || r.channels < 0) return cudaSuccess;  // nothing inside the image
  const int64_t total = (r.channels + 1) * r.rows * r.cols;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  overlap_add_kernel<Tile, Acc><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(tile, window, out, weight,
                                                                                           r, total);
  return cudaGetLastError();
}

#define FD_OVERLAP_ADD_INSTANTIATE(Tile, Acc)                                                            \
  template cudaError_t launch_overlap_add<Tile, Acc>(const Tile*, const Acc*, Acc*, Acc*, OverlapAddRegion, \
                                                     cudaStream_t);
FD_OVERLAP_ADD_INSTANTIATE(float, float)
FD_OVERLAP_ADD_INSTANTIATE(double, float)
FD_OVERLAP_ADD_INSTANTIATE(__half, float)
FD_OVERLAP_ADD_INSTANTIATE(__nv_bfloat16, float)
FD_OVERLAP_ADD_INSTANTIATE(float, double)
FD_OVERLAP_ADD_INSTANTIATE(double, double)
FD_OVERLAP_ADD_INSTANTIATE(__half, double)
FD_OVERLAP_ADD_INSTANTIATE(__nv_bfloat16, double)
#undef FD_OVERLAP_ADD_INSTANTIATE

}  // namespace cuda
}  // namespace fastdenoise
