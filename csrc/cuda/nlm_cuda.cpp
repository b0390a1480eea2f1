// Torch glue of the non-local means CUDA kernel: checks, device guard, current stream, launch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "fastdenoise/nlm.h"
#include "kernels/nlm.cuh"

namespace fastdenoise {
namespace cuda {
namespace {

at::Tensor nlm(const at::Tensor& x_in, const at::Tensor& sigma_in, const at::Tensor& h_in, int64_t patch,
               int64_t search) {
  TORCH_CHECK(x_in.is_cuda(), "x: expected a cuda tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4 && x_in.numel() > 0, "x: expected a non-empty (B, C, H, W) tensor, got ",
              x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "x: expected float32, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(sigma_in.dim() == 1 && sigma_in.size(0) == B && sigma_in.scalar_type() == at::kFloat &&
                  sigma_in.device() == x_in.device(),
              "sigma: expected a float32 tensor of shape (", B, ") on ", x_in.device(), ", got ", sigma_in.sizes());
  TORCH_CHECK(h_in.dim() == 1 && h_in.size(0) == B && h_in.scalar_type() == at::kFloat &&
                  h_in.device() == x_in.device(),
              "h: expected a float32 tensor of shape (", B, ") on ", x_in.device(), ", got ", h_in.sizes());
  TORCH_CHECK(patch >= 1 && patch % 2 == 1 && patch <= kNlmMaxPatch, "patch: expected an odd size <= ",
              kNlmMaxPatch, ", got ", patch);
  TORCH_CHECK(search >= 1 && search % 2 == 1, "search: expected an odd size, got ", search);

  c10::cuda::CUDAGuard device_guard(x_in.device());
  int max_smem = 0;
  cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, x_in.get_device());
  const size_t need = nlm_shared_bytes(static_cast<int>(C), static_cast<int>(patch), static_cast<int>(search));
  TORCH_CHECK(need <= static_cast<size_t>(max_smem), "nlm: patch=", patch, ", search=", search, " and ", C,
              " channels need ", need, " bytes of shared memory per block, the device has ", max_smem);
  const at::Tensor x = x_in.contiguous(), sigma = sigma_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty_like(x);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const cudaError_t err = launch_nlm(x.const_data_ptr<float>(), sigma.const_data_ptr<float>(),
                                     h.const_data_ptr<float>(), out.mutable_data_ptr<float>(), B,
                                     static_cast<int>(C), H, W, static_cast<int>(patch),
                                     static_cast<int>(search), stream);
  TORCH_CHECK(err == cudaSuccess, "fastdenoise nlm CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CUDA, m) {
  m.impl("nlm", &fastdenoise::cuda::nlm);
}
