// Overlap-add of tiles: the clipping of one tile to its image, shared by the CPU kernel, the
// CUDA glue and launcher, and the C++ tests. No torch headers. The Python reference
// (fastdenoise/ops/overlap_add.py) is the spec.
#pragma once

#include <cstdint>

namespace fastdenoise {

// The part of one tile that lies inside its image, and where it goes. Every offset is int64:
// images of more than 2^31 elements work.
struct OverlapAddRegion {
  int64_t channels;  // C: channels of the tile and of the image
  int64_t th, tw;    // tile height and width (the row stride of the tile and of its window)
  int64_t H, W;      // image height and width (the row stride of out and weight_out)
  int64_t y0, x0;    // top-left pixel of the region in the image
  int64_t ty, tx;    // the same pixel in the tile
  int64_t rows, cols;  // size of the region (both > 0 when the tile touches the image)
};

// Clip a th x tw tile whose top-left pixel is at (y, x) (any int64, negative included) to an
// H x W image. Returns false, leaving r untouched, when no pixel of the tile is inside. No
// arithmetic overflows whatever y and x are: a tile is rejected before y + th is formed.
inline bool overlap_add_clip(int64_t y, int64_t x, int64_t channels, int64_t th, int64_t tw, int64_t H,
                             int64_t W, OverlapAddRegion* r) {
  if (th <= 0 || tw <= 0 || H <= 0 || W <= 0) return false;
  if (y >= H || x >= W || y <= -th || x <= -tw) return false;
  const int64_t y0 = y < 0 ? 0 : y, x0 = x < 0 ? 0 : x;
  const int64_t y1 = y + th < H ? y + th : H, x1 = x + tw < W ? x + tw : W;
  *r = OverlapAddRegion{channels, th, tw, H, W, y0, x0, y0 - y, x0 - x, y1 - y0, x1 - x0};
  return true;
}

}  // namespace fastdenoise
