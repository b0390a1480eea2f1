// The pass / fail tally of the ctests: expect() counts a check, report() prints the tally and
// gives the exit code.
#pragma once

#include <cstdio>

namespace fastdenoise_test {

inline int g_pass = 0, g_fail = 0;

inline void expect(bool ok, const char* what) {
  if (ok) {
    ++g_pass;
  } else {
    ++g_fail;
    std::printf("FAIL: %s\n", what);
  }
}

inline int report() {
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}

}  // namespace fastdenoise_test
