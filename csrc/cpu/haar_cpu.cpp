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

// Forward on contiguous NCHW: one task per (b, c, i) output row.
template <typename T>
void dwt_nchw(const T* x, T* y, const HaarShape& s, const HaarCoeffs& k) {
  using A = acc_t<T>;
  const int64_t W = 2 * s.w, plane_out = s.h * s.w, band = s.c * plane_out;
  at::parallel_for(0, s.n * s.c * s.h, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, bc = r / s.h, c = bc % s.c, b = bc / s.c;
      const T* r0 = x + (bc * 2 * s.h + 2 * i) * W;
      const T* r1 = r0 + W;
      T* o = y + b * 4 * band + c * plane_out + i * s.w;
      for (int64_t j = 0; j < s.w; ++j) {
        const A v[4] = {A(r0[2 * j]), A(r0[2 * j + 1]), A(r1[2 * j]), A(r1[2 * j + 1])};
        for (int q = 0; q < 4; ++q) {
          const A acc = A(k.sign[q][0]) * v[0] + A(k.sign[q][1]) * v[1] + A(k.sign[q][2]) * v[2] +
                        A(k.sign[q][3]) * v[3];
          o[q * band + j] = static_cast<T>(A(k.fwd) * acc);
        }
      }
    }
  });
}

// Forward on channels_last (NHWC): one task per (b, i) output row, inner loops over j and c.
template <typename T>
void dwt_nhwc(const T* x, T* y, const HaarShape& s, const HaarCoeffs& k) {
  using A = acc_t<T>;
  const int64_t C = s.c, W = 2 * s.w, C4 = 4 * C;
  at::parallel_for(0, s.n * s.h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, b = r / s.h;
      const T* r0 = x + ((b * 2 * s.h + 2 * i) * W) * C;
      const T* r1 = r0 + W * C;
      T* o = y + ((b * s.h + i) * s.w) * C4;
      for (int64_t j = 0; j < s.w; ++j) {
        const T* pa = r0 + 2 * j * C;
        const T* pc = r1 + 2 * j * C;
        T* oj = o + j * C4;
        for (int64_t c = 0; c < C; ++c) {
          const A v[4] = {A(pa[c]), A(pa[C + c]), A(pc[c]), A(pc[C + c])};
          for (int q = 0; q < 4; ++q) {
            const A acc = A(k.sign[q][0]) * v[0] + A(k.sign[q][1]) * v[1] +
                          A(k.sign[q][2]) * v[2] + A(k.sign[q][3]) * v[3];
            oj[q * C + c] = static_cast<T>(A(k.fwd) * acc);
          }
        }
      }
    }
  });
}

// Inverse on contiguous NCHW: input (n, 4c, h, w), output (n, c, 2h, 2w).
template <typename T>
void idwt_nchw(const T* y, T* x, const HaarShape& s, const HaarCoeffs& k) {
  using A = acc_t<T>;
  const int64_t W = 2 * s.w, plane_in = s.h * s.w, band = s.c * plane_in;
  at::parallel_for(0, s.n * s.c * s.h, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, bc = r / s.h, c = bc % s.c, b = bc / s.c;
      const T* in = y + b * 4 * band + c * plane_in + i * s.w;
      T* r0 = x + (bc * 2 * s.h + 2 * i) * W;
      T* r1 = r0 + W;
      for (int64_t j = 0; j < s.w; ++j) {
        const A v[4] = {A(in[j]), A(in[band + j]), A(in[2 * band + j]), A(in[3 * band + j])};
        A out[4];
        for (int n = 0; n < 4; ++n) {
          out[n] = A(k.inv) * (A(k.sign[0][n]) * v[0] + A(k.sign[1][n]) * v[1] +
                               A(k.sign[2][n]) * v[2] + A(k.sign[3][n]) * v[3]);
        }
        r0[2 * j] = static_cast<T>(out[0]);
        r0[2 * j + 1] = static_cast<T>(out[1]);
        r1[2 * j] = static_cast<T>(out[2]);
        r1[2 * j + 1] = static_cast<T>(out[3]);
      }
    }
  });
}

// Inverse on channels_last.
template <typename T>
void idwt_nhwc(const T* y, T* x, const HaarShape& s, const HaarCoeffs& k) {
  using A = acc_t<T>;
  const int64_t C = s.c, W = 2 * s.w, C4 = 4 * C;
  at::parallel_for(0, s.n * s.h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % s.h, b = r / s.h;
      const T* in = y + ((b * s.h + i) * s.w) * C4;
      T* r0 = x + ((b * 2 * s.h + 2 * i) * W) * C;
      T* r1 = r0 + W * C;
      for (int64_t j = 0; j < s.w; ++j) {
        const T* ij = in + j * C4;
        T* pa = r0 + 2 * j * C;
        T* pc = r1 + 2 * j * C;
        for (int64_t c = 0; c < C; ++c) {
          const A v[4] = {A(ij[c]), A(ij[C + c]), A(ij[2 * C + c]), A(ij[3 * C + c])};
          A out[4];
          for (int n = 0; n < 4; ++n) {
            out[n] = A(k.inv) * (A(k.sign[0][n]) * v[0] + A(k.sign[1][n]) * v[1] +
                                 A(k.sign[2][n]) * v[2] + A(k.sign[3][n]) * v[3]);
          }
          pa[c] = static_cast<T>(out[0]);
          pa[C + c] = static_cast<T>(out[1]);
          pc[c] = static_cast<T>(out[2]);
          pc[C + c] = static_cast<T>(out[3]);
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
