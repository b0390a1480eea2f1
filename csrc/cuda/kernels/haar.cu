// CUDA kernels of the one-level 2-D Haar transform (forward and inverse), NCHW and NHWC.
// Pure CUDA: no torch headers, so `nvcc -c` compiles this file alone.
//
// The transform is memory-bound: each element is read once and written once. Each thread
// handles P neighbouring 2x2 blocks (NCHW: P output columns; NHWC: P channels) so that loads
// and stores are vectorised up to 16 bytes, and accumulates in float32 (float64 for double).
#include "haar.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <type_traits>

namespace fastdenoise {
namespace cuda {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void store(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Forward butterfly of one 2x2 block (a, b, c, d) into four bands.
template <typename A>
__device__ __forceinline__ void forward4(const HaarCoeffs& k, A a, A b, A c, A d, A out[4]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    out[q] = A(k.fwd) * (A(k.sign[q][0]) * a + A(k.sign[q][1]) * b + A(k.sign[q][2]) * c +
                         A(k.sign[q][3]) * d);
  }
}

// Inverse butterfly: four band values into the 2x2 block (a, b, c, d).
template <typename A>
__device__ __forceinline__ void inverse4(const HaarCoeffs& k, const A v[4], A out[4]) {
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    out[n] = A(k.inv) * (A(k.sign[0][n]) * v[0] + A(k.sign[1][n]) * v[1] + A(k.sign[2][n]) * v[2] +
                         A(k.sign[3][n]) * v[3]);
  }
}

// ---- NCHW: a thread owns P consecutive output columns of one (b, c, i) row. ----------------

template <typename T, int P, typename I>
__global__ void dwt_nchw_kernel(const T* __restrict__ x, T* __restrict__ y, HaarShape s,
                                HaarCoeffs k, I total) {
  using A = acc_t<T>;
  const I vecs = static_cast<I>(s.w / P), h = static_cast<I>(s.h), c = static_cast<I>(s.c);
  const I plane = h * static_cast<I>(s.w), band = c * plane, W = 2 * static_cast<I>(s.w);
  for (I t = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<I>(gridDim.x) * blockDim.x) {
    const I jv = t % vecs, row = t / vecs;  // row = (b * c + ch) * h + i
    const I i = row % h, bc = row / h, ch = bc % c, b = bc / c;
    const T* r0 = x + (bc * 2 * h + 2 * i) * W + 2 * P * jv;
    const Vec<T, 2 * P> top = load<T, 2 * P>(r0);
    const Vec<T, 2 * P> bot = load<T, 2 * P>(r0 + W);
    Vec<T, P> o[4];
#pragma unroll
    for (int p = 0; p < P; ++p) {
      A out[4];
      forward4<A>(k, to_acc(top.v[2 * p]), to_acc(top.v[2 * p + 1]), to_acc(bot.v[2 * p]),
                  to_acc(bot.v[2 * p + 1]), out);
#pragma unroll
      for (int q = 0; q < 4; ++q) o[q].v[p] = from_acc<T>(out[q]);
    }
    T* dst = y + b * 4 * band + ch * plane + i * static_cast<I>(s.w) + P * jv;
#pragma unroll
    for (int q = 0; q < 4; ++q) store<T, P>(dst + q * band, o[q]);
  }
}

template <typename T, int P, typename I>
__global__ void idwt_nchw_kernel(const T* __restrict__ y, T* __restrict__ x, HaarShape s,
                                 HaarCoeffs k, I total) {
  using A = acc_t<T>;
  const I vecs = static_cast<I>(s.w / P), h = static_cast<I>(s.h), c = static_cast<I>(s.c);
  const I plane = h * static_cast<I>(s.w), band = c * plane, W = 2 * static_cast<I>(s.w);
  for (I t = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<I>(gridDim.x) * blockDim.x) {
    const I jv = t % vecs, row = t / vecs;
    const I i = row % h, bc = row / h, ch = bc % c, b = bc / c;
    const T* src = y + b * 4 * band + ch * plane + i * static_cast<I>(s.w) + P * jv;
    Vec<T, P> in[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) in[q] = load<T, P>(src + q * band);
    Vec<T, 2 * P> top, bot;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const A v[4] = {to_acc(in[0].v[p]), to_acc(in[1].v[p]), to_acc(in[2].v[p]), to_acc(in[3].v[p])};
      A out[4];
      inverse4<A>(k, v, out);
      top.v[2 * p] = from_acc<T>(out[0]);
      top.v[2 * p + 1] = from_acc<T>(out[1]);
      bot.v[2 * p] = from_acc<T>(out[2]);
      bot.v[2 * p + 1] = from_acc<T>(out[3]);
    }
    T* r0 = x + (bc * 2 * h + 2 * i) * W + 2 * P * jv;
    store<T, 2 * P>(r0, top);
    store<T, 2 * P>(r0 + W, bot);
  }
}

// ---- NHWC: a thread owns P consecutive channels at one (b, i, j). --------------------------

template <typename T, int P, typename I>
__global__ void dwt_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, HaarShape s,
                                HaarCoeffs k, I total) {
  using A = acc_t<T>;
  const I cv = static_cast<I>(s.c / P), C = static_cast<I>(s.c), w = static_cast<I>(s.w),
          h = static_cast<I>(s.h);
  for (I t = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<I>(gridDim.x) * blockDim.x) {
    const I c0 = (t % cv) * P, pix = t / cv;  // pix = (b * h + i) * w + j
    const I j = pix % w, bi = pix / w, i = bi % h, b = bi / h;
    const T* pa = x + ((b * 2 * h + 2 * i) * 2 * w + 2 * j) * C + c0;
    const T* pc = pa + 2 * w * C;
    const Vec<T, P> va = load<T, P>(pa), vb = load<T, P>(pa + C), vc = load<T, P>(pc),
                    vd = load<T, P>(pc + C);
    Vec<T, P> o[4];
#pragma unroll
    for (int p = 0; p < P; ++p) {
      A out[4];
      forward4<A>(k, to_acc(va.v[p]), to_acc(vb.v[p]), to_acc(vc.v[p]), to_acc(vd.v[p]), out);
#pragma unroll
      for (int q = 0; q < 4; ++q) o[q].v[p] = from_acc<T>(out[q]);
    }
    T* dst = y + pix * 4 * C + c0;
#pragma unroll
    for (int q = 0; q < 4; ++q) store<T, P>(dst + q * C, o[q]);
  }
}

template <typename T, int P, typename I>
__global__ void idwt_nhwc_kernel(const T* __restrict__ y, T* __restrict__ x, HaarShape s,
                                 HaarCoeffs k, I total) {
  using A = acc_t<T>;
  const I cv = static_cast<I>(s.c / P), C = static_cast<I>(s.c), w = static_cast<I>(s.w),
          h = static_cast<I>(s.h);
  for (I t = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<I>(gridDim.x) * blockDim.x) {
    const I c0 = (t % cv) * P, pix = t / cv;
    const I j = pix % w, bi = pix / w, i = bi % h, b = bi / h;
    const T* src = y + pix * 4 * C + c0;
    Vec<T, P> in[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) in[q] = load<T, P>(src + q * C);
    Vec<T, P> o[4];
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const A v[4] = {to_acc(in[0].v[p]), to_acc(in[1].v[p]), to_acc(in[2].v[p]), to_acc(in[3].v[p])};
      A out[4];
      inverse4<A>(k, v, out);
#pragma unroll
      for (int n = 0; n < 4; ++n) o[n].v[p] = from_acc<T>(out[n]);
    }
    T* pa = x + ((b * 2 * h + 2 * i) * 2 * w + 2 * j) * C + c0;
    T* pc = pa + 2 * w * C;
    store<T, P>(pa, o[0]);
    store<T, P>(pa + C, o[1]);
    store<T, P>(pc, o[2]);
    store<T, P>(pc + C, o[3]);
  }
}

constexpr int kThreads = 256;

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Widest P (a power of two, 2P elements at most 16 bytes) that divides `extent` and keeps both
// pointers aligned to their vector widths.
template <typename T>
int pick_vec(int64_t extent, const void* in, size_t in_vec_mult, const void* out,
             size_t out_vec_mult) {
  for (int p = static_cast<int>(16 / (2 * sizeof(T))); p > 1; p /= 2) {
    if (extent % p == 0 && aligned(in, in_vec_mult * p * sizeof(T)) &&
        aligned(out, out_vec_mult * p * sizeof(T)))
      return p;
  }
  return 1;
}

template <typename T, int P, typename I>
cudaError_t dispatch_index(bool forward, Layout layout, const T* in, T* out, const HaarShape& s,
                           const HaarCoeffs& k, cudaStream_t stream) {
  const int64_t items = layout == Layout::NCHW ? s.n * s.c * s.h * (s.w / P)
                                               : s.n * s.h * s.w * (s.c / P);
  if (items == 0) return cudaSuccess;
  const int64_t blocks64 = (items + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(blocks64 < (1LL << 30) ? blocks64 : (1LL << 30));
  const I total = static_cast<I>(items);
  if (layout == Layout::NCHW) {
    if (forward) dwt_nchw_kernel<T, P, I><<<blocks, kThreads, 0, stream>>>(in, out, s, k, total);
    else idwt_nchw_kernel<T, P, I><<<blocks, kThreads, 0, stream>>>(in, out, s, k, total);
  } else {
    if (forward) dwt_nhwc_kernel<T, P, I><<<blocks, kThreads, 0, stream>>>(in, out, s, k, total);
    else idwt_nhwc_kernel<T, P, I><<<blocks, kThreads, 0, stream>>>(in, out, s, k, total);
  }
  return cudaGetLastError();
}

template <typename T, int P>
cudaError_t dispatch(bool forward, Layout layout, const T* in, T* out, const HaarShape& s,
                     const HaarCoeffs& k, cudaStream_t stream) {
  // 32-bit indices when every offset (4 n c h w elements on either side) fits.
  const int64_t elements = 4 * s.n * s.c * s.h * s.w;
  if (elements < static_cast<int64_t>(INT_MAX))
    return dispatch_index<T, P, int32_t>(forward, layout, in, out, s, k, stream);
  return dispatch_index<T, P, int64_t>(forward, layout, in, out, s, k, stream);
}

template <typename T>
cudaError_t haar(bool forward, const T* in, T* out, const HaarShape& s, Layout layout,
                 int variant, cudaStream_t stream) {
  if (variant < 0 || variant >= kHaarNumVariants) return cudaErrorInvalidValue;
  const HaarCoeffs k = haar_coeffs(variant);
  // NCHW: P output columns; the full-resolution side moves 2P elements per row, the
  // sub-band side P. NHWC: P channels on both sides.
  const bool nchw = layout == Layout::NCHW;
  const void* full = forward ? static_cast<const void*>(in) : static_cast<const void*>(out);
  const void* sub = forward ? static_cast<const void*>(out) : static_cast<const void*>(in);
  const int p = nchw ? pick_vec<T>(s.w, full, 2, sub, 1) : pick_vec<T>(s.c, full, 1, sub, 1);
  switch (p) {
    case 4: return dispatch<T, (sizeof(T) <= 2 ? 4 : 1)>(forward, layout, in, out, s, k, stream);
    case 2: return dispatch<T, (sizeof(T) <= 4 ? 2 : 1)>(forward, layout, in, out, s, k, stream);
    default: return dispatch<T, 1>(forward, layout, in, out, s, k, stream);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_haar_dwt2d(const T* x, T* y, HaarShape shape, Layout layout, int variant,
                              cudaStream_t stream) {
  return haar<T>(true, x, y, shape, layout, variant, stream);
}

template <typename T>
cudaError_t launch_haar_idwt2d(const T* y, T* x, HaarShape shape, Layout layout, int variant,
                               cudaStream_t stream) {
  return haar<T>(false, y, x, shape, layout, variant, stream);
}

#define FD_INSTANTIATE(T)                                                                   \
  template cudaError_t launch_haar_dwt2d<T>(const T*, T*, HaarShape, Layout, int, cudaStream_t); \
  template cudaError_t launch_haar_idwt2d<T>(const T*, T*, HaarShape, Layout, int, cudaStream_t);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
FD_INSTANTIATE(__half)
FD_INSTANTIATE(__nv_bfloat16)
#undef FD_INSTANTIATE

}  // namespace cuda
}  // namespace fastdenoise
