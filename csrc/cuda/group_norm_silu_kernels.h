// Plain C++ interface to the CUDA kernels of group_norm_silu (csrc/cuda/group_norm_silu_kernels.cu).
//
// No PyTorch header on purpose: the kernels compile with any nvcc (CI checks them on machines without a GPU) and the
// binding (csrc/cuda/group_norm_silu.cpp) is the only place that knows about at::Tensor. The binding checks the
// arguments, allocates outputs and the workspace with the torch allocator, and passes raw pointers, sizes, the
// layout and the current stream here. The math is docs/math.md (forward: per-(n, g) statistics, then
// y = act(d * A[n, c] + B[n, c]); backward: per-(n, c) sums S1, S2, S3, then gx = A * gz + E * d + F).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../scalar_kind.h"

namespace gencore {
namespace cuda {

// x viewed as (N, C, S), S = prod(spatial) (1 without spatial dims), G groups (C % G == 0).
//   channels_last == false: element (n, c, s) at n*C*S + c*S + s   (x.is_contiguous())
//   channels_last == true : element (n, c, s) at n*S*C + s*C + c   (x.movedim(1, -1).is_contiguous())
struct GroupNormSiluDims {
  int64_t N = 0, C = 0, S = 0, G = 0;
  bool channels_last = false;
};

// dtype: the element type of x and of every other tensor argument and gradient (they all share x's dtype).
// Statistics and all accumulation are in acc_type (../scalar_kind.h): float32, float64 for Float64.
struct GroupNormSiluFwdArgs {
  ScalarKind dtype = ScalarKind::Float32;
  GroupNormSiluDims dims;
  const void* x = nullptr;            // (N, C, S) in the layout of dims
  const void* weight = nullptr;       // (C,) or nullptr (1)
  const void* bias = nullptr;         // (C,) or nullptr (0)
  const void* temb = nullptr;         // (N, C) contiguous, or nullptr (0)
  const void* scale_shift = nullptr;  // (N, 2C) contiguous = [scale | shift], or nullptr
  void* y = nullptr;                  // same layout as x
  void* mean = nullptr;               // (N, G) double, whatever the dtype
  void* rstd = nullptr;               // (N, G) float (double for Float64)
  double eps = 1e-5;
  bool silu = true;                   // false: identity activation (plain GroupNorm)
};

struct GroupNormSiluBwdArgs {
  ScalarKind dtype = ScalarKind::Float32;
  GroupNormSiluDims dims;
  const void* grad_out = nullptr;     // same layout as x
  const void* x = nullptr;
  const void* weight = nullptr;       // each optional as in the forward
  const void* bias = nullptr;
  const void* temb = nullptr;
  const void* scale_shift = nullptr;
  const void* mean = nullptr;         // (N, G) double, saved by the forward
  const void* rstd = nullptr;
  void* grad_x = nullptr;             // same layout as x
  void* grad_weight = nullptr;        // (C,)    or nullptr: not computed
  void* grad_bias = nullptr;          // (C,)    or nullptr
  void* grad_temb = nullptr;          // (N, C)  or nullptr
  void* grad_scale_shift = nullptr;   // (N, 2C) or nullptr
  bool silu = true;
};

// Bytes of scratch memory the launch needs for these arguments (it depends on the shape, the dtype, the pointers'
// alignment and the current device's SM count). The caller allocates at least this much, 256-byte aligned.
cudaError_t group_norm_silu_fwd_workspace_bytes(const GroupNormSiluFwdArgs& args, size_t* bytes);
cudaError_t group_norm_silu_bwd_workspace_bytes(const GroupNormSiluBwdArgs& args, size_t* bytes);

// Enqueue the kernels on `stream` (nothing synchronises; no host-device copies, so the launches can be captured in a
// CUDA graph). Returns cudaErrorInvalidValue for inconsistent sizes or a too-small workspace, else the first launch
// error. Deterministic: fixed reduction orders, one writer per workspace slot, no atomics.
cudaError_t group_norm_silu_fwd(const GroupNormSiluFwdArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream);
cudaError_t group_norm_silu_bwd(const GroupNormSiluBwdArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
