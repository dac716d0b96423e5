// Every gencore operator schema, in one place. Kernels register per device in <op>.cpp (CPU) and
// cuda/<op>.cpp (CUDA); Python adds fake implementations and autograd (gencore/ops/<op>.py), the same for every op.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu_output_pool.h"

#ifndef GENCORE_CPU_ISA
#define GENCORE_CPU_ISA "generic"
#endif

extern "C" {
// Importing the extension runs the static registrations below; everything is reached through torch.ops.gencore.
PyObject* PyInit__C(void) {
  static PyMethodDef no_methods[] = {{nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, no_methods};
  return PyModule_Create(&module_def);
}
}

namespace gencore {

std::string cpu_isa() { return GENCORE_CPU_ISA; }

TORCH_LIBRARY(gencore, m) {
  m.def("cpu_isa() -> str", &cpu_isa);
  // Releases the CPU output cache (csrc/cpu_output_pool.h); returns the bytes freed.
  m.def("cpu_empty_cache() -> int", &cpu_empty_cache);
  // [bytes cached, limit]; and a new limit (0: off), returning the same.
  m.def("cpu_cache_stats() -> int[]", &cpu_cache_stats);
  m.def("cpu_set_cache_limit(int bytes) -> int[]", &cpu_set_cache_limit);

  // y = act(GroupNorm(x + temb) * (1 + scale) + shift); returns (y, mean, rstd), stats of shape (N, G).
  m.def("group_norm_silu_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? temb, Tensor? scale_shift, "
        "int num_groups, float eps, str? activation) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_weight, grad_bias, grad_temb, grad_scale_shift); a 0-element tensor for a None input.
  m.def("group_norm_silu_bwd(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor? temb, "
        "Tensor? scale_shift, Tensor mean, Tensor rstd, int num_groups, str? activation) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // One fused DDPM/DDIM/DPM-Solver++ update (gencore/reference/sampler_step.py): returns (prev_sample,
  // pred_original_sample). coefs: (T, 11) gathered per sample by timesteps (N,); z = noise, else Philox(philox_seed,
  // philox_offset), else 0; history1/2: a multistep solver's earlier x0 (absent: 0).
  m.def("sampler_step(Tensor model_output, Tensor sample, Tensor timesteps, Tensor coefs, "
        "Tensor? model_output_uncond, float guidance_scale, float? clip_range, Tensor? threshold, Tensor? noise, "
        "int? philox_seed, int philox_offset, Tensor? history1=None, Tensor? history2=None) -> (Tensor, Tensor)");
  // noisy = c0 x0 + c1 noise with coefs (T, 2); returns (noisy, velocity = c0 noise - c1 x0), the velocity a
  // 0-element tensor unless velocity=True.
  m.def("diffusion_training_inputs(Tensor x0, Tensor noise, Tensor timesteps, Tensor coefs, bool velocity) "
        "-> (Tensor, Tensor)");
  // The raw Philox4x32-10 words of sampler_step's noise: (N, numel per sample) int64 holding uint32 values.
  m.def("philox_uint32(Tensor sample, int seed, int offset) -> Tensor");

  // WGAN-GP gradient penalty (gencore/ops/gradient_penalty.py). x_hat = alpha[n] * real + (1 - alpha[n]) * fake,
  // alpha of shape (N,), any rank.
  m.def("gradient_penalty_interpolate(Tensor real, Tensor fake, Tensor alpha) -> Tensor");
  // Returns (penalty, norms): mean_n (||grad_scale * grad[n]|| - center)^2 (one_sided: only norms above center)
  // and the per-sample norms (N,), both float32 (float64 for float64 grad).
  m.def("gradient_norm_penalty_fwd(Tensor grad, float center, bool one_sided, float grad_scale) -> (Tensor, Tensor)");
  // d penalty / d grad, scaled by the 0-dim grad_penalty (read on the device: no host synchronisation on CUDA).
  m.def("gradient_norm_penalty_bwd(Tensor grad_penalty, Tensor grad, Tensor norms, float center, bool one_sided, "
        "float grad_scale) -> Tensor");
}

}  // namespace gencore
