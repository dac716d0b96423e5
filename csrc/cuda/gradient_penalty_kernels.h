// CUDA kernels of the WGAN-GP gradient penalty: C launchers with no PyTorch header, so that nvcc can compile and
// check them anywhere (the binding csrc/cuda/gradient_penalty.cpp passes raw pointers and the current stream).
// Math: gencore/reference/gradient_penalty.py. Every tensor is (N, D), each sample one dense block of D elements.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../scalar_kind.h"

namespace gencore {
namespace cuda {

// dtype: the element type of real/fake/alpha/grad. Statistics (workspace, norms, penalty, grad_penalty) are in its
// acc_type (../scalar_kind.h): float64 for Float64, float32 for every other type.

// Elements per partial sum of squares; the workspace of gradient_norm_penalty_fwd holds n * gp_chunks(d) statistics.
constexpr int64_t kGpChunk = 4096;
inline int64_t gp_chunks(int64_t d) { return d <= 0 ? 1 : (d + kGpChunk - 1) / kGpChunk; }

// out[n, i] = alpha[n] * real[n, i] + (1 - alpha[n]) * fake[n, i]
cudaError_t gradient_penalty_interpolate(ScalarKind dtype, const void* real, const void* fake, const void* alpha,
                                         void* out, int64_t n, int64_t d, cudaStream_t stream);

// norms[n] = |grad_scale| * ||grad[n]||; penalty[0] = mean_n max?(norms[n] - center)^2. Two launches: partial sums
// per (sample, chunk) into workspace (one writer per slot), then one block merges them in a fixed order.
cudaError_t gradient_norm_penalty_fwd(ScalarKind dtype, const void* grad, void* workspace, void* norms, void* penalty,
                                int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream);

// out[n, i] = grad_penalty[0] * (2/N) * dev[n] * grad_scale^2 / norms[n] * grad[n, i]  (0 where norms[n] == 0).
// grad_penalty is read on the device: no host synchronisation.
cudaError_t gradient_norm_penalty_bwd(ScalarKind dtype, const void* grad_penalty, const void* grad, const void* norms,
                                void* out, int64_t n, int64_t d, double center, bool one_sided, double grad_scale,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
