// The CUDA kernels of csrc/cuda/sampler_step_kernels.cu, built with g++ on top of csrc/cuda/host_emulation.h so that
// tests/ops/test_sampler_step_emulation.py can run them on CPU tensors through ctypes. The .cu is included verbatim:
// what runs here is the code nvcc compiles, with only the kernel launch and the CUDA built-ins replaced.
#define GENCORE_CUDA_HOST_EMULATION 1
#include "../../csrc/cuda/sampler_step_kernels.cu"

namespace {

gencore::cuda::SamplerDims dims(int64_t N, int64_t numel, int64_t C, int64_t S, int channels_last) {
  gencore::cuda::SamplerDims d;
  d.N = N;
  d.numel = numel;
  d.C = C;
  d.S = S;
  d.channels_last = channels_last != 0;
  return d;
}

}  // namespace

extern "C" {

int gencore_emulation_sampler_step(int dtype, int64_t N, int64_t numel, int64_t C, int64_t S, int channels_last,
                                   const void* model_output, const void* sample, const void* uncond,
                                   const void* noise, const int64_t* timesteps, const void* coefs, int64_t T,
                                   const void* threshold, double guidance_scale, int clip, double clip_range,
                                   int philox, uint64_t seed, uint64_t offset, void* prev, void* x0,
                                   const void* history1, const void* history2) {
  gencore::cuda::SamplerStepArgs a;
  a.dtype = static_cast<gencore::ScalarKind>(dtype);
  a.dims = dims(N, numel, C, S, channels_last);
  a.model_output = model_output;
  a.sample = sample;
  a.uncond = uncond;
  a.noise = noise;
  a.history1 = history1;
  a.history2 = history2;
  a.timesteps = timesteps;
  a.coefs = coefs;
  a.T = T;
  a.threshold = threshold;
  a.guidance_scale = guidance_scale;
  a.clip = clip != 0;
  a.clip_range = clip_range;
  a.philox = philox != 0;
  a.seed = seed;
  a.offset = offset;
  a.prev = prev;
  a.x0 = x0;
  return static_cast<int>(gencore::cuda::launch_sampler_step(a, nullptr));
}

int gencore_emulation_training_inputs(int dtype, int64_t N, int64_t numel, int64_t C, int64_t S, int channels_last,
                                      const void* x0, const void* noise, const int64_t* timesteps, const void* coefs,
                                      int64_t T, void* noisy, void* velocity) {
  gencore::cuda::TrainingInputsArgs a;
  a.dtype = static_cast<gencore::ScalarKind>(dtype);
  a.dims = dims(N, numel, C, S, channels_last);
  a.x0 = x0;
  a.noise = noise;
  a.timesteps = timesteps;
  a.coefs = coefs;
  a.T = T;
  a.noisy = noisy;
  a.velocity = velocity;
  return static_cast<int>(gencore::cuda::launch_training_inputs(a, nullptr));
}

int gencore_emulation_philox_uint32(int64_t* out, int64_t N, int64_t numel, uint64_t seed, uint64_t offset) {
  return static_cast<int>(gencore::cuda::launch_philox_uint32(out, N, numel, seed, offset, nullptr));
}

}  // extern "C"
