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
// (The CPU kernel applies the same butterflies to 64 positions at once, bm3d_cpu.cpp.)
// One instantiation per group size: every loop has a compile-time trip count and the column is
// held in a local array of that size, which the CUDA build keeps in registers (a scratch indexed
// by a run-time n was a 128-byte local-memory stack frame per thread).
template <int LEN>
FD_HOST_DEVICE inline void bm3d_haar_forward_levels(float* t) {  // t[0, LEN): this level, then the next
  float u[LEN];
  for (int i = 0; i < LEN / 2; ++i) {
    const float a = t[2 * i], b = t[2 * i + 1];
    u[i] = (a + b) * kBm3dHaarScale;
    u[LEN / 2 + i] = (a - b) * kBm3dHaarScale;
  }
  for (int i = 0; i < LEN; ++i) t[i] = u[i];
  if constexpr (LEN > 2) bm3d_haar_forward_levels<LEN / 2>(t);
}

// The inverse's level rebuilding t[0, LEN) from LEN / 2 approximations and as many details,
// then the next level up to N.
template <int LEN, int N>
FD_HOST_DEVICE inline void bm3d_haar_inverse_levels(float* t) {
  float u[LEN];
  for (int i = 0; i < LEN / 2; ++i) {
    const float a = t[i], d = t[LEN / 2 + i];
    u[2 * i] = (a + d) * kBm3dHaarScale;
    u[2 * i + 1] = (a - d) * kBm3dHaarScale;
  }
  for (int i = 0; i < LEN; ++i) t[i] = u[i];
  if constexpr (LEN < N) bm3d_haar_inverse_levels<2 * LEN, N>(t);
}

template <int N>
FD_HOST_DEVICE inline void bm3d_haar_n(float* v, int stride, bool inverse) {
  float t[N];
  for (int i = 0; i < N; ++i) t[i] = v[i * stride];
  if (inverse) {
    bm3d_haar_inverse_levels<2, N>(t);
  } else {
    bm3d_haar_forward_levels<N>(t);
  }
  for (int i = 0; i < N; ++i) v[i * stride] = t[i];
}

// n = 1 is the identity; other sizes (not powers of two, or above kBm3dMaxGroup) are rejected
// before any transform by the kernels' group checks.
FD_HOST_DEVICE inline void bm3d_haar(float* v, int n, int stride, bool inverse) {
  static_assert(kBm3dMaxGroup == 32, "bm3d_haar dispatches the group sizes up to 32");
  switch (n) {
    case 2: bm3d_haar_n<2>(v, stride, inverse); break;
    case 4: bm3d_haar_n<4>(v, stride, inverse); break;
    case 8: bm3d_haar_n<8>(v, stride, inverse); break;
    case 16: bm3d_haar_n<16>(v, stride, inverse); break;
    case 32: bm3d_haar_n<32>(v, stride, inverse); break;
    default: break;
  }
}

FD_HOST_DEVICE inline void bm3d_haar_forward(float* v, int n, int stride) { bm3d_haar(v, n, stride, false); }

// Inverse of bm3d_haar_forward.
FD_HOST_DEVICE inline void bm3d_haar_inverse(float* v, int n, int stride) { bm3d_haar(v, n, stride, true); }

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
