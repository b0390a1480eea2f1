// C++ CPU kernels of the Haar transform, registered for the CPU dispatch key.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "fastdenoise/haar.h"
#include "haar_cpu.h"

namespace fastdenoise {
namespace cpu {

namespace {

template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

// The butterfly weights as plain local numbers: forward w[q][n] = fwd * sign[q][n], inverse
// v[n][q] = inv * sign[q][n]. The scales are powers of two, so folding them in is exact, and
// local copies let the compiler keep them in registers (a float output pointer could otherwise
// alias the coefficient struct and force reloads in the inner loops).
template <typename A>
struct Weights {
  A w[4][4];
  Weights(const HaarCoeffs& k, bool forward) {
    for (int q = 0; q < 4; ++q)
      for (int n = 0; n < 4; ++n)
        w[q][n] = forward ? A(k.fwd) * A(k.sign[q][n]) : A(k.inv) * A(k.sign[n][q]);
  }
};

// One output row (forward) or input row (inverse) of the NCHW kernels, w elements of each band.
template <typename T, typename A>
inline void dwt_row(const T* __restrict r0, const T* __restrict r1, T* __restrict o0, T* __restrict o1,
                    T* __restrict o2, T* __restrict o3, int64_t w, const A (&k)[4][4]) {
  for (int64_t j = 0; j < w; ++j) {
    const A a = A(r0[2 * j]), b = A(r0[2 * j + 1]), c = A(r1[2 * j]), d = A(r1[2 * j + 1]);
    o0[j] = static_cast<T>(k[0][0] * a + k[0][1] * b + k[0][2] * c + k[0][3] * d);
    o1[j] = static_cast<T>(k[1][0] * a + k[1][1] * b + k[1][2] * c + k[1][3] * d);
    o2[j] = static_cast<T>(k[2][0] * a + k[2][1] * b + k[2][2] * c + k[2][3] * d);
    o3[j] = static_cast<T>(k[3][0] * a + k[3][1] * b + k[3][2] * c + k[3][3] * d);
  }
}

template <typename T, typename A>
inline void idwt_row(const T* __restrict i0, const T* __restrict i1, const T* __restrict i2,
                     const T* __restrict i3, T* __restrict r0, T* __restrict r1, int64_t w,
                     const A (&k)[4][4]) {
  for (int64_t j = 0; j < w; ++j) {
    const A y0 = A(i0[j]), y1 = A(i1[j]), y2 = A(i2[j]), y3 = A(i3[j]);
    r0[2 * j] = static_cast<T>(k[0][0] * y0 + k[0][1] * y1 + k[0][2] * y2 + k[0][3] * y3);
    r0[2 * j + 1] = static_cast<T>(k[1][0] * y0 + k[1][1] * y1 + k[1][2] * y2 + k[1][3] * y3);
    r1[2 * j] = static_cast<T>(k[2][0] * y0 + k[2][1] * y1 + k[2][2] * y2 + k[2][3] * y3);
    r1[2 * j + 1] = static_cast<T>(k[3][0] * y0 + k[3][1] * y1 + k[3][2] * y2 + k[3][3] * y3);
  }
}

// Forward on contiguous NCHW: one task per (b, c, i) output row.
template <typename T>
void dwt_nchw(const T* x, T* y, const HaarShape& s, const HaarCoeffs& coeffs) {
  using A = acc_t<T>;
  const Weights<A> k(coeffs, true);
  const int64_t W = 2 * s.w, plane_out = s.h * s.w, band = s.c * plane_out;
  at::parallel_for(0, s.n * s.c * s.h, 64, [&](int64_t begin, int64_t end) {
    const Weights<A> kl = k;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, bc = r / s.h, c = bc % s.c, b = bc / s.c;
      const T* r0 = x + (bc * 2 * s.h + 2 * i) * W;
      T* o = y + b * 4 * band + c * plane_out + i * s.w;
      dwt_row<T, A>(r0, r0 + W, o, o + band, o + 2 * band, o + 3 * band, s.w, kl.w);
    }
  });
}

// Forward on channels_last (NHWC): one task per (b, i) output row; for each output pixel the
// four input pixels' channel vectors give the four bands' channel vectors.
template <typename T>
void dwt_nhwc(const T* x, T* y, const HaarShape& s, const HaarCoeffs& coeffs) {
  using A = acc_t<T>;
  const Weights<A> k(coeffs, true);
  const int64_t C = s.c, W = 2 * s.w, C4 = 4 * C;
  at::parallel_for(0, s.n * s.h, 16, [&](int64_t begin, int64_t end) {
    const Weights<A> kl = k;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, b = r / s.h;
      const T* r0 = x + ((b * 2 * s.h + 2 * i) * W) * C;
      const T* r1 = r0 + W * C;
      T* o = y + ((b * s.h + i) * s.w) * C4;
      for (int64_t j = 0; j < s.w; ++j) {
        const T* __restrict pa = r0 + 2 * j * C;
        const T* __restrict pb = pa + C;
        const T* __restrict pc = r1 + 2 * j * C;
        const T* __restrict pd = pc + C;
        T* __restrict oj = o + j * C4;
        for (int64_t c = 0; c < C; ++c) {
          const A a = A(pa[c]), bb = A(pb[c]), cc = A(pc[c]), d = A(pd[c]);
          oj[c] = static_cast<T>(kl.w[0][0] * a + kl.w[0][1] * bb + kl.w[0][2] * cc + kl.w[0][3] * d);
          oj[C + c] = static_cast<T>(kl.w[1][0] * a + kl.w[1][1] * bb + kl.w[1][2] * cc + kl.w[1][3] * d);
          oj[2 * C + c] = static_cast<T>(kl.w[2][0] * a + kl.w[2][1] * bb + kl.w[2][2] * cc + kl.w[2][3] * d);
          oj[3 * C + c] = static_cast<T>(kl.w[3][0] * a + kl.w[3][1] * bb + kl.w[3][2] * cc + kl.w[3][3] * d);
        }
      }
    }
  });
}

// Inverse on contiguous NCHW: input (n, 4c, h, w), output (n, c, 2h, 2w).
template <typename T>
void idwt_nchw(const T* y, T* x, const HaarShape& s, const HaarCoeffs& coeffs) {
  using A = acc_t<T>;
  const Weights<A> k(coeffs, false);
  const int64_t W = 2 * s.w, plane_in = s.h * s.w, band = s.c * plane_in;
  at::parallel_for(0, s.n * s.c * s.h, 64, [&](int64_t begin, int64_t end) {
    const Weights<A> kl = k;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, bc = r / s.h, c = bc % s.c, b = bc / s.c;
      const T* in = y + b * 4 * band + c * plane_in + i * s.w;
      T* r0 = x + (bc * 2 * s.h + 2 * i) * W;
      idwt_row<T, A>(in, in + band, in + 2 * band, in + 3 * band, r0, r0 + W, s.w, kl.w);
    }
  });
}

// Inverse on channels_last.
template <typename T>
void idwt_nhwc(const T* y, T* x, const HaarShape& s, const HaarCoeffs& coeffs) {
  using A = acc_t<T>;
  const Weights<A> k(coeffs, false);
  const int64_t C = s.c, W = 2 * s.w, C4 = 4 * C;
  at::parallel_for(0, s.n * s.h, 16, [&](int64_t begin, int64_t end) {
    const Weights<A> kl = k;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, b = r / s.h;
      const T* in = y + ((b * s.h + i) * s.w) * C4;
      T* r0 = x + ((b * 2 * s.h + 2 * i) * W) * C;
      T* r1 = r0 + W * C;
      for (int64_t j = 0; j < s.w; ++j) {
        const T* __restrict i0 = in + j * C4;
        T* __restrict pa = r0 + 2 * j * C;
        T* __restrict pb = pa + C;
        T* __restrict pc = r1 + 2 * j * C;
        T* __restrict pd = pc + C;
        for (int64_t c = 0; c < C; ++c) {
          const A y0 = A(i0[c]), y1 = A(i0[C + c]), y2 = A(i0[2 * C + c]), y3 = A(i0[3 * C + c]);
          pa[c] = static_cast<T>(kl.w[0][0] * y0 + kl.w[0][1] * y1 + kl.w[0][2] * y2 + kl.w[0][3] * y3);
          pb[c] = static_cast<T>(kl.w[1][0] * y0 + kl.w[1][1] * y1 + kl.w[1][2] * y2 + kl.w[1][3] * y3);
          pc[c] = static_cast<T>(kl.w[2][0] * y0 + kl.w[2][1] * y1 + kl.w[2][2] * y2 + kl.w[2][3] * y3);
          pd[c] = static_cast<T>(kl.w[3][0] * y0 + kl.w[3][1] * y1 + kl.w[3][2] * y2 + kl.w[3][3] * y3);
        }
      }
    }
  });
}

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_common(const at::Tensor& t, const char* name, int64_t variant) {
  TORCH_CHECK(t.dim() == 4, name, ": expected 4 dims, got ", t.dim());
  TORCH_CHECK(t.numel() > 0, name, ": expected a non-empty tensor, got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, ": expected a floating dtype, got ",
              t.scalar_type());
  TORCH_CHECK(haar_variant_valid(variant), "variant: expected 0, 1 or 2, got ", variant);
}

}  // namespace

at::Tensor haar_dwt2d(const at::Tensor& x_in, int64_t variant) {
  check_common(x_in, "x", variant);
  TORCH_CHECK(x_in.device().is_cpu(), "x: expected a cpu tensor, got ", x_in.device());
  TORCH_CHECK(x_in.size(2) % 2 == 0 && x_in.size(3) % 2 == 0, "x: expected even H and W, got ",
              x_in.sizes());
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const HaarShape s{x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2};
  at::Tensor y = at::empty({s.n, 4 * s.c, s.h, s.w}, x.options().memory_format(fmt));
  const HaarCoeffs k = haar_coeffs(static_cast<int>(variant));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "haar_dwt2d_cpu", [&] {
    if (cl) dwt_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s, k);
    else dwt_nchw<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s, k);
  });
  return y;
}

at::Tensor haar_idwt2d(const at::Tensor& y_in, int64_t variant) {
  check_common(y_in, "y", variant);
  TORCH_CHECK(y_in.device().is_cpu(), "y: expected a cpu tensor, got ", y_in.device());
  TORCH_CHECK(y_in.size(1) % 4 == 0, "y: expected a channel count divisible by 4, got ",
              y_in.sizes());
  const bool cl = is_channels_last(y_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor y = y_in.contiguous(fmt);
  const HaarShape s{y.size(0), y.size(1) / 4, y.size(2), y.size(3)};
  at::Tensor x = at::empty({s.n, s.c, 2 * s.h, 2 * s.w}, y.options().memory_format(fmt));
  const HaarCoeffs k = haar_coeffs(static_cast<int>(variant));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "haar_idwt2d_cpu", [&] {
    if (cl) idwt_nhwc<scalar_t>(y.const_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), s, k);
    else idwt_nchw<scalar_t>(y.const_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), s, k);
  });
  return x;
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("haar_dwt2d", &fastdenoise::cpu::haar_dwt2d);
  m.impl("haar_idwt2d", &fastdenoise::cpu::haar_idwt2d);
}
