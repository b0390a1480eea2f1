// ctest: the CPU BM3D collaborative-filtering kernel against direct consequences of its
// definition (fastdenoise/ops/bm3d.py is the spec): the Haar butterflies invert each other and
// preserve energy; with nothing removed the aggregate of exact reconstructions is the input;
// a constant image keeps only the DC coefficient and comes back unchanged; the output is bitwise
// the same on 1 and 2 threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <vector>

#include "fastdenoise/bm3d.h"
#include "tests/expect.h"

namespace fastdenoise {
namespace cpu {
at::Tensor bm3d_filter(const at::Tensor& noisy, const std::optional<at::Tensor>& pilot, const at::Tensor& index,
                       const at::Tensor& size, const at::Tensor& sigma, const at::Tensor& transform,
                       const at::Tensor& inverse, const at::Tensor& window, double threshold);
}  // namespace cpu
}  // namespace fastdenoise

namespace {

using fastdenoise_test::expect;

void check_haar() {
  for (int n = 1; n <= fastdenoise::kBm3dMaxGroup; n *= 2) {
    std::vector<float> v(n), w(n);
    double energy = 0.0;
    for (int i = 0; i < n; ++i) {
      v[i] = w[i] = std::sin(1.7f * i) + 0.25f * i;
      energy += double(v[i]) * v[i];
    }
    fastdenoise::bm3d_haar_forward(w.data(), n, 1);
    double e2 = 0.0, sum = 0.0;
    for (int i = 0; i < n; ++i) {
      e2 += double(w[i]) * w[i];
      sum += v[i];
    }
    expect(std::fabs(e2 - energy) <= 1e-5 * energy, "Haar forward keeps the energy");
    expect(std::fabs(w[0] - sum / std::sqrt(double(n))) <= 1e-5 * std::fabs(sum), "Haar DC = sum / sqrt(n)");
    fastdenoise::bm3d_haar_inverse(w.data(), n, 1);
    float err = 0.f;
    for (int i = 0; i < n; ++i) err = std::fmax(err, std::fabs(w[i] - v[i]));
    expect(err <= 1e-5f, "Haar inverse of forward is the identity");
  }
}

// Groups on a step-3 grid: every block matched with its neighbours 0, 3, 6, ... pixels to the
// right (clipped), n = the largest power of two that fits.
void make_groups(int64_t B, int64_t H, int64_t W, int64_t K, at::Tensor& index, at::Tensor& size) {
  const int64_t ny = (H - 8 + 2) / 3 + 1, nx = (W - 8 + 2) / 3 + 1;
  index = at::zeros({B, ny, nx, K}, at::kLong);
  size = at::zeros({B, ny, nx}, at::kLong);
  auto ia = index.accessor<int64_t, 4>();
  auto sa = size.accessor<int64_t, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t gy = 0; gy < ny; ++gy)
      for (int64_t gx = 0; gx < nx; ++gx) {
        const int64_t py = std::min<int64_t>(gy * 3, H - 8), px = std::min<int64_t>(gx * 3, W - 8);
        int64_t count = 0;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t x = px + 3 * j;
          if (x > W - 8) break;
          ia[b][gy][gx][j] = py * W + x;
          ++count;
        }
        int64_t n = 1;
        while (2 * n <= count) n *= 2;
        sa[b][gy][gx] = n;
      }
}

at::Tensor dct8() {
  at::Tensor d = at::empty({8, 8}, at::kFloat);
  for (int k = 0; k < 8; ++k)
    for (int i = 0; i < 8; ++i)
      d[k][i] = static_cast<float>((k == 0 ? std::sqrt(1.0 / 8) : std::sqrt(2.0 / 8)) *
                                   std::cos(M_PI * (2 * i + 1) * k / 16.0));
  return d;
}

void check_filter() {
  const int64_t B = 2, C = 3, H = 27, W = 35;
  at::Tensor x = at::rand({B, C, H, W}, at::kFloat);
  at::Tensor index, size;
  make_groups(B, H, W, 8, index, size);
  at::Tensor sigma = at::full({B, C}, 0.1f, at::kFloat);
  at::Tensor t = dct8(), ti = t.t().contiguous();
  at::Tensor win = at::ones({8, 8}, at::kFloat);

  // nothing removed: the input comes back
  at::Tensor same = fastdenoise::cpu::bm3d_filter(x, std::nullopt, index, size, sigma, t, ti, win, 0.0);
  expect((same - x).abs().max().item<float>() <= 1e-5f, "threshold 0 gives back the input");

  // a constant image: only the DC survives a threshold of 2.7 sigma, the constant comes back
  at::Tensor flat = at::full({B, C, H, W}, 0.625f, at::kFloat);
  at::Tensor kept = fastdenoise::cpu::bm3d_filter(flat, std::nullopt, index, size, sigma, t, ti, win, 2.7);
  expect((kept - flat).abs().max().item<float>() <= 1e-5f, "a constant image is a fixed point");

  // Wiener with a pilot far above the noise: gains ~1, the input comes back
  at::Tensor tiny = at::full({B, C}, 1e-6f, at::kFloat);
  at::Tensor pilot = x + 1.f;
  at::Tensor wien = fastdenoise::cpu::bm3d_filter(x, pilot, index, size, tiny, t, ti, win, 0.0);
  expect((wien - x).abs().max().item<float>() <= 1e-4f, "Wiener with negligible noise gives back the input");

  // deterministic on any thread count
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  at::Tensor one = fastdenoise::cpu::bm3d_filter(x, pilot, index, size, sigma, t, ti, win, 0.0);
  at::set_num_threads(2);
  at::Tensor two = fastdenoise::cpu::bm3d_filter(x, pilot, index, size, sigma, t, ti, win, 0.0);
  at::set_num_threads(threads);
  expect(at::equal(one, two), "1 and 2 threads give bitwise the same output");
}

}  // namespace

int main() {
  at::manual_seed(20261121);
  check_haar();
  check_filter();
  return fastdenoise_test::report();
}
