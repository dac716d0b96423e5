// Runs the CUDA kernels of csrc/cuda/*_kernels.cu on the CPU, so that their indexing, split reductions and merges are
// tested on machines without a GPU (tests/ops/test_*_emulation.py). Only a g++ build with
// -DGENCORE_CUDA_HOST_EMULATION includes this; nvcc and setup.py never see it.
//
// The model is the CUDA execution model, literally: every GPU thread of a block is a fiber (ucontext) with its own
// stack, the grid's blocks run one after another (so a function-static array is exactly one block's shared memory),
// __syncthreads is a barrier of the block's fibers, and __shfl_down_sync is a barrier of the warp's 32 fibers around
// an exchange buffer. Fibers switch only at those barriers, in thread order. A kernel that lets some threads skip a
// __syncthreads, or some lanes skip a shuffle, is reported as a failed launch (cudaGetLastError), not a hang.
// What it cannot show: data races that a GPU would interleave differently, memory-model effects, and the speed.
#pragma once

#ifdef __CUDACC__
#error "host_emulation.h is for g++ builds of the kernels only"
#endif

#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#undef __shared__
#define __shared__ static  // one block at a time: a function-static array is that block's shared memory
#undef __launch_bounds__
#define __launch_bounds__(...)

// The running fiber's coordinates (one fiber runs at a time, so plain globals).
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace gencore_emulation {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;

inline int sm_count = 132;                  // what cudaDeviceGetAttribute(MultiProcessorCount) reports
inline cudaError_t last_error = cudaSuccess;  // what cudaGetLastError reports (and clears)

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct Block {
  std::vector<ucontext_t> contexts;
  std::vector<char> done;
  ucontext_t scheduler;
  std::function<void()> body;
  unsigned threads = 0;
  unsigned current = 0;
  uint64_t progress = 0;  // bumps on every barrier arrival and every finished fiber
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<uint64_t> slots;  // shuffle exchange, kWarpSize per warp
};

inline Block* running = nullptr;

// Fiber stacks, allocated once (uninitialised) and reused by every launch.
inline char* fiber_stack(unsigned t) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= t) stacks.emplace_back(new char[kStackBytes]);
  return stacks[t].get();
}

inline void yield_to_scheduler() { swapcontext(&running->contexts[running->current], &running->scheduler); }

// Arrive at `bar` (which `count` fibers share) and wait until all of them have.
inline void arrive_and_wait(Barrier& bar, int count) {
  ++running->progress;
  const uint64_t generation = bar.generation;
  if (++bar.arrived == count) {
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  while (bar.generation == generation) yield_to_scheduler();
}

inline void fiber_entry() {
  running->body();
  running->done[running->current] = 1;
  ++running->progress;
}  // returns to the scheduler through uc_link

// One block: a fresh fiber per thread, then round-robin until all finish. False on a barrier deadlock.
// (Kept out of the launch template and out of line: getcontext returns twice, which -Wclobbered rightly flags
// in any function with live locals around it.)
[[gnu::noinline]] inline void make_fiber(ucontext_t* context, char* stack, ucontext_t* link) {
  getcontext(context);
  context->uc_stack.ss_sp = stack;
  context->uc_stack.ss_size = kStackBytes;
  context->uc_link = link;
  makecontext(context, fiber_entry, 0);
}

inline void start_fibers(Block& b) {
  for (unsigned t = 0; t < b.threads; ++t) make_fiber(&b.contexts[t], fiber_stack(t), &b.scheduler);
}

[[gnu::noinline]] inline bool run_fibers(Block& b) {
  b.done.assign(b.threads, 0);
  start_fibers(b);
  for (unsigned live = b.threads; live > 0;) {
    const uint64_t before = b.progress;
    live = 0;
    for (unsigned t = 0; t < b.threads; ++t) {
      if (b.done[t]) continue;
      b.current = t;
      threadIdx = uint3{t, 0, 0};
      swapcontext(&b.scheduler, &b.contexts[t]);
      live += b.done[t] ? 0 : 1;
    }
    if (live > 0 && b.progress == before) {  // everyone left waits for someone who will never arrive
      std::fprintf(stderr, "host emulation: barrier deadlock in block (%u, %u), %u threads waiting\n", blockIdx.x,
                   blockIdx.y, live);
      return false;
    }
  }
  return true;
}

// Runs kernel<<<grid, threads>>>(args...) to completion; a barrier deadlock sets cudaErrorLaunchFailure.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, unsigned threads, Args... args) {
  Block b;
  b.threads = threads;
  b.contexts.resize(threads);
  b.warps.resize((threads + kWarpSize - 1) / kWarpSize);
  b.slots.resize(b.warps.size() * kWarpSize);
  b.body = [&] { kernel(args...); };
  running = &b;
  blockDim = dim3(threads, 1, 1);
  gridDim = grid;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx = uint3{bx, by, 0};
      if (!run_fibers(b)) {
        last_error = cudaErrorLaunchFailure;
        running = nullptr;
        return;
      }
    }
  }
  running = nullptr;
}

}  // namespace gencore_emulation

inline void __syncthreads() {
  gencore_emulation::arrive_and_wait(gencore_emulation::running->block, int(gencore_emulation::running->threads));
}

template <class T>
T __shfl_down_sync(unsigned /*mask: all 32 lanes in these kernels*/, T value, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  using gencore_emulation::kWarpSize;
  gencore_emulation::Block& b = *gencore_emulation::running;
  const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  uint64_t* slots = &b.slots[warp * kWarpSize];
  std::memcpy(&slots[lane], &value, sizeof(T));
  gencore_emulation::arrive_and_wait(b.warps[warp], kWarpSize);
  T out = value;  // lanes past the end keep their own value, as on the GPU
  if (lane + unsigned(offset) < unsigned(kWarpSize)) std::memcpy(&out, &slots[lane + offset], sizeof(T));
  gencore_emulation::arrive_and_wait(b.warps[warp], kWarpSize);
  return out;
}

inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
using std::max;
using std::min;

// The runtime calls the launchers make, answered for the emulated device 0.
extern "C" inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
extern "C" inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = gencore_emulation::sm_count;
  return cudaSuccess;
}
extern "C" inline cudaError_t cudaGetLastError() {
  const cudaError_t err = gencore_emulation::last_error;
  gencore_emulation::last_error = cudaSuccess;
  return err;
}
