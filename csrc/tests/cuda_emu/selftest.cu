// Small kernels, some with known defects, that show the emulator's checks can fail
// (tests/cuda_emu/test_cuda_kernels_emulated.py). Valid CUDA; built only into the emulator.
#include <cuda_runtime.h>

namespace {

// 0: a warp-shuffle sum per warp of 64 threads: out[w] = sum of the thread indices of warp w.
__global__ void warp_sum_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

// 1: half of warp 0 waits at __syncwarp while the rest of the block waits at __syncthreads.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x >= 16 && threadIdx.x < 32) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// 2: every thread writes one shared variable before the barrier: the value read after it
// depends on which thread wrote last.
__global__ void racy_kernel(float* out) {
  __shared__ float v;
  v = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = v;
}

// 3: reads dynamic shared memory that nothing wrote.
__global__ void uninitialised_shared_kernel(float* out) {
  extern __shared__ float scratch[];
  if (threadIdx.x == 0) out[0] = scratch[5];
}

// 6: each warp sums its lanes and publishes the sum in shared memory; every thread reads both
// sums; the next round rewrites them with no __syncthreads after the reads. Threads that run in
// step read the first round's sums; a warp that runs ahead overwrites a sum the other warp has
// not read yet (the schedule "warps ahead" shows it, the in-step schedules cannot).
__global__ void cross_warp_race_kernel(float* out) {
  __shared__ float sums[2];
  float total = 0.f;
  for (int round = 0; round < 2; ++round) {
    float v = static_cast<float>(threadIdx.x + 100 * round);
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (threadIdx.x % 32 == 0) sums[threadIdx.x / 32] = v;
    __syncthreads();
    total += sums[0] + sums[1];
  }
  out[threadIdx.x] = total;
}

}  // namespace

extern "C" int fd_emu_selftest(int which, float* out, int n) {
  (void)n;
  switch (which) {
    case 0: warp_sum_kernel<<<1, 64>>>(out); break;
    case 1: divergent_barrier_kernel<<<1, 64>>>(out); break;
    case 2: racy_kernel<<<1, 64>>>(out); break;
    case 3: uninitialised_shared_kernel<<<1, 32, 64 * sizeof(float)>>>(out); break;
    case 4: uninitialised_shared_kernel<<<1, 32, 64 * 1024>>>(out); break;  // > 48 KiB, no opt-in
    case 5: racy_kernel<<<1, 2048>>>(out); break;                            // > 1024 threads
    case 6: cross_warp_race_kernel<<<1, 64>>>(out); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
