// CUDA kernels of the WGAN-GP gradient penalty (declarations and contract: gradient_penalty_kernels.h).
//
// Grids: x walks the D elements (or chunks) of a sample, y walks samples with a stride of gridDim.y, so any N fits
// (gridDim.y <= 65535) and no kernel divides by D per element. Half types compute in float32, float64 in float64.
// Reductions are warp shuffles and a fixed shared-memory tree inside a block, then a fixed-order merge of the
// per-(sample, chunk) partials by one block: deterministic, no atomics. The extension is built with
// --use_fast_math, so the square root and the divisions use the correctly rounded intrinsics explicitly.
#include "gradient_penalty_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#ifdef GENCORE_CUDA_HOST_EMULATION
#include "host_emulation.h"  // tests only: runs these kernels on CPU threads (tests/test_gradient_penalty_emulation.py)
#endif

#include <algorithm>
#include <cmath>

namespace gencore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;
constexpr int64_t kElemsPerBlock = 4096;  // elementwise passes: 16 elements per thread

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

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

// Sum over the block in a fixed order: shuffles within each warp, then warp 0 over the warps' sums.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = 0;
  if (warp == 0) {
    total = lane < kThreads / 32 ? warp_sums[lane] : A(0);
    for (int off = 16; off > 0; off >>= 1) total += __shfl_down_sync(0xffffffffu, total, off);
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return total;     // valid in thread 0
}

template <typename T>
__global__ void interpolate_kernel(const T* __restrict__ real, const T* __restrict__ fake, const T* __restrict__ alpha,
                                   T* __restrict__ out, int64_t n, int64_t d) {
  using A = typename Acc<T>::type;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const A a = to_acc(alpha[s]);
    const A b = A(1) - a;
    const int64_t base = s * d;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < d; i += step) {
      out[base + i] = from_acc<T>(a * to_acc(real[base + i]) + b * to_acc(fake[base + i]));
    }
  }
}

template <typename T>
__global__ void sumsq_kernel(const T* __restrict__ grad, typename Acc<T>::type* __restrict__ partial, int64_t n,
                             int64_t d, int64_t chunks) {
  using A = typename Acc<T>::type;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
      const int64_t start = c * kGpChunk;
      const int64_t stop = start + kGpChunk < d ? start + kGpChunk : d;
      const T* g = grad + s * d;
      A acc = 0;
      for (int64_t i = start + threadIdx.x; i < stop; i += blockDim.x) {
        const A v = to_acc(g[i]);
        acc += v * v;
      }
      acc = block_sum(acc);
      if (threadIdx.x == 0) partial[s * chunks + c] = acc;
    }
  }
}

// One block: each thread owns samples t, t + blockDim.x, ...: merges their partials in chunk order, then the
// block sums the squared deviations in a fixed tree.
template <typename A>
__global__ void finalize_kernel(const A* __restrict__ partial, A* __restrict__ norms, A* __restrict__ penalty,
                                int64_t n, int64_t chunks, A center, bool one_sided, A scale) {
  A local = 0;
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
    A sq = 0;
    for (int64_t c = 0; c < chunks; ++c) sq += partial[s * chunks + c];
    const A norm = scale * exact_sqrt(sq);
    norms[s] = norm;
    A dev = norm - center;
    if (one_sided && dev < A(0)) dev = 0;
    local += dev * dev;
  }
  const A total = block_sum(local);
  if (threadIdx.x == 0) *penalty = exact_div(total, static_cast<A>(n));
}

template <typename T>
__global__ void penalty_bwd_kernel(const typename Acc<T>::type* __restrict__ grad_penalty, const T* __restrict__ grad,
                                   const typename Acc<T>::type* __restrict__ norms, T* __restrict__ out, int64_t n,
                                   int64_t d, typename Acc<T>::type center, bool one_sided,
                                   typename Acc<T>::type scale_sq) {
  using A = typename Acc<T>::type;
  const A gout = *grad_penalty;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const A norm = norms[s];
    A dev = norm - center;
    if (one_sided && dev < A(0)) dev = 0;
    // 0 where the norm is 0: the sample's gradient is then 0 too (torch.linalg.vector_norm's subgradient).
    const A coef = norm > A(0) ? exact_div(gout * A(2) * dev * scale_sq, norm * static_cast<A>(n)) : A(0);
    const int64_t base = s * d;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < d; i += step) {
      out[base + i] = from_acc<T>(coef * to_acc(grad[base + i]));
    }
  }
}

// Every launch goes through here: on the GPU a plain <<<grid, kThreads, 0, stream>>>; under host emulation (tests
// only) the same kernel runs on CPU fibers.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, cudaStream_t stream, Args... args) {
#ifdef GENCORE_CUDA_HOST_EMULATION
  (void)stream;
  gencore_emulation::launch(kernel, grid, kThreads, Params(args)...);
#else
  kernel<<<grid, kThreads, 0, stream>>>(Params(args)...);
#endif
}

dim3 elementwise_grid(int64_t n, int64_t d) {
  const int64_t x = std::max<int64_t>(1, std::min<int64_t>((d + kElemsPerBlock - 1) / kElemsPerBlock, 1 << 20));
  const int64_t y = std::max<int64_t>(1, std::min<int64_t>(n, kMaxGridY));
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

template <typename F>
cudaError_t dispatch(GpDtype dtype, const F& f) {
  switch (dtype) {
    case GpDtype::kFloat32: f(float{}); break;
    case GpDtype::kFloat64: f(double{}); break;
    case GpDtype::kFloat16: f(__half{}); break;
    case GpDtype::kBFloat16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t gp_interpolate(GpDtype dtype, const void* real, const void* fake, const void* alpha, void* out,
                           int64_t n, int64_t d, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(interpolate_kernel<T>, elementwise_grid(n, d), stream, static_cast<const T*>(real),
           static_cast<const T*>(fake), static_cast<const T*>(alpha), static_cast<T*>(out), n, d);
  });
}

cudaError_t gp_norm_penalty_fwd(GpDtype dtype, const void* grad, void* workspace, void* norms, void* penalty,
                                int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  const int64_t chunks = gp_chunks(d);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(chunks, 1 << 20)),
                    static_cast<unsigned>(std::min<int64_t>(n, kMaxGridY)));
    launch(sumsq_kernel<T>, grid, stream, static_cast<const T*>(grad), static_cast<A*>(workspace), n, d, chunks);
    launch(finalize_kernel<A>, dim3(1), stream, static_cast<const A*>(workspace), static_cast<A*>(norms),
           static_cast<A*>(penalty), n, chunks, static_cast<A>(center), one_sided,
           static_cast<A>(grad_scale < 0 ? -grad_scale : grad_scale));
  });
}

cudaError_t gp_norm_penalty_bwd(GpDtype dtype, const void* grad_penalty, const void* grad, const void* norms,
                                void* out, int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    launch(penalty_bwd_kernel<T>, elementwise_grid(n, d), stream, static_cast<const A*>(grad_penalty),
           static_cast<const T*>(grad), static_cast<const A*>(norms), static_cast<T*>(out), n, d,
           static_cast<A>(center), one_sided, static_cast<A>(grad_scale * grad_scale));
  });
}

}  // namespace cuda
}  // namespace gencore
