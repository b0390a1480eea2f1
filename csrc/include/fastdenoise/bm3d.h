// BM3D collaborative filtering: the per-group arithmetic shared by the CPU kernel, the CUDA
// kernel and the C++ tests. No torch headers. The Python reference (fastdenoise/ops/bm3d.py) is
// the spec; this header fixes the order of every floating-point operation, so that the two
// compiled backends (built without FMA contraction) compute bitwise the same group estimates,
// and the fixed-point aggregation below makes the sums independent of the order groups finish.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastdenoise/haar.h"  // FD_HOST_DEVICE

namespace fastdenoise {

// Side of the square blocks (the 2-D transforms are kBm3dBlock x kBm3dBlock matrices).
constexpr int kBm3dBlock = 8;
constexpr int kBm3dArea = kBm3dBlock * kBm3dBlock;
// Largest group (a power of two: the 1-D Haar transform along the group needs one).
constexpr int kBm3dMaxGroup = 32;
// Colour images have at most this many channels (opponent Y, U, V).
constexpr int kBm3dMaxChannels = 3;

enum Bm3dMode : int { kBm3dHard = 0, kBm3dWiener = 1 };

// Aggregation in fixed point: every contribution w * window * estimate is rounded to an integer
// multiple of 2^-32 and summed in int64. Integer sums do not depend on the order of the terms, so
// the result is the same whatever order the groups are processed in (threads, CUDA blocks) and is
// the same on every backend. Range: terms below 2^19 in magnitude (weights are <= 1, so pixel
// values below about 10^5) keep every pixel's sum of at most a few thousand terms far from
// overflow.
constexpr double kBm3dFixedScale = 4294967296.0;  // 2^32

// round(v * 2^32) to the nearest integer, ties to even. Exact for |v| < 2^19. On the host by the
// 1.5 * 2^52 trick (adding it leaves the rounded integer in the low mantissa bits: no libm
// call, and the loops calling it vectorise); on the device __double2ll_rn, the same rounding.
FD_HOST_DEVICE inline int64_t bm3d_to_fixed(float v) {
#if defined(__CUDA_ARCH__)
  return __double2ll_rn(static_cast<double>(v) * kBm3dFixedScale);
#else
  const double shifted = static_cast<double>(v) * kBm3dFixedScale + 6755399441055744.0;  // + 1.5 * 2^52
  int64_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return bits - INT64_C(0x4338000000000000);  // the bits of 1.5 * 2^52
#endif
}

// 1/sqrt(2) in float: the coefficient of the orthonormal Haar butterflies.
constexpr float kBm3dHaarScale = 0.70710678118654752440f;

// Orthonormal Haar transform (full decomposition) of n values v[0], v[stride], ...,
// v[(n - 1) * stride] in place, n a power of two <= kBm3dMaxGroup. Level by level on the
// approximation part: a_i = (v_2i + v_2i+1) * s, d_i = (v_2i - v_2i+1) * s; approximations first.
FD_HOST_DEVICE inline void bm3d_haar_forward(float* v, int n, int stride) {
  float t[kBm3dMaxGroup];
  for (int len = n; len > 1; len >>= 1) {
    const int half = len >> 1;
    for (int i = 0; i < half; ++i) {
      const float a = v[(2 * i) * stride], b = v[(2 * i + 1) * stride];
      t[i] = (a + b) * kBm3dHaarScale;
      t[half + i] = (a - b) * kBm3dHaarScale;
    }
    for (int i = 0; i < len; ++i) v[i * stride] = t[i];
  }
}

// Inverse of bm3d_haar_forward.
FD_HOST_DEVICE inline void bm3d_haar_inverse(float* v, int n, int stride) {
  float t[kBm3dMaxGroup];
  for (int len = 2; len <= n; len <<= 1) {
    const int half = len >> 1;
    for (int i = 0; i < half; ++i) {
      const float a = v[i * stride], d = v[(half + i) * stride];
      t[2 * i] = (a + d) * kBm3dHaarScale;
      t[2 * i + 1] = (a - d) * kBm3dHaarScale;
    }
    for (int i = 0; i < len; ++i) v[i * stride] = t[i];
  }
}

// Aggregation weight of a group: smin / max(sum_c sigma_c^2 * q_c, smin), with smin the smallest
// sigma_c^2 and q_c the channel's number of kept coefficients (hard thresholding) or sum of
// squared Wiener gains. Dividing BM3D's 1 / (sum_c sigma_c^2 q_c) by the image-wide constant
// 1 / smin changes no output and keeps weights in (0, 1]; the floor at one coefficient's worth
// keeps groups whose coefficients were all removed finite.
FD_HOST_DEVICE inline float bm3d_weight(double sum_sigma2_q, double smin) {
  const double den = sum_sigma2_q > smin ? sum_sigma2_q : smin;
  return static_cast<float>(smin / den);
}

}  // namespace fastdenoise
