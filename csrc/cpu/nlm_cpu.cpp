// C++ CPU kernel of pixelwise non-local means, registered for the CPU dispatch key.
//
// out(p) = sum_t w(p, t) x(p + t) / sum_t w(p, t) over the offsets t of the search window, with
// w = exp(-max(d2 - 2 sigma^2, 0) / h^2) and d2 the Gaussian-weighted mean over the patch (and
// the plain mean over the channels) of the squared differences between the patches centred at p
// and p + t; the image is extended by reflection. Work is split into blocks of output rows; for
// each offset a block computes the channel-summed squared differences of its rows (plus the
// patch margin) once, then filters them with the separable patch weights, vertically then
// horizontally: 2 * patch multiply-adds per distance instead of patch^2 * C.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fastdenoise/nlm.h"

namespace fastdenoise {
namespace cpu {

at::Tensor nlm(const at::Tensor& x_in, const at::Tensor& sigma_in, const at::Tensor& h_in, int64_t patch,
               int64_t search) {
  TORCH_CHECK(x_in.device().is_cpu(), "x: expected a cpu tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4 && x_in.numel() > 0, "x: expected a non-empty (B, C, H, W) tensor, got ",
              x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "x: expected float32, got ", x_in.scalar_type());
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(sigma_in.dim() == 1 && sigma_in.size(0) == B && sigma_in.scalar_type() == at::kFloat &&
                  sigma_in.device().is_cpu(),
              "sigma: expected a float32 cpu tensor of shape (", B, "), got ", sigma_in.sizes());
  TORCH_CHECK(h_in.dim() == 1 && h_in.size(0) == B && h_in.scalar_type() == at::kFloat && h_in.device().is_cpu(),
              "h: expected a float32 cpu tensor of shape (", B, "), got ", h_in.sizes());
  TORCH_CHECK(patch >= 1 && patch % 2 == 1 && patch <= kNlmMaxPatch, "patch: expected an odd size <= ",
              kNlmMaxPatch, ", got ", patch);
  TORCH_CHECK(search >= 1 && search % 2 == 1, "search: expected an odd size, got ", search);

  const at::Tensor x = x_in.contiguous();
  const at::Tensor sig = sigma_in.contiguous(), hh = h_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const float* px = x.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const float* psig = sig.const_data_ptr<float>();
  const float* ph = hh.const_data_ptr<float>();

  const int64_t P = patch / 2, R = search / 2, pad = P + R;
  // reflected coordinates of rows -pad .. H + pad - 1 and columns likewise
  std::vector<int64_t> rmap(H + 2 * pad), cmap(W + 2 * pad);
  for (int64_t i = 0; i < H + 2 * pad; ++i) rmap[i] = nlm_reflect(i - pad, H);
  for (int64_t i = 0; i < W + 2 * pad; ++i) cmap[i] = nlm_reflect(i - pad, W);
  const int64_t plane = H * W;
  constexpr int64_t kRows = 32;  // output rows per task
  const int64_t blocks_per_image = (H + kRows - 1) / kRows;
  const float inv_c = 1.0f / static_cast<float>(C);
  float taps[kNlmMaxPatch];
  nlm_patch_taps(static_cast<int>(patch), taps);

  at::parallel_for(0, B * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
    const int64_t Wd = W + 2 * P;  // columns of the distance rows (patch margin on both sides)
    std::vector<float> diff((kRows + 2 * P) * Wd), vsum(kRows * Wd), num(C * kRows * W), den(kRows * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks_per_image;
      const int64_t y0 = (task % blocks_per_image) * kRows, rows = std::min(kRows, H - y0);
      const float* img = px + b * C * plane;
      const float two_var = 2.0f * psig[b] * psig[b];
      const float inv_h2 = 1.0f / (ph[b] * ph[b]);
      std::fill(num.begin(), num.end(), 0.f);
      std::fill(den.begin(), den.end(), 0.f);
      for (int64_t dy = -R; dy <= R; ++dy) {
        for (int64_t dx = -R; dx <= R; ++dx) {
          // squared differences, summed over channels, for rows y0 - P .. y0 + rows + P - 1 and
          // columns -P .. W + P - 1 (indices into rmap / cmap are shifted by pad)
          for (int64_t r = 0; r < rows + 2 * P; ++r) {
            const int64_t ya = rmap[y0 + r - P + pad], yb = rmap[y0 + r - P + dy + pad];
            float* drow = diff.data() + r * Wd;
            for (int64_t q = 0; q < Wd; ++q) drow[q] = 0.f;
            for (int64_t c = 0; c < C; ++c) {
              const float* ra = img + c * plane + ya * W;
              const float* rb = img + c * plane + yb * W;
              for (int64_t q = 0; q < Wd; ++q) {
                const float d = ra[cmap[q - P + pad]] - rb[cmap[q - P + dx + pad]];
                drow[q] += d * d;
              }
            }
          }
          // vertical weighted sums over the patch rows
          for (int64_t r = 0; r < rows; ++r) {
            float* v = vsum.data() + r * Wd;
            const float* d0 = diff.data() + r * Wd;
            for (int64_t q = 0; q < Wd; ++q) v[q] = taps[0] * d0[q];
            for (int64_t k = 1; k < patch; ++k) {
              const float* dk = d0 + k * Wd;
              const float g = taps[k];
              for (int64_t q = 0; q < Wd; ++q) v[q] += g * dk[q];
            }
          }
          // horizontal weighted sums, weights, accumulation
          for (int64_t r = 0; r < rows; ++r) {
            const float* v = vsum.data() + r * Wd;
            const int64_t ys = rmap[y0 + r + dy + pad];
            float* dn = den.data() + r * W;
            for (int64_t xo = 0; xo < W; ++xo) {
              float s = 0.f;
              for (int64_t k = 0; k < patch; ++k) s += taps[k] * v[xo + k];
              const float d2 = s * inv_c;
              const float e = d2 > two_var ? (d2 - two_var) * inv_h2 : 0.f;
              const float w = std::exp(-e);
              dn[xo] += w;
              const int64_t xs = cmap[xo + dx + pad];
              for (int64_t c = 0; c < C; ++c) num[(c * kRows + r) * W + xo] += w * img[c * plane + ys * W + xs];
            }
          }
        }
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t xo = 0; xo < W; ++xo)
            po[b * C * plane + c * plane + (y0 + r) * W + xo] = num[(c * kRows + r) * W + xo] / den[r * W + xo];
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("nlm", &fastdenoise::cpu::nlm);
}
