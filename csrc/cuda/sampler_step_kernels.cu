// CUDA kernels of the fused diffusion ops (interface: sampler_step_kernels.h; math: gencore/reference/sampler_step.py).
//
// One thread handles one Philox counter group: 4 consecutive logical elements of one sample, grid-stride over all
// N * ceil(numel / 4) groups. The thread gathers its sample's coefficient row from the device-side table (the
// timestep clamped to [0, T): the binding adds a device-side assert, and the kernel never reads out of bounds), then
// reads and writes its 4 elements once. Contiguous samples whose size is a multiple of 4 use one vector load/store
// per tensor (16 bytes for float32); float16 / bfloat16 ones whose size is a multiple of 8 take two groups per thread,
// so that their accesses are 16 bytes too; other sizes and the channels-last layout go element by element. With Philox
// noise, the group's 4 words are exactly the 4 normals the thread needs (gencore/reference/philox.py), so in-kernel
// noise costs one Philox4x32-10 per 4 elements and no memory traffic.
//
// No host synchronisation anywhere: a loop of steps is CUDA-graph capturable. Transcendentals are the precise ones
// (log1p, sincospi: --use_fast_math does not replace them), so normals agree with the other backends to rounding.
#include "sampler_step_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../philox.h"
#include "common.cuh"

namespace gencore {
namespace cuda {
namespace {

using namespace sampler_table;  // the table's column names

// Reads / writes the E (or, at the end of a sample, fewer) elements of one work item: E = 4 is one Philox counter
// group; E = 8 (two groups) gives 16-byte accesses for float16 / bfloat16.
template <typename T, int E, bool VEC, bool CHANNELS_LAST>
struct GroupIO {
  int64_t mem[E];
  int count;

  __device__ GroupIO(int64_t n, int64_t e0, const SamplerDims& d) {
    count = static_cast<int>(d.numel - e0 < E ? d.numel - e0 : E);
    const int64_t base = n * d.numel;
    if (CHANNELS_LAST) {
      // Logical element e = c * S + s sits at s * C + c. One 64-bit division for the item's first element; the
      // next ones step s and wrap to the next channel.
      int64_t c = e0 / d.S, s = e0 - c * d.S;
#pragma unroll
      for (int j = 0; j < E; ++j) {
        mem[j] = base + s * d.C + c;
        if (++s == d.S) {
          s = 0;
          ++c;
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j) mem[j] = base + e0 + j;
    }
  }

  template <typename A>
  __device__ void load(const void* ptr, A out[E]) const {
    const T* p = static_cast<const T*>(ptr);
    if (VEC) {  // count == E and mem[0] % E == 0
      const Pack<T, E> pack = *reinterpret_cast<const Pack<T, E>*>(p + mem[0]);
#pragma unroll
      for (int j = 0; j < E; ++j) out[j] = to_acc(pack.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j) out[j] = j < count ? to_acc(p[mem[j]]) : A(0);
    }
  }

  template <typename A>
  __device__ void store(void* ptr, const A in[E]) const {
    T* p = static_cast<T*>(ptr);
    if (VEC) {
      Pack<T, E> pack;
#pragma unroll
      for (int j = 0; j < E; ++j) pack.v[j] = from_acc<T>(in[j]);
      *reinterpret_cast<Pack<T, E>*>(p + mem[0]) = pack;
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j)
        if (j < count) p[mem[j]] = from_acc<T>(in[j]);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Box-Muller on a (radius, angle) word pair: r = sqrt(-2 log1p(-v)), (r cos 2 pi a, r sin 2 pi a) = sincospi(2a).

__device__ __forceinline__ void box_muller(uint32_t w_radius, uint32_t w_angle, float& z_cos, float& z_sin) {
  const float v = philox::radius_uniform<float>(w_radius);
  const float a = philox::angle_uniform<float>(w_angle);
  const float r = sqrtf(-2.0f * log1pf(-v));
  float s, c;
#ifdef GENCORE_CUDA_HOST_EMULATION
  s = static_cast<float>(std::sin(M_PI * (2.0 * a)));
  c = static_cast<float>(std::cos(M_PI * (2.0 * a)));
#else
  sincospif(2.0f * a, &s, &c);
#endif
  z_cos = r * c;
  z_sin = r * s;
}

__device__ __forceinline__ void box_muller(uint32_t w_radius, uint32_t w_angle, double& z_cos, double& z_sin) {
  const double v = philox::radius_uniform<double>(w_radius);
  const double a = philox::angle_uniform<double>(w_angle);
  const double r = sqrt(-2.0 * log1p(-v));
  double s, c;
#ifdef GENCORE_CUDA_HOST_EMULATION
  s = std::sin(M_PI * (2.0 * a));
  c = std::cos(M_PI * (2.0 * a));
#else
  sincospi(2.0 * a, &s, &c);
#endif
  z_cos = r * c;
  z_sin = r * s;
}

template <typename A>
__device__ __forceinline__ void philox_normals(uint64_t seed, uint64_t offset, int64_t n, int64_t group, A z[4]) {
  const philox::Words w = philox::draw(seed, offset, static_cast<uint64_t>(n), static_cast<uint64_t>(group));
  box_muller(w.w[0], w.w[1], z[0], z[1]);
  box_muller(w.w[2], w.w[3], z[2], z[3]);
}

__device__ __forceinline__ int64_t clamped_row(const int64_t* timesteps, int64_t n, int64_t T) {
  const int64_t t = timesteps[n];
  return t < 0 ? 0 : (t >= T ? T - 1 : t);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

template <typename T, int E, bool VEC, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kThreads) sampler_step_kernel(SamplerStepArgs a) {
  using A = acc_type<T>;
  const int64_t groups = (a.dims.numel + E - 1) / E;  // work items per sample, E / 4 Philox groups each
  const int64_t total = a.dims.N * groups;
  const A guidance = static_cast<A>(a.guidance_scale);
  const A clip = static_cast<A>(a.clip_range);
  const A* coefs = static_cast<const A*>(a.coefs);
  const A* threshold = static_cast<const A*>(a.threshold);
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = item / groups;
    const int64_t g = item - n * groups;
    const A* c = coefs + clamped_row(a.timesteps, n, a.T) * kNumCoefs;
    const A c0 = c[kX0FromSample], c1 = c[kX0FromModel], c2 = c[kEpsFromSample], c3 = c[kEpsFromModel];
    const A c4 = c[kEpsFromX0], c5 = c[kPrevFromX0], c6 = c[kPrevFromSample], c7 = c[kPrevFromEps];
    const A c8 = c[kNoiseStd], c9 = a.history1 ? c[kPrevFromHistory1] : A(0);
    const A c10 = a.history2 ? c[kPrevFromHistory2] : A(0);
    const GroupIO<T, E, VEC, CHANNELS_LAST> io(n, E * g, a.dims);
    A x[E], m[E], z[E], h1[E], h2[E];
#pragma unroll
    for (int j = 0; j < E; ++j) z[j] = h1[j] = h2[j] = A(0);
    io.load(a.sample, x);
    io.load(a.model_output, m);
    if (a.uncond) {
      A u[E];
      io.load(a.uncond, u);
#pragma unroll
      for (int j = 0; j < E; ++j) m[j] = u[j] + guidance * (m[j] - u[j]);
    }
    if (a.noise) {
      io.load(a.noise, z);
    } else if (a.philox) {
#pragma unroll
      for (int q = 0; q < E / 4; ++q) philox_normals(a.seed, a.offset, n, (E / 4) * g + q, z + 4 * q);
    }
    if (a.history1) io.load(a.history1, h1);
    if (a.history2) io.load(a.history2, h2);
    A prev[E], x0[E];
    const A s = threshold ? threshold[n] : A(0);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      A p0 = c0 * x[j] + c1 * m[j];
      if (threshold) {
        p0 = exact_div(static_cast<A>(fmin(fmax(p0, -s), s)), s);  // IEEE division under --use_fast_math
      } else if (a.clip) {
        p0 = fmin(fmax(p0, -clip), clip);
      }
      const A eps = c2 * x[j] + c3 * m[j] + c4 * p0;
      prev[j] = c5 * p0 + c6 * x[j] + c7 * eps + c8 * z[j] + c9 * h1[j] + c10 * h2[j];
      x0[j] = p0;
    }
    io.store(a.prev, prev);
    io.store(a.x0, x0);
  }
}

template <typename T, bool VEC, bool CHANNELS_LAST>
__global__ void __launch_bounds__(kThreads) training_inputs_kernel(TrainingInputsArgs a) {
  using A = acc_type<T>;
  const int64_t groups = (a.dims.numel + 3) / 4;
  const int64_t total = a.dims.N * groups;
  const A* coefs = static_cast<const A*>(a.coefs);
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = item / groups;
    const int64_t g = item - n * groups;
    const A* c = coefs + clamped_row(a.timesteps, n, a.T) * 2;
    const A c0 = c[0], c1 = c[1];
    const GroupIO<T, 4, VEC, CHANNELS_LAST> io(n, 4 * g, a.dims);
    A x[4], z[4], out[4];
    io.load(a.x0, x);
    io.load(a.noise, z);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = c0 * x[j] + c1 * z[j];
    io.store(a.noisy, out);
    if (a.velocity) {
#pragma unroll
      for (int j = 0; j < 4; ++j) out[j] = c0 * z[j] - c1 * x[j];
      io.store(a.velocity, out);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    philox_uint32_kernel(int64_t* out, int64_t N, int64_t numel, uint64_t seed, uint64_t offset) {
  const int64_t groups = (numel + 3) / 4;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < N * groups;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = item / groups;
    const int64_t g = item - n * groups;
    const philox::Words w = philox::draw(seed, offset, static_cast<uint64_t>(n), static_cast<uint64_t>(g));
    for (int j = 0; j < 4 && 4 * g + j < numel; ++j) out[n * numel + 4 * g + j] = static_cast<int64_t>(w.w[j]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers

// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the rest. A fixed cap (no
// device query) keeps the launcher free of host calls.
constexpr int64_t kMaxBlocks = 1 << 16;

int blocks_for(int64_t items) {
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>((items + kThreads - 1) / kThreads, 1), kMaxBlocks));
}

// Vector access needs whole groups in memory order and 4-element-aligned pointers.
bool aligned4(const void* p, int64_t elem_size) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * elem_size) == 0;
}

template <typename T, typename Args, typename Launch>
cudaError_t dispatch_layout(const Args& a, const void* const* ptrs, int num_ptrs, Launch body) {
  bool vec = !a.dims.channels_last && a.dims.numel % 4 == 0;
  for (int i = 0; i < num_ptrs; ++i) vec = vec && aligned4(ptrs[i], sizeof(T));
  if (a.dims.channels_last) return body(std::integral_constant<bool, false>{}, std::integral_constant<bool, true>{});
  if (vec) return body(std::integral_constant<bool, true>{}, std::integral_constant<bool, false>{});
  return body(std::integral_constant<bool, false>{}, std::integral_constant<bool, false>{});
}

template <typename T>
cudaError_t sampler_step_typed(const SamplerStepArgs& a, cudaStream_t stream) {
  const void* ptrs[] = {a.model_output, a.sample, a.uncond, a.noise, a.history1, a.history2, a.prev, a.x0};
  if constexpr (sizeof(T) == 2) {
    // float16 / bfloat16: two counter groups per thread, so that each access is 16 bytes wide.
    bool wide = !a.dims.channels_last && a.dims.numel % 8 == 0;
    for (const void* p : ptrs) wide = wide && aligned16(p);
    if (wide) {
      return launch(sampler_step_kernel<T, 8, true, false>, blocks_for(a.dims.N * (a.dims.numel / 8)), stream, a);
    }
  }
  const int64_t items = a.dims.N * ((a.dims.numel + 3) / 4);
  return dispatch_layout<T>(a, ptrs, 8, [&](auto vec, auto channels_last) {
    return launch(sampler_step_kernel<T, 4, decltype(vec)::value, decltype(channels_last)::value>,
                  blocks_for(items), stream, a);
  });
}

template <typename T>
cudaError_t training_inputs_typed(const TrainingInputsArgs& a, cudaStream_t stream) {
  const int64_t items = a.dims.N * ((a.dims.numel + 3) / 4);
  const void* ptrs[] = {a.x0, a.noise, a.noisy, a.velocity};
  return dispatch_layout<T>(a, ptrs, 4, [&](auto vec, auto channels_last) {
    return launch(training_inputs_kernel<T, decltype(vec)::value, decltype(channels_last)::value>,
                  blocks_for(items), stream, a);
  });
}

}  // namespace

cudaError_t launch_sampler_step(const SamplerStepArgs& args, cudaStream_t stream) {
  if (args.dims.N == 0 || args.dims.numel == 0) return cudaSuccess;
  return dispatch(args.dtype, [&](auto tag) { return sampler_step_typed<decltype(tag)>(args, stream); });
}

cudaError_t launch_training_inputs(const TrainingInputsArgs& args, cudaStream_t stream) {
  if (args.dims.N == 0 || args.dims.numel == 0) return cudaSuccess;
  return dispatch(args.dtype, [&](auto tag) { return training_inputs_typed<decltype(tag)>(args, stream); });
}

cudaError_t launch_philox_uint32(int64_t* out, int64_t N, int64_t numel, uint64_t seed, uint64_t offset,
                                 cudaStream_t stream) {
  if (N == 0 || numel == 0) return cudaSuccess;
  return launch(philox_uint32_kernel, blocks_for(N * ((numel + 3) / 4)), stream, out, N, numel, seed, offset);
}

}  // namespace cuda
}  // namespace gencore
