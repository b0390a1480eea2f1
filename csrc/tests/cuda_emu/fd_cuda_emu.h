// A CPU emulator of the CUDA execution model, for running the kernels of csrc/cuda/kernels on a
// machine without a GPU (tests/cuda_emu builds and drives it). Not part of the library.
//
// What it is: the .cu files compiled by g++ as C++ (tests/cuda_emu/build.py rewrites the two
// pieces of syntax C++ lacks: `kernel<<<grid, block, smem, stream>>>(args)` becomes
// `::fd_emu::launch(kernel, grid, block, smem, stream)(args)`, and `extern __shared__ T s[];`
// becomes a pointer to this launch's dynamic shared memory). Every CUDA thread of a block is a
// fiber (ucontext) on one OS thread; __syncthreads, __syncwarp and the warp shuffles are
// barriers at which the fibers yield; blocks run one after another. So the kernels' indexing,
// shared-memory use, barriers and warp exchanges really execute, with IEEE float arithmetic
// (built with -ffp-contract=off, the __*_rn intrinsics are the plain rounded operations).
//
// What it checks beyond running the code:
//  - launch configurations against the limits of an sm_90 device (grid, block, dynamic shared
//    memory over 48 KiB only after cudaFuncSetAttribute, at most 227 KiB);
//  - barrier deadlocks (a __syncthreads some live threads never reach, a shuffle whose mask
//    names exited lanes), reported as a launch failure with a message instead of hanging;
//  - reads of dynamic shared memory before any write: it is filled with 0xFF bytes (NaN,
//    -1) at the start of every block;
//  - intra-phase races, by running the fibers of each phase in a chosen order (forward,
//    reverse, or shuffled with a seed): a kernel whose output depends on the order has a race;
//    and races between warps, by letting one warp run ahead ("warps ahead": the last warp with
//    a runnable thread runs alone, through its warp-level barriers, until all its threads wait
//    at __syncthreads): a warp that rewrites shared memory another warp has not read yet, with
//    no __syncthreads between, changes the output.
// What it cannot check: timing, occupancy, memory coalescing, FMA contraction by nvcc,
// libdevice accuracy (expf is the host's), or races between blocks (they never overlap here).
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -----------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

// ---- built-in types and variables --------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

extern uint3 threadIdx, blockIdx;  // set by the scheduler before a fiber resumes
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---- runtime API subset ------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace fd_emu {

// Limits of an sm_90 (H100 / H200) device.
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxDynamicSharedOptin = 232448;  // 227 KiB
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kFiberStack = 128 * 1024;

cudaError_t set_max_dynamic_shared(const void* fn, int bytes);
cudaError_t take_last_error();
const char* error_string(cudaError_t e);

struct LaunchConfig {
  const void* fn;
  dim3 grid, block;
  size_t shared;
};

// Runs one launch to completion: every block, each thread of it a fiber running body().
void run(const LaunchConfig& cfg, void (*body)(void*), void* ctx);

template <typename... P>
struct Launcher {
  void (*fn)(P...);
  LaunchConfig cfg;
  template <typename... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{fn, std::tuple<std::decay_t<P>...>(static_cast<P>(std::forward<A>(a))...)};
    // Each fiber calls the kernel with its own copies of the arguments, as CUDA threads do.
    run(cfg, [](void* p) {
      Ctx* c = static_cast<Ctx*>(p);
      std::apply(c->fn, c->args);
    }, &ctx);
  }
};

template <typename... P>
Launcher<P...> launch(void (*fn)(P...), dim3 grid, dim3 block, size_t shared = 0, cudaStream_t = nullptr) {
  return Launcher<P...>{fn, LaunchConfig{reinterpret_cast<const void*>(fn), grid, block, shared}};
}

void* dynamic_shared_base();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}

// Barriers and warp exchange (the fibers yield here).
void sync_block();
void sync_warp(unsigned mask);
void warp_exchange(const void* in, void* out, size_t bytes, int src_lane, unsigned mask);
int lane_id();

}  // namespace fd_emu

inline cudaError_t cudaGetLastError() { return fd_emu::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return fd_emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return fd_emu::error_string(e); }
template <typename F>
cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return fd_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(fn), value);
}

// ---- synchronisation and warp intrinsics ---------------------------------------------------
inline void __syncthreads() { fd_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { fd_emu::sync_warp(mask); }

template <typename T>
T fd_emu_shuffle(unsigned mask, T v, int src_lane) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
  T out;
  fd_emu::warp_exchange(&v, &out, sizeof(T), src_lane, mask);
  return out;
}
// Sources outside the segment of `width` lanes (or out of the warp) return the caller's value.
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = fd_emu::lane_id(), base = lane - lane % width;
  return fd_emu_shuffle(mask, v, base + ((src % width) + width) % width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = fd_emu::lane_id(), seg = lane % width;
  return fd_emu_shuffle(mask, v, seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = fd_emu::lane_id(), seg = lane % width;
  return fd_emu_shuffle(mask, v, seg >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = fd_emu::lane_id(), src = lane ^ lane_mask;
  return fd_emu_shuffle(mask, v, src / width == lane / width ? src : lane);
}

// ---- atomics: fibers never run at the same time, so plain read-modify-writes are atomic -------
template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <typename T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}

// ---- explicitly rounded arithmetic (the build has no FMA contraction) ------------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
inline long long __double2ll_rn(double a) { return static_cast<long long>(nearbyint(a)); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }

// ---- half and bfloat16 (IEEE binary16 through the compiler's _Float16; bfloat16 by its bits) --
struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.__x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // round to nearest even
  __half h;
  std::memcpy(&h.__x, &f, 2);
  return h;
}
inline __half __float2half(float v) { return __float2half_rn(v); }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  __nv_bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    b.__x = static_cast<unsigned short>((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
  } else {
    b.__x = static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // ties to even
  }
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float v) { return __float2bfloat16_rn(v); }
