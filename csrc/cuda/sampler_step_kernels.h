// Plain C++ interface to the CUDA kernels of the fused diffusion ops (csrc/cuda/sampler_step_kernels.cu).
//
// No PyTorch header on purpose: the kernels compile with any nvcc (CI checks them on machines without a GPU), and
// the binding (csrc/cuda/sampler_step.cpp) is the only place that knows about at::Tensor. The binding checks the
// arguments, allocates the outputs with the torch allocator, and passes raw pointers, sizes, the layout and the
// current stream. The math is gencore/reference/sampler_step.py; the noise gencore/reference/philox.py (csrc/philox.h).
//
// Nothing here reads device memory from the host: timesteps index the coefficient table inside the kernels (the
// index clamped to [0, T) so a bad timestep cannot read out of bounds), so a step is CUDA-graph capturable.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../sampler_step_table.h"
#include "../scalar_kind.h"

namespace gencore {
namespace cuda {

// Columns of sampler_step's coefficient table: ../sampler_step_table.h (shared with the CPU kernels and the binding).
constexpr int kNumCoefs = sampler_table::kNumCoefs;

// Samples viewed as (N, numel) with numel = C * S logical elements each (C = size(1), 1 for 1-D samples):
//   channels_last == false: logical element e of sample n at n * numel + e            (contiguous)
//   channels_last == true : element e = c * S + s at n * numel + s * C + c              (channels innermost)
struct SamplerDims {
  int64_t N = 0, numel = 0, C = 1, S = 1;
  bool channels_last = false;
};

// dtype: the element type of the samples (model outputs, noise and outputs share it). The math runs in its acc_type
// (../scalar_kind.h: float32, float64 for Float64), which is also the type of the coefficient table and of the
// threshold vector.
struct SamplerStepArgs {
  ScalarKind dtype = ScalarKind::Float32;
  SamplerDims dims;
  const void* model_output = nullptr;  // same layout as the sample
  const void* sample = nullptr;
  const void* uncond = nullptr;        // model_output_uncond, or nullptr (no guidance)
  const void* noise = nullptr;         // or nullptr
  const void* history1 = nullptr;      // a multistep solver's earlier x0, or nullptr (0) ...
  const void* history2 = nullptr;      // ... the one before (only with history1)
  const int64_t* timesteps = nullptr;  // (N,)
  const void* coefs = nullptr;         // (T, kNumCoefs) contiguous, float (double for Float64)
  int64_t T = 0;
  const void* threshold = nullptr;     // (N,) float (double for Float64), or nullptr
  double guidance_scale = 1.0;
  bool clip = false;                   // clamp x0 to [-clip_range, clip_range] (ignored when threshold is given)
  double clip_range = 1.0;
  bool philox = false;                 // draw z in the kernel (noise must be nullptr)
  uint64_t seed = 0, offset = 0;
  void* prev = nullptr;                // outputs, same layout as the sample
  void* x0 = nullptr;
};

struct TrainingInputsArgs {
  ScalarKind dtype = ScalarKind::Float32;
  SamplerDims dims;
  const void* x0 = nullptr;
  const void* noise = nullptr;
  const int64_t* timesteps = nullptr;  // (N,)
  const void* coefs = nullptr;         // (T, 2) contiguous, float (double for Float64)
  int64_t T = 0;
  void* noisy = nullptr;
  void* velocity = nullptr;            // or nullptr: not computed
};

cudaError_t launch_sampler_step(const SamplerStepArgs& args, cudaStream_t stream);
cudaError_t launch_training_inputs(const TrainingInputsArgs& args, cudaStream_t stream);
// out: (N, numel) int64, each element's Philox word.
cudaError_t launch_philox_uint32(int64_t* out, int64_t N, int64_t numel, uint64_t seed, uint64_t offset,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
