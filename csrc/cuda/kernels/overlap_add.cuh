// Typed launcher of the overlap-add CUDA kernel. Pure CUDA: no torch headers.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

#include "fastdenoise/overlap_add.h"

namespace fastdenoise {
namespace cuda {

// Accumulates one tile into its image, over the region r (from overlap_add_clip):
//   out[c, r.y0 + i, r.x0 + j] += (Acc)tile[c, r.ty + i, r.tx + j] * window[r.ty + i, r.tx + j]
//   weight[r.y0 + i, r.x0 + j] += window[r.ty + i, r.tx + j]
// for c < r.channels, i < r.rows, j < r.cols; each product and sum rounded separately (no FMA),
// as the CPU kernel. tile: the tile's (C, th, tw) values, window: its (th, tw) weights, out: its
// image's (C, H, W) plane, weight: its image's (H, W) plane; all contiguous on the device, out
// and weight disjoint. Tile: float, double, __half, __nv_bfloat16; Acc: float or double.
// One thread per output element; launches on `stream` (tiles queued in order are applied in
// order). Returns the launch error (cudaSuccess when queued).
template <typename Tile, typename Acc>
cudaError_t launch_overlap_add(const Tile* tile, const Acc* window, Acc* out, Acc* weight, OverlapAddRegion r,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdenoise
