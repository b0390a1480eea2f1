// Non-local means conventions shared by the CPU and CUDA kernels. No torch headers.
// The Python reference (fastdenoise/ops/nlm.py) is the spec.
#pragma once

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

}  // namespace fastdenoise
