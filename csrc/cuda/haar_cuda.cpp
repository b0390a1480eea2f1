// Torch glue of the Haar CUDA kernels: checks, device guard, current stream, launch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/haar.cuh"

namespace fastdenoise {
namespace cuda {
namespace {

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_common(const at::Tensor& t, const char* name, int64_t variant) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a cuda tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, name, ": expected 4 dims, got ", t.dim());
  TORCH_CHECK(t.numel() > 0, name, ": expected a non-empty tensor, got ", t.sizes());
  TORCH_CHECK(haar_variant_valid(variant), "variant: expected 0, 1 or 2, got ", variant);
}

template <typename Launch>
void run_typed(const at::Tensor& in, at::Tensor& out, const HaarShape& s, Layout layout,
               int variant, Launch&& launch) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.get_device()).stream();
  cudaError_t err = cudaSuccess;
  switch (in.scalar_type()) {
    case at::kFloat:
      err = launch(in.const_data_ptr<float>(), out.mutable_data_ptr<float>(), s, layout, variant, stream);
      break;
    case at::kDouble:
      err = launch(in.const_data_ptr<double>(), out.mutable_data_ptr<double>(), s, layout, variant, stream);
      break;
    case at::kHalf:
      err = launch(reinterpret_cast<const __half*>(in.const_data_ptr<at::Half>()),
                   reinterpret_cast<__half*>(out.mutable_data_ptr<at::Half>()), s, layout, variant, stream);
      break;
    case at::kBFloat16:
      err = launch(reinterpret_cast<const __nv_bfloat16*>(in.const_data_ptr<at::BFloat16>()),
                   reinterpret_cast<__nv_bfloat16*>(out.mutable_data_ptr<at::BFloat16>()), s, layout,
                   variant, stream);
      break;
    default:
      TORCH_CHECK(false, "expected dtype float32, float64, float16 or bfloat16, got ", in.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "fastdenoise Haar CUDA launch failed: ", cudaGetErrorString(err));
}

struct DwtLaunch {
  template <typename T>
  cudaError_t operator()(const T* in, T* out, const HaarShape& s, Layout l, int v, cudaStream_t st) const {
    return launch_haar_dwt2d<T>(in, out, s, l, v, st);
  }
};
struct IdwtLaunch {
  template <typename T>
  cudaError_t operator()(const T* in, T* out, const HaarShape& s, Layout l, int v, cudaStream_t st) const {
    return launch_haar_idwt2d<T>(in, out, s, l, v, st);
  }
};

at::Tensor haar_dwt2d(const at::Tensor& x_in, int64_t variant) {
  check_common(x_in, "x", variant);
  TORCH_CHECK(x_in.size(2) % 2 == 0 && x_in.size(3) % 2 == 0, "x: expected even H and W, got ",
              x_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const HaarShape s{x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2};
  at::Tensor y = at::empty({s.n, 4 * s.c, s.h, s.w}, x.options().memory_format(fmt));
  run_typed(x, y, s, cl ? Layout::NHWC : Layout::NCHW, static_cast<int>(variant), DwtLaunch{});
  return y;
}

at::Tensor haar_idwt2d(const at::Tensor& y_in, int64_t variant) {
  check_common(y_in, "y", variant);
  TORCH_CHECK(y_in.size(1) % 4 == 0, "y: expected a channel count divisible by 4, got ", y_in.sizes());
  c10::cuda::CUDAGuard guard(y_in.device());
  const bool cl = is_channels_last(y_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor y = y_in.contiguous(fmt);
  const HaarShape s{y.size(0), y.size(1) / 4, y.size(2), y.size(3)};
  at::Tensor x = at::empty({s.n, s.c, 2 * s.h, 2 * s.w}, y.options().memory_format(fmt));
  run_typed(y, x, s, cl ? Layout::NHWC : Layout::NCHW, static_cast<int>(variant), IdwtLaunch{});
  return x;
}

}  // namespace
}  // namespace cuda
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CUDA, m) {
  m.impl("haar_dwt2d", &fastdenoise::cuda::haar_dwt2d);
  m.impl("haar_idwt2d", &fastdenoise::cuda::haar_idwt2d);
}
