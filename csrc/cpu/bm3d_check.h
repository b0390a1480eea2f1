// Argument checks of the bm3d_filter op, shared by its CPU kernel and its CUDA glue (torch
// headers; the kernels' own headers are torch-free).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "fastdenoise/bm3d.h"

namespace fastdenoise {

inline void bm3d_check_inputs(const at::Tensor& noisy, const std::optional<at::Tensor>& pilot, const at::Tensor& index,
                  const at::Tensor& size, const at::Tensor& sigma, const at::Tensor& transform,
                  const at::Tensor& inverse, const at::Tensor& window, bool want_cuda) {
  const char* device = want_cuda ? "cuda" : "cpu";
  auto on_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(want_cuda ? t.is_cuda() : t.device().is_cpu(), name, ": expected a ", device,
                " tensor, got ", t.device());
  };
  on_device(noisy, "noisy");
  TORCH_CHECK(noisy.dim() == 4, "noisy: expected 4 dims (B, C, H, W), got ", noisy.sizes());
  TORCH_CHECK(noisy.scalar_type() == at::kFloat, "noisy: expected float32, got ", noisy.scalar_type());
  const int64_t B = noisy.size(0), C = noisy.size(1), H = noisy.size(2), W = noisy.size(3);
  TORCH_CHECK(B >= 1 && C >= 1 && C <= kBm3dMaxChannels, "noisy: expected 1 to ", kBm3dMaxChannels,
              " channels, got ", noisy.sizes());
  TORCH_CHECK(H >= kBm3dBlock && W >= kBm3dBlock, "noisy: expected H and W of at least ", kBm3dBlock, ", got ", noisy.sizes());
  TORCH_CHECK(H * W < (int64_t(1) << 31), "noisy: expected H * W < 2^31, got ", noisy.sizes());
  if (pilot.has_value()) {
    on_device(*pilot, "pilot");
    TORCH_CHECK(pilot->sizes() == noisy.sizes() && pilot->scalar_type() == at::kFloat,
                "pilot: expected float32 of the shape of noisy ", noisy.sizes(), ", got ", pilot->scalar_type(),
                " ", pilot->sizes());
  }
  on_device(index, "index");
  TORCH_CHECK(index.dim() == 4 && index.size(0) == B && index.scalar_type() == at::kLong,
              "index: expected int64 (B, ny, nx, K) with B = ", B, ", got ", index.scalar_type(), " ",
              index.sizes());
  TORCH_CHECK(index.size(3) >= 1 && index.size(3) <= kBm3dMaxGroup, "index: expected 1 <= K <= ",
              kBm3dMaxGroup, " matches per group, got ", index.size(3));
  on_device(size, "size");
  TORCH_CHECK(size.scalar_type() == at::kLong && size.dim() == 3 && size.size(0) == B &&
                  size.size(1) == index.size(1) && size.size(2) == index.size(2),
              "size: expected int64 (B, ny, nx) = ", index.sizes().slice(0, 3), ", got ", size.scalar_type(),
              " ", size.sizes());
  on_device(sigma, "sigma");
  TORCH_CHECK(sigma.scalar_type() == at::kFloat && sigma.dim() == 2 && sigma.size(0) == B && sigma.size(1) == C,
              "sigma: expected float32 (B, C) = (", B, ", ", C, "), got ", sigma.scalar_type(), " ",
              sigma.sizes());
  for (auto* named : {&transform, &inverse, &window}) {
    const char* name = named == &transform ? "transform" : named == &inverse ? "inverse" : "window";
    on_device(*named, name);
    TORCH_CHECK(named->scalar_type() == at::kFloat && named->dim() == 2 && named->size(0) == kBm3dBlock &&
                    named->size(1) == kBm3dBlock,
                name, ": expected float32 (8, 8), got ", named->scalar_type(), " ", named->sizes());
  }
}

}  // namespace fastdenoise
