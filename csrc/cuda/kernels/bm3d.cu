// CUDA kernel of BM3D's collaborative filtering (one stage). Pure CUDA: `nvcc -c` compiles it alone.
//
// One thread block per group: 64 x 4 threads, threadIdx.x the coefficient position p = r * 8 + s
// of the 8x8 block, threadIdx.y a lane over the group's blocks. The group's blocks (and the
// pilot's) live in shared memory; the 2-D transforms run one block per lane, the Haar transform
// along the group and the shrinkage one (channel, position) column per thread. Every float
// operation is the CPU kernel's, in the same order, explicitly rounded (no FMA contraction), and
// the estimates are aggregated in fixed point with 64-bit integer atomics: integer sums do not
// depend on the order of the atomics, so the output is deterministic and bitwise the CPU's.
#include "bm3d.cuh"

#include "fastdenoise/bm3d.h"

namespace fastdenoise {
namespace cuda {
namespace {

constexpr int kLanes = 4;
constexpr int kThreads = kBm3dArea * kLanes;

// z[j] <- M z[j] M'^T for the blocks j = lane, lane + kLanes, ... < n (tmp: one 64-float scratch
// per lane). Sums over k in ascending order from 0, as the CPU kernel.
__device__ void transform_blocks(const float* __restrict__ m, float* __restrict__ z, float* __restrict__ tmp,
                                 int n, int p, int lane) {
  const int r = p / kBm3dBlock, s = p % kBm3dBlock;
  float* t = tmp + lane * kBm3dArea;
  for (int j0 = 0; j0 < n; j0 += kLanes) {
    const int j = j0 + lane;
    float* blk = z + j * kBm3dArea;
    if (j < n) {
      float acc = 0.f;
      for (int k = 0; k < kBm3dBlock; ++k) acc = __fadd_rn(acc, __fmul_rn(m[r * kBm3dBlock + k], blk[k * kBm3dBlock + s]));
      t[p] = acc;
    }
    __syncthreads();
    if (j < n) {
      float acc = 0.f;
      for (int k = 0; k < kBm3dBlock; ++k) acc = __fadd_rn(acc, __fmul_rn(t[r * kBm3dBlock + k], m[s * kBm3dBlock + k]));
      blk[p] = acc;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
bm3d_group_kernel(const float* __restrict__ noisy, const float* __restrict__ pilot,
                  const int64_t* __restrict__ index, const int64_t* __restrict__ size,
                  const float* __restrict__ sigma, const float* __restrict__ transform,
                  const float* __restrict__ inverse, const float* __restrict__ window, double threshold_factor,
                  int C, int64_t H, int64_t W, int64_t groups_per_image, int K,
                  unsigned long long* __restrict__ acc, int* __restrict__ bad_group) {
  extern __shared__ float smem[];
  __shared__ float t_fwd[kBm3dArea], t_inv[kBm3dArea], win[kBm3dArea];
  __shared__ int64_t pos[kBm3dMaxGroup];
  __shared__ long long q_part[kBm3dMaxChannels * kBm3dArea];
  __shared__ float weight;
  __shared__ int valid;

  const int p = threadIdx.x, lane = threadIdx.y;
  const int tid = lane * kBm3dArea + p;
  const int64_t grp = blockIdx.x;
  const int64_t b = grp / groups_per_image;
  const int64_t HW = H * W;
  const bool wiener = pilot != nullptr;
  const int n = static_cast<int>(size[grp]);

  float* z = smem;                                              // [C][K][64]
  float* zp = z + C * K * kBm3dArea;                            // [C][K][64] (Wiener)
  float* tmp = zp + (wiener ? C * K * kBm3dArea : 0);           // [kLanes][64]

  if (tid < kBm3dArea) {
    t_fwd[tid] = transform[tid];
    t_inv[tid] = inverse[tid];
    win[tid] = window[tid];
  }
  if (tid == 0) valid = (n >= 1 && n <= K && (n & (n - 1)) == 0) ? 1 : 0;
  __syncthreads();
  if (tid < n && valid) {
    const int64_t q = index[grp * K + tid];
    const int64_t py = q / W, px = q % W;
    pos[tid] = q;
    if (q < 0 || py > H - kBm3dBlock || px > W - kBm3dBlock) valid = 0;
  }
  if (tid < C && !(sigma[b * C + tid] > 0.f)) valid = 0;
  __syncthreads();
  if (!valid) {
    if (tid == 0) atomicCAS(bad_group, 0, static_cast<int>(grp < 2147483646 ? grp + 1 : 2147483647));
    return;
  }

  // gather the blocks of every channel (and of the pilot)
  const int r = p / kBm3dBlock, s = p % kBm3dBlock;
  for (int c = 0; c < C; ++c)
    for (int j = lane; j < n; j += kLanes) {
      const int64_t src = (b * C + c) * HW + pos[j] + r * W + s;
      z[(c * K + j) * kBm3dArea + p] = noisy[src];
      if (wiener) zp[(c * K + j) * kBm3dArea + p] = pilot[src];
    }
  __syncthreads();

  // 2-D transforms
  for (int c = 0; c < C; ++c) {
    transform_blocks(t_fwd, z + c * K * kBm3dArea, tmp, n, p, lane);
    if (wiener) transform_blocks(t_fwd, zp + c * K * kBm3dArea, tmp, n, p, lane);
  }

  // Haar along the group, shrinkage and inverse Haar: one (channel, position) column per thread
  if (tid < C * kBm3dArea) {
    const int c = tid / kBm3dArea, pp = tid % kBm3dArea;
    const float sc = sigma[b * C + c];
    float* col = z + c * K * kBm3dArea + pp;
    bm3d_haar_forward(col, n, kBm3dArea);
    long long q = 0;
    if (wiener) {
      float* pcol = zp + c * K * kBm3dArea + pp;
      bm3d_haar_forward(pcol, n, kBm3dArea);
      const float s2 = __fmul_rn(sc, sc);
      for (int j = 0; j < n; ++j) {
        const float pv = pcol[j * kBm3dArea];
        const float p2 = __fmul_rn(pv, pv);
        const float gain = __fdiv_rn(p2, __fadd_rn(p2, s2));
        col[j * kBm3dArea] = __fmul_rn(col[j * kBm3dArea], gain);
        q += bm3d_to_fixed(__fmul_rn(gain, gain));
      }
    } else {
      const float thr = static_cast<float>(threshold_factor * static_cast<double>(sc));
      for (int j = 0; j < n; ++j) {
        if (fabsf(col[j * kBm3dArea]) > thr) {
          ++q;
        } else {
          col[j * kBm3dArea] = 0.f;
        }
      }
    }
    q_part[tid] = q;
    bm3d_haar_inverse(col, n, kBm3dArea);
  }
  __syncthreads();

  // group weight (integer partial sums: their order does not matter)
  if (tid == 0) {
    double sum_q = 0.0, smin = 0.0;
    for (int c = 0; c < C; ++c) {
      long long q = 0;
      for (int i = 0; i < kBm3dArea; ++i) q += q_part[c * kBm3dArea + i];
      const double sc = static_cast<double>(sigma[b * C + c]);
      const double s2 = sc * sc;
      smin = c == 0 ? s2 : (s2 < smin ? s2 : smin);
      // explicitly rounded: nvcc would contract s2 * q + sum_q into an FMA, which the CPU (built
      // with -ffp-contract=off) does not do, and the weight would differ in the last bit
      const double term = wiener ? __dmul_rn(s2, __ddiv_rn(static_cast<double>(q), kBm3dFixedScale))
                                 : __dmul_rn(s2, static_cast<double>(q));
      sum_q = __dadd_rn(sum_q, term);
    }
    weight = bm3d_weight(sum_q, smin);
  }

  // inverse 2-D transforms (the first __syncthreads inside also publishes `weight`)
  for (int c = 0; c < C; ++c) transform_blocks(t_inv, z + c * K * kBm3dArea, tmp, n, p, lane);

  // aggregation
  const float wk = __fmul_rn(weight, win[p]);
  const unsigned long long wk_fixed = static_cast<unsigned long long>(bm3d_to_fixed(wk));
  unsigned long long* img_acc = acc + b * (C + 1) * HW;
  for (int j = lane; j < n; j += kLanes) {
    const int64_t px = pos[j] + r * W + s;
    atomicAdd(img_acc + C * HW + px, wk_fixed);
    for (int c = 0; c < C; ++c) {
      const float term = __fmul_rn(wk, z[(c * K + j) * kBm3dArea + p]);
      atomicAdd(img_acc + c * HW + px, static_cast<unsigned long long>(bm3d_to_fixed(term)));
    }
  }
}

__global__ void bm3d_normalise_kernel(const long long* __restrict__ acc, float* __restrict__ out, int C,
                                      int64_t HW, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;  // total = batch * C * HW
  const int64_t b = i / (C * HW), rest = i % (C * HW);
  const int64_t pix = rest % HW;
  const long long* img = acc + b * (C + 1) * HW;
  const long long den = img[C * HW + pix];
  out[i] = den > 0 ? static_cast<float>(__ddiv_rn(static_cast<double>(img[rest]), static_cast<double>(den))) : 0.f;
}

}  // namespace

size_t bm3d_shared_bytes(int channels, int K, bool wiener) {
  return sizeof(float) * (static_cast<size_t>(channels) * K * kBm3dArea * (wiener ? 2 : 1) + kLanes * kBm3dArea);
}

cudaError_t launch_bm3d_filter(const float* noisy, const float* pilot, const int64_t* index, const int64_t* size,
                               const float* sigma, const float* transform, const float* inverse,
                               const float* window, double threshold_factor, int64_t batch, int channels,
                               int64_t H, int64_t W, int64_t ny, int64_t nx, int K, long long* acc,
                               int* bad_group, float* out, cudaStream_t stream) {
  if (channels < 1 || channels > kBm3dMaxChannels || K < 1 || K > kBm3dMaxGroup) return cudaErrorInvalidValue;
  const int64_t groups = batch * ny * nx;
  if (groups <= 0) return cudaSuccess;
  if (groups > 2147483647LL) return cudaErrorInvalidValue;
  const size_t shared = bm3d_shared_bytes(channels, K, pilot != nullptr);
  cudaError_t err = cudaFuncSetAttribute(bm3d_group_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared));
  if (err != cudaSuccess) return err;
  bm3d_group_kernel<<<static_cast<unsigned>(groups), dim3(kBm3dArea, kLanes), shared, stream>>>(
      noisy, pilot, index, size, sigma, transform, inverse, window, threshold_factor, channels, H, W, ny * nx, K,
      reinterpret_cast<unsigned long long*>(acc), bad_group);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t total = batch * channels * H * W;
  const int threads = 256;
  bm3d_normalise_kernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream>>>(
      acc, out, channels, H * W, total);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastdenoise
