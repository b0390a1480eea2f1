// C++ CPU kernel of the overlap-add of tiles, registered for the CPU dispatch key.
//
// For n = 0, 1, ..., N - 1 in that order, the part of tile n inside its image is accumulated:
// out[b, c, y + i, x + j] += tiles[n, c, i, j] * w and weight_out[b, 0, y + i, x + j] += w,
// w = window[(n,) i, j] (fastdenoise/ops/overlap_add.py is the spec). The tile value is converted
// to out's dtype (exact for float16 / bfloat16 / float32 tiles), multiplied by w, rounded, then
// added, rounded: two roundings, as the reference's `out += t * w`. The build compiles every CPU
// source with -ffp-contract=off (setup.py, CMakeLists.txt), so the product and the sum are never
// fused into one FMA and the result is bitwise the reference's.
//
// Tiles are applied one after the other. Within one tile the rows of the region (C channel rows
// of out and one of weight_out per image row) are split over threads: they never overlap, so
// each output element receives the same operations in the same order whatever the threads.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cpu/overlap_add_check.h"
#include "fastdenoise/overlap_add.h"

namespace fastdenoise {
namespace cpu {
namespace {

// Elements per parallel task (the grain of at::parallel_for, in rows, is derived from it).
constexpr int64_t kGrainElements = 32768;

// A tile value in the accumulation dtype: exact for float16 / bfloat16 / float32 (a float holds
// them exactly), rounded to nearest for float64 into float32 (as the reference's .to()).
template <typename Acc>
inline Acc to_acc(c10::Half v) { return static_cast<Acc>(static_cast<float>(v)); }
template <typename Acc>
inline Acc to_acc(c10::BFloat16 v) { return static_cast<Acc>(static_cast<float>(v)); }
template <typename Acc>
inline Acc to_acc(float v) { return static_cast<Acc>(v); }
template <typename Acc>
inline Acc to_acc(double v) { return static_cast<Acc>(v); }

// One row of the region: dst[j] = dst[j] + (Acc)src[j] * w[j], two roundings.
template <typename Tile, typename Acc>
inline void add_row(const Tile* __restrict src, const Acc* __restrict w, Acc* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const Acc prod = to_acc<Acc>(src[j]) * w[j];
    dst[j] = dst[j] + prod;
  }
}

// One row of the weight: dst[j] = dst[j] + w[j].
template <typename Acc>
inline void add_weight_row(const Acc* __restrict w, Acc* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = dst[j] + w[j];
}

template <typename Tile, typename Acc>
void overlap_add_typed(const at::Tensor& tiles, const int64_t* pos, at::Tensor& out, at::Tensor& weight_out,
                       const at::Tensor& window) {
  const int64_t N = tiles.size(0), C = tiles.size(1), th = tiles.size(2), tw = tiles.size(3);
  const int64_t H = out.size(2), W = out.size(3);
  const int64_t plane = H * W, tile_plane = th * tw;
  const bool per_tile = window.dim() == 3;
  const Tile* ptiles = tiles.const_data_ptr<Tile>();
  const Acc* pwin = window.const_data_ptr<Acc>();
  Acc* pout = out.mutable_data_ptr<Acc>();
  Acc* pweight = weight_out.mutable_data_ptr<Acc>();
  for (int64_t n = 0; n < N; ++n) {
    OverlapAddRegion r;
    if (!overlap_add_clip(pos[3 * n + 1], pos[3 * n + 2], C, th, tw, H, W, &r)) continue;
    const int64_t b = pos[3 * n];
    const Tile* tile = ptiles + n * C * tile_plane + r.ty * tw + r.tx;
    const Acc* win = pwin + (per_tile ? n * tile_plane : 0) + r.ty * tw + r.tx;
    Acc* dst = pout + b * C * plane + r.y0 * W + r.x0;
    Acc* wdst = pweight + b * plane + r.y0 * W + r.x0;
    // task k < C * rows: row k % rows of channel k / rows; k >= C * rows: a weight row
    const int64_t rows = r.rows, cols = r.cols;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / cols);
    at::parallel_for(0, (C + 1) * rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t c = k / rows, i = k % rows;
        if (c < C) {
          add_row(tile + c * tile_plane + i * tw, win + i * tw, dst + c * plane + i * W, cols);
        } else {
          add_weight_row(win + i * tw, wdst + i * W, cols);
        }
      }
    });
  }
}

template <typename Acc>
void overlap_add_acc(const at::Tensor& tiles, const int64_t* pos, at::Tensor& out, at::Tensor& weight_out,
                     const at::Tensor& window) {
  switch (tiles.scalar_type()) {
    case at::kHalf:
      overlap_add_typed<c10::Half, Acc>(tiles, pos, out, weight_out, window);
      break;
    case at::kBFloat16:
      overlap_add_typed<c10::BFloat16, Acc>(tiles, pos, out, weight_out, window);
      break;
    case at::kFloat:
      overlap_add_typed<float, Acc>(tiles, pos, out, weight_out, window);
      break;
    case at::kDouble:
      overlap_add_typed<double, Acc>(tiles, pos, out, weight_out, window);
      break;
    default:
      TORCH_CHECK(false, "tiles: expected float16, bfloat16, float32 or float64, got ", tiles.scalar_type());
  }
}

}  // namespace

void overlap_add(const at::Tensor& tiles_in, const at::Tensor& positions_in, at::Tensor& out, at::Tensor& weight_out,
                 const at::Tensor& window_in) {
  overlap_add_check_inputs(tiles_in, positions_in, out, weight_out, window_in, false);
  const int64_t N = tiles_in.size(0);
  if (N == 0) return;
  const at::Tensor tiles = tiles_in.contiguous(), positions = positions_in.contiguous();
  const at::Tensor window = window_in.contiguous();
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  overlap_add_check_images(pos, N, out.size(0));
  if (out.scalar_type() == at::kDouble) {
    overlap_add_acc<double>(tiles, pos, out, weight_out, window);
  } else {
    overlap_add_acc<float>(tiles, pos, out, weight_out, window);
  }
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("overlap_add", &fastdenoise::cpu::overlap_add);
}
