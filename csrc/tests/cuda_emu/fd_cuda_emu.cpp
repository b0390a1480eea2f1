// The scheduler of the CUDA emulator (see fd_cuda_emu.h): fibers, barriers, launches, errors.
#include "fd_cuda_emu.h"

#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

// Under AddressSanitizer (the emulator built with -fsanitize=address) every switch of stacks is
// announced, so that ASan tracks the fiber stacks instead of reporting false errors on them.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FD_EMU_ASAN 1
#else
#define FD_EMU_ASAN 0
#endif

uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
dim3 blockDim, gridDim;

namespace fd_emu {
namespace {

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid{0, 0, 0};
  int warp = 0, lane = 0;
  bool done = false;
  Barrier* waiting = nullptr;
  uint64_t wait_generation = 0;
};

struct State {
  // schedule: 0 forward, 1 reverse, 2 shuffled (seeded), 3 warps ahead (the last warp with a
  // runnable thread runs alone until all its threads wait at __syncthreads or exit)
  int policy = 0;
  uint64_t seed = 0;
  std::mt19937_64 rng;
  cudaError_t last_error = cudaSuccess;
  std::string fault;  // the first emulator-detected fault since the last clear
  std::map<const void*, size_t> max_dynamic;  // cudaFuncSetAttribute per kernel
  long long launches = 0, blocks = 0;

  // the running block
  std::vector<Fiber> fibers;
  ucontext_t main_ctx;
  int current = -1;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint32_t> warp_live;                 // lanes not yet exited
  std::vector<std::array<unsigned char, 8>> slots;  // one per thread: shuffle values
  std::unique_ptr<unsigned char[]> dynamic_shared;
  size_t dynamic_bytes = 0;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  bool aborted = false;
  bool stacks_abandoned = false;  // a launch was aborted with fibers mid-kernel
  // ASan: the scheduler's stack, learnt when a fiber first runs
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
};

State& S() {
  static State s;
  return s;
}

void set_fault(const std::string& msg) {
  State& s = S();
  if (s.fault.empty()) s.fault = msg;
  s.last_error = cudaErrorLaunchFailure;
}

std::string where() {
  const Fiber& f = S().fibers[S().current];
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u, %u, %u) thread (%u, %u, %u)", blockIdx.x, blockIdx.y, blockIdx.z,
                f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

// Stack switches, announced to ASan when it is on. fiber -> scheduler (dying: the fiber never resumes).
void to_scheduler(Fiber& f, bool dying) {
  State& s = S();
#if FD_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, s.main_stack_bottom, s.main_stack_size);
  if (dying) return;  // uc_link switches
  swapcontext(&f.ctx, &s.main_ctx);
  __sanitizer_finish_switch_fiber(fake, &s.main_stack_bottom, &s.main_stack_size);
#else
  if (dying) return;
  swapcontext(&f.ctx, &s.main_ctx);
#endif
}

// scheduler -> fiber
void to_fiber(Fiber& f) {
  State& s = S();
#if FD_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack.get(), kFiberStack);
  swapcontext(&s.main_ctx, &f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&s.main_ctx, &f.ctx);
#endif
}

void release_if_complete(Barrier& b) {
  if (b.arrived > 0 && b.arrived >= b.expected) {
    b.arrived = 0;
    ++b.generation;
  }
}

// The current fiber arrives at b and yields; it resumes once every live participant arrived.
void arrive_and_wait(Barrier& b) {
  State& s = S();
  Fiber& f = s.fibers[s.current];
  f.waiting = &b;
  f.wait_generation = b.generation;
  ++b.arrived;
  release_if_complete(b);
  to_scheduler(f, false);  // always yield: the next phase starts in schedule order
}

void fiber_main(int index) {
  State& s = S();
#if FD_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
#endif
  s.body(s.body_ctx);
  Fiber& f = s.fibers[index];
  f.done = true;
  // an exited thread no longer takes part in the block's or its warp's barriers
  --s.block_barrier.expected;
  release_if_complete(s.block_barrier);
  s.warp_live[f.warp] &= ~(1u << f.lane);
  --s.warp_barriers[f.warp].expected;
  release_if_complete(s.warp_barriers[f.warp]);
  to_scheduler(f, true);  // returning resumes uc_link: the scheduler
}

bool runnable(const Fiber& f) {
  return !f.done && (f.waiting == nullptr || f.waiting->generation != f.wait_generation);
}

std::string deadlock_report(int nthreads) {
  State& s = S();
  int at_block = 0, at_warp = 0;
  for (int i = 0; i < nthreads; ++i) {
    const Fiber& f = s.fibers[i];
    if (f.done) continue;
    if (f.waiting == &s.block_barrier) ++at_block; else ++at_warp;
  }
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "deadlock in block (%u, %u, %u): %d live threads wait at __syncthreads and %d at a warp "
                "barrier (__syncwarp / shuffle) that the other live threads never reach",
                blockIdx.x, blockIdx.y, blockIdx.z, at_block, at_warp);
  return buf;
}

void run_block(int nthreads) {
  State& s = S();
  const int nwarps = (nthreads + 31) / 32;
  s.block_barrier = Barrier{nthreads, 0, 0};
  s.warp_barriers.assign(nwarps, Barrier{});
  s.warp_live.assign(nwarps, 0);
  for (int w = 0; w < nwarps; ++w) {
    const int lanes = std::min(32, nthreads - 32 * w);
    s.warp_barriers[w] = Barrier{lanes, 0, 0};
    s.warp_live[w] = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  if (s.dynamic_bytes) std::memset(s.dynamic_shared.get(), 0xFF, s.dynamic_bytes);
#if FD_EMU_ASAN
  // the frames of fibers abandoned by an aborted launch left their stack redzones poisoned
  if (s.stacks_abandoned) {
    for (Fiber& f : s.fibers) ASAN_UNPOISON_MEMORY_REGION(f.stack.get(), kFiberStack);
    s.stacks_abandoned = false;
  }
#endif
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = s.fibers[i];
    f.done = false;
    f.waiting = nullptr;
    f.tid = uint3{static_cast<unsigned>(i % blockDim.x), static_cast<unsigned>((i / blockDim.x) % blockDim.y),
                  static_cast<unsigned>(i / (blockDim.x * blockDim.y))};
    f.warp = i / 32;
    f.lane = i % 32;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kFiberStack;
    f.ctx.uc_link = &s.main_ctx;
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 1, i);
  }
  std::vector<int> order;
  order.reserve(nthreads);
  int live = nthreads;
  while (live > 0) {
    order.clear();
    for (int i = 0; i < nthreads; ++i)
      if (runnable(s.fibers[i])) order.push_back(i);
    if (order.empty()) {
      set_fault(deadlock_report(nthreads));
      s.aborted = true;
      return;
    }
    if (s.policy == 3) {  // only the last warp with a runnable thread: it gets ahead of the others
      const int warp = s.fibers[order.back()].warp;
      order.erase(std::remove_if(order.begin(), order.end(), [&](int i) { return s.fibers[i].warp != warp; }),
                  order.end());
    }
    if (s.policy == 1) std::reverse(order.begin(), order.end());
    if (s.policy == 2) std::shuffle(order.begin(), order.end(), s.rng);
    for (int i : order) {
      Fiber& f = s.fibers[i];
      if (!runnable(f)) continue;
      f.waiting = nullptr;
      s.current = i;
      threadIdx = f.tid;
      to_fiber(f);
      if (f.done) --live;
      if (s.aborted) return;
    }
  }
  s.current = -1;
}

}  // namespace

cudaError_t set_max_dynamic_shared(const void* fn, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxDynamicSharedOptin) return cudaErrorInvalidValue;
  S().max_dynamic[fn] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const cudaError_t e = S().last_error;
  S().last_error = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulator fault)";
  }
  return "unknown error";
}

void* dynamic_shared_base() { return S().dynamic_shared.get(); }

int lane_id() { return S().fibers[S().current].lane; }

void sync_block() { arrive_and_wait(S().block_barrier); }

void sync_warp(unsigned mask) {
  State& s = S();
  const Fiber& f = s.fibers[s.current];
  const uint32_t live = s.warp_live[f.warp];
  if ((mask & live) != live) {
    set_fault("__syncwarp / shuffle with a partial mask (not emulated) at " + where());
    s.aborted = true;
    to_scheduler(s.fibers[s.current], false);
  }
  arrive_and_wait(s.warp_barriers[f.warp]);
}

void warp_exchange(const void* in, void* out, size_t bytes, int src_lane, unsigned mask) {
  State& s = S();
  const int me = s.current;
  const Fiber& f = s.fibers[me];
  std::memcpy(s.slots[me].data(), in, bytes);
  sync_warp(mask);
  const uint32_t live = s.warp_live[f.warp];
  if (src_lane < 0 || src_lane >= 32 || !(live & (1u << src_lane))) {
    set_fault("shuffle reads lane " + std::to_string(src_lane) + ", which has exited or does not exist, at " +
              where());
    std::memcpy(out, in, bytes);
  } else {
    std::memcpy(out, s.slots[f.warp * 32 + src_lane].data(), bytes);
  }
  sync_warp(mask);  // nobody overwrites its slot before every lane has read
}

void run(const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  State& s = S();
  ++s.launches;
  const dim3 g = cfg.grid, b = cfg.block;
  const unsigned long long nthreads = static_cast<unsigned long long>(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535u || g.z > 65535u || nthreads == 0 ||
      nthreads > kMaxThreadsPerBlock || b.x > 1024u || b.y > 1024u || b.z > 64u) {
    s.last_error = cudaErrorInvalidConfiguration;
    char buf[200];
    std::snprintf(buf, sizeof buf, "invalid launch configuration: grid (%u, %u, %u), block (%u, %u, %u)", g.x, g.y,
                  g.z, b.x, b.y, b.z);
    if (s.fault.empty()) s.fault = buf;
    return;
  }
  const auto it = s.max_dynamic.find(cfg.fn);
  const size_t allowed =
      it == s.max_dynamic.end() ? kDefaultDynamicShared : std::max(it->second, kDefaultDynamicShared);
  if (cfg.shared > allowed) {
    s.last_error = cudaErrorInvalidValue;
    char buf[200];
    std::snprintf(buf, sizeof buf, "launch asks for %zu bytes of dynamic shared memory, the kernel allows %zu",
                  cfg.shared, allowed);
    if (s.fault.empty()) s.fault = buf;
    return;
  }
  if (s.fibers.size() < nthreads) {
    const size_t old = s.fibers.size();
    s.fibers.resize(nthreads);
    for (size_t i = old; i < nthreads; ++i) s.fibers[i].stack.reset(new char[kFiberStack]);
  }
  if (s.slots.size() < ((nthreads + 31) / 32) * 32) s.slots.resize(((nthreads + 31) / 32) * 32);
  s.dynamic_shared.reset(cfg.shared ? new unsigned char[cfg.shared] : nullptr);
  s.dynamic_bytes = cfg.shared;
  s.body = body;
  s.body_ctx = ctx;
  s.aborted = false;
  blockDim = b;
  gridDim = g;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        blockIdx = uint3{x, y, z};
        ++s.blocks;
        run_block(static_cast<int>(nthreads));
        if (s.aborted) {
          s.stacks_abandoned = true;
          s.dynamic_shared.reset();
          s.dynamic_bytes = 0;
          return;
        }
      }
  s.dynamic_shared.reset();
  s.dynamic_bytes = 0;
}

}  // namespace fd_emu

// ---- C interface for the tests (ctypes) ---------------------------------------------------------
extern "C" {

void fd_emu_set_schedule(int policy, unsigned long long seed) {
  fd_emu::State& s = fd_emu::S();
  s.policy = policy;
  s.seed = seed;
  s.rng.seed(seed);
}

// The first fault since the last call ("" when none); clears it.
const char* fd_emu_take_fault() {
  static std::string last;
  last = fd_emu::S().fault;
  fd_emu::S().fault.clear();
  return last.c_str();
}

long long fd_emu_launches() { return fd_emu::S().launches; }
long long fd_emu_blocks() { return fd_emu::S().blocks; }

}
