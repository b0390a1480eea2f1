// C++ CPU kernel of block matching, registered for the CPU dispatch key.
//
// For every reference patch on the stride grid, the k candidates of its (2R+1)^2 search window
// (clipped to the image) with the smallest mean squared difference over the patch: all the
// window's distances first (vectorised, below), then the k best of them. Distances
// are summed in float32 in a fixed order (rows, then columns, of the patch: the same order as
// the CUDA kernel, and contraction into FMA is disabled by the build), so both backends give
// bitwise the same distances and, through the total order of bm_before, the same matches.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "fastdenoise/block_match.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace fastdenoise {
namespace cpu {
namespace {

// The distances of every candidate of one search window, summed in the canonical order. The
// window's pixels are first copied into `win` (rows y0 .. y1 + patch - 1, columns x0 .. ; `ldw`
// floats per row, the columns past the image zero): then every tile of candidates can be
// computed at full width, and the lanes past the window are discarded.
//
// Tiles of one candidate row x kTileCols candidate columns keep their sums in registers
// (vectors across the candidate columns): per patch pixel, kVecs loads of the window row, one
// broadcast of the reference pixel, and a subtract, square and add per vector. Each candidate's
// sum runs over the patch rows in ascending order, then the columns: the order of the CUDA
// kernel, with every operation rounded separately (the build disables FMA contraction), so the
// distances are bitwise those of the CUDA kernel. Five vectors of 8 cover the 39 columns of the
// default window in one tile with one lane to spare. (Tiles of 3 candidate rows sharing each
// loaded window row, as the CUDA kernel does, measured no faster on this project's x86 CI
// machine: the loop is bound by its arithmetic there, not by its loads.)
//
// GCC / Clang vector extensions (the CPU kernels need them; bm3d_cpu.cpp's rows too): a vector
// of 8 floats (AVX2 registers, two SSE registers on the baseline), arithmetic lane by lane with
// IEEE rounding.
typedef float bm_vec __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
constexpr int64_t kVecs = 5;
constexpr int64_t kTileCols = kLanes * kVecs;

template <int P>
inline __attribute__((always_inline)) void ssd_tile(const float* win, int64_t ldw, const float* ref,
                                                    int64_t patch_rt, float area, float* out) {
  const int64_t patch = P > 0 ? P : patch_rt;
  bm_vec acc[kVecs];
  for (int q = 0; q < kVecs; ++q) acc[q] = bm_vec{};
  for (int64_t r = 0; r < patch; ++r) {
    const float* row = win + r * ldw;
    for (int64_t c = 0; c < patch; ++c) {
      const float v = ref[r * patch + c];
      for (int q = 0; q < kVecs; ++q) {
        bm_vec src;
        __builtin_memcpy(&src, row + c + q * kLanes, sizeof(bm_vec));
        const bm_vec d = src - v;
        acc[q] = acc[q] + d * d;
      }
    }
  }
  for (int q = 0; q < kVecs; ++q) {
    const bm_vec d = acc[q] / area;
    __builtin_memcpy(out + q * kLanes, &d, sizeof(bm_vec));
  }
}

// dist[i * ldo + t]: the distance of the candidate at window row i, column t (t < nwx; ldo a
// multiple of kTileCols, the lanes past nwx hold garbage). win: the window copy (see above).
// On x86-64 with GCC it is compiled for AVX2 and for the baseline (the loader picks the clone
// the CPU runs); both round every operation the same way, so the distances do not change.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void window_distances(const float* win, int64_t ldw, const float* ref, int64_t patch, int64_t nwy,
                      int64_t ldo, float* dist) {
  const float area = static_cast<float>(patch * patch);
  for (int64_t i = 0; i < nwy; ++i)
    for (int64_t t = 0; t < ldo; t += kTileCols) {
      if (patch == 8)
        ssd_tile<8>(win + i * ldw + t, ldw, ref, patch, area, dist + i * ldo + t);
      else
        ssd_tile<0>(win + i * ldw + t, ldw, ref, patch, area, dist + i * ldo + t);
    }
}

// Bit t of the result: d[t] <= thr, for t < n (n <= 64, a multiple of 8). A NaN distance
// compares false, as in bm_before. The selection below visits only these candidates.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) uint64_t le_mask_avx2(const float* d, int64_t n, float thr) {
  const __m256 t = _mm256_set1_ps(thr);
  uint64_t m = 0;
  for (int64_t i = 0; i < n; i += 8)
    m |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(d + i), t, _CMP_LE_OQ))) << i;
  return m;
}
#endif
uint64_t le_mask_scalar(const float* d, int64_t n, float thr) {
  uint64_t m = 0;
  for (int64_t i = 0; i < n; ++i) m |= static_cast<uint64_t>(d[i] <= thr) << i;
  return m;
}
uint64_t le_mask(const float* d, int64_t n, float thr) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return le_mask_avx2(d, n, thr);
#endif
  return le_mask_scalar(d, n, thr);
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline int lowest_bit(uint64_t m) { return __builtin_ctzll(m); }  // m != 0

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

  // window copies: (2R + patch) rows of ldw = (columns rounded up to whole tiles) + patch - 1
  const int64_t max_nwx = 2 * R + 1 < W - patch + 1 ? 2 * R + 1 : W - patch + 1;
  const int64_t ldo = (max_nwx + kTileCols - 1) / kTileCols * kTileCols;
  const int64_t ldw = ldo + patch - 1;
  const int64_t max_rows = (2 * R + 1 < H - patch + 1 ? 2 * R + 1 : H - patch + 1) + patch - 1;

  at::parallel_for(0, B * ny, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ref(patch * patch), win(max_rows * ldw, 0.f), dmat((2 * R + 1) * ldo);
    std::vector<uint64_t> best(k);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / ny, gy = row % ny;
      const float* img = g + b * H * W;
      const int64_t py = bm_grid_pos(gy, H, patch, stride);
      const int64_t y0 = py - R > 0 ? py - R : 0, y1 = py + R < H - patch ? py + R : H - patch;
      const int64_t nwy = y1 - y0 + 1;
      for (int64_t gx = 0; gx < nx; ++gx) {
        const int64_t px = bm_grid_pos(gx, W, patch, stride);
        const int64_t x0 = px - R > 0 ? px - R : 0, x1 = px + R < W - patch ? px + R : W - patch;
        const int64_t nwx = x1 - x0 + 1;
        for (int64_t r = 0; r < patch; ++r)
          for (int64_t c = 0; c < patch; ++c) ref[r * patch + c] = img[(py + r) * W + px + c];
        // the window's pixels; columns past the image (read by the lanes past nwx) are zero
        const int64_t cols = W - x0 < ldw ? W - x0 : ldw;
        for (int64_t i = 0; i < nwy + patch - 1; ++i) {
          float* dst = win.data() + i * ldw;
          std::copy(img + (y0 + i) * W + x0, img + (y0 + i) * W + x0 + cols, dst);
          std::fill(dst + cols, dst + ldw, 0.f);
        }
        window_distances(win.data(), ldw, ref.data(), patch, nwy, ldo, dmat.data());
        // the k best in the total order of bm_before, kept sorted (insertion; the order in which
        // the candidates are offered does not change the result). A distance is a sum of
        // squares over a positive area, never negative (+0 at least): its float bits ordered as
        // an unsigned integer are its order, so (distance bits, key + 1) packed in 64 bits
        // compare as bm_before does (a NaN distance, unspecified, sorts after everything).
        int64_t filled = 0;
        auto offer = [&](float d, int64_t cy, int64_t cx) {
          const uint64_t key = (cy == py && cx == px) ? 0 : static_cast<uint64_t>(cy * W + cx + 1);
          const uint64_t packed = static_cast<uint64_t>(float_bits(d)) << 32 | key;
          if (filled == k && packed >= best[k - 1]) return;
          int64_t pos = filled < k ? filled++ : k - 1;
          while (pos > 0 && packed < best[pos - 1]) {
            best[pos] = best[pos - 1];
            --pos;
          }
          best[pos] = packed;
        };
        auto bar = [&]() {  // the k-th distance (+inf for a NaN: those sort last)
          const float d = bits_float(static_cast<uint32_t>(best[k - 1] >> 32));
          return d == d ? d : std::numeric_limits<float>::infinity();
        };
        for (int64_t i = 0; i < nwy; ++i) {
          const int64_t cy = y0 + i;
          const float* drow = dmat.data() + i * ldo;
          if (filled < k) {  // every candidate enters until there are k
            for (int64_t t = 0; t < nwx; ++t) offer(drow[t], cy, x0 + t);
            continue;
          }
          // then only those not above the k-th distance can (ties are decided by the key)
          for (int64_t t0 = 0; t0 < nwx; t0 += 64) {
            const int64_t n = ldo - t0 < 64 ? ldo - t0 : 64;
            uint64_t m = le_mask(drow + t0, n, bar());
            if (nwx - t0 < 64) m &= (uint64_t(1) << (nwx - t0)) - 1;
            while (m) {
              const int64_t t = t0 + lowest_bit(m);
              m &= m - 1;
              offer(drow[t], cy, x0 + t);
            }
          }
        }
        const int64_t o = ((b * ny + gy) * nx + gx) * k;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t key = static_cast<int64_t>(best[j] & 0xffffffffu) - 1;
          out_d[o + j] = bits_float(static_cast<uint32_t>(best[j] >> 32));
          out_i[o + j] = key < 0 ? py * W + px : key;
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
