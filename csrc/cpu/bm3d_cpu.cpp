// C++ CPU kernel of BM3D's collaborative filtering (one stage: hard thresholding or Wiener),
// registered for the CPU dispatch key. fastdenoise/ops/bm3d.py holds the spec.
//
// For every group (a reference block and its matches, already found by block matching):
// gather the blocks of every channel, 2-D transform each block (T Z T^T), 1-D orthonormal Haar
// along the group, shrink (hard threshold at threshold * sigma_c, or Wiener gains from the
// pilot's spectrum), invert both transforms, and add the estimates, weighted by the group weight
// times the window, to the numerator and denominator images. Output = numerator / denominator.
//
// Parallel over chunks of reference rows. Each chunk accumulates into its own band of rows in
// fixed point (int64, see fastdenoise/bm3d.h) and then adds the band to the image accumulators
// under a lock; integer sums do not depend on that order, so the output is bitwise the same
// whatever the thread count and schedule, and the same as the CUDA kernel's.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include "cpu/bm3d_check.h"
#include "fastdenoise/bm3d.h"

namespace fastdenoise {
namespace cpu {
namespace {

constexpr int B8 = kBm3dBlock;
constexpr int A64 = kBm3dArea;
// Reference rows per parallel task.
constexpr int64_t kChunkRows = 8;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FD_CLONES
#endif

// Eight floats, one row of a block, as a GCC vector (unaligned loads and stores allowed).
typedef float Row8 __attribute__((vector_size(32), aligned(4)));

// out = M z M'^T for n blocks of 64 values: first t[r][s] = sum_k M[r][k] z[k][s], then
// out[r][s] = sum_k t[r][k] Mt[k][s] (Mt = M transposed), each sum over k in ascending order
// from 0 -- the order the CUDA kernel uses. Written on whole rows (a scalar times a row of
// eight), so every lane does exactly the scalar arithmetic of its element.
FD_CLONES void transform_blocks(const float* __restrict m, const float* __restrict mt, float* __restrict z,
                                int n) {
  Row8 mt_rows[B8];
  for (int k = 0; k < B8; ++k) mt_rows[k] = *reinterpret_cast<const Row8*>(mt + k * B8);
  for (int j = 0; j < n; ++j) {
    float* blk = z + j * A64;
    Row8 rows[B8];
    for (int k = 0; k < B8; ++k) rows[k] = *reinterpret_cast<const Row8*>(blk + k * B8);
    float t[A64];
    for (int r = 0; r < B8; ++r) {
      Row8 acc = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int k = 0; k < B8; ++k) acc = acc + m[r * B8 + k] * rows[k];
      *reinterpret_cast<Row8*>(t + r * B8) = acc;
    }
    for (int r = 0; r < B8; ++r) {
      Row8 acc = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int k = 0; k < B8; ++k) acc = acc + t[r * B8 + k] * mt_rows[k];
      *reinterpret_cast<Row8*>(blk + r * B8) = acc;
    }
  }
}

// bm3d_haar_forward / bm3d_haar_inverse applied to all 64 coefficient positions of a group of n
// blocks at once (the same operations per position, vectorised across positions).
FD_CLONES void haar_forward_group(float* __restrict z, int n) {
  float t[kBm3dMaxGroup * A64];
  for (int len = n; len > 1; len >>= 1) {
    const int half = len >> 1;
    for (int i = 0; i < half; ++i) {
      const float* a = z + (2 * i) * A64;
      const float* b = z + (2 * i + 1) * A64;
      float* lo = t + i * A64;
      float* hi = t + (half + i) * A64;
      for (int p = 0; p < A64; ++p) {
        lo[p] = (a[p] + b[p]) * kBm3dHaarScale;
        hi[p] = (a[p] - b[p]) * kBm3dHaarScale;
      }
    }
    std::memcpy(z, t, sizeof(float) * len * A64);
  }
}

FD_CLONES void haar_inverse_group(float* __restrict z, int n) {
  float t[kBm3dMaxGroup * A64];
  for (int len = 2; len <= n; len <<= 1) {
    const int half = len >> 1;
    for (int i = 0; i < half; ++i) {
      const float* a = z + i * A64;
      const float* d = z + (half + i) * A64;
      float* even = t + (2 * i) * A64;
      float* odd = t + (2 * i + 1) * A64;
      for (int p = 0; p < A64; ++p) {
        even[p] = (a[p] + d[p]) * kBm3dHaarScale;
        odd[p] = (a[p] - d[p]) * kBm3dHaarScale;
      }
    }
    std::memcpy(z, t, sizeof(float) * len * A64);
  }
}

// Hard thresholding of `count` coefficients at thr; returns how many were kept.
FD_CLONES int64_t shrink_hard(float* __restrict z, int count, float thr) {
  int64_t kept = 0;
  for (int i = 0; i < count; ++i) {
    const bool keep = std::fabs(z[i]) > thr;
    kept += keep ? 1 : 0;
    z[i] = keep ? z[i] : 0.f;
  }
  return kept;
}

// Wiener shrinkage of `count` coefficients with the pilot's spectrum p; returns sum(gain^2) in
// fixed point.
FD_CLONES int64_t shrink_wiener(float* __restrict z, const float* __restrict p, int count, float s2) {
  int64_t q = 0;
  for (int i = 0; i < count; ++i) {
    const float p2 = p[i] * p[i];
    const float gain = p2 / (p2 + s2);
    z[i] = z[i] * gain;
    q += bm3d_to_fixed(gain * gain);
  }
  return q;
}

// Adds one group's estimates (C channels of n blocks, channel stride kBm3dMaxGroup blocks) at
// their positions to the band: numerators += fixed(wk * estimate), denominator += fixed(wk).
FD_CLONES void aggregate_group(const float* __restrict z, const int64_t* __restrict match, int n, int64_t C,
                               const float* __restrict wk, const int64_t* __restrict wk_fixed, int64_t* band,
                               int64_t band_h, int64_t ylo, int64_t W) {
  int64_t* den = band + C * band_h * W;
  for (int j = 0; j < n; ++j) {
    const int64_t py = match[j] / W - ylo, px = match[j] % W;
    for (int r = 0; r < B8; ++r) {
      int64_t* __restrict dr = den + (py + r) * W + px;
      for (int s = 0; s < B8; ++s) dr[s] += wk_fixed[r * B8 + s];
      for (int64_t c = 0; c < C; ++c) {
        const float* __restrict est = z + (c * kBm3dMaxGroup + j) * A64 + r * B8;
        int64_t* __restrict nr = band + (c * band_h + py + r) * W + px;
        for (int s = 0; s < B8; ++s) nr[s] += bm3d_to_fixed(wk[r * B8 + s] * est[s]);
      }
    }
  }
}

struct Geometry {
  int64_t B, C, H, W, ny, nx, K;
};

}  // namespace

at::Tensor bm3d_filter(const at::Tensor& noisy_in, const std::optional<at::Tensor>& pilot_in,
                       const at::Tensor& index_in, const at::Tensor& size_in, const at::Tensor& sigma_in,
                       const at::Tensor& transform_in, const at::Tensor& inverse_in, const at::Tensor& window_in,
                       double threshold) {
  bm3d_check_inputs(noisy_in, pilot_in, index_in, size_in, sigma_in, transform_in, inverse_in, window_in, false);
  const at::Tensor noisy = noisy_in.contiguous(), index = index_in.contiguous(), size = size_in.contiguous();
  const at::Tensor sigma = sigma_in.contiguous();
  const bool wiener = pilot_in.has_value();
  const at::Tensor pilot = wiener ? pilot_in->contiguous() : at::Tensor();
  const Geometry g{noisy.size(0), noisy.size(1), noisy.size(2), noisy.size(3),
                   index.size(1), index.size(2), index.size(3)};
  const int64_t HW = g.H * g.W;

  float tf[A64], tft[A64], ti[A64], tit[A64], win[A64];
  {
    const at::Tensor t = transform_in.contiguous(), i = inverse_in.contiguous(), w = window_in.contiguous();
    for (int r = 0; r < B8; ++r)
      for (int s = 0; s < B8; ++s) {
        tf[r * B8 + s] = t.const_data_ptr<float>()[r * B8 + s];
        tft[s * B8 + r] = tf[r * B8 + s];
        ti[r * B8 + s] = i.const_data_ptr<float>()[r * B8 + s];
        tit[s * B8 + r] = ti[r * B8 + s];
        win[r * B8 + s] = w.const_data_ptr<float>()[r * B8 + s];
      }
  }

  const float* x = noisy.const_data_ptr<float>();
  const float* xp = wiener ? pilot.const_data_ptr<float>() : nullptr;
  const int64_t* idx = index.const_data_ptr<int64_t>();
  const int64_t* sz = size.const_data_ptr<int64_t>();
  const float* sg = sigma.const_data_ptr<float>();

  // Image accumulators: C numerators and one denominator per image, in fixed point.
  std::vector<int64_t> acc(static_cast<size_t>(g.B * (g.C + 1) * HW), 0);
  std::mutex acc_lock;
  const int64_t chunks_per_image = (g.ny + kChunkRows - 1) / kChunkRows;

  at::parallel_for(0, g.B * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> z(static_cast<size_t>(g.C * kBm3dMaxGroup * A64));
    std::vector<float> zp(wiener ? z.size() : 0);
    std::vector<int64_t> band;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks_per_image;
      const int64_t gy0 = (task % chunks_per_image) * kChunkRows;
      const int64_t gy1 = std::min(gy0 + kChunkRows, g.ny);
      const float* img = x + b * g.C * HW;
      const float* pimg = wiener ? xp + b * g.C * HW : nullptr;
      // per-channel constants of this image
      float thr[kBm3dMaxChannels], s2f[kBm3dMaxChannels];
      double s2[kBm3dMaxChannels], smin = 0.0;
      for (int64_t c = 0; c < g.C; ++c) {
        const float sc = sg[b * g.C + c];
        TORCH_CHECK(sc > 0.f, "sigma: expected positive values, got ", sc, " for image ", b, " channel ", c);
        thr[c] = static_cast<float>(threshold * static_cast<double>(sc));
        s2f[c] = sc * sc;
        s2[c] = static_cast<double>(sc) * static_cast<double>(sc);
        smin = c == 0 ? s2[c] : std::min(smin, s2[c]);
      }
      // rows this chunk's groups touch, validating the matches on the way
      int64_t ylo = g.H, yhi = 0;
      for (int64_t gy = gy0; gy < gy1; ++gy)
        for (int64_t gx = 0; gx < g.nx; ++gx) {
          const int64_t grp = (b * g.ny + gy) * g.nx + gx;
          const int64_t n = sz[grp];
          TORCH_CHECK(n >= 1 && n <= g.K && (n & (n - 1)) == 0, "size: expected a power of two <= K = ", g.K,
                      ", got ", n, " at group ", grp);
          for (int64_t j = 0; j < n; ++j) {
            const int64_t pos = idx[grp * g.K + j];
            const int64_t py = pos / g.W, px = pos % g.W;
            TORCH_CHECK(pos >= 0 && py <= g.H - B8 && px <= g.W - B8, "index: expected top-left corners of ",
                        B8, "x", B8, " blocks inside the ", g.H, "x", g.W, " image, got ", pos, " at group ", grp);
            ylo = std::min(ylo, py);
            yhi = std::max(yhi, py + B8);
          }
        }
      const int64_t band_h = yhi - ylo;
      band.assign(static_cast<size_t>((g.C + 1) * band_h * g.W), 0);

      for (int64_t gy = gy0; gy < gy1; ++gy)
        for (int64_t gx = 0; gx < g.nx; ++gx) {
          const int64_t grp = (b * g.ny + gy) * g.nx + gx;
          const int n = static_cast<int>(sz[grp]);
          const int64_t* match = idx + grp * g.K;
          // gather
          for (int64_t c = 0; c < g.C; ++c)
            for (int j = 0; j < n; ++j) {
              const float* src = img + c * HW + match[j];
              const float* psrc = wiener ? pimg + c * HW + match[j] : nullptr;
              float* dst = z.data() + (c * kBm3dMaxGroup + j) * A64;
              float* pdst = wiener ? zp.data() + (c * kBm3dMaxGroup + j) * A64 : nullptr;
              for (int r = 0; r < B8; ++r)
                for (int s = 0; s < B8; ++s) {
                  dst[r * B8 + s] = src[r * g.W + s];
                  if (wiener) pdst[r * B8 + s] = psrc[r * g.W + s];
                }
            }
          // forward 3-D transform, shrinkage, inverse
          double sum_q = 0.0;
          for (int64_t c = 0; c < g.C; ++c) {
            float* zc = z.data() + c * kBm3dMaxGroup * A64;
            transform_blocks(tf, tft, zc, n);
            haar_forward_group(zc, n);
            if (wiener) {
              float* pc = zp.data() + c * kBm3dMaxGroup * A64;
              transform_blocks(tf, tft, pc, n);
              haar_forward_group(pc, n);
              const int64_t q = shrink_wiener(zc, pc, n * A64, s2f[c]);
              sum_q += s2[c] * (static_cast<double>(q) / kBm3dFixedScale);
            } else {
              const int64_t kept = shrink_hard(zc, n * A64, thr[c]);
              sum_q += s2[c] * static_cast<double>(kept);
            }
            haar_inverse_group(zc, n);
            transform_blocks(ti, tit, zc, n);
          }
          const float w = bm3d_weight(sum_q, smin);
          float wk[A64];
          int64_t wk_fixed[A64];
          for (int p = 0; p < A64; ++p) {
            wk[p] = w * win[p];
            wk_fixed[p] = bm3d_to_fixed(wk[p]);
          }
          aggregate_group(z.data(), match, n, g.C, wk, wk_fixed, band.data(), band_h, ylo, g.W);
        }
      // add the band to the image accumulators
      std::lock_guard<std::mutex> guard(acc_lock);
      int64_t* img_acc = acc.data() + b * (g.C + 1) * HW;
      for (int64_t plane = 0; plane <= g.C; ++plane) {
        const int64_t* src = band.data() + plane * band_h * g.W;
        int64_t* dst = img_acc + plane * HW + ylo * g.W;
        for (int64_t i = 0; i < band_h * g.W; ++i) dst[i] += src[i];
      }
    }
  });

  at::Tensor out = at::empty({g.B, g.C, g.H, g.W}, noisy.options());
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, g.B * g.H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.H, y = row % g.H;
      const int64_t* img_acc = acc.data() + b * (g.C + 1) * HW;
      const int64_t* den = img_acc + g.C * HW + y * g.W;
      for (int64_t c = 0; c < g.C; ++c) {
        const int64_t* num = img_acc + c * HW + y * g.W;
        float* dst = o + (b * g.C + c) * HW + y * g.W;
        for (int64_t xx = 0; xx < g.W; ++xx)
          dst[xx] = den[xx] > 0 ? static_cast<float>(static_cast<double>(num[xx]) / static_cast<double>(den[xx]))
                                : 0.f;
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("bm3d_filter", &fastdenoise::cpu::bm3d_filter);
}
