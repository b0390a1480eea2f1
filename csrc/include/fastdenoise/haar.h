// Haar transform conventions shared by the CPU kernel, the CUDA kernels and the C++ tests.
// No torch headers: nvcc compiles this alone. The table is the one in fastdenoise/ops/haar.py.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FD_HOST_DEVICE __host__ __device__
#else
#define FD_HOST_DEVICE
#endif

namespace fastdenoise {

enum HaarVariant : int { kHaarOrthonormal = 0, kHaarInvDN = 1, kHaarMWCNN = 2, kHaarNumVariants = 3 };

// sign[k][n]: sign of block element n (a = (0,0), b = (0,1), c = (1,0), d = (1,1)) in band k.
// Forward: band_k = fwd * sum_n sign[k][n] * x_n. Inverse: x_n = inv * sum_k sign[k][n] * band_k.
struct HaarCoeffs {
  float sign[4][4];
  float fwd;
  float inv;
};

FD_HOST_DEVICE inline HaarCoeffs haar_coeffs(int variant) {
  switch (variant) {
    case kHaarInvDN:
      return HaarCoeffs{{{1, 1, 1, 1}, {1, -1, 1, -1}, {1, 1, -1, -1}, {1, -1, -1, 1}}, 0.25f, 1.0f};
    case kHaarMWCNN:
      return HaarCoeffs{{{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, -1, 1, 1}, {1, -1, -1, 1}}, 0.5f, 0.5f};
    default:
      return HaarCoeffs{{{1, 1, 1, 1}, {1, 1, -1, -1}, {1, -1, 1, -1}, {1, -1, -1, 1}}, 0.5f, 0.5f};
  }
}

inline bool haar_variant_valid(int64_t variant) { return variant >= 0 && variant < kHaarNumVariants; }

// Shapes of one transform. Forward: input (n, c, 2h, 2w) -> output (n, 4c, h, w).
struct HaarShape {
  int64_t n, c, h, w;  // h, w: the half-resolution (sub-band) size
};

}  // namespace fastdenoise
