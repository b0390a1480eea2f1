// Op schemas of the fastdenoise library and the pybind11 module fastdenoise._C.
//
// Every op is declared here once; each backend registers its kernels in its own
// TORCH_LIBRARY_IMPL (csrc/cpu/*.cpp, csrc/cuda/*.cpp). Fake implementations and autograd
// are registered from Python (fastdenoise/ops/*.py).
#include "fastdenoise/build_config.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <string>
#include <vector>

#ifndef FASTDENOISE_VERSION
#define FASTDENOISE_VERSION "unknown"
#endif
#ifndef FASTDENOISE_TORCH_VERSION
#define FASTDENOISE_TORCH_VERSION "unknown"
#endif
#ifndef FASTDENOISE_BUILD_SYSTEM
#define FASTDENOISE_BUILD_SYSTEM "unknown"
#endif
#if defined(FASTDENOISE_WITH_CUDA) && !defined(FASTDENOISE_CUDA_VERSION)
#define FASTDENOISE_CUDA_VERSION "unknown"
#endif
#ifndef FASTDENOISE_CUDA_ARCHS
#define FASTDENOISE_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastdenoise, m) {
  // Haar transforms (fastdenoise/ops/haar.py). variant: 0 orthonormal, 1 invdn, 2 mwcnn.
  m.def("haar_dwt2d(Tensor x, int variant) -> Tensor");
  m.def("haar_idwt2d(Tensor y, int variant) -> Tensor");
  // Block matching (fastdenoise/ops/block_match.py): guide (B, H, W) float32 ->
  // (index (B, ny, nx, k) int64, distance (B, ny, nx, k) float32).
  m.def("block_match(Tensor guide, int patch, int search, int k, int stride) -> (Tensor, Tensor)");
  // Pixelwise non-local means (fastdenoise/ops/nlm.py): x (B, C, H, W) float32, sigma and h (B,).
  m.def("nlm(Tensor x, Tensor sigma, Tensor h, int patch, int search) -> Tensor");
  // BM3D collaborative filtering, one stage (fastdenoise/ops/bm3d.py): noisy and pilot (B, C, H, W)
  // float32 (no pilot: hard thresholding; a pilot: Wiener), the groups' matches index
  // (B, ny, nx, K) int64 and sizes (B, ny, nx) int64, sigma (B, C) float32, the 8x8 transform,
  // its inverse and the aggregation window -> the aggregated estimate (B, C, H, W).
  m.def("bm3d_filter(Tensor noisy, Tensor? pilot, Tensor index, Tensor size, Tensor sigma, Tensor transform, "
        "Tensor inverse, Tensor window, float threshold) -> Tensor");
  // Overlap-add of tiles, in place (fastdenoise/ops/overlap_add.py): tiles (N, C, th, tw) float16 /
  // bfloat16 / float32 / float64, positions (N, 3) int64 on the CPU (image, row, column of each
  // tile's top-left pixel), out (B, C, H, W) += tile * window and weight_out (B, 1, H, W) += window,
  // both float32 or float64 and contiguous; window (th, tw) or (N, th, tw) of out's dtype. Tiles
  // are applied in order, each product and sum rounded separately (bitwise the reference).
  // Layer norm over the channels of each pixel (fastdenoise/ops/norm.py): x (B, C, H, W) float32 /
  // float64 / float16 / bfloat16, NCHW or channels_last (kept); weight (C,), bias (C,) or None
  // (None with bias_free). CPU kernel only: CUDA tensors take the Triton kernel.
  m.def("layer_norm2d(Tensor x, Tensor weight, Tensor? bias, float eps, bool bias_free) -> Tensor");
  m.def("overlap_add(Tensor tiles, Tensor positions, Tensor(a!) out, Tensor(b!) weight_out, Tensor window) -> ()");
}

namespace {

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == ';' || ch == ' ' || ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["version"] = FASTDENOISE_VERSION;
  d["torch_version"] = FASTDENOISE_TORCH_VERSION;
  d["build_system"] = FASTDENOISE_BUILD_SYSTEM;
#ifdef FASTDENOISE_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = FASTDENOISE_CUDA_VERSION;
#else
  d["cuda"] = false;
  d["cuda_version"] = pybind11::none();
#endif
  d["cuda_archs"] = split_archs(FASTDENOISE_CUDA_ARCHS);
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdenoise compiled ops (registered with the PyTorch dispatcher) and build_info()";
  m.def("build_info", &build_info,
        "What this binary was built with: version, torch_version, cuda, cuda_version, "
        "cuda_archs, compiler, build_system.");
}
