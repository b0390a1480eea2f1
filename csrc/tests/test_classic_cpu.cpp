// ctest: the CPU block matching and NLM kernels against direct evaluations of their definitions
// (fastdenoise/ops/block_match.py and nlm.py are the specs).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <vector>

#include "fastdenoise/block_match.h"
#include "fastdenoise/nlm.h"
#include "tests/expect.h"

namespace fastdenoise {
namespace cpu {
std::tuple<at::Tensor, at::Tensor> block_match(const at::Tensor& guide, int64_t patch, int64_t search,
                                               int64_t k, int64_t stride);
at::Tensor nlm(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& h, int64_t patch,
               int64_t search);
}  // namespace cpu
}  // namespace fastdenoise

namespace {

using fastdenoise_test::expect;

// Block matching by the definition: every candidate in double, sorted by (distance, key).
void check_block_match(int64_t H, int64_t W, int64_t patch, int64_t search, int64_t k, int64_t stride,
                       bool integer_image) {
  at::Tensor g = integer_image ? at::randint(0, 3, {2, H, W}, at::kFloat) : at::rand({2, H, W}, at::kFloat);
  auto [index, dist] = fastdenoise::cpu::block_match(g, patch, search, k, stride);
  auto ga = g.accessor<float, 3>();
  auto ia = index.accessor<int64_t, 4>();
  auto da = dist.accessor<float, 4>();
  const int64_t ny = fastdenoise::bm_grid_count(H, patch, stride), nx = fastdenoise::bm_grid_count(W, patch, stride);
  expect(index.size(1) == ny && index.size(2) == nx && index.size(3) == k, "block_match shape");
  const int64_t R = search / 2;
  bool same = true, close = true;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < ny; ++i)
      for (int64_t j = 0; j < nx; ++j) {
        const int64_t py = fastdenoise::bm_grid_pos(i, H, patch, stride), px = fastdenoise::bm_grid_pos(j, W, patch, stride);
        std::vector<std::tuple<double, int64_t, int64_t>> cands;
        for (int64_t y = std::max<int64_t>(0, py - R); y <= std::min(H - patch, py + R); ++y)
          for (int64_t x = std::max<int64_t>(0, px - R); x <= std::min(W - patch, px + R); ++x) {
            double s = 0;
            for (int64_t u = 0; u < patch; ++u)
              for (int64_t v = 0; v < patch; ++v) {
                const double d = double(ga[b][y + u][x + v]) - double(ga[b][py + u][px + v]);
                s += d * d;
              }
            cands.emplace_back(s / double(patch * patch), (y == py && x == px) ? -1 : y * W + x, y * W + x);
          }
        std::sort(cands.begin(), cands.end());
        for (int64_t t = 0; t < k; ++t) {
          const double d = std::get<0>(cands[t]);
          close = close && std::fabs(da[b][i][j][t] - d) <= 1e-5 * (1 + d);
          // exact sums (integer images): the same matches in the same order; random images:
          // the same wherever the distance is not tied to rounding with a neighbour
          const bool tied = (t > 0 && std::fabs(std::get<0>(cands[t - 1]) - d) < 1e-5) ||
                            (t + 1 < int64_t(cands.size()) && std::fabs(std::get<0>(cands[t + 1]) - d) < 1e-5);
          if (integer_image || !tied) same = same && ia[b][i][j][t] == std::get<2>(cands[t]);
        }
      }
  expect(close, "block_match distances match the definition");
  expect(same, "block_match indices match the definition");
}

// NLM with a huge sigma: every weight is 1, so the output is the mean of the reflected window.
void check_nlm_box(int64_t H, int64_t W, int64_t C, int64_t search) {
  at::Tensor x = at::rand({1, C, H, W}, at::kFloat);
  at::Tensor sigma = at::full({1}, 100.f), h = at::full({1}, 0.1f);
  at::Tensor out = fastdenoise::cpu::nlm(x, sigma, h, 5, search);
  auto xa = x.accessor<float, 4>();
  auto oa = out.accessor<float, 4>();
  const int64_t R = search / 2;
  double worst = 0;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t xo = 0; xo < W; ++xo) {
        double s = 0;
        for (int64_t dy = -R; dy <= R; ++dy)
          for (int64_t dx = -R; dx <= R; ++dx)
            s += xa[0][c][fastdenoise::nlm_reflect(y + dy, H)][fastdenoise::nlm_reflect(xo + dx, W)];
        worst = std::max(worst, std::fabs(s / double(search * search) - oa[0][c][y][xo]));
      }
  expect(worst < 1e-5, "nlm with a huge sigma is the mean of the reflected window");
}

// NLM with a tiny h and no variance subtraction: only the patch itself has weight.
void check_nlm_identity() {
  at::Tensor x = at::rand({2, 3, 17, 13}, at::kFloat);
  at::Tensor out = fastdenoise::cpu::nlm(x, at::zeros({2}), at::full({2}, 1e-6f), 7, 21);
  expect(at::allclose(out, x, 0, 1e-6), "nlm with a tiny h is the identity");
}

}  // namespace

int main() {
  at::manual_seed(20261121);
  check_block_match(23, 29, 4, 9, 12, 2, true);
  check_block_match(37, 41, 8, 39, 16, 3, false);
  check_block_match(9, 12, 1, 3, 4, 1, false);
  expect(fastdenoise::bm_min_candidates(37, 41, 8, 39) == 20 * 20, "smallest window of a 37x41 image");
  check_nlm_box(11, 14, 1, 5);
  check_nlm_box(6, 3, 2, 7);  // windows wider than the image: repeated reflection
  check_nlm_identity();
  return fastdenoise_test::report();
}
