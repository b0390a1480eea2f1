// Block matching conventions shared by the CPU kernel, the CUDA kernel and the tests.
// No torch headers. The Python reference (fastdenoise/ops/block_match.py) is the spec.
#pragma once

#include <cstdint>

#include "fastdenoise/haar.h"  // FD_HOST_DEVICE

namespace fastdenoise {

// Reference patches: top-left corners min(i * stride, extent - patch) for i = 0 .. n - 1, with
// n = ceil((extent - patch) / stride) + 1, so the last patch touches the border.
FD_HOST_DEVICE inline int64_t bm_grid_count(int64_t extent, int64_t patch, int64_t stride) {
  return (extent - patch + stride - 1) / stride + 1;
}
FD_HOST_DEVICE inline int64_t bm_grid_pos(int64_t i, int64_t extent, int64_t patch, int64_t stride) {
  const int64_t p = i * stride;
  return p < extent - patch ? p : extent - patch;
}

// Candidates of the smallest (corner) search window: k may not exceed it.
FD_HOST_DEVICE inline int64_t bm_min_candidates(int64_t H, int64_t W, int64_t patch, int64_t search) {
  const int64_t R = search / 2;
  return ((R < H - patch ? R : H - patch) + 1) * ((R < W - patch ? R : W - patch) + 1);
}

// Candidate order: smaller distance first; at equal distance the reference patch itself, then
// raster order of the top-left corner. `key` is -1 for the reference patch, y * W + x otherwise.
FD_HOST_DEVICE inline bool bm_before(float da, int64_t ka, float db, int64_t kb) {
  return da < db || (da == db && ka < kb);
}

}  // namespace fastdenoise
