// C++ CPU kernel of the layer norm over the channels of each pixel (fastdenoise/ops/norm.py holds
// the spec), registered for the CPU dispatch key. On CUDA tensors the op family runs its Triton
// kernel; this is the CPU's.
//
// One pass over memory in either layout, without a transposing copy: a task takes a block of
// pixels with all their channels (NCHW: a run of kPixels contiguous pixels of every channel
// plane; channels_last: kPixels consecutive pixels, C contiguous values each), sums the channels
// for the mean, then the squared deviations for the variance (two sweeps over data the first
// one left in cache), then writes y. NCHW sums run over the channels in order, vectorised
// across pixels; channels_last sums in 16 interleaved partial sums, vectorised across channels.
// Statistics in float32 (float64 for float64 input), as the reference: mu = sum * (1 / C),
// var = sum((x - mu)^2) * (1 / C), rstd = 1 / sqrt(var + eps), y = (x - mu) * rstd * w + b
// (bias_free: x * rstd * w), each operation rounded separately: the reference's result to float
// rounding (its sums and its rsqrt round differently).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>

namespace fastdenoise {
namespace cpu {
namespace {

template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

// Pixels per task: NCHW reads kPixels * C values of a block (C = 512: 128 KiB in float32, in L2).
constexpr int64_t kPixels = 64;

struct Params {
  int64_t B, C, HW;
  bool bias_free;
};

// NCHW: the pixels p0 .. p0 + n - 1 of image b. Sums run over the channels in order, vectorised
// across the block's pixels.
template <typename T, typename A>
__attribute__((always_inline)) inline void norm_block_nchw(const T* __restrict x, T* __restrict y,
                                                           const A* __restrict w, const A* __restrict bias, A eps,
                                                           const Params& p, int64_t b, int64_t p0, int64_t n) {
  A mean[kPixels], rstd[kPixels];
  const T* xb = x + b * p.C * p.HW + p0;
  T* yb = y + b * p.C * p.HW + p0;
  for (int64_t i = 0; i < n; ++i) mean[i] = A(0);
  for (int64_t c = 0; c < p.C; ++c) {
    const T* xc = xb + c * p.HW;
    for (int64_t i = 0; i < n; ++i) mean[i] = mean[i] + A(xc[i]);
  }
  const A inv_c = A(1) / A(p.C);
  for (int64_t i = 0; i < n; ++i) {
    mean[i] = mean[i] * inv_c;
    rstd[i] = A(0);
  }
  for (int64_t c = 0; c < p.C; ++c) {
    const T* xc = xb + c * p.HW;
    for (int64_t i = 0; i < n; ++i) {
      const A d = A(xc[i]) - mean[i];
      rstd[i] = rstd[i] + d * d;
    }
  }
  for (int64_t i = 0; i < n; ++i) rstd[i] = A(1) / std::sqrt(rstd[i] * inv_c + eps);
  for (int64_t c = 0; c < p.C; ++c) {
    const T* xc = xb + c * p.HW;
    T* yc = yb + c * p.HW;
    const A wc = w[c], bc = bias != nullptr ? bias[c] : A(0);
    if (p.bias_free) {
      for (int64_t i = 0; i < n; ++i) yc[i] = T(A(xc[i]) * rstd[i] * wc);
    } else if (bias != nullptr) {
      for (int64_t i = 0; i < n; ++i) yc[i] = T((A(xc[i]) - mean[i]) * rstd[i] * wc + bc);
    } else {
      for (int64_t i = 0; i < n; ++i) yc[i] = T((A(xc[i]) - mean[i]) * rstd[i] * wc);
    }
  }
}

// Sum over c < C of f(v[c]), in kLanes interleaved partial sums (c = l, l + kLanes, ...) then
// added in lane order: a fixed order the compiler can vectorise (a single running sum it may
// not reorder).
constexpr int64_t kLanes = 16;
template <typename T, typename A, typename F>
inline A lane_sum(const T* __restrict v, int64_t C, F f) {
  A part[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) part[l] = A(0);
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] = part[l] + f(A(v[c + l]));
  for (int64_t l = 0; c + l < C; ++l) part[l] = part[l] + f(A(v[c + l]));
  A sum = A(0);
  for (int64_t l = 0; l < kLanes; ++l) sum = sum + part[l];
  return sum;
}

// channels_last: the pixels p0 .. p0 + n - 1 of image b, each C contiguous values.
template <typename T, typename A>
__attribute__((always_inline)) inline void norm_block_cl(const T* __restrict x, T* __restrict y,
                                                         const A* __restrict w, const A* __restrict bias, A eps,
                                                         const Params& p, int64_t b, int64_t p0, int64_t n) {
  const A inv_c = A(1) / A(p.C);
  for (int64_t i = 0; i < n; ++i) {
    const T* xp = x + (b * p.HW + p0 + i) * p.C;
    T* yp = y + (b * p.HW + p0 + i) * p.C;
    const A mean = lane_sum<T, A>(xp, p.C, [](A v) { return v; }) * inv_c;
    const A sq = lane_sum<T, A>(xp, p.C, [mean](A v) { return (v - mean) * (v - mean); });
    const A rstd = A(1) / std::sqrt(sq * inv_c + eps);
    if (p.bias_free) {
      for (int64_t c = 0; c < p.C; ++c) yp[c] = T(A(xp[c]) * rstd * w[c]);
    } else if (bias != nullptr) {
      for (int64_t c = 0; c < p.C; ++c) yp[c] = T((A(xp[c]) - mean) * rstd * w[c] + bias[c]);
    } else {
      for (int64_t c = 0; c < p.C; ++c) yp[c] = T((A(xp[c]) - mean) * rstd * w[c]);
    }
  }
}

// float32, the common case, also as an AVX2 clone (picked at load time on CPUs that have it):
// the block functions inline into each clone, compiled for its instruction set. The same
// operations in the same order either way (no FMA contraction: -ffp-contract=off), so both
// clones give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FD_CLONES
#endif

FD_CLONES void norm_block_nchw_f32(const float* __restrict x, float* __restrict y, const float* __restrict w,
                                   const float* __restrict bias, float eps, const Params& p, int64_t b, int64_t p0,
                                   int64_t n) {
  norm_block_nchw<float, float>(x, y, w, bias, eps, p, b, p0, n);
}

FD_CLONES void norm_block_cl_f32(const float* __restrict x, float* __restrict y, const float* __restrict w,
                                 const float* __restrict bias, float eps, const Params& p, int64_t b, int64_t p0,
                                 int64_t n) {
  norm_block_cl<float, float>(x, y, w, bias, eps, p, b, p0, n);
}

template <typename T, typename A>
void norm_block(bool cl, const T* x, T* y, const A* w, const A* bias, A eps, const Params& p, int64_t b,
                int64_t p0, int64_t n) {
  if constexpr (std::is_same<T, float>::value) {
    if (cl)
      norm_block_cl_f32(x, y, w, bias, eps, p, b, p0, n);
    else
      norm_block_nchw_f32(x, y, w, bias, eps, p, b, p0, n);
  } else {
    if (cl)
      norm_block_cl<T, A>(x, y, w, bias, eps, p, b, p0, n);
    else
      norm_block_nchw<T, A>(x, y, w, bias, eps, p, b, p0, n);
  }
}

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

at::Tensor layer_norm2d(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        double eps, bool bias_free) {
  TORCH_CHECK(x_in.device().is_cpu(), "x: expected a cpu tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4, "x: expected 4 dims (B, C, H, W), got ", x_in.dim());
  const auto st = x_in.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "x: expected float32, float64, float16 or bfloat16, got ", st);
  const int64_t C = x_in.size(1);
  TORCH_CHECK(C >= 1, "x: expected at least one channel, got ", x_in.sizes());
  TORCH_CHECK(weight.device().is_cpu() && weight.numel() == C, "weight: expected ", C,
              " values on cpu, got ", weight.sizes(), " on ", weight.device());
  if (bias.has_value())
    TORCH_CHECK(bias->device().is_cpu() && bias->numel() == C, "bias: expected ", C, " values on cpu, got ",
                bias->sizes(), " on ", bias->device());
  TORCH_CHECK(!(bias_free && bias.has_value()), "bias: expected None with bias_free=True");
  TORCH_CHECK(eps > 0, "eps: expected a positive number, got ", eps);

  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  const Params p{x.size(0), C, x.size(2) * x.size(3), bias_free};
  if (y.numel() == 0) return y;
  const int64_t blocks = (p.HW + kPixels - 1) / kPixels;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "layer_norm2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const auto acc_type = std::is_same<A, double>::value ? at::kDouble : at::kFloat;
    const at::Tensor w = weight.reshape({C}).to(acc_type).contiguous();
    const at::Tensor bs = bias.has_value() ? bias->reshape({C}).to(acc_type).contiguous() : at::Tensor();
    const A* wp = w.const_data_ptr<A>();
    const A* bp = bs.defined() ? bs.const_data_ptr<A>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const A e = static_cast<A>(eps);
    at::parallel_for(0, p.B * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, p0 = (task % blocks) * kPixels;
        const int64_t n = p.HW - p0 < kPixels ? p.HW - p0 : kPixels;
        norm_block<scalar_t, A>(cl, xp, yp, wp, bp, e, p, b, p0, n);
      }
    });
  });
  return y;
}

}  // namespace cpu
}  // namespace fastdenoise

TORCH_LIBRARY_IMPL(fastdenoise, CPU, m) {
  m.impl("layer_norm2d", &fastdenoise::cpu::layer_norm2d);
}
