// Argument checks of the overlap_add op, shared by its CPU kernel and its CUDA glue (torch
// headers; the kernels' own headers are torch-free). The Python function
// (fastdenoise/ops/overlap_add.py) raises the typed errors first; these repeat the essentials.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fastdenoise {

inline void overlap_add_check_inputs(const at::Tensor& tiles, const at::Tensor& positions, const at::Tensor& out,
                                     const at::Tensor& weight_out, const at::Tensor& window, bool want_cuda) {
  const char* device = want_cuda ? "cuda" : "cpu";
  auto on_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(want_cuda ? t.is_cuda() : t.device().is_cpu(), name, ": expected a ", device, " tensor, got ",
                t.device());
    TORCH_CHECK(t.device() == out.device(), name, ": expected a tensor on ", out.device(), " (the device of out), got ",
                t.device());
  };
  on_device(out, "out");
  TORCH_CHECK(out.dim() == 4, "out: expected 4 dims (B, C, H, W), got ", out.sizes());
  const at::ScalarType acc = out.scalar_type();
  TORCH_CHECK(acc == at::kFloat || acc == at::kDouble, "out: expected float32 or float64, got ", acc);
  TORCH_CHECK(out.is_contiguous(), "out: expected a contiguous (NCHW) tensor (it is accumulated in place), got strides ",
              out.strides());
  const int64_t B = out.size(0), C = out.size(1), H = out.size(2), W = out.size(3);

  on_device(weight_out, "weight_out");
  TORCH_CHECK(weight_out.dim() == 4 && weight_out.size(0) == B && weight_out.size(1) == 1 &&
                  weight_out.size(2) == H && weight_out.size(3) == W,
              "weight_out: expected shape (", B, ", 1, ", H, ", ", W, "), got ", weight_out.sizes());
  TORCH_CHECK(weight_out.scalar_type() == acc, "weight_out: expected out's dtype ", acc, ", got ",
              weight_out.scalar_type());
  TORCH_CHECK(weight_out.is_contiguous(), "weight_out: expected a contiguous tensor, got strides ",
              weight_out.strides());

  on_device(tiles, "tiles");
  TORCH_CHECK(tiles.dim() == 4, "tiles: expected 4 dims (N, C, th, tw), got ", tiles.sizes());
  const at::ScalarType tt = tiles.scalar_type();
  TORCH_CHECK(tt == at::kHalf || tt == at::kBFloat16 || tt == at::kFloat || tt == at::kDouble,
              "tiles: expected float16, bfloat16, float32 or float64, got ", tt);
  const int64_t N = tiles.size(0), th = tiles.size(2), tw = tiles.size(3);
  TORCH_CHECK(tiles.size(1) == C, "tiles: expected ", C, " channels (out's), got ", tiles.sizes());

  on_device(window, "window");
  TORCH_CHECK(window.scalar_type() == acc, "window: expected out's dtype ", acc, ", got ", window.scalar_type());
  const bool shared = window.dim() == 2 && window.size(0) == th && window.size(1) == tw;
  const bool per_tile = window.dim() == 3 && window.size(0) == N && window.size(1) == th && window.size(2) == tw;
  TORCH_CHECK(shared || per_tile, "window: expected shape (", th, ", ", tw, ") or (", N, ", ", th, ", ", tw, "), got ",
              window.sizes());

  TORCH_CHECK(positions.device().is_cpu(), "positions: expected a cpu tensor (it is read on the host), got ",
              positions.device());
  TORCH_CHECK(positions.scalar_type() == at::kLong, "positions: expected int64, got ", positions.scalar_type());
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == N && positions.size(1) == 3,
              "positions: expected shape (", N, ", 3) (image, row, column per tile), got ", positions.sizes());

  // The accumulators are written in place: they may share no memory with each other or with
  // what is read (one thread per output element assumes it).
  auto disjoint = [](const at::Tensor& a, const at::Tensor& b) {
    const at::MemOverlapStatus s = at::get_overlap_status(a, b);
    return s == at::MemOverlapStatus::No || s == at::MemOverlapStatus::TooHard;
  };
  TORCH_CHECK(disjoint(out, weight_out), "overlap_add: out and weight_out share memory");
  TORCH_CHECK(disjoint(out, tiles) && disjoint(weight_out, tiles), "overlap_add: tiles share memory with out or weight_out");
  TORCH_CHECK(disjoint(out, window) && disjoint(weight_out, window),
              "overlap_add: window shares memory with out or weight_out");
}

// The image index of every tile in [0, B): checked for all tiles before any is applied, so a bad
// position leaves out and weight_out untouched. pos: (N, 3) int64, contiguous, on the host.
inline void overlap_add_check_images(const int64_t* pos, int64_t N, int64_t B) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = pos[3 * n];
    TORCH_CHECK(b >= 0 && b < B, "positions: expected image indices in [0, ", B, ") (out has ", B,
                " images), got ", b, " for tile ", n);
  }
}

}  // namespace fastdenoise
