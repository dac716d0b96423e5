// Eager Python entry points of the gradient-penalty ops: gencore._C.gp_interpolate / gp_norm_penalty_fwd.
//
// Why: at MNIST size (64 x 784 floats) each pass of the penalty takes 2-5 us, and calling it through torch.ops cost
// ~2.3 us more (OpOverload.__call__, schema-driven argument parsing, a boxed call) plus ~1.9 us of Python argument
// checks. These functions check the arguments in C++ and call the same dispatcher handles unboxed, so every call
// still passes the autograd, profiling and device keys. They take only the common case and answer NotImplemented for
// anything else: a tensor subclass or a __torch_function__ mode (which torch.ops would honour), or any argument that
// is not plainly valid. gencore/ops/gradient_penalty.py then takes the torch.ops path, whose Python checks raise the
// exception that names the problem. torch.compile never comes here (the Python function checks is_compiling()).
//
// The checks below accept exactly what the fast path of check_interpolate_args / check_penalty_args accepts.
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>

#include "gradient_penalty.h"
#include "python_entry.h"

#include <cmath>
#include <vector>

namespace gencore {
namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A non-empty floating-point batch: at least one dimension, N >= 1, non-empty samples.
bool plain_batch(const at::Tensor& t) {
  return is_float_dtype(t.scalar_type()) && t.dim() >= 1 && t.size(0) > 0 && t.numel() > 0;
}

// A plain torch.Tensor (or nn.Parameter) and no __torch_function__ mode: what torch.ops would call unchanged.
bool plain_tensors(PyObject* const* args, Py_ssize_t count) {
  if (at::impl::torch_function_mode_enabled()) return false;
  for (Py_ssize_t i = 0; i < count; ++i) {
    if (!THPVariable_CheckExact(args[i])) return false;
  }
  return true;
}

// A Python float or int (not bool: PyLong_CheckExact rejects it), finite, within [low, inf) or (low, inf).
bool finite_number(PyObject* obj, double low, bool low_inclusive, double* value) {
  if (PyFloat_CheckExact(obj)) {
    *value = PyFloat_AS_DOUBLE(obj);
  } else if (PyLong_CheckExact(obj)) {
    *value = PyLong_AsDouble(obj);
    if (*value == -1.0 && PyErr_Occurred()) {  // too large for a double: the Python checks say so
      PyErr_Clear();
      return false;
    }
  } else {
    return false;
  }
  return std::isfinite(*value) && (low_inclusive ? *value >= low : *value > low);
}

// gp_interpolate(real, fake, alpha) with alpha of shape (N,).
PyObject* gp_interpolate_entry(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 3 || !plain_tensors(args, 3)) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& real = THPVariable_Unpack(args[0]);
  const at::Tensor& fake = THPVariable_Unpack(args[1]);
  const at::Tensor& alpha = THPVariable_Unpack(args[2]);
  const bool valid = plain_batch(real) && fake.scalar_type() == real.scalar_type() &&
                     alpha.scalar_type() == real.scalar_type() && fake.device() == real.device() &&
                     alpha.device() == real.device() && fake.sizes() == real.sizes() && alpha.dim() == 1 &&
                     alpha.size(0) == real.size(0);
  if (!valid) Py_RETURN_NOTIMPLEMENTED;
  at::Tensor x_hat;
  {
    pybind11::gil_scoped_release no_gil;  // as torch.ops does: other Python threads run during the kernel
    x_hat = gp::interpolate_op().call(real, fake, alpha);
  }
  return THPVariable_Wrap(std::move(x_hat));
  END_HANDLE_TH_ERRORS
}

// gp_norm_penalty_fwd(grad, center, one_sided, grad_scale) -> (penalty, norms).
PyObject* gp_norm_penalty_fwd_entry(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 4 || !plain_tensors(args, 1) || !PyBool_Check(args[2])) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& grad = THPVariable_Unpack(args[0]);
  double center = 0, grad_scale = 0;
  if (!plain_batch(grad) || !finite_number(args[1], 0.0, true, &center) ||
      !finite_number(args[3], 0.0, false, &grad_scale)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const bool one_sided = args[2] == Py_True;
  at::Tensor penalty, norms;
  {
    pybind11::gil_scoped_release no_gil;
    std::tie(penalty, norms) = gp::penalty_fwd_op().call(grad, center, one_sided, grad_scale);
  }
  PyObject* py_penalty = THPVariable_Wrap(std::move(penalty));
  if (py_penalty == nullptr) return nullptr;
  PyObject* py_norms = THPVariable_Wrap(std::move(norms));
  if (py_norms == nullptr) {
    Py_DECREF(py_penalty);
    return nullptr;
  }
  PyObject* result = PyTuple_Pack(2, py_penalty, py_norms);
  Py_DECREF(py_penalty);
  Py_DECREF(py_norms);
  return result;
  END_HANDLE_TH_ERRORS
}

}  // namespace

void add_gradient_penalty_methods(std::vector<PyMethodDef>& methods) {
  // METH_FASTCALL functions have another signature than PyCFunction; CPython casts them back by the flag.
  const auto fastcall = [](PyObject* (*fn)(PyObject*, PyObject* const*, Py_ssize_t)) {
    return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn));
  };
  methods.push_back({"gp_interpolate", fastcall(gp_interpolate_entry), METH_FASTCALL,
                     "gp_interpolate(real, fake, alpha) -> x_hat, or NotImplemented"});
  methods.push_back({"gp_norm_penalty_fwd", fastcall(gp_norm_penalty_fwd_entry), METH_FASTCALL,
                     "gp_norm_penalty_fwd(grad, center, one_sided, grad_scale) -> (penalty, norms) or NotImplemented"});
}

}  // namespace gencore
