// Every gencore operator schema, in one place. Kernels register per device in <op>.cpp (CPU) and
// cuda/<op>.cpp (CUDA); Python adds fake implementations and autograd (gencore/ops/<op>.py).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu_output_pool.h"

#ifndef GENCORE_CPU_ISA
#define GENCORE_CPU_ISA "generic"
#endif

extern "C" {
// The extension has no Python-level functions: importing it only runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace gencore {

std::string cpu_isa() { return GENCORE_CPU_ISA; }

TORCH_LIBRARY(gencore, m) {
  m.def("cpu_isa() -> str", &cpu_isa);
  // Releases the CPU output cache (csrc/cpu_output_pool.h); returns the bytes freed.
  m.def("cpu_empty_cache() -> int", &cpu_empty_cache);

  // y = act(GroupNorm(x + temb) * (1 + scale) + shift); returns (y, mean, rstd), stats of shape (N, G).
  m.def("group_norm_silu_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? temb, Tensor? scale_shift, "
        "int num_groups, float eps, bool silu) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_weight, grad_bias, grad_temb, grad_scale_shift); a 0-element tensor for a None input.
  m.def("group_norm_silu_bwd(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor? temb, "
        "Tensor? scale_shift, Tensor mean, Tensor rstd, int num_groups, bool silu) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace gencore
