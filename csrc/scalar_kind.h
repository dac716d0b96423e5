// The element types of gencore's tensors and the type their math runs in, written once for the CPU kernels, the CUDA
// bindings and the CUDA kernels. Plain C++, no PyTorch or CUDA header: nvcc compiles the kernels against it where no
// torch is installed (tests/build/test_cuda_compile.py). tensor_rules.h maps at::ScalarType onto both; the Python twin
// of the accumulation rule is accumulation_dtype in gencore/_rules.py.
#pragma once

#include <type_traits>

namespace gencore {

// The element type of an op's tensors, as a binding hands it to the CUDA launchers (tensor_rules.h: scalar_kind).
// The values are part of the launchers' interface: the host-emulation tests pass them through ctypes
// (tests/ops/_emulation.py: SCALAR_KIND).
enum class ScalarKind : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3 };

// The accumulation type of an element type T: double for double, float for float and for every 16-bit type in any
// spelling (at::Half, at::BFloat16, __half, __nv_bfloat16). Statistics, coefficients and intermediates are kept in
// it; outputs are rounded to T once.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace gencore
