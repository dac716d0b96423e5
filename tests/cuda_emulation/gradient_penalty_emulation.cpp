// The CUDA kernels of csrc/cuda/gradient_penalty_kernels.cu, built with g++ on top of csrc/cuda/host_emulation.h so
// that tests/ops/test_gradient_penalty_emulation.py can run them on CPU tensors through ctypes. The .cu is included
// verbatim: what runs here is the code nvcc compiles, with only the kernel launch and the CUDA built-ins replaced.
#define GENCORE_CUDA_HOST_EMULATION 1
#include "../../csrc/cuda/gradient_penalty_kernels.cu"

#include <cstdlib>
#include <cstring>

namespace {

// A fresh workspace for each call, filled with NaN bytes: a slot read before it is written poisons the result.
struct PoisonedWorkspace {
  explicit PoisonedWorkspace(size_t bytes) : data(std::aligned_alloc(256, (bytes + 255) / 256 * 256)) {
    std::memset(data, 0xff, (bytes + 255) / 256 * 256);
  }
  ~PoisonedWorkspace() { std::free(data); }
  void* data;
};

gencore::ScalarKind kind(int dtype) { return static_cast<gencore::ScalarKind>(dtype); }

}  // namespace

extern "C" {

int64_t gencore_emulation_gp_chunks(int64_t d) { return gencore::cuda::gp_chunks(d); }

int gencore_emulation_gradient_penalty_interpolate(int dtype, const void* real, const void* fake, const void* alpha, void* out,
                                     int64_t n, int64_t d) {
  return static_cast<int>(gencore::cuda::gradient_penalty_interpolate(kind(dtype), real, fake, alpha, out, n, d, nullptr));
}

int gencore_emulation_gradient_norm_penalty_fwd(int dtype, const void* grad, void* norms, void* penalty, int64_t n,
                                          int64_t d, double center, int one_sided, double grad_scale) {
  const size_t stats_bytes = kind(dtype) == gencore::ScalarKind::Float64 ? 8 : 4;
  PoisonedWorkspace ws(static_cast<size_t>(n * gencore::cuda::gp_chunks(d)) * stats_bytes);
  return static_cast<int>(gencore::cuda::gradient_norm_penalty_fwd(kind(dtype), grad, ws.data, norms, penalty, n, d, center,
                                                             one_sided != 0, grad_scale, nullptr));
}

int gencore_emulation_gradient_norm_penalty_bwd(int dtype, const void* grad_penalty, const void* grad, const void* norms,
                                          void* out, int64_t n, int64_t d, double center, int one_sided,
                                          double grad_scale) {
  return static_cast<int>(gencore::cuda::gradient_norm_penalty_bwd(kind(dtype), grad_penalty, grad, norms, out, n, d,
                                                             center, one_sided != 0, grad_scale, nullptr));
}

}  // extern "C"
