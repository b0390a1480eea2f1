// CPU Haar kernels, callable directly (the C++ tests do) as well as through the dispatcher.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastdenoise {
namespace cpu {
at::Tensor haar_dwt2d(const at::Tensor& x, int64_t variant);
at::Tensor haar_idwt2d(const at::Tensor& y, int64_t variant);
}  // namespace cpu
}  // namespace fastdenoise
