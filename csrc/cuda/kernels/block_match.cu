// CUDA kernel of block matching. Pure CUDA: `nvcc -c` compiles this file alone.
//
// One thread block per reference patch: its threads compute the distance of every candidate of
// the (clipped) search window into shared memory, then one warp selects the k best by k rounds
// of a warp-wide arg-min under the total order bm_before (distance, then key). Distances are
// summed in float32 in the CPU kernel's order with explicitly rounded operations (no FMA
// contraction), so both backends give bitwise the same distances and matches.
#include "block_match.cuh"

#include <cfloat>
#include <climits>

#include "fastdenoise/block_match.h"

namespace fastdenoise {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool before(float da, int ka, float db, int kb) {
  return da < db || (da == db && ka < kb);
}

__global__ void block_match_kernel(const float* __restrict__ guide, int64_t H, int64_t W, int patch,
                                   int R, int k, int stride, int64_t ny, int64_t nx,
                                   int64_t* __restrict__ index, float* __restrict__ dist) {
  extern __shared__ unsigned char smem[];
  const int64_t ref_id = blockIdx.x;  // gy * nx + gx
  const int64_t b = blockIdx.y;
  const int64_t gy = ref_id / nx, gx = ref_id % nx;
  const int64_t py = bm_grid_pos(gy, H, patch, stride), px = bm_grid_pos(gx, W, patch, stride);
  const int64_t y0 = py - R > 0 ? py - R : 0, y1 = py + R < H - patch ? py + R : H - patch;
  const int64_t x0 = px - R > 0 ? px - R : 0, x1 = px + R < W - patch ? px + R : W - patch;
  const int nwx = static_cast<int>(x1 - x0 + 1);
  const int n = static_cast<int>((y1 - y0 + 1) * nwx);
  float* sd = reinterpret_cast<float*>(smem);
  int* sk = reinterpret_cast<int*>(sd + n);

  const float* img = guide + b * H * W;
  const float* ref = img + py * W + px;
  const float area = static_cast<float>(patch * patch);
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int64_t cy = y0 + t / nwx, cx = x0 + t % nwx;
    const float* cand = img + cy * W + cx;
    float acc = 0.f;
    for (int r = 0; r < patch; ++r) {
      for (int c = 0; c < patch; ++c) {
        const float d = __fsub_rn(cand[r * W + c], ref[r * W + c]);
        acc = __fadd_rn(acc, __fmul_rn(d, d));
      }
    }
    sd[t] = __fdiv_rn(acc, area);
    sk[t] = (cy == py && cx == px) ? -1 : static_cast<int>(cy * W + cx);
  }
  __syncthreads();
  if (threadIdx.x >= 32) return;

  const int lane = threadIdx.x;
  const int64_t out = ((b * ny + gy) * nx + gx) * k;
  for (int s = 0; s < k; ++s) {
    float bd = FLT_MAX;
    int bk = INT_MAX, bt = -1;
    for (int t = lane; t < n; t += 32) {
      if (sk[t] != INT_MAX && (bt < 0 || before(sd[t], sk[t], bd, bk))) {
        bd = sd[t];
        bk = sk[t];
        bt = t;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float od = __shfl_down_sync(0xffffffffu, bd, off);
      const int ok = __shfl_down_sync(0xffffffffu, bk, off);
      const int ot = __shfl_down_sync(0xffffffffu, bt, off);
      if (ot >= 0 && (bt < 0 || before(od, ok, bd, bk))) {
        bd = od;
        bk = ok;
        bt = ot;
      }
    }
    if (lane == 0) {
      dist[out + s] = bd;
      index[out + s] = bk < 0 ? py * W + px : static_cast<int64_t>(bk);
      sk[bt] = INT_MAX;  // taken
    }
    __syncwarp();
  }
}

}  // namespace

cudaError_t launch_block_match(const float* guide, int64_t batch, int64_t H, int64_t W, int patch,
                               int search, int k, int stride, int64_t* index, float* dist,
                               cudaStream_t stream) {
  if (search < 1 || search % 2 == 0 || search > kBlockMatchMaxSearch || patch < 1 || stride < 1 ||
      k < 1 || H < patch || W < patch || H * W >= (int64_t(1) << 31))
    return cudaErrorInvalidValue;
  const int64_t ny = bm_grid_count(H, patch, stride), nx = bm_grid_count(W, patch, stride);
  if (batch == 0) return cudaSuccess;
  if (ny * nx > INT_MAX || batch > 65535) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(search) * search * (sizeof(float) + sizeof(int));
  const dim3 grid(static_cast<unsigned>(ny * nx), static_cast<unsigned>(batch));
  block_match_kernel<<<grid, kThreads, smem, stream>>>(guide, H, W, patch, search / 2, k, stride, ny,
                                                       nx, index, dist);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastdenoise
