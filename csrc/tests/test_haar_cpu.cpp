// ctest: the CPU Haar kernels against a direct evaluation of the formula, every variant,
// float32/float64/float16/bfloat16, NCHW and channels_last, odd channel counts, batch > 1,
// and the inverse round trip.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

#include "cpu/haar_cpu.h"
#include "fastdenoise/haar.h"

namespace {

int g_pass = 0, g_fail = 0;

void expect(bool ok, const char* what, int variant, at::ScalarType dt, bool cl) {
  if (ok) {
    ++g_pass;
  } else {
    ++g_fail;
    std::printf("FAIL: %s (variant %d, dtype %s, channels_last %d)\n", what, variant,
                c10::toString(dt), cl ? 1 : 0);
  }
}

// Forward transform by the definition, in float64 with explicit loops.
at::Tensor naive_dwt(const at::Tensor& x64, int variant) {
  const auto k = fastdenoise::haar_coeffs(variant);
  const int64_t n = x64.size(0), c = x64.size(1), h = x64.size(2) / 2, w = x64.size(3) / 2;
  at::Tensor y = at::zeros({n, 4 * c, h, w}, x64.options());
  auto xa = x64.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) {
          const double v[4] = {xa[b][ch][2 * i][2 * j], xa[b][ch][2 * i][2 * j + 1],
                               xa[b][ch][2 * i + 1][2 * j], xa[b][ch][2 * i + 1][2 * j + 1]};
          for (int q = 0; q < 4; ++q) {
            double s = 0;
            for (int e = 0; e < 4; ++e) s += k.sign[q][e] * v[e];
            ya[b][q * c + ch][i][j] = k.fwd * s;
          }
        }
  return y;
}

double max_abs(const at::Tensor& a) { return a.abs().max().item<double>(); }

}  // namespace

int main() {
  at::manual_seed(20261121);
  const at::ScalarType dtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  for (int variant = 0; variant < fastdenoise::kHaarNumVariants; ++variant) {
    for (at::ScalarType dt : dtypes) {
      for (bool cl : {false, true}) {
        at::Tensor x = at::randn({3, 5, 6, 10}, at::kDouble).to(dt);
        if (cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
        const at::Tensor x_before = x.clone();
        const at::Tensor ref = naive_dwt(x.to(at::kDouble).contiguous(), variant);
        const at::Tensor y = fastdenoise::cpu::haar_dwt2d(x, variant);
        // Tolerance: one rounding of the output in its dtype (reference in float64).
        const double eps = dt == at::kDouble ? 1e-12 : dt == at::kFloat ? 1e-5 : dt == at::kHalf ? 4e-3 : 3e-2;
        const double scale = max_abs(ref);
        expect(y.scalar_type() == dt, "dwt keeps dtype", variant, dt, cl);
        expect(y.sizes() == at::IntArrayRef({3, 20, 3, 5}), "dwt shape", variant, dt, cl);
        expect(cl ? y.is_contiguous(at::MemoryFormat::ChannelsLast) : y.is_contiguous(),
               "dwt keeps memory format", variant, dt, cl);
        expect(max_abs(y.to(at::kDouble) - ref) <= eps * scale, "dwt matches formula", variant, dt, cl);
        const at::Tensor z = fastdenoise::cpu::haar_idwt2d(y, variant);
        expect(max_abs(z.to(at::kDouble) - x.to(at::kDouble)) <= 4 * eps * scale,
               "idwt(dwt(x)) == x", variant, dt, cl);
        expect(at::equal(x, x_before), "input not modified", variant, dt, cl);
      }
    }
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
