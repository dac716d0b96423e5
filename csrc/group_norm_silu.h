// Shared by the CPU kernels (group_norm_silu.cpp) and the CUDA binding (cuda/group_norm_silu.cpp): the argument checks
// of group_norm_silu_fwd / _bwd, so both backends accept and reject exactly the same input (the Python twin is
// check_args in gencore/ops/group_norm_silu.py). Layout and dtype rules: tensor_rules.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "tensor_rules.h"

namespace gencore {
namespace gn {

// x: (N, C, *spatial), non-empty, float16/bfloat16/float32/float64, on `device`; num_groups > 0 divides C.
inline void check_x(const at::Tensor& x, int64_t num_groups, c10::DeviceType device) {
  TORCH_CHECK(x.defined(), "group_norm_silu: x must be a tensor");
  TORCH_CHECK(x.device().type() == device, "group_norm_silu: the ", c10::DeviceTypeName(device),
              " kernel got x on ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "group_norm_silu: x must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(x.dim() >= 2, "group_norm_silu: x must have shape (N, C, *spatial), got ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "group_norm_silu: x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(num_groups > 0, "group_norm_silu: num_groups must be positive, got ", num_groups);
  TORCH_CHECK(x.size(1) % num_groups == 0, "group_norm_silu: num_groups (", num_groups,
              ") must divide the number of channels x.shape[1] (", x.size(1), ")");
}

// An optional tensor argument: exactly `shape`, with x's dtype and device.
inline void check_optional(const char* name, const std::optional<at::Tensor>& t, const at::Tensor& x,
                           at::IntArrayRef shape) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->sizes().equals(shape), "group_norm_silu: ", name, " must have shape ", shape, ", got ",
              t->sizes());
  TORCH_CHECK(t->device() == x.device(), "group_norm_silu: ", name, " is on ", t->device(), " but x is on ",
              x.device(), "; they must be on the same device");
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), "group_norm_silu: ", name, " has dtype ", t->scalar_type(),
              " but x has dtype ", x.scalar_type(), "; they must match");
}

// Every argument of the forward: weight, bias (C,), temb (N, C), scale_shift (N, 2C), eps >= 0.
inline void check_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& temb,
                          const std::optional<at::Tensor>& scale_shift, int64_t num_groups, double eps,
                          c10::DeviceType device) {
  check_x(x, num_groups, device);
  const int64_t n = x.size(0), c = x.size(1);
  check_optional("weight", weight, x, {c});
  check_optional("bias", bias, x, {c});
  check_optional("temb", temb, x, {n, c});
  check_optional("scale_shift", scale_shift, x, {n, 2 * c});
  TORCH_CHECK(eps >= 0, "group_norm_silu: eps must be non-negative, got ", eps);
}

// Every argument of the backward: the forward's, grad_out like x, and the forward's statistics (N, G): mean float64,
// rstd in the accumulation dtype.
inline void check_backward(const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& temb,
                           const std::optional<at::Tensor>& scale_shift, const at::Tensor& mean,
                           const at::Tensor& rstd, int64_t num_groups, c10::DeviceType device) {
  check_forward(x, weight, bias, temb, scale_shift, num_groups, 0.0, device);
  TORCH_CHECK(grad_out.defined() && grad_out.sizes().equals(x.sizes()),
              "group_norm_silu_bwd: grad_out must have x's shape ", x.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
              "group_norm_silu_bwd: grad_out must have x's dtype and device, got ", grad_out.scalar_type(), " on ",
              grad_out.device());
  const int64_t n = x.size(0);
  const at::ScalarType want[2] = {at::kDouble, accumulation_type(x.scalar_type())};
  const at::Tensor* stats[2] = {&mean, &rstd};
  const char* names[2] = {"mean", "rstd"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& s = *stats[i];
    TORCH_CHECK(s.defined() && s.sizes().equals({n, num_groups}) && s.scalar_type() == want[i] &&
                    s.device() == x.device(),
                "group_norm_silu_bwd: ", names[i], " must be a (N, num_groups) = (", n, ", ", num_groups, ") ",
                want[i], " tensor on x's device (the forward's statistics)");
  }
}

// activation: "silu" or None (the identity), the public op's argument; whether the kernels apply SiLU.
inline bool applies_silu(const std::optional<c10::string_view>& activation) {
  if (!activation.has_value()) return false;
  TORCH_CHECK(*activation == "silu", "group_norm_silu: activation must be 'silu' or None, got '", *activation, "'");
  return true;
}

}  // namespace gn
}  // namespace gencore
