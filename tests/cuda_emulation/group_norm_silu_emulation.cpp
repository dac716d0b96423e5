// The CUDA kernels of csrc/cuda/group_norm_silu_kernels.cu, built with g++ on top of csrc/cuda/host_emulation.h so
// that tests/ops/test_group_norm_silu_emulation.py can run them on CPU tensors through ctypes. The .cu is included
// verbatim: what runs here is the code nvcc compiles, with only the kernel launch and the CUDA built-ins replaced.
#define GENCORE_CUDA_HOST_EMULATION 1
#include "../../csrc/cuda/group_norm_silu_kernels.cu"

#include <cstdlib>
#include <cstring>

namespace {

// A fresh workspace for each call, filled with NaN bytes: a slot read before it is written poisons the result.
struct PoisonedWorkspace {
  explicit PoisonedWorkspace(size_t bytes) : size(bytes), data(std::aligned_alloc(256, (bytes + 255) / 256 * 256)) {
    std::memset(data, 0xff, size);
  }
  ~PoisonedWorkspace() { std::free(data); }
  size_t size;
  void* data;
};

gencore::cuda::GroupNormSiluDims dims(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last) {
  gencore::cuda::GroupNormSiluDims d;
  d.N = N;
  d.C = C;
  d.S = S;
  d.G = G;
  d.channels_last = channels_last != 0;
  return d;
}

__global__ void divergent_sync_kernel(int* flag) {
  if (threadIdx.x < 5) return;
  __syncthreads();
  *flag = 1;
}

}  // namespace

extern "C" {

void gencore_emulation_set_sm_count(int sms) { gencore_emulation::sm_count = sms; }

// Number of s-splits the reductions use for this shape (to check that the tests exercise the split path).
int64_t gencore_emulation_gns_splits(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int V) {
  return gencore::cuda::make_reduce_plan(dims(N, C, S, G, channels_last), V, gencore_emulation::sm_count).splits;
}

int gencore_emulation_gns_fwd(int dtype, int64_t N, int64_t C, int64_t S, int64_t G, int channels_last,
                              const void* x, const void* weight, const void* bias, const void* temb,
                              const void* scale_shift, void* y, void* mean, void* rstd, double eps, int silu) {
  gencore::cuda::GroupNormSiluFwdArgs a;
  a.dtype = static_cast<gencore::ScalarKind>(dtype);
  a.dims = dims(N, C, S, G, channels_last);
  a.x = x;
  a.weight = weight;
  a.bias = bias;
  a.temb = temb;
  a.scale_shift = scale_shift;
  a.y = y;
  a.mean = mean;
  a.rstd = rstd;
  a.eps = eps;
  a.silu = silu != 0;
  size_t bytes = 0;
  cudaError_t err = gencore::cuda::group_norm_silu_fwd_workspace_bytes(a, &bytes);
  if (err != cudaSuccess) return int(err);
  PoisonedWorkspace ws(bytes);
  return int(gencore::cuda::group_norm_silu_fwd(a, ws.data, ws.size, nullptr));
}

int gencore_emulation_gns_bwd(int dtype, int64_t N, int64_t C, int64_t S, int64_t G, int channels_last,
                              const void* grad_out, const void* x, const void* weight, const void* bias,
                              const void* temb, const void* scale_shift, const void* mean, const void* rstd,
                              void* grad_x, void* grad_weight, void* grad_bias, void* grad_temb,
                              void* grad_scale_shift, int silu) {
  gencore::cuda::GroupNormSiluBwdArgs a;
  a.dtype = static_cast<gencore::ScalarKind>(dtype);
  a.dims = dims(N, C, S, G, channels_last);
  a.grad_out = grad_out;
  a.x = x;
  a.weight = weight;
  a.bias = bias;
  a.temb = temb;
  a.scale_shift = scale_shift;
  a.mean = mean;
  a.rstd = rstd;
  a.grad_x = grad_x;
  a.grad_weight = grad_weight;
  a.grad_bias = grad_bias;
  a.grad_temb = grad_temb;
  a.grad_scale_shift = grad_scale_shift;
  a.silu = silu != 0;
  size_t bytes = 0;
  cudaError_t err = gencore::cuda::group_norm_silu_bwd_workspace_bytes(a, &bytes);
  if (err != cudaSuccess) return int(err);
  PoisonedWorkspace ws(bytes);
  return int(gencore::cuda::group_norm_silu_bwd(a, ws.data, ws.size, nullptr));
}

// The emulator's own check: a kernel where some threads return before a __syncthreads must fail, not hang.
int gencore_emulation_selftest_divergent_sync() {
  int flag = 0;
  gencore_emulation::launch(divergent_sync_kernel, dim3(1), 64, &flag);
  return int(cudaGetLastError());
}

}  // extern "C"
