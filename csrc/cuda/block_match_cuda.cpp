// Torch glue of the block matching CUDA kernel: checks, device guard, current stream, launch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "fastdenoise/block_match.h"
#include "kernels/block_match.cuh"

namespace fastdenoise {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> block_match(const at::Tensor& guide_in, int64_t patch,
                                               int64_t search, int64_t k, int64_t stride) {
  TORCH_CHECK(guide_in.is_cuda(), "guide: expected a cuda tensor, got ", guide_in.device());
  TORCH_CHECK(guide_in.dim() == 3, "guide: expected 3 dims (B, H, W), got ", guide_in.dim());
  TORCH_CHECK(guide_in.scalar_type() == at::kFloat, "guide: expected float32, got ", guide_in.scalar_type());
  const int64_t B = guide_in.size(0), H = guide_in.size(1), W = guide_in.size(2);
  TORCH_CHECK(B > 0 && patch >= 1 && patch <= H && patch <= W, "patch: expected 1 <= patch <= min(H, W), got ",
              patch, " for ", guide_in.sizes());
  TORCH_CHECK(search >= 1 && search % 2 == 1 && search <= kBlockMatchMaxSearch,
              "search: expected an odd window size <= ", kBlockMatchMaxSearch, ", got ", search);
  TORCH_CHECK(stride >= 1, "stride: expected >= 1, got ", stride);
  TORCH_CHECK(H * W < (int64_t(1) << 31), "guide: expected H * W < 2^31, got ", guide_in.sizes());
  const int64_t min_candidates = bm_min_candidates(H, W, patch, search);
  TORCH_CHECK(k >= 1 && k <= min_candidates, "k: expected 1 <= k <= ", min_candidates,
              " (the smallest search window here), got ", k);

  c10::cuda::CUDAGuard device_guard(guide_in.device());
  const at::Tensor guide = guide_in.contiguous();
  const int64_t ny = bm_grid_count(H, patch, stride), nx = bm_grid_count(W, patch, stride);
  at::Tensor index = at::empty({B, ny, nx, k}, guide.options().dtype(at::kLong));
  at::Tensor dist = at::empty({B, ny, nx, k}, guide.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(guide.get_device()).stream();
  const cudaError_t err = launch_block_match(
      guide.const_data_ptr<float>(), B, H, W, static_cast<int>(patch), static_cast<int>(search),
      static_cast<int>(k), static_cast<int>(stride), index.mutable_data_ptr<int64_t>(),
      dist.mutable_data_ptr<float>(), stream);
  TORCH_CHECK(err == cudaSuccess, "fastdenoise block_match CUDA launch failed: ", cudaGetErrorString(err));
  return {index, dist};
}

}  // namespace
}  // namespace cuda
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CUDA, m) {
  m.impl("block_match", &fastdenoise::cuda::block_match);
}
