// CUDA kernels of the WGAN-GP gradient penalty (declarations and contract: gradient_penalty_kernels.h).
//
// Grids: x walks the D elements (or chunks) of a sample, y walks samples with a stride of gridDim.y, so any N fits
// (gridDim.y <= 65535) and no kernel divides by D per element. Half types compute in float32, float64 in float64.
// Reductions are warp shuffles and a fixed shared-memory tree inside a block, then a fixed-order merge of the
// per-(sample, chunk) partials by one block: deterministic, no atomics. The extension is built with
// --use_fast_math, so the square root and the divisions use the correctly rounded intrinsics explicitly.
#include "gradient_penalty_kernels.h"

#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace gencore {
namespace cuda {
namespace {

constexpr int kMaxGridY = 65535;
constexpr int64_t kElemsPerBlock = 4096;  // elementwise passes: 16 elements per thread

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

// V = 1: element by element; V = kVecWidth<T>: 16-byte accesses (d % V == 0 and every tensor 16-byte aligned, so
// each sample starts aligned too).
template <typename T, int V>
__global__ void interpolate_kernel(const T* __restrict__ real, const T* __restrict__ fake, const T* __restrict__ alpha,
                                   T* __restrict__ out, int64_t n, int64_t d) {
  using A = acc_type<T>;
  using P = Pack<T, V>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const A a = to_acc(alpha[s]);
    const A b = A(1) - a;
    const int64_t base = s * d;
    for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < d; i += step * V) {
      const P r = *reinterpret_cast<const P*>(real + base + i), f = *reinterpret_cast<const P*>(fake + base + i);
      P o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(a * to_acc(r.v[k]) + b * to_acc(f.v[k]));
      *reinterpret_cast<P*>(out + base + i) = o;
    }
  }
}

template <typename T, int V>
__global__ void sumsq_kernel(const T* __restrict__ grad, acc_type<T>* __restrict__ partial, int64_t n,
                             int64_t d, int64_t chunks) {
  using A = acc_type<T>;
  using P = Pack<T, V>;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
      const int64_t start = c * kGpChunk;  // a multiple of every V
      const int64_t stop = start + kGpChunk < d ? start + kGpChunk : d;
      const T* g = grad + s * d;
      A acc = 0;
      for (int64_t i = start + threadIdx.x * V; i < stop; i += blockDim.x * V) {
        const P p = *reinterpret_cast<const P*>(g + i);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const A v = to_acc(p.v[k]);
          acc += v * v;
        }
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

template <typename T, int V>
__global__ void penalty_bwd_kernel(const acc_type<T>* __restrict__ grad_penalty, const T* __restrict__ grad,
                                   const acc_type<T>* __restrict__ norms, T* __restrict__ out, int64_t n,
                                   int64_t d, acc_type<T> center, bool one_sided,
                                   acc_type<T> scale_sq) {
  using A = acc_type<T>;
  const A gout = *grad_penalty;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const A norm = norms[s];
    A dev = norm - center;
    if (one_sided && dev < A(0)) dev = 0;
    // 0 where the norm is 0: the sample's gradient is then 0 too (torch.linalg.vector_norm's subgradient). A NaN
    // norm stays NaN (norm == 0 is false for it), as in the reference.
    const A coef = norm == A(0) ? A(0) : exact_div(gout * A(2) * dev * scale_sq, norm * static_cast<A>(n));
    const int64_t base = s * d;
    for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < d; i += step * V) {
      const Pack<T, V> g = *reinterpret_cast<const Pack<T, V>*>(grad + base + i);
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(coef * to_acc(g.v[k]));
      *reinterpret_cast<Pack<T, V>*>(out + base + i) = o;
    }
  }
}

dim3 elementwise_grid(int64_t n, int64_t d) {
  const int64_t x = std::max<int64_t>(1, std::min<int64_t>((d + kElemsPerBlock - 1) / kElemsPerBlock, 1 << 20));
  const int64_t y = std::max<int64_t>(1, std::min<int64_t>(n, kMaxGridY));
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

}  // namespace

cudaError_t gradient_penalty_interpolate(ScalarKind dtype, const void* real, const void* fake, const void* alpha,
                                         void* out, int64_t n, int64_t d, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVecWidth<T>;
    const bool vec = d % V == 0 && aligned16(real) && aligned16(fake) && aligned16(out);
    return launch(vec ? interpolate_kernel<T, V> : interpolate_kernel<T, 1>, elementwise_grid(n, d), stream,
                  static_cast<const T*>(real), static_cast<const T*>(fake), static_cast<const T*>(alpha),
                  static_cast<T*>(out), n, d);
  });
}

cudaError_t gradient_norm_penalty_fwd(ScalarKind dtype, const void* grad, void* workspace, void* norms, void* penalty,
                                int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  const int64_t chunks = gp_chunks(d);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_type<T>;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(chunks, 1 << 20)),
                    static_cast<unsigned>(std::min<int64_t>(n, kMaxGridY)));
    constexpr int V = kVecWidth<T>;
    const bool vec = d % V == 0 && aligned16(grad);
    const cudaError_t err = launch(vec ? sumsq_kernel<T, V> : sumsq_kernel<T, 1>, grid, stream,
                                   static_cast<const T*>(grad), static_cast<A*>(workspace), n, d, chunks);
    if (err != cudaSuccess) return err;
    return launch(finalize_kernel<A>, dim3(1), stream, static_cast<const A*>(workspace), static_cast<A*>(norms),
                  static_cast<A*>(penalty), n, chunks, static_cast<A>(center), one_sided,
                  static_cast<A>(grad_scale < 0 ? -grad_scale : grad_scale));
  });
}

cudaError_t gradient_norm_penalty_bwd(ScalarKind dtype, const void* grad_penalty, const void* grad, const void* norms,
                                void* out, int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_type<T>;
    constexpr int V = kVecWidth<T>;
    const bool vec = d % V == 0 && aligned16(grad) && aligned16(out);
    return launch(vec ? penalty_bwd_kernel<T, V> : penalty_bwd_kernel<T, 1>, elementwise_grid(n, d), stream,
                  static_cast<const A*>(grad_penalty), static_cast<const T*>(grad), static_cast<const A*>(norms),
                  static_cast<T*>(out), n, d, static_cast<A>(center), one_sided,
                  static_cast<A>(grad_scale * grad_scale));
  });
}

}  // namespace cuda
}  // namespace gencore
