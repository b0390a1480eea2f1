// C entry points of the emulated CUDA launchers, for the tests (ctypes). Each one does what the
// torch glue in csrc/cuda/*.cpp does between its checks and its launch (the glue itself needs a
// CUDA torch), so the tests drive the launchers and kernels exactly as the glue does.
#include "block_match.cuh"
#include "bm3d.cuh"
#include "haar.cuh"
#include "nlm.cuh"
#include "overlap_add.cuh"

#include "fastdenoise/overlap_add.h"

using namespace fastdenoise;

namespace {

// The glue's loop: tiles (N, C, th, tw) in tile order, positions (N, 3) = (image, y, x), window
// (th, tw) or (N, th, tw) in the accumulation dtype; out (B, C, H, W), weight (B, 1, H, W).
template <typename Tile, typename Acc>
int overlap_add_tiles(const Tile* tiles, const long long* pos, long long N, long long C, long long th, long long tw,
                      const Acc* window, int per_tile_window, Acc* out, Acc* weight, long long H, long long W) {
  for (long long n = 0; n < N; ++n) {
    OverlapAddRegion r;
    if (!overlap_add_clip(pos[3 * n + 1], pos[3 * n + 2], C, th, tw, H, W, &r)) continue;
    const long long b = pos[3 * n];
    const cudaError_t err = cuda::launch_overlap_add<Tile, Acc>(
        tiles + n * C * th * tw, window + (per_tile_window ? n * th * tw : 0), out + b * C * H * W, weight + b * H * W,
        r, nullptr);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

extern "C" {

// max_grid_yz: the grid y / z limit the launchers split the work by (CUDA's 65535, lowered by
// tests so that a small batch or image takes several launches)
int fd_emu_block_match(const float* guide, long long batch, long long H, long long W, int patch, int search, int k,
                       int stride, long long* index, float* dist, long long max_grid_yz) {
  return cuda::launch_block_match(guide, batch, H, W, patch, search, k, stride, reinterpret_cast<int64_t*>(index),
                                  dist, nullptr, max_grid_yz);
}

int fd_emu_nlm(const float* x, const float* sigma, const float* h, float* out, long long batch, int channels,
               long long H, long long W, int patch, int search, long long max_grid_yz) {
  return cuda::launch_nlm(x, sigma, h, out, batch, channels, H, W, patch, search, nullptr, max_grid_yz);
}

unsigned long long fd_emu_nlm_shared_bytes(int channels, int patch, int search) {
  return cuda::nlm_shared_bytes(channels, patch, search);
}

int fd_emu_bm3d_filter(const float* noisy, const float* pilot, const long long* index, const long long* size,
                       const float* sigma, const float* transform, const float* inverse, const float* window,
                       double threshold, long long batch, int channels, long long H, long long W, long long ny,
                       long long nx, int K, long long* acc, int* bad_group, float* out) {
  return cuda::launch_bm3d_filter(noisy, pilot, reinterpret_cast<const int64_t*>(index),
                                  reinterpret_cast<const int64_t*>(size), sigma, transform, inverse, window, threshold,
                                  batch, channels, H, W, ny, nx, K, acc, bad_group, out, nullptr);
}

unsigned long long fd_emu_bm3d_shared_bytes(int channels, int K, int wiener) {
  return cuda::bm3d_shared_bytes(channels, K, wiener != 0);
}

// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16
int fd_emu_haar(int forward, int dtype, const void* in, void* out, long long n, long long c, long long h,
                long long w, int channels_last, int variant) {
  const HaarShape s{n, c, h, w};
  const cuda::Layout l = channels_last ? cuda::Layout::NHWC : cuda::Layout::NCHW;
  switch (dtype) {
#define FD_CASE(code, T)                                                                              \
  case code: {                                                                                        \
    const T* src = static_cast<const T*>(in);                                                         \
    T* dst = static_cast<T*>(out);                                                                    \
    return forward ? cuda::launch_haar_dwt2d<T>(src, dst, s, l, variant, nullptr)                     \
                   : cuda::launch_haar_idwt2d<T>(src, dst, s, l, variant, nullptr);                   \
  }
    FD_CASE(0, float)
    FD_CASE(1, double)
    FD_CASE(2, __half)
    FD_CASE(3, __nv_bfloat16)
#undef FD_CASE
  }
  return cudaErrorInvalidValue;
}

int fd_emu_overlap_add(int tile_dtype, int acc_dtype, const void* tiles, const long long* pos, long long N,
                       long long C, long long th, long long tw, const void* window, int per_tile_window, void* out,
                       void* weight, long long H, long long W) {
#define FD_TILE(code, T, Acc)                                                                               \
  case code:                                                                                                \
    return overlap_add_tiles<T, Acc>(static_cast<const T*>(tiles), pos, N, C, th, tw,                       \
                                     static_cast<const Acc*>(window), per_tile_window, static_cast<Acc*>(out), \
                                     static_cast<Acc*>(weight), H, W);
  if (acc_dtype == 0) {
    switch (tile_dtype) {
      FD_TILE(0, float, float)
      FD_TILE(1, double, float)
      FD_TILE(2, __half, float)
      FD_TILE(3, __nv_bfloat16, float)
    }
  } else if (acc_dtype == 1) {
    switch (tile_dtype) {
      FD_TILE(0, float, double)
      FD_TILE(1, double, double)
      FD_TILE(2, __half, double)
      FD_TILE(3, __nv_bfloat16, double)
    }
  }
#undef FD_TILE
  return cudaErrorInvalidValue;
}

}  // extern "C"
