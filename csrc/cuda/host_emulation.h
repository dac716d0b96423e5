// Runs the CUDA kernels of csrc/cuda/*_kernels.cu on CPU threads, so that their indexing, split reductions and
// merges are tested on machines without a GPU (tests/test_cuda_emulation.py). Only a g++ build with
// -DGENCORE_CUDA_HOST_EMULATION includes this; nvcc and setup.py never see it.
//
// The model is the CUDA execution model, literally: a launch starts blockDim.x host threads; they run the grid's
// blocks one after another (so a function-static array is exactly one block's shared memory); __syncthreads is a
// barrier of the block's threads; __shfl_down_sync is a barrier of the warp's 32 threads around an exchange buffer.
// A kernel that lets some threads skip a __syncthreads, or some lanes skip a shuffle, deadlocks here as it would be
// undefined on a GPU (the test runs the emulation under a timeout). What it cannot show: races between threads that
// a GPU would interleave differently, memory-model effects, and the speed.
#pragma once

#ifdef __CUDACC__
#error "host_emulation.h is for g++ builds of the kernels only"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#undef __shared__
#define __shared__ static  // one block at a time: a function-static array is that block's shared memory
#undef __launch_bounds__
#define __launch_bounds__(...)

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace gencore_emulation {

constexpr int kWarpSize = 32;

struct Warp {
  std::barrier<> arrive{kWarpSize};
  uint64_t slots[kWarpSize];
};

struct Block {
  explicit Block(unsigned threads) : arrive(threads), warps(threads / kWarpSize) {}
  std::barrier<> arrive;
  std::vector<Warp> warps;
};

inline Block* current_block = nullptr;  // the launch in progress (launches run one at a time)
inline int sm_count = 132;              // what cudaDeviceGetAttribute(MultiProcessorCount) reports

// Runs kernel<<<grid, threads>>>(args...) to completion.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, unsigned threads, Args... args) {
  Block block(threads);
  current_block = &block;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = uint3{t, 0, 0};
      blockDim = dim3(threads, 1, 1);
      gridDim = grid;
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = uint3{bx, by, 0};
          kernel(args...);
          block.arrive.arrive_and_wait();  // the next block reuses the static shared memory
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  current_block = nullptr;
}

}  // namespace gencore_emulation

inline void __syncthreads() { gencore_emulation::current_block->arrive.arrive_and_wait(); }

template <class T>
T __shfl_down_sync(unsigned /*mask: all 32 lanes in these kernels*/, T value, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  using gencore_emulation::kWarpSize;
  const unsigned lane = threadIdx.x % kWarpSize;
  gencore_emulation::Warp& warp = gencore_emulation::current_block->warps[threadIdx.x / kWarpSize];
  std::memcpy(&warp.slots[lane], &value, sizeof(T));
  warp.arrive.arrive_and_wait();
  T out = value;  // lanes past the end keep their own value, as on the GPU
  if (lane + unsigned(offset) < unsigned(kWarpSize)) std::memcpy(&out, &warp.slots[lane + offset], sizeof(T));
  warp.arrive.arrive_and_wait();
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
extern "C" inline cudaError_t cudaGetLastError() { return cudaSuccess; }
