// Torch glue of the overlap-add CUDA kernel: checks, device guard, current stream, and one
// launch per tile, in tile order (positions are read on the host).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cpu/overlap_add_check.h"
#include "fastdenoise/overlap_add.h"
#include "kernels/overlap_add.cuh"

namespace fastdenoise {
namespace cuda {
namespace {

template <typename Tile, typename Acc>
void run_tiles(const Tile* ptiles, const int64_t* pos, const at::Tensor& tiles, at::Tensor& out, at::Tensor& weight_out,
               const at::Tensor& window, cudaStream_t stream) {
  const int64_t N = tiles.size(0), C = tiles.size(1), th = tiles.size(2), tw = tiles.size(3);
  const int64_t H = out.size(2), W = out.size(3), plane = H * W, tile_plane = th * tw;
  const bool per_tile = window.dim() == 3;
  const Acc* pwin = window.const_data_ptr<Acc>();
  Acc* pout = out.mutable_data_ptr<Acc>();
  Acc* pweight = weight_out.mutable_data_ptr<Acc>();
  for (int64_t n = 0; n < N; ++n) {
    OverlapAddRegion r;
    if (!overlap_add_clip(pos[3 * n + 1], pos[3 * n + 2], C, th, tw, H, W, &r)) continue;
    const int64_t b = pos[3 * n];
    const cudaError_t err = launch_overlap_add<Tile, Acc>(ptiles + n * C * tile_plane,
                                                          pwin + (per_tile ? n * tile_plane : 0),
                                                          pout + b * C * plane, pweight + b * plane, r, stream);
    TORCH_CHECK(err == cudaSuccess, "fastdenoise overlap_add CUDA launch failed (tile ", n, "): ",
                cudaGetErrorString(err));
  }
}

template <typename Acc>
void run_acc(const at::Tensor& tiles, const int64_t* pos, at::Tensor& out, at::Tensor& weight_out,
             const at::Tensor& window, cudaStream_t stream) {
  switch (tiles.scalar_type()) {
    case at::kFloat:
      run_tiles<float, Acc>(tiles.const_data_ptr<float>(), pos, tiles, out, weight_out, window, stream);
      break;
    case at::kDouble:
      run_tiles<double, Acc>(tiles.const_data_ptr<double>(), pos, tiles, out, weight_out, window, stream);
      break;
    case at::kHalf:
      run_tiles<__half, Acc>(reinterpret_cast<const __half*>(tiles.const_data_ptr<at::Half>()), pos, tiles, out,
                             weight_out, window, stream);
      break;
    case at::kBFloat16:
      run_tiles<__nv_bfloat16, Acc>(reinterpret_cast<const __nv_bfloat16*>(tiles.const_data_ptr<at::BFloat16>()),
                                    pos, tiles, out, weight_out, window, stream);
      break;
    default:
      TORCH_CHECK(false, "tiles: expected float16, bfloat16, float32 or float64, got ", tiles.scalar_type());
  }
}

void overlap_add(const at::Tensor& tiles_in, const at::Tensor& positions_in, at::Tensor& out, at::Tensor& weight_out,
                 const at::Tensor& window_in) {
  overlap_add_check_inputs(tiles_in, positions_in, out, weight_out, window_in, true);
  const int64_t N = tiles_in.size(0);
  if (N == 0) return;
  c10::cuda::CUDAGuard device_guard(out.device());
  const at::Tensor positions = positions_in.contiguous();
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  overlap_add_check_images(pos, N, out.size(0));
  const at::Tensor tiles = tiles_in.contiguous(), window = window_in.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  if (out.scalar_type() == at::kDouble) {
    run_acc<double>(tiles, pos, out, weight_out, window, stream);
  } else {
    run_acc<float>(tiles, pos, out, weight_out, window, stream);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CUDA, m) {
  m.impl("overlap_add", &fastdenoise::cuda::overlap_add);
}
