// What every gencore CUDA kernel file shares: the element types (the ScalarKind a launcher is handed, and acc_type,
// the type the math runs in: ../scalar_kind.h, shared with the CPU kernels and the bindings), their conversions to
// the compute type, the correctly rounded square root and division (the extension builds with --use_fast_math), and
// the one launch helper through which a kernel runs either on the GPU or, in the tests, on CPU fibers
// (host_emulation.h). No PyTorch headers: the kernels compile with nvcc alone (tests/build/test_cuda_compile.py).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../scalar_kind.h"

#ifdef GENCORE_CUDA_HOST_EMULATION
#include "host_emulation.h"  // tests only: runs the kernels on CPU fibers (tests/ops/test_*_emulation.py)
#endif

namespace gencore {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every gencore kernel

// V elements loaded or stored with one instruction (16 bytes for kVecWidth<T> elements); the caller guarantees the
// alignment.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <class T>
constexpr int kVecWidth = static_cast<int>(16 / sizeof(T));

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <class T>
__device__ __forceinline__ T from_acc(acc_type<T> v);
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

// --use_fast_math turns sqrtf and '/' into approximations; these stay correctly rounded, like the CPU backend.
#ifdef GENCORE_CUDA_HOST_EMULATION
inline float exact_sqrt(float x) { return std::sqrt(x); }
inline double exact_sqrt(double x) { return std::sqrt(x); }
inline float exact_div(float a, float b) { return a / b; }
inline double exact_div(double a, double b) { return a / b; }
#else
__device__ __forceinline__ float exact_sqrt(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double exact_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float exact_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double exact_div(double a, double b) { return a / b; }
#endif

// Calls fn with a value of the element type `kind` names (__half, __nv_bfloat16, float or double) and returns what
// it returns (a cudaError_t); cudaErrorInvalidValue for a value outside the enum.
template <class Fn>
cudaError_t dispatch(ScalarKind kind, Fn&& fn) {
  switch (kind) {
    case ScalarKind::Float16: return fn(__half{});
    case ScalarKind::BFloat16: return fn(__nv_bfloat16{});
    case ScalarKind::Float32: return fn(float{});
    case ScalarKind::Float64: return fn(double{});
  }
  return cudaErrorInvalidValue;
}

// Every launch goes through here: on the GPU a plain <<<grid, kThreads, 0, stream>>>; under host emulation (tests
// only) the same kernel runs on CPU fibers. Returns the launch error, if any.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, cudaStream_t stream, Args... args) {
#ifdef GENCORE_CUDA_HOST_EMULATION
  (void)stream;
  gencore_emulation::launch(kernel, grid, kThreads, Params(args)...);
#else
  kernel<<<grid, kThreads, 0, stream>>>(Params(args)...);
#endif
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gencore
