// CUDA kernel of pixelwise non-local means. Pure CUDA: `nvcc -c` compiles this file alone.
//
// One thread block per TH x TW tile of output pixels. The block loads the tile with its margin
// (patch radius + search radius, reflected at the image border) into shared memory once; then,
// for every offset of the search window, it computes the channel-summed squared differences of
// the tile plus the patch margin in shared memory, filters them with the separable Gaussian
// patch weights vertically then horizontally (the patch sums never leave the chip), turns them
// into weights and accumulates the weighted shifted pixels per output pixel. The maths is that
// of fastdenoise/ops/nlm.py.
//
// Shared-memory traffic is what bounds it (per offset, the filters and the accumulation all
// read shared memory), so: the vertical filter gives each thread a column of kStrip outputs,
// which share kStrip + patch - 1 loads instead of kStrip * patch; and for grey and colour
// images (C = 1, 3, the kernel's template argument) each thread keeps the weighted sums of
// its own pixels in registers instead of shared memory. Other channel counts use the same
// kernel with the sums in shared memory.
#include "nlm.cuh"

#include <algorithm>

#include "fastdenoise/nlm.h"

namespace fastdenoise {
namespace cuda {
namespace {

constexpr int TH = 16, TW = 32, kThreads = 256;
constexpr int kPixPerThread = TH * TW / kThreads;
constexpr int kStrip = 4;  // vertical-filter outputs per thread (a column of them)
static_assert(TH % kStrip == 0, "the strips tile the rows");

// Channel counts whose weighted sums live in registers (the kernel's CC); 0: any, in shared memory.
__host__ __device__ constexpr int nlm_register_channels(int channels) {
  return channels == 1 || channels == 3 ? channels : 0;
}

struct Taps {
  float g[kNlmMaxPatch];
};

template <int CC>
__global__ void __launch_bounds__(kThreads)
nlm_kernel(const float* __restrict__ x, const float* __restrict__ sigma, const float* __restrict__ hh,
           float* __restrict__ out, int64_t H, int64_t W, int C, int P, int R, int64_t tile_y0, Taps taps) {
  extern __shared__ float smem[];
  const int b = blockIdx.z;  // within this launch's images (the pointers start at its first)
  const int64_t y0 = (tile_y0 + blockIdx.y) * TH, x0 = static_cast<int64_t>(blockIdx.x) * TW;
  const int pad = P + R;
  const int TAH = TH + 2 * pad, TAW = TW + 2 * pad;  // image tile with margins
  const int DH = TH + 2 * P, DW = TW + 2 * P;          // squared differences
  float* tile = smem;                                  // C x TAH x TAW
  float* diff = tile + C * TAH * TAW;                  // DH x DW
  float* vsum = diff + DH * DW;                        // TH x DW
  float* num = vsum + TH * DW;                         // C x TH x TW (CC == 0 only)
  const int64_t plane = H * W;
  const float* img = x + static_cast<int64_t>(b) * C * plane;

  for (int i = threadIdx.x; i < C * TAH * TAW; i += blockDim.x) {
    const int c = i / (TAH * TAW), r = (i / TAW) % TAH, q = i % TAW;
    const int64_t yy = nlm_reflect(y0 - pad + r, H), xx = nlm_reflect(x0 - pad + q, W);
    tile[i] = img[c * plane + yy * W + xx];
  }
  if constexpr (CC == 0) {
    for (int i = threadIdx.x; i < C * TH * TW; i += blockDim.x) num[i] = 0.f;
  }
  float den[kPixPerThread];
  float numr[kPixPerThread][CC > 0 ? CC : 1];  // CC > 0: this thread's pixels' weighted sums
#pragma unroll
  for (int k = 0; k < kPixPerThread; ++k) {
    den[k] = 0.f;
#pragma unroll
    for (int c = 0; c < (CC > 0 ? CC : 1); ++c) numr[k][c] = 0.f;
  }
  const float s = sigma[b], hv = hh[b];
  const float two_var = 2.f * s * s, inv_h2 = 1.f / (hv * hv);
  const float inv_c = 1.f / static_cast<float>(C);
  const int patch = 2 * P + 1;
  __syncthreads();

  for (int dy = -R; dy <= R; ++dy) {
    for (int dx = -R; dx <= R; ++dx) {
      // diff(r, q): pixel (y0 - P + r, x0 - P + q) against the one shifted by (dy, dx);
      // in tile coordinates (r + R, q + R) and (r + R + dy, q + R + dx).
      for (int i = threadIdx.x; i < DH * DW; i += blockDim.x) {
        const int r = i / DW, q = i % DW;
        const int a = (r + R) * TAW + q + R, sft = a + dy * TAW + dx;
        float acc = 0.f;
        for (int c = 0; c < C; ++c) {
          const float d = tile[c * TAH * TAW + a] - tile[c * TAH * TAW + sft];
          acc += d * d;
        }
        diff[i] = acc;
      }
      __syncthreads();
      // vsum(r, q) = sum_k g[k] diff(r + k, q), k ascending; rows r0 .. r0 + kStrip - 1 of
      // column q share the diff rows r0 .. r0 + kStrip + patch - 2, each loaded once
      for (int i = threadIdx.x; i < (TH / kStrip) * DW; i += blockDim.x) {
        const int r0 = (i / DW) * kStrip, q = i % DW;
        float acc[kStrip];
#pragma unroll
        for (int t = 0; t < kStrip; ++t) acc[t] = 0.f;
        for (int j = 0; j < kStrip + patch - 1; ++j) {
          const float v = diff[(r0 + j) * DW + q];
#pragma unroll
          for (int t = 0; t < kStrip; ++t) {
            const int k = j - t;
            if (k >= 0 && k < patch) acc[t] += taps.g[k] * v;
          }
        }
#pragma unroll
        for (int t = 0; t < kStrip; ++t) vsum[(r0 + t) * DW + q] = acc[t];
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kPixPerThread; ++k) {
        const int p = threadIdx.x + k * kThreads;
        const int r = p / TW, q = p % TW;
        float acc = 0.f;
        for (int j = 0; j < patch; ++j) acc += taps.g[j] * vsum[r * DW + q + j];
        const float d2 = acc * inv_c;
        const float e = d2 > two_var ? (d2 - two_var) * inv_h2 : 0.f;
        const float w = expf(-e);
        den[k] += w;
        const int sft = (r + pad + dy) * TAW + (q + pad + dx);
        if constexpr (CC > 0) {
#pragma unroll
          for (int c = 0; c < CC; ++c) numr[k][c] += w * tile[c * TAH * TAW + sft];
        } else {
          for (int c = 0; c < C; ++c) num[c * TH * TW + p] += w * tile[c * TAH * TAW + sft];
        }
      }
      __syncthreads();  // diff / vsum are rewritten by the next offset
    }
  }

#pragma unroll
  for (int k = 0; k < kPixPerThread; ++k) {
    const int p = threadIdx.x + k * kThreads;
    const int64_t yy = y0 + p / TW, xx = x0 + p % TW;
    if (yy < H && xx < W) {
      if constexpr (CC > 0) {
#pragma unroll
        for (int c = 0; c < CC; ++c) out[(static_cast<int64_t>(b) * CC + c) * plane + yy * W + xx] = numr[k][c] / den[k];
      } else {
        for (int c = 0; c < C; ++c)
          out[(static_cast<int64_t>(b) * C + c) * plane + yy * W + xx] = num[c * TH * TW + p] / den[k];
      }
    }
  }
}

}  // namespace

size_t nlm_shared_bytes(int channels, int patch, int search) {
  const int P = patch / 2, R = search / 2, pad = P + R;
  const size_t tile = static_cast<size_t>(channels) * (TH + 2 * pad) * (TW + 2 * pad);
  const size_t diff = static_cast<size_t>(TH + 2 * P) * (TW + 2 * P);
  const size_t vsum = static_cast<size_t>(TH) * (TW + 2 * P);
  const size_t num = nlm_register_channels(channels) > 0 ? 0 : static_cast<size_t>(channels) * TH * TW;
  return (tile + diff + vsum + num) * sizeof(float);
}

cudaError_t launch_nlm(const float* x, const float* sigma, const float* h, float* out, int64_t batch,
                       int channels, int64_t H, int64_t W, int patch, int search, cudaStream_t stream,
                       int64_t max_grid_yz) {
  if (patch < 1 || patch % 2 == 0 || patch > kNlmMaxPatch || search < 1 || search % 2 == 0 ||
      channels < 1 || max_grid_yz < 1 || max_grid_yz > 65535)
    return cudaErrorInvalidValue;
  if (batch == 0 || H == 0 || W == 0) return cudaSuccess;
  const int cc = nlm_register_channels(channels);
  auto kernel = cc == 1 ? nlm_kernel<1> : cc == 3 ? nlm_kernel<3> : nlm_kernel<0>;
  const size_t smem = nlm_shared_bytes(channels, patch, search);
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  Taps taps;
  nlm_patch_taps(patch, taps.g);
  const int64_t tiles_y = (H + TH - 1) / TH, image = static_cast<int64_t>(channels) * H * W;
  for (int64_t b0 = 0; b0 < batch; b0 += max_grid_yz) {            // images along grid z
    const int64_t nb = std::min(max_grid_yz, batch - b0);
    for (int64_t t0 = 0; t0 < tiles_y; t0 += max_grid_yz) {        // row tiles along grid y
      const dim3 grid(static_cast<unsigned>((W + TW - 1) / TW),
                      static_cast<unsigned>(std::min(max_grid_yz, tiles_y - t0)), static_cast<unsigned>(nb));
      kernel<<<grid, kThreads, smem, stream>>>(x + b0 * image, sigma + b0, h + b0, out + b0 * image, H, W, channels,
                                               patch / 2, search / 2, t0, taps);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastdenoise
