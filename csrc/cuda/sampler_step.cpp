// CUDA binding of gencore::sampler_step, diffusion_training_inputs and philox_uint32 (schemas in csrc/gencore.cpp).
//
// Thin on purpose: check the arguments (naming each one) without reading device memory, bring the per-element
// inputs to the sample's layout, allocate the outputs with the torch allocator, and call the plain-C++ launchers of
// sampler_step_kernels.cu on the current stream. Timesteps are range-checked by the public op with a device-side
// assert (no host sync) and clamped by the kernels, so the step stays CUDA-graph capturable.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../sampler_step.h"
#include "sampler_step_kernels.h"

namespace gencore {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
namespace sk = gencore::cuda;


sk::SamplerDims dims_of(const Tensor& sample, bool channels_last) {
  sk::SamplerDims d;
  d.N = sample.size(0);
  d.numel = sample.numel() / d.N;
  d.C = sample.dim() >= 2 ? sample.size(1) : 1;
  d.S = d.C > 0 ? d.numel / d.C : 0;
  d.channels_last = channels_last;
  return d;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " (cuda): kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<Tensor, Tensor> sampler_step_cuda(const Tensor& model_output_in, const Tensor& sample_in,
                                             const Tensor& timesteps_in, const Tensor& coefs_in,
                                             const OptTensor& uncond_in, double guidance_scale,
                                             std::optional<double> clip_range, const OptTensor& threshold_in,
                                             const OptTensor& noise_in, std::optional<int64_t> philox_seed,
                                             int64_t philox_offset, const OptTensor& history1_in,
                                             const OptTensor& history2_in) {
  ss::check_step(model_output_in, sample_in, timesteps_in, coefs_in, ss::kNumCoefs, uncond_in, clip_range,
                 threshold_in, noise_in, philox_seed, philox_offset, history1_in, history2_in, c10::DeviceType::CUDA);
  const ScalarKind dtype = scalar_kind(sample_in.scalar_type(), "sample");

  c10::cuda::CUDAGuard guard(sample_in.device());
  const bool channels_last = is_channels_last(sample_in);
  const Tensor sample = to_layout(sample_in, channels_last);
  const Tensor model_output = to_layout(model_output_in, channels_last);
  const Tensor timesteps = timesteps_in.contiguous();
  const Tensor coefs = coefs_in.contiguous();
  OptTensor uncond, noise, threshold, history1, history2;
  if (uncond_in.has_value()) uncond = to_layout(*uncond_in, channels_last);
  if (history1_in.has_value()) history1 = to_layout(*history1_in, channels_last);
  if (history2_in.has_value()) history2 = to_layout(*history2_in, channels_last);
  if (noise_in.has_value()) noise = to_layout(*noise_in, channels_last);
  if (threshold_in.has_value()) threshold = threshold_in->to(coefs.scalar_type()).contiguous();
  Tensor prev = output_like(sample);
  Tensor x0 = output_like(sample);

  sk::SamplerStepArgs a;
  a.dtype = dtype;
  a.dims = dims_of(sample, channels_last);
  a.model_output = model_output.const_data_ptr();
  a.sample = sample.const_data_ptr();
  a.uncond = uncond.has_value() ? uncond->const_data_ptr() : nullptr;
  a.noise = noise.has_value() ? noise->const_data_ptr() : nullptr;
  a.history1 = history1.has_value() ? history1->const_data_ptr() : nullptr;
  a.history2 = history2.has_value() ? history2->const_data_ptr() : nullptr;
  a.timesteps = timesteps.const_data_ptr<int64_t>();
  a.coefs = coefs.const_data_ptr();
  a.T = coefs.size(0);
  a.threshold = threshold.has_value() ? threshold->const_data_ptr() : nullptr;
  a.guidance_scale = guidance_scale;
  a.clip = clip_range.has_value();
  a.clip_range = clip_range.value_or(1.0);
  a.philox = philox_seed.has_value();
  a.seed = static_cast<uint64_t>(philox_seed.value_or(0));
  a.offset = static_cast<uint64_t>(philox_offset);
  a.prev = prev.mutable_data_ptr();
  a.x0 = x0.mutable_data_ptr();
  check_launch(sk::launch_sampler_step(a, c10::cuda::getCurrentCUDAStream().stream()), "sampler_step");
  return {prev, x0};
}

std::tuple<Tensor, Tensor> training_inputs_cuda(const Tensor& x0_in, const Tensor& noise_in,
                                                const Tensor& timesteps_in, const Tensor& coefs_in, bool velocity) {
  ss::check_table(x0_in, timesteps_in, coefs_in, 2, "x0", c10::DeviceType::CUDA);
  ss::check_like(noise_in, x0_in, "noise", "x0");
  const ScalarKind dtype = scalar_kind(x0_in.scalar_type(), "x0");
  c10::cuda::CUDAGuard guard(x0_in.device());
  const bool channels_last = is_channels_last(x0_in);
  const Tensor x0 = to_layout(x0_in, channels_last);
  const Tensor noise = to_layout(noise_in, channels_last);
  const Tensor timesteps = timesteps_in.contiguous();
  const Tensor coefs = coefs_in.contiguous();
  Tensor noisy = output_like(x0);
  Tensor v = velocity ? output_like(x0) : at::empty({0}, x0.options());

  sk::TrainingInputsArgs a;
  a.dtype = dtype;
  a.dims = dims_of(x0, channels_last);
  a.x0 = x0.const_data_ptr();
  a.noise = noise.const_data_ptr();
  a.timesteps = timesteps.const_data_ptr<int64_t>();
  a.coefs = coefs.const_data_ptr();
  a.T = coefs.size(0);
  a.noisy = noisy.mutable_data_ptr();
  a.velocity = velocity ? v.mutable_data_ptr() : nullptr;
  check_launch(sk::launch_training_inputs(a, c10::cuda::getCurrentCUDAStream().stream()),
               "diffusion_training_inputs");
  return {noisy, v};
}

Tensor philox_uint32_cuda(const Tensor& sample, int64_t seed, int64_t offset) {
  TORCH_CHECK(sample.is_cuda(), "the CUDA kernel got sample on ", sample.device());
  TORCH_CHECK(sample.dim() >= 1, "sample must have a batch dimension (N, *)");
  const int64_t n = sample.size(0);
  const int64_t numel = n ? sample.numel() / n : 0;
  ss::check_philox(seed, offset, n, numel);
  c10::cuda::CUDAGuard guard(sample.device());
  Tensor out = at::empty({n, numel}, sample.options().dtype(at::kLong));
  check_launch(sk::launch_philox_uint32(out.mutable_data_ptr<int64_t>(), n, numel, static_cast<uint64_t>(seed),
                                        static_cast<uint64_t>(offset), c10::cuda::getCurrentCUDAStream().stream()),
               "philox_uint32");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("sampler_step", &sampler_step_cuda);
  m.impl("diffusion_training_inputs", &training_inputs_cuda);
  m.impl("philox_uint32", &philox_uint32_cuda);
}

}  // namespace gencore
