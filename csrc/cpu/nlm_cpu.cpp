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
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastdenoise/nlm.h"

namespace fastdenoise {
namespace cpu {
namespace {

// exp(-e) for e >= 0, branch-free so the loops calling it vectorise: e^-e = 2^n e^r with
// n = round(-e / ln 2), r = -e - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite split of ln 2), and a
// degree-6 Taylor polynomial for e^r (relative error below 2e-7). e is clamped to 87: weights
// below exp(-87) ~ 1.6e-38 are kept at that value (they are negligible beside the weight 1 of
// the pixel itself).
inline float exp_neg(float e) {
  const float x = -std::min(e, 87.f);
  const float t = x * 1.44269504088896341f;
  const int n = static_cast<int>(t - 0.5f);  // round to nearest for t <= 0
  const float nf = static_cast<float>(n);
  const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  // 2^n from its bits (memcpy, not C++20's std::bit_cast: torch < 2.13 builds extensions as
  // C++17); compilers fold it into a register move, and the loops still vectorise
  const int32_t bits = static_cast<int32_t>((n + 127) << 23);
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// Everything one range of tasks (blocks of kRows output rows) needs.
struct NlmArgs {
  const float* padded;  // (B, C, H + 2 pad, W + 2 pad), reflected
  float* out;
  const float* sigma;
  const float* h;
  const float* taps;
  int64_t C, H, W, P, R, patch, blocks_per_image;
  float inv_c;
};

constexpr int64_t kRows = 64;  // output rows per task

// The hot loops. On x86-64 with GCC they are compiled twice, for AVX2 and for the baseline, and
// the loader picks the clone the CPU runs (the loops are the same C++, so are the results: no
// FMA contraction, no reassociation).
//
// Symmetry: the weight of the pair (p, p + t) is the same number for pixel p at offset t and for
// pixel p + t at offset -t (the same squared differences, filtered in the same order), so only
// the offsets of one half-plane (dy > 0, or dy == 0 and dx > 0) are evaluated, each weight
// serving both pixels ("forward": p in the block takes x(p + t); "backward": p + t in the block
// takes x(p)). The pixels p whose partner lies in the block reach up to R rows above it and R
// columns beside it (in the reflected border when the block touches the image's edge: exactly
// the neighbours the plain definition uses there). About half the distance work of evaluating
// every offset for every pixel.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void nlm_tasks(const NlmArgs& a, int64_t begin, int64_t end) {
  const int64_t C = a.C, H = a.H, W = a.W, P = a.P, R = a.R, patch = a.patch;
  const int64_t blocks_per_image = a.blocks_per_image, pad = P + R;
  const int64_t Wp = W + 2 * pad, pplane = (H + 2 * pad) * Wp, plane = H * W;
  const float* padded_all = a.padded;
  float* po = a.out;
  const float* psig = a.sigma;
  const float* ph = a.h;
  const float* taps = a.taps;
  const float inv_c = a.inv_c;
  const int64_t Wd = W + R + 2 * P;  // longest distance row: W + |dx| pixels plus the patch margins
  std::vector<float> diff((kRows + R + 2 * P) * Wd), vsum(Wd), wrow(W + R), num(C * kRows * W), den(kRows * W);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / blocks_per_image;
    const int64_t y0 = (task % blocks_per_image) * kRows, rows = std::min(kRows, H - y0);
    const float* img = padded_all + b * C * pplane;
    const float two_var = 2.0f * psig[b] * psig[b];
    const float inv_h2 = 1.0f / (ph[b] * ph[b]);
    // the pixel itself: weight exactly 1 (distance 0)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t xo = 0; xo < W; ++xo) den[r * W + xo] = 1.f;
      for (int64_t c = 0; c < C; ++c) {
        const float* src = img + c * pplane + (y0 + r + pad) * Wp + pad;
        float* nm = num.data() + (c * kRows + r) * W;
        for (int64_t xo = 0; xo < W; ++xo) nm[xo] = src[xo];
      }
    }
    for (int64_t dy = 0; dy <= R; ++dy) {
      for (int64_t dx = dy == 0 ? 1 : -R; dx <= R; ++dx) {
        // p runs over rows y0 - dy .. y0 + rows - 1 (np rows) and columns c0 .. c0 + nc - 1
        const int64_t np = rows + dy;
        const int64_t c0 = dx < 0 ? 0 : -dx, nc = W + (dx < 0 ? -dx : dx), nd = nc + 2 * P;
        // channel-summed squared differences between x(p) and x(p + t) for p rows
        // y0 - dy - P .. and columns c0 - P .. (distance row index q <-> column c0 - P + q)
        for (int64_t r = 0; r < np + 2 * P; ++r) {
          float* __restrict drow = diff.data() + r * Wd;
          const int64_t ya = y0 - dy - P + r + pad;
          for (int64_t q = 0; q < nd; ++q) drow[q] = 0.f;
          for (int64_t c = 0; c < C; ++c) {
            const float* __restrict ra = img + c * pplane + ya * Wp + c0 - P + pad;
            const float* __restrict rb = ra + dy * Wp + dx;
            for (int64_t q = 0; q < nd; ++q) {
              const float d = ra[q] - rb[q];
              drow[q] += d * d;
            }
          }
        }
        for (int64_t r = 0; r < np; ++r) {
          // vertical then horizontal weighted sums over the patch
          // (the taps are symmetric: mirrored rows / columns are added before the multiply)
          float* __restrict v = vsum.data();
          const float* d0 = diff.data() + r * Wd;
          const float* __restrict dc = d0 + P * Wd;
          for (int64_t q = 0; q < nd; ++q) v[q] = taps[P] * dc[q];
          for (int64_t k = 0; k < P; ++k) {
            const float* __restrict dk = d0 + k * Wd;
            const float* __restrict dm = d0 + (patch - 1 - k) * Wd;
            const float g = taps[k];
            for (int64_t q = 0; q < nd; ++q) v[q] += g * (dk[q] + dm[q]);
          }
          float* __restrict w = wrow.data();
          for (int64_t j = 0; j < nc; ++j) w[j] = taps[P] * v[j + P];
          for (int64_t k = 0; k < P; ++k) {
            const float g = taps[k];
            const float* __restrict vk = v + k;
            const float* __restrict vm = v + (patch - 1 - k);
            for (int64_t j = 0; j < nc; ++j) w[j] += g * (vk[j] + vm[j]);
          }
          for (int64_t j = 0; j < nc; ++j) {
            const float d2 = w[j] * inv_c;
            // a select, not max(d2 - 2 var, 0) * inv_h2: with h so small that 1 / h^2 is inf,
            // 0 * inf would be NaN (as the CUDA kernel)
            w[j] = exp_neg(d2 > two_var ? (d2 - two_var) * inv_h2 : 0.f);
          }
          const int64_t pr = y0 - dy + r;  // image row of p
          if (r >= dy) {  // forward: p in the block takes x(p + t)
            const int64_t o = r - dy;
            const float* __restrict wf = w - c0;  // weight of p column xo
            float* __restrict dn = den.data() + o * W;
            for (int64_t xo = 0; xo < W; ++xo) dn[xo] += wf[xo];
            for (int64_t c = 0; c < C; ++c) {
              const float* __restrict src = img + c * pplane + (pr + dy + pad) * Wp + pad + dx;
              float* __restrict nm = num.data() + (c * kRows + o) * W;
              for (int64_t xo = 0; xo < W; ++xo) nm[xo] += wf[xo] * src[xo];
            }
          }
          if (r < rows) {  // backward: p + t in the block (output row r) takes x(p)
            const float* __restrict wb = w - c0 - dx;  // weight of p column q - dx
            float* __restrict dn = den.data() + r * W;
            for (int64_t q = 0; q < W; ++q) dn[q] += wb[q];
            for (int64_t c = 0; c < C; ++c) {
              const float* __restrict src = img + c * pplane + (pr + pad) * Wp + pad - dx;
              float* __restrict nm = num.data() + (c * kRows + r) * W;
              for (int64_t q = 0; q < W; ++q) nm[q] += wb[q] * src[q];
            }
          }
        }
      }
    }
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t xo = 0; xo < W; ++xo)
          po[b * C * plane + c * plane + (y0 + r) * W + xo] = num[(c * kRows + r) * W + xo] / den[r * W + xo];
  }
}

}  // namespace

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
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad, plane = H * W, pplane = Hp * Wp;
  // The image extended by reflection, once: every access below is then contiguous.
  std::vector<float> padded(B * C * pplane);
  {
    std::vector<int64_t> rmap(Hp), cmap(Wp);
    for (int64_t i = 0; i < Hp; ++i) rmap[i] = nlm_reflect(i - pad, H);
    for (int64_t i = 0; i < Wp; ++i) cmap[i] = nlm_reflect(i - pad, W);
    at::parallel_for(0, B * C * Hp, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bc = row / Hp, r = row % Hp;
        const float* src = px + bc * plane + rmap[r] * W;
        float* dst = padded.data() + bc * pplane + r * Wp;
        for (int64_t q = 0; q < Wp; ++q) dst[q] = src[cmap[q]];
      }
    });
  }

  const int64_t blocks_per_image = (H + kRows - 1) / kRows;
  const float inv_c = 1.0f / static_cast<float>(C);
  float taps[kNlmMaxPatch];
  nlm_patch_taps(static_cast<int>(patch), taps);

  const NlmArgs args{padded.data(), po, psig, ph, taps, C, H, W, P, R, patch, blocks_per_image, inv_c};
  at::parallel_for(0, B * blocks_per_image, 1,
                   [&](int64_t begin, int64_t end) { nlm_tasks(args, begin, end); });
  return out;
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("nlm", &fastdenoise::cpu::nlm);
}
