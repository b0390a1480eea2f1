// Non-local means conventions shared by the CPU and CUDA kernels. No torch headers.
// The Python reference (fastdenoise/ops/nlm.py) is the spec.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastdenoise/haar.h"  // FD_HOST_DEVICE

namespace fastdenoise {

// Index of coordinate i (any integer) in an axis of n samples under reflection without
// repeating the edge sample (numpy's and torch's "reflect"), applied as often as needed.
FD_HOST_DEVICE inline int64_t nlm_reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  int64_t m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - m;
}

// Patch weights: the squared differences of two patches are averaged with the separable Gaussian
// weights g[u] g[v], g[k] proportional to exp(-(k - P)^2 / (2 s^2)), s = patch / 3.5, P = patch / 2,
// normalised to sum 1 (the centre of a patch counts more than its rim).
constexpr int kNlmMaxPatch = 63;

inline void nlm_patch_taps(int patch, float* g) {
  const double s = patch / 3.5, half = patch / 2;
  double sum = 0;
  double w[kNlmMaxPatch];
  for (int k = 0; k < patch; ++k) {
    const double d = k - half;
    w[k] = std::exp(-d * d / (2 * s * s));
    sum += w[k];
  }
  for (int k = 0; k < patch; ++k) g[k] = static_cast<float>(w[k] / sum);
}

}  // namespace fastdenoise
