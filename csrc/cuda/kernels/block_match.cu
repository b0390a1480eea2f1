// CUDA kernel of block matching. Pure CUDA: `nvcc -c` compiles this file alone.
//
// One thread block per reference patch: its threads compute the distance of every candidate of
// the (clipped) search window into shared memory, then select the k best by k rounds of a
// block-wide arg-min under the total order (distance, then key). Each thread keeps the best of
// its own candidates (t = tid, tid + 256, ...); a round reduces the 256 per-thread bests (warp
// shuffles, then the 8 warp bests through shared memory, combined by every thread in the same
// order), and only the thread owning the winner marks it taken and rescans its own candidates:
// a round costs a few shuffles and two barriers, not a scan of the window (the former one-warp
// selection walked all ~1500 candidates of a 39 x 39 window per round while 7 warps idled).
// Keys are unique, so the winner of each round does not depend on the reduction's order.
// For patch 8 (BM3D's, both stages) the distances come from a kernel specialised for it: the
// reference patch held in registers and each thread scoring a column of 3 candidates from the
// 10 image rows they share: 80 loads per 3 candidates, plus the reference's 64 once per thread,
// where the generic loop makes 128 per candidate (64 of the candidate, 64 of the reference).
// Not timed yet (no GPU so far): the counts are from the PTX.
// Distances are summed in float32 in the CPU kernel's order with explicitly rounded operations
// (no FMA contraction), so both backends give bitwise the same distances and matches.
#include "block_match.cuh"

#include <algorithm>

#include <cfloat>
#include <climits>

#include "fastdenoise/block_match.h"

namespace fastdenoise {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Vertically adjacent candidates one thread scores together in the fixed-patch kernel: 3 splits
// a 39-row window into 13 runs (13 x 39 = 507 tasks: two rounds of 256 threads, 99% busy).
constexpr int kRun = 3;
// The patch size with its own kernel (BM3D's "np" profile, both stages).
constexpr int kFixedPatch = 8;

__device__ __forceinline__ bool before(float da, int ka, float db, int kb) {
  return da < db || (da == db && ka < kb);
}

// The best candidate not yet taken among this thread's own: t = first, first + step, ... < n
// (mt = -1 when all are taken). Taken candidates have the key INT_MAX.
__device__ __forceinline__ void own_best(const float* sd, const int* sk, int n, int first, int step, float& md,
                                         int& mk, int& mt) {
  md = FLT_MAX;
  mk = INT_MAX;
  mt = -1;
  for (int t = first; t < n; t += step) {
    if (sk[t] != INT_MAX && (mt < 0 || before(sd[t], sk[t], md, mk))) {
      md = sd[t];
      mk = sk[t];
      mt = t;
    }
  }
}

// P > 0: the kernel for patch == P (the reference patch in registers, candidates in column
// runs); P == 0: any patch size (one candidate per thread, the reference read from memory).
template <int P>
__global__ void __launch_bounds__(kThreads)
block_match_kernel(const float* __restrict__ guide, int64_t H, int64_t W, int patch, int R, int k, int stride,
                   int64_t ny, int64_t nx, int64_t* __restrict__ index, float* __restrict__ dist) {
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
  if constexpr (P > 0) {
    // The patch size of the build (BM3D's 8): the reference patch lives in registers, and each
    // thread takes a column of kRun vertically adjacent candidates, which share P + kRun - 1
    // image rows: every row is loaded once for all of them (consecutive threads take
    // consecutive columns, so a warp's loads are contiguous). Each candidate's sum still runs
    // over its rows, then its columns, in order: the distances are those of the generic loop.
    float rv[P * P];
#pragma unroll
    for (int i = 0; i < P * P; ++i) rv[i] = ref[(i / P) * W + i % P];
    const int nwy = static_cast<int>(y1 - y0 + 1);
    const int runs = (nwy + kRun - 1) / kRun;
    for (int task = threadIdx.x; task < runs * nwx; task += blockDim.x) {
      const int wy0 = (task / nwx) * kRun, wx = task % nwx;
      const int nrun = nwy - wy0 < kRun ? nwy - wy0 : kRun;  // candidates in this column run
      const float* col = img + (y0 + wy0) * W + (x0 + wx);
      float acc[kRun];
#pragma unroll
      for (int q = 0; q < kRun; ++q) acc[q] = 0.f;
#pragma unroll
      for (int rr = 0; rr < P + kRun - 1; ++rr) {  // image row rr of the run: row rr - q of candidate q
        if (rr < P - 1 + nrun) {                   // else past the last candidate (and maybe the image)
          float v[P];
#pragma unroll
          for (int c = 0; c < P; ++c) v[c] = col[rr * W + c];
#pragma unroll
          for (int q = 0; q < kRun; ++q) {
            if (rr - q >= 0 && rr - q < P) {
#pragma unroll
              for (int c = 0; c < P; ++c) {
                const float d = __fsub_rn(v[c], rv[(rr - q) * P + c]);
                acc[q] = __fadd_rn(acc[q], __fmul_rn(d, d));
              }
            }
          }
        }
      }
#pragma unroll
      for (int q = 0; q < kRun; ++q) {
        if (q < nrun) {
          const int t = (wy0 + q) * nwx + wx;
          const int64_t cy = y0 + wy0 + q, cx = x0 + wx;
          sd[t] = __fdiv_rn(acc[q], area);
          sk[t] = (cy == py && cx == px) ? -1 : static_cast<int>(cy * W + cx);
        }
      }
    }
  } else {
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
  }
  __syncthreads();

  constexpr int kWarps = kThreads / 32;
  __shared__ float wd[kWarps];
  __shared__ int wk[kWarps], wt[kWarps];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float md;
  int mk, mt;
  own_best(sd, sk, n, tid, kThreads, md, mk, mt);
  const int64_t out = ((b * ny + gy) * nx + gx) * k;
  for (int s = 0; s < k; ++s) {
    float bd = md;
    int bk = mk, bt = mt;
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
      wd[warp] = bd;
      wk[warp] = bk;
      wt[warp] = bt;
    }
    __syncthreads();
    bd = wd[0];
    bk = wk[0];
    bt = wt[0];
    for (int w = 1; w < kWarps; ++w) {
      if (wt[w] >= 0 && (bt < 0 || before(wd[w], wk[w], bd, bk))) {
        bd = wd[w];
        bk = wk[w];
        bt = wt[w];
      }
    }
    // k <= the candidates of the smallest window (checked by the glue): there is a winner
    if (tid == 0) {
      dist[out + s] = bd;
      index[out + s] = bk < 0 ? py * W + px : static_cast<int64_t>(bk);
    }
    if (bt >= 0 && bt == mt) {  // this thread owns the winner (each t has one owner)
      sk[bt] = INT_MAX;  // taken
      own_best(sd, sk, n, tid, kThreads, md, mk, mt);
    }
    __syncthreads();  // the warp bests are rewritten in the next round
  }
}

}  // namespace

cudaError_t launch_block_match(const float* guide, int64_t batch, int64_t H, int64_t W, int patch,
                               int search, int k, int stride, int64_t* index, float* dist,
                               cudaStream_t stream, int64_t max_grid_yz) {
  if (search < 1 || search % 2 == 0 || search > kBlockMatchMaxSearch || patch < 1 || stride < 1 ||
      k < 1 || H < patch || W < patch || H * W >= (int64_t(1) << 31))
    return cudaErrorInvalidValue;
  const int64_t ny = bm_grid_count(H, patch, stride), nx = bm_grid_count(W, patch, stride);
  if (batch == 0) return cudaSuccess;
  if (ny * nx > INT_MAX || max_grid_yz < 1 || max_grid_yz > 65535) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(search) * search * (sizeof(float) + sizeof(int));
  const int64_t per_image = ny * nx * k;
  for (int64_t b0 = 0; b0 < batch; b0 += max_grid_yz) {  // images along grid y; the indices are per image
    const dim3 grid(static_cast<unsigned>(ny * nx), static_cast<unsigned>(std::min(max_grid_yz, batch - b0)));
    const float* g = guide + b0 * H * W;
    int64_t* ix = index + b0 * per_image;
    float* ds = dist + b0 * per_image;
    if (patch == kFixedPatch) {
      block_match_kernel<kFixedPatch><<<grid, kThreads, smem, stream>>>(g, H, W, patch, search / 2, k, stride, ny,
                                                                        nx, ix, ds);
    } else {
      block_match_kernel<0><<<grid, kThreads, smem, stream>>>(g, H, W, patch, search / 2, k, stride, ny, nx, ix, ds);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastdenoise
