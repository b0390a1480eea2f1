// Torch glue of the BM3D collaborative-filtering CUDA kernel: checks, device guard, current
// stream, launch, and the report of invalid groups.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <optional>

#include "cpu/bm3d_check.h"
#include "fastdenoise/bm3d.h"
#include "kernels/bm3d.cuh"

namespace fastdenoise {
namespace cuda {
namespace {

at::Tensor bm3d_filter(const at::Tensor& noisy_in, const std::optional<at::Tensor>& pilot_in,
                       const at::Tensor& index_in, const at::Tensor& size_in, const at::Tensor& sigma_in,
                       const at::Tensor& transform_in, const at::Tensor& inverse_in, const at::Tensor& window_in,
                       double threshold) {
  bm3d_check_inputs(noisy_in, pilot_in, index_in, size_in, sigma_in, transform_in, inverse_in, window_in, true);
  for (const at::Tensor* t : {&index_in, &size_in, &sigma_in, &transform_in, &inverse_in, &window_in})
    TORCH_CHECK(t->device() == noisy_in.device(), "bm3d_filter: expected every tensor on ", noisy_in.device(),
                ", got one on ", t->device());
  if (pilot_in.has_value())
    TORCH_CHECK(pilot_in->device() == noisy_in.device(), "pilot: expected a tensor on ", noisy_in.device(),
                ", got ", pilot_in->device());
  c10::cuda::CUDAGuard device_guard(noisy_in.device());
  const at::Tensor noisy = noisy_in.contiguous(), index = index_in.contiguous(), size = size_in.contiguous();
  const at::Tensor sigma = sigma_in.contiguous(), transform = transform_in.contiguous();
  const at::Tensor inverse = inverse_in.contiguous(), window = window_in.contiguous();
  const std::optional<at::Tensor> pilot =
      pilot_in.has_value() ? std::optional<at::Tensor>(pilot_in->contiguous()) : std::nullopt;
  const int64_t B = noisy.size(0), C = noisy.size(1), H = noisy.size(2), W = noisy.size(3);
  const int64_t ny = index.size(1), nx = index.size(2), K = index.size(3);

  const size_t shared = bm3d_shared_bytes(static_cast<int>(C), static_cast<int>(K), pilot.has_value());
  int dev = noisy.get_device(), optin = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess,
              "fastdenoise bm3d_filter: cannot query the shared memory of device ", dev);
  TORCH_CHECK(shared <= static_cast<size_t>(optin), "bm3d_filter: a group of ", K, " blocks of ", C,
              " channels needs ", shared, " bytes of shared memory; device ", dev, " allows ", optin);

  at::Tensor acc = at::zeros({B, C + 1, H, W}, noisy.options().dtype(at::kLong));
  at::Tensor bad = at::zeros({1}, noisy.options().dtype(at::kInt));
  at::Tensor out = at::empty({B, C, H, W}, noisy.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  const cudaError_t err = launch_bm3d_filter(
      noisy.const_data_ptr<float>(), pilot.has_value() ? pilot->const_data_ptr<float>() : nullptr,
      index.const_data_ptr<int64_t>(), size.const_data_ptr<int64_t>(), sigma.const_data_ptr<float>(),
      transform.const_data_ptr<float>(), inverse.const_data_ptr<float>(), window.const_data_ptr<float>(),
      threshold, B, static_cast<int>(C), H, W, ny, nx, static_cast<int>(K),
      reinterpret_cast<long long*>(acc.mutable_data_ptr<int64_t>()), bad.mutable_data_ptr<int>(),
      out.mutable_data_ptr<float>(), stream);
  TORCH_CHECK(err == cudaSuccess, "fastdenoise bm3d_filter CUDA launch failed: ", cudaGetErrorString(err));
  // One small copy (a sync) per call: a group with out-of-range matches or a size that is not a
  // power of two <= K was skipped by the kernel, and must not pass silently.
  const int bad_group = bad.cpu().item<int>();
  TORCH_CHECK(bad_group == 0, "bm3d_filter: group ", bad_group - 1,
              " has a size that is not a power of two <= K = ", K, " or a match outside the ", H, "x", W,
              " image; sigma must also be positive");
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CUDA, m) {
  m.impl("bm3d_filter", &fastdenoise::cuda::bm3d_filter);
}
