// The extension module's Python functions (gencore._C.*): eager entry points that skip torch.ops' Python layer for
// ops whose per-call cost matters at small sizes. Each file adds its own to the module's method table.
#pragma once

#include <Python.h>

#include <vector>

namespace gencore {

void add_gradient_penalty_methods(std::vector<PyMethodDef>& methods);  // gradient_penalty_python.cpp

}  // namespace gencore
