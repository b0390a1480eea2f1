// ctest: the CPU overlap-add kernel on a hand-computed case, tile order with overlapping tiles
// (a sum whose value depends on the order), clipping at every border, per-tile windows, and the
// same bits whatever the thread count (fastdenoise/ops/overlap_add.py is the spec).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "tests/expect.h"

namespace fastdenoise {
namespace cpu {
void overlap_add(const at::Tensor& tiles, const at::Tensor& positions, at::Tensor& out, at::Tensor& weight_out,
                 const at::Tensor& window);
}  // namespace cpu
}  // namespace fastdenoise

namespace {

using fastdenoise_test::expect;

at::Tensor positions_of(const std::vector<int64_t>& v) {
  return at::tensor(v, at::kLong).view({static_cast<int64_t>(v.size() / 3), 3});
}

// Two 2x2 tiles on a 3x4 image, one half outside on the left; every value small integers, so
// every sum is exact and the result can be written down.
void check_hand_computed() {
  // tile 0 at (0, 0): [[1, 2], [3, 4]]; tile 1 at (1, -1): [[5, 6], [7, 8]] (its column 0 is outside)
  at::Tensor tiles = at::tensor(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}).view({2, 1, 2, 2});
  at::Tensor window = at::tensor(std::vector<float>{1, 2, 2, 1}).view({2, 2});
  at::Tensor out = at::zeros({1, 1, 3, 4}), weight = at::zeros({1, 1, 3, 4});
  fastdenoise::cpu::overlap_add(tiles, positions_of({0, 0, 0, 0, 1, -1}), out, weight, window);
  // tile 0 * w: [[1, 4], [6, 4]] at rows 0-1, cols 0-1; tile 1 * w, column 1 only: [12, 8] at rows 1-2, col 0
  const std::vector<float> want_out = {1, 4, 0, 0, 6 + 12, 4, 0, 0, 8, 0, 0, 0};
  const std::vector<float> want_w = {1, 2, 0, 0, 2 + 2, 1, 0, 0, 1, 0, 0, 0};
  expect(at::equal(out, at::tensor(want_out).view({1, 1, 3, 4})), "hand-computed out");
  expect(at::equal(weight, at::tensor(want_w).view({1, 1, 3, 4})), "hand-computed weight");
}

// Three tiles on one pixel: 2^24, 1, -2^24 (float32). In tile order (2^24 + 1) rounds to 2^24
// and the sum is 0; any other order would give 1. The weight is 3.
void check_tile_order() {
  at::Tensor tiles = at::tensor(std::vector<float>{16777216.f, 1.f, -16777216.f}).view({3, 1, 1, 1});
  at::Tensor window = at::ones({1, 1});
  at::Tensor out = at::zeros({1, 1, 2, 2}), weight = at::zeros({1, 1, 2, 2});
  fastdenoise::cpu::overlap_add(tiles, positions_of({0, 1, 1, 0, 1, 1, 0, 1, 1}), out, weight, window);
  expect(out[0][0][1][1].item<float>() == 0.f, "tiles applied in order (2^24 + 1 - 2^24 == 0)");
  expect(weight[0][0][1][1].item<float>() == 3.f, "weight of three tiles");
  expect(out.sum().item<float>() == 0.f && weight.sum().item<float>() == 3.f, "nothing written elsewhere");
}

// The definition with explicit loops, each product rounded to Acc before the sum (volatile: this
// file is not built with -ffp-contract=off).
template <typename Acc>
void direct(const at::Tensor& tiles, const at::Tensor& pos, at::Tensor& out, at::Tensor& weight,
            const at::Tensor& window) {
  const at::Tensor t = tiles.to(out.scalar_type());
  const int64_t N = t.size(0), C = t.size(1), th = t.size(2), tw = t.size(3), H = out.size(2), W = out.size(3);
  auto ta = t.accessor<Acc, 4>();
  auto pa = pos.accessor<int64_t, 2>();
  auto oa = out.accessor<Acc, 4>();
  auto wa = weight.accessor<Acc, 4>();
  const at::Tensor win3 = window.dim() == 3 ? window : window.unsqueeze(0).expand({N, th, tw});
  auto va = win3.accessor<Acc, 3>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < th; ++i)
      for (int64_t j = 0; j < tw; ++j) {
        const int64_t b = pa[n][0], y = pa[n][1] + i, x = pa[n][2] + j;
        if (y < 0 || y >= H || x < 0 || x >= W) continue;
        const Acc w = va[n][i][j];
        for (int64_t c = 0; c < C; ++c) {
          volatile Acc prod = ta[n][c][i][j] * w;
          oa[b][c][y][x] = oa[b][c][y][x] + prod;
        }
        wa[b][0][y][x] = wa[b][0][y][x] + w;
      }
}

// Random overlapping tiles, clipped at every border, against the definition; 1 and 2 threads.
template <typename Acc>
void check_random(at::ScalarType tile_dtype, bool per_tile) {
  const at::ScalarType acc = c10::CppTypeToScalarType<Acc>::value;
  const int64_t N = 17, C = 3, th = 129, tw = 101, B = 2, H = 197, W = 183;  // > 32768 elements per tile: split over threads
  at::Tensor tiles = at::randn({N, C, th, tw}).to(tile_dtype);
  at::Tensor b = at::randint(0, B, {N, 1}, at::kLong);
  at::Tensor y = at::randint(-th, H + 1, {N, 1}, at::kLong), x = at::randint(-tw, W + 1, {N, 1}, at::kLong);
  at::Tensor pos = at::cat({b, y, x}, 1).contiguous();
  at::Tensor window = (per_tile ? at::rand({N, th, tw}) : at::rand({th, tw})).to(acc);
  at::Tensor out0 = at::randn({B, C, H, W}).to(acc), weight0 = at::rand({B, 1, H, W}).to(acc);

  at::Tensor want_out = out0.clone(), want_w = weight0.clone();
  direct<Acc>(tiles, pos, want_out, want_w, window);
  const int threads = at::get_num_threads();
  for (int nt : {1, 2}) {
    at::set_num_threads(nt);
    at::Tensor out = out0.clone(), weight = weight0.clone();
    fastdenoise::cpu::overlap_add(tiles, pos, out, weight, window);
    char what[160];
    std::snprintf(what, sizeof what, "random tiles bitwise the definition (tiles %s, out %s, %s window, %d threads)",
                  c10::toString(tile_dtype), c10::toString(acc), per_tile ? "per-tile" : "shared", nt);
    expect(at::equal(out, want_out) && at::equal(weight, want_w), what);
  }
  at::set_num_threads(threads);
}

}  // namespace

int main() {
  at::manual_seed(20261122);
  check_hand_computed();
  check_tile_order();
  for (at::ScalarType dt : {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble}) {
    check_random<float>(dt, false);
    check_random<double>(dt, true);
  }
  check_random<float>(at::kFloat, true);
  return fastdenoise_test::report();
}
