// Shared by the CPU kernels (gradient_penalty.cpp) and the CUDA binding (cuda/gradient_penalty.cpp): the layout rule
// of the gradient-penalty ops and their argument checks, so both backends accept and reject exactly the same input.
#pragma once

#include <ATen/ATen.h>

#include "tensor_rules.h"

namespace gencore {
namespace gp {

// Layout: per_sample_dense (tensor_rules.h). Such tensors are read in place as (N, D) and outputs get the same
// strides (output_like, tensor_rules.h); others are copied to contiguous first.
inline at::Tensor as_flat(const at::Tensor& t) { return per_sample_dense(t) ? t : t.contiguous(); }

inline void check_batch(const at::Tensor& t, const char* name, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, name, " must be a ", c10::DeviceTypeName(device), " tensor here, got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= 1 && t.size(0) > 0 && t.numel() > 0, name,
              " must have a non-empty batch dimension and non-empty samples, got shape ", t.sizes());
}

// real, fake: same shape, dtype, device; alpha: (N,), same dtype and device.
inline void check_interpolate(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha,
                              c10::DeviceType device) {
  check_batch(real, "real", device);
  TORCH_CHECK(fake.sizes() == real.sizes(), "fake must have real's shape ", real.sizes(), ", got ", fake.sizes());
  TORCH_CHECK(fake.scalar_type() == real.scalar_type(), "fake has dtype ", fake.scalar_type(), " but real has ",
              real.scalar_type());
  TORCH_CHECK(fake.device() == real.device(), "fake is on ", fake.device(), " but real is on ", real.device());
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == real.size(0), "alpha must have shape (", real.size(0),
              ",), got ", alpha.sizes());
  TORCH_CHECK(alpha.scalar_type() == real.scalar_type(), "alpha has dtype ", alpha.scalar_type(), " but real has ",
              real.scalar_type());
  TORCH_CHECK(alpha.device() == real.device(), "alpha is on ", alpha.device(), " but real is on ", real.device());
}

// norms: the (N,) statistics tensor the forward returned; grad_penalty: one statistics value.
inline void check_backward(const at::Tensor& grad_penalty, const at::Tensor& grad, const at::Tensor& norms,
                           c10::DeviceType device) {
  check_batch(grad, "grad", device);
  const auto stats = accumulation_type(grad.scalar_type());
  TORCH_CHECK(grad_penalty.numel() == 1 && grad_penalty.device() == grad.device() &&
                  at::isFloatingType(grad_penalty.scalar_type()),
              "grad_penalty must hold one floating-point value on grad's device, got shape ", grad_penalty.sizes(),
              " ", grad_penalty.scalar_type(), " on ", grad_penalty.device());
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == grad.size(0) && norms.scalar_type() == stats &&
                  norms.device() == grad.device(),
              "norms must be the (", grad.size(0), ",) ", stats, " tensor the forward returned, got ", norms.sizes(),
              " ", norms.scalar_type(), " on ", norms.device());
}

}  // namespace gp
}  // namespace gencore
