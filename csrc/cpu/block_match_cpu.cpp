// C++ CPU kernel of block matching, registered for the CPU dispatch key.
//
// For every reference patch on the stride grid, the k candidates of its (2R+1)^2 search window
// (clipped to the image) with the smallest mean squared difference over the patch. Distances
// are summed in float32 in a fixed order (rows, then columns, of the patch: the same order as
// the CUDA kernel, and contraction into FMA is disabled by the build), so both backends give
// bitwise the same distances and, through the total order of bm_before, the same matches.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "fastdenoise/block_match.h"

namespace fastdenoise {
namespace cpu {
namespace {

// Squared differences of one row of candidates against the reference patch, summed over the
// patch: acc[t] for the candidate with top-left corner (cy, x0 + t), t < n. The loop over t is
// innermost so it vectorises across candidates, while each candidate's sum keeps the canonical
// order (patch rows, then columns) that the CUDA kernel uses too.
// On x86-64 with GCC it is compiled for AVX2 and for the baseline (the loader picks the clone
// the CPU runs); both round every operation the same way, so the distances do not change.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void ssd_row(const float* top_left, const float* ref, int64_t W, int64_t patch, int64_t n,
             float* __restrict acc) {
  for (int64_t t = 0; t < n; ++t) acc[t] = 0.f;
  for (int64_t r = 0; r < patch; ++r) {
    const float* row = top_left + r * W;
    for (int64_t c = 0; c < patch; ++c) {
      const float v = ref[r * patch + c];
      const float* src = row + c;
      for (int64_t t = 0; t < n; ++t) {
        const float d = src[t] - v;
        acc[t] = acc[t] + d * d;
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> block_match(const at::Tensor& guide_in, int64_t patch,
                                               int64_t search, int64_t k, int64_t stride) {
  TORCH_CHECK(guide_in.device().is_cpu(), "guide: expected a cpu tensor, got ", guide_in.device());
  TORCH_CHECK(guide_in.dim() == 3, "guide: expected 3 dims (B, H, W), got ", guide_in.dim());
  TORCH_CHECK(guide_in.scalar_type() == at::kFloat, "guide: expected float32, got ", guide_in.scalar_type());
  const int64_t B = guide_in.size(0), H = guide_in.size(1), W = guide_in.size(2);
  TORCH_CHECK(B > 0 && patch >= 1 && patch <= H && patch <= W, "patch: expected 1 <= patch <= min(H, W), got ",
              patch, " for ", guide_in.sizes());
  TORCH_CHECK(search >= 1 && search % 2 == 1, "search: expected an odd window size, got ", search);
  TORCH_CHECK(stride >= 1, "stride: expected >= 1, got ", stride);
  TORCH_CHECK(H * W < (int64_t(1) << 31), "guide: expected H * W < 2^31, got ", guide_in.sizes());
  const int64_t R = search / 2;
  const int64_t min_candidates = bm_min_candidates(H, W, patch, search);
  TORCH_CHECK(k >= 1 && k <= min_candidates, "k: expected 1 <= k <= ", min_candidates,
              " (the smallest search window here), got ", k);

  const at::Tensor guide = guide_in.contiguous();
  const int64_t ny = bm_grid_count(H, patch, stride), nx = bm_grid_count(W, patch, stride);
  at::Tensor index = at::empty({B, ny, nx, k}, guide.options().dtype(at::kLong));
  at::Tensor dist = at::empty({B, ny, nx, k}, guide.options());
  const float* g = guide.const_data_ptr<float>();
  int64_t* out_i = index.mutable_data_ptr<int64_t>();
  float* out_d = dist.mutable_data_ptr<float>();
  const float area = static_cast<float>(patch * patch);

  at::parallel_for(0, B * ny, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> best_d(k), ref(patch * patch), acc(2 * R + 1);
    std::vector<int64_t> best_k(k);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / ny, gy = row % ny;
      const float* img = g + b * H * W;
      const int64_t py = bm_grid_pos(gy, H, patch, stride);
      const int64_t y0 = py - R > 0 ? py - R : 0, y1 = py + R < H - patch ? py + R : H - patch;
      for (int64_t gx = 0; gx < nx; ++gx) {
        const int64_t px = bm_grid_pos(gx, W, patch, stride);
        const int64_t x0 = px - R > 0 ? px - R : 0, x1 = px + R < W - patch ? px + R : W - patch;
        const int64_t nwx = x1 - x0 + 1;
        for (int64_t r = 0; r < patch; ++r)
          for (int64_t c = 0; c < patch; ++c) ref[r * patch + c] = img[(py + r) * W + px + c];
        int64_t filled = 0;
        for (int64_t cy = y0; cy <= y1; ++cy) {
          ssd_row(img + cy * W + x0, ref.data(), W, patch, nwx, acc.data());
          for (int64_t t = 0; t < nwx; ++t) {
            const int64_t cx = x0 + t;
            const float d = acc[t] / area;
            const int64_t key = (cy == py && cx == px) ? -1 : cy * W + cx;
            if (filled == k && !bm_before(d, key, best_d[k - 1], best_k[k - 1])) continue;
            // insertion into the sorted list of the best so far
            int64_t pos = filled < k ? filled++ : k - 1;
            while (pos > 0 && bm_before(d, key, best_d[pos - 1], best_k[pos - 1])) {
              best_d[pos] = best_d[pos - 1];
              best_k[pos] = best_k[pos - 1];
              --pos;
            }
            best_d[pos] = d;
            best_k[pos] = key;
          }
        }
        const int64_t o = ((b * ny + gy) * nx + gx) * k;
        for (int64_t j = 0; j < k; ++j) {
          out_d[o + j] = best_d[j];
          out_i[o + j] = best_k[j] < 0 ? py * W + px : best_k[j];
        }
      }
    }
  });
  return {index, dist};
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("block_match", &fastdenoise::cpu::block_match);
}
