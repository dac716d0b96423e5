// CUDA binding of gencore::group_norm_silu_fwd / _bwd (schemas in csrc/gencore.cpp).
//
// Thin on purpose: check the arguments (naming each one), pick the layout the kernels read in place, allocate the
// outputs and the workspace with the torch allocator, and call the plain-C++ launchers of group_norm_silu_kernels.cu
// on the current stream. All the math lives in the .cu file.
//
// Only c10/cuda headers are used (c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream names):
// ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers that the binding does not need.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../group_norm_silu.h"
#include "group_norm_silu_kernels.h"

namespace gencore {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
namespace gk = gencore::cuda;

// x as the kernels read it: itself when contiguous or channels-last, else a contiguous copy.
Tensor in_kernel_layout(const Tensor& x) { return x.is_contiguous() || is_channels_last(x) ? x : x.contiguous(); }

// An optional (checked) small tensor argument, contiguous.
OptTensor contiguous_or_none(const OptTensor& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

const void* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

gk::GroupNormSiluDims dims_of(const Tensor& x, int64_t num_groups) {
  gk::GroupNormSiluDims d;
  d.N = x.size(0);
  d.C = x.size(1);
  d.S = x.numel() / (d.N * d.C);
  d.G = num_groups;
  d.channels_last = is_channels_last(x);
  return d;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "group_norm_silu (cuda): ", what, " failed: ", cudaGetErrorString(err));
}

Tensor workspace(size_t bytes, const Tensor& x) {
  // at::empty on CUDA returns memory aligned far beyond the 256 bytes the launchers ask for.
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

std::tuple<Tensor, Tensor, Tensor> group_norm_silu_fwd_cuda(
    const Tensor& x_in, const OptTensor& weight_in, const OptTensor& bias_in, const OptTensor& temb_in,
    const OptTensor& scale_shift_in, int64_t num_groups, double eps, std::optional<c10::string_view> activation) {
  gn::check_forward(x_in, weight_in, bias_in, temb_in, scale_shift_in, num_groups, eps, c10::DeviceType::CUDA);
  const int64_t n = x_in.size(0);
  const OptTensor weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in),
                  temb = contiguous_or_none(temb_in), scale_shift = contiguous_or_none(scale_shift_in);
  const c10::cuda::CUDAGuard guard(x_in.device());

  const Tensor x = in_kernel_layout(x_in);
  Tensor y = output_like(x);
  const auto stats_options = x.options().dtype(accumulation_type(x.scalar_type()));
  Tensor mean = at::empty({n, num_groups}, x.options().dtype(at::kDouble));
  Tensor rstd = at::empty({n, num_groups}, stats_options);

  gk::GroupNormSiluFwdArgs args;
  args.dtype = scalar_kind(x.scalar_type(), "group_norm_silu: x");
  args.dims = dims_of(x, num_groups);
  args.x = x.data_ptr();
  args.weight = ptr(weight);
  args.bias = ptr(bias);
  args.temb = ptr(temb);
  args.scale_shift = ptr(scale_shift);
  args.y = y.data_ptr();
  args.mean = mean.data_ptr();
  args.rstd = rstd.data_ptr();
  args.eps = eps;
  args.silu = gn::applies_silu(activation);
  size_t bytes = 0;
  check_launch(gk::group_norm_silu_fwd_workspace_bytes(args, &bytes), "sizing the forward workspace");
  Tensor ws = workspace(bytes, x);
  check_launch(gk::group_norm_silu_fwd(args, ws.data_ptr(), bytes, c10::cuda::getCurrentCUDAStream().stream()),
               "the forward launch");
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_silu_bwd_cuda(
    const Tensor& grad_out_in, const Tensor& x_in, const OptTensor& weight_in, const OptTensor& bias_in,
    const OptTensor& temb_in, const OptTensor& scale_shift_in, const Tensor& mean_in, const Tensor& rstd_in,
    int64_t num_groups, std::optional<c10::string_view> activation) {
  gn::check_backward(grad_out_in, x_in, weight_in, bias_in, temb_in, scale_shift_in, mean_in, rstd_in, num_groups,
                     c10::DeviceType::CUDA);
  const OptTensor weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in),
                  temb = contiguous_or_none(temb_in), scale_shift = contiguous_or_none(scale_shift_in);
  const c10::cuda::CUDAGuard guard(x_in.device());

  const Tensor x = in_kernel_layout(x_in);
  const Tensor grad_out = to_layout(grad_out_in, is_channels_last(x));
  const Tensor mean = mean_in.contiguous();
  const Tensor rstd = rstd_in.contiguous();
  Tensor grad_x = output_like(x);
  auto grad_or_empty = [&](const OptTensor& t) { return t.has_value() ? at::empty(t->sizes(), x.options())
                                                                       : at::empty({0}, x.options()); };
  Tensor grad_weight = grad_or_empty(weight);
  Tensor grad_bias = grad_or_empty(bias);
  Tensor grad_temb = grad_or_empty(temb);
  Tensor grad_scale_shift = grad_or_empty(scale_shift);

  gk::GroupNormSiluBwdArgs args;
  args.dtype = scalar_kind(x.scalar_type(), "group_norm_silu: x");
  args.dims = dims_of(x, num_groups);
  args.grad_out = grad_out.data_ptr();
  args.x = x.data_ptr();
  args.weight = ptr(weight);
  args.bias = ptr(bias);
  args.temb = ptr(temb);
  args.scale_shift = ptr(scale_shift);
  args.mean = mean.data_ptr();
  args.rstd = rstd.data_ptr();
  args.grad_x = grad_x.data_ptr();
  args.grad_weight = weight.has_value() ? grad_weight.data_ptr() : nullptr;
  args.grad_bias = bias.has_value() ? grad_bias.data_ptr() : nullptr;
  args.grad_temb = temb.has_value() ? grad_temb.data_ptr() : nullptr;
  args.grad_scale_shift = scale_shift.has_value() ? grad_scale_shift.data_ptr() : nullptr;
  args.silu = gn::applies_silu(activation);
  size_t bytes = 0;
  check_launch(gk::group_norm_silu_bwd_workspace_bytes(args, &bytes), "sizing the backward workspace");
  Tensor ws = workspace(bytes, x);
  check_launch(gk::group_norm_silu_bwd(args, ws.data_ptr(), bytes, c10::cuda::getCurrentCUDAStream().stream()),
               "the backward launch");
  return {grad_x, grad_weight, grad_bias, grad_temb, grad_scale_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("group_norm_silu_fwd", &group_norm_silu_fwd_cuda);
  m.impl("group_norm_silu_bwd", &group_norm_silu_bwd_cuda);
}

}  // namespace gencore
