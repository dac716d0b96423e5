// Shared by the CPU kernels (sampler_step.cpp) and the CUDA binding (cuda/sampler_step.cpp): the layout rule of the
// diffusion ops and their argument checks, so both backends accept and reject exactly the same input. Nothing here
// reads tensor values: on CUDA that would synchronise with the host (the CPU kernels range-check timesteps
// themselves; the CUDA kernels clamp them behind the public op's device-side assert).
#pragma once

#include <ATen/ATen.h>

#include "sampler_step_table.h"
#include "tensor_rules.h"

#include <optional>

namespace gencore {
namespace ss {

// Columns of sampler_step's coefficient table: sampler_step_table.h.
constexpr int64_t kNumCoefs = sampler_table::kNumCoefs;

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ", ref.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
              " has dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

// sample (N, *) on `device`, timesteps (N,) int64, coefs (T, columns) in the compute dtype, all on one device.
inline void check_table(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& coefs,
                        int64_t columns, const char* sample_name, c10::DeviceType device) {
  TORCH_CHECK(sample.device().type() == device, "the ", c10::DeviceTypeName(device), " kernel got ", sample_name,
              " on ", sample.device());
  TORCH_CHECK(sample.dim() >= 1 && sample.numel() > 0, sample_name, " must be a non-empty (N, *) tensor, got ",
              sample.sizes());
  TORCH_CHECK(at::isFloatingType(sample.scalar_type()), sample_name, " must be a floating-point tensor, got ",
              sample.scalar_type());
  TORCH_CHECK(timesteps.scalar_type() == at::kLong, "timesteps must be an int64 tensor, got ",
              timesteps.scalar_type());
  TORCH_CHECK(timesteps.dim() == 1 && timesteps.size(0) == sample.size(0), "timesteps must have shape (",
              sample.size(0), ",), got ", timesteps.sizes());
  TORCH_CHECK(timesteps.device() == sample.device(), "timesteps is on ", timesteps.device(), " but ", sample_name,
              " is on ", sample.device());
  TORCH_CHECK(coefs.dim() == 2 && coefs.size(1) == columns && coefs.size(0) >= 1, "coefs must have shape (T, ",
              columns, ") with T >= 1, got ", coefs.sizes());
  const auto want = accumulation_type(sample.scalar_type());
  TORCH_CHECK(coefs.scalar_type() == want, "coefs must be ", want, " for ", sample.scalar_type(), " ", sample_name,
              ", got ", coefs.scalar_type());
  TORCH_CHECK(coefs.device() == sample.device(), "coefs is on ", coefs.device(), " but ", sample_name, " is on ",
              sample.device());
}

inline void check_philox(int64_t seed, int64_t offset, int64_t num_samples, int64_t numel_per_sample) {
  TORCH_CHECK(seed >= 0, "philox_seed must be in [0, 2^63 - 1], got ", seed);
  TORCH_CHECK(offset >= 0, "philox_offset must be in [0, 2^63 - 1], got ", offset);
  TORCH_CHECK(num_samples <= (int64_t(1) << 32), "Philox noise supports at most 2^32 samples, got ", num_samples);
  TORCH_CHECK(numel_per_sample <= (int64_t(1) << 34), "Philox noise supports at most 2^34 elements per sample, got ",
              numel_per_sample);
}

// Every argument of sampler_step against the sample (the table included).
inline void check_step(const at::Tensor& model_output, const at::Tensor& sample, const at::Tensor& timesteps,
                       const at::Tensor& coefs, int64_t columns, const std::optional<at::Tensor>& uncond,
                       std::optional<double> clip_range, const std::optional<at::Tensor>& threshold,
                       const std::optional<at::Tensor>& noise, std::optional<int64_t> philox_seed,
                       int64_t philox_offset, const std::optional<at::Tensor>& history1,
                       const std::optional<at::Tensor>& history2, c10::DeviceType device) {
  check_table(sample, timesteps, coefs, columns, "sample", device);
  check_like(model_output, sample, "model_output", "sample");
  if (history1.has_value()) check_like(*history1, sample, "history1", "sample");
  if (history2.has_value()) {
    TORCH_CHECK(history1.has_value(), "history2 is given without history1 (a history fills history1 first)");
    check_like(*history2, sample, "history2", "sample");
  }
  if (uncond.has_value()) check_like(*uncond, sample, "model_output_uncond", "sample");
  if (noise.has_value()) {
    check_like(*noise, sample, "noise", "sample");
    TORCH_CHECK(!philox_seed.has_value(), "give either noise or philox_seed, not both");
  }
  const int64_t num_samples = sample.size(0);
  if (philox_seed.has_value()) check_philox(*philox_seed, philox_offset, num_samples, sample.numel() / num_samples);
  if (clip_range.has_value()) TORCH_CHECK(*clip_range > 0, "clip_range must be positive, got ", *clip_range);
  if (threshold.has_value()) {
    TORCH_CHECK(threshold->dim() == 1 && threshold->size(0) == num_samples, "threshold must have shape (",
                num_samples, ",), got ", threshold->sizes());
    TORCH_CHECK(threshold->device() == sample.device(), "threshold is on ", threshold->device(),
                " but sample is on ", sample.device());
    TORCH_CHECK(at::isFloatingType(threshold->scalar_type()), "threshold must be a floating-point tensor");
  }
}

}  // namespace ss
}  // namespace gencore
