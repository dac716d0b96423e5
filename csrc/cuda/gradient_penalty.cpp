// CUDA binding of the gradient-penalty ops: checks, layout, allocation, then the launchers of
// gradient_penalty_kernels.cu on the current stream. No math here (it is all in the .cu file).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/gradient_penalty_kernels.h"
#include "gradient_penalty.h"

namespace gencore {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor gradient_penalty_interpolate_cuda(const at::Tensor& real_in, const at::Tensor& fake_in, const at::Tensor& alpha_in) {
  gp::check_interpolate(real_in, fake_in, alpha_in, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(real_in.device());
  at::Tensor real = gp::as_flat(real_in), fake = gp::as_flat(fake_in);
  if (real.strides() != fake.strides()) {  // both must be walked in the same element order
    real = real.contiguous();
    fake = fake.contiguous();
  }
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor out = output_like(real);
  const int64_t n = real.size(0);
  check_launch(cuda::gradient_penalty_interpolate(scalar_kind(real.scalar_type(), "real"), real.const_data_ptr(),
                                                  fake.const_data_ptr(), alpha.const_data_ptr(),
                                                  out.mutable_data_ptr(), n, real.numel() / n,
                                                  c10::cuda::getCurrentCUDAStream()),
               "gradient_penalty_interpolate");
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_norm_penalty_fwd_cuda(const at::Tensor& grad_in, double center, bool one_sided,
                                                            double grad_scale) {
  gp::check_batch(grad_in, "grad", c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = gp::as_flat(grad_in);
  const int64_t n = grad.size(0), d = grad.numel() / n;
  const auto stats = grad.options().dtype(accumulation_type(grad.scalar_type()));
  at::Tensor workspace = at::empty({n * cuda::gp_chunks(d)}, stats);
  at::Tensor norms = at::empty({n}, stats);
  at::Tensor penalty = at::empty({}, stats);
  check_launch(cuda::gradient_norm_penalty_fwd(scalar_kind(grad.scalar_type(), "grad"), grad.const_data_ptr(),
                                               workspace.mutable_data_ptr(), norms.mutable_data_ptr(),
                                               penalty.mutable_data_ptr(), n, d, center, one_sided, grad_scale,
                                               c10::cuda::getCurrentCUDAStream()),
               "gradient_norm_penalty_fwd");
  return {penalty, norms};
}

at::Tensor gradient_norm_penalty_bwd_cuda(const at::Tensor& grad_penalty, const at::Tensor& grad_in,
                                    const at::Tensor& norms_in, double center, bool one_sided, double grad_scale) {
  gp::check_backward(grad_penalty, grad_in, norms_in, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = gp::as_flat(grad_in);
  const int64_t n = grad.size(0), d = grad.numel() / n;
  // Stays on the device: the kernel reads the scalar itself, so no host synchronisation.
  const at::Tensor gout = grad_penalty.reshape({}).to(norms_in.scalar_type()).contiguous();
  const at::Tensor norms = norms_in.contiguous();
  at::Tensor out = output_like(grad);
  check_launch(cuda::gradient_norm_penalty_bwd(scalar_kind(grad.scalar_type(), "grad"), gout.const_data_ptr(),
                                               grad.const_data_ptr(), norms.const_data_ptr(), out.mutable_data_ptr(),
                                               n, d, center, one_sided, grad_scale,
                                               c10::cuda::getCurrentCUDAStream()),
               "gradient_norm_penalty_bwd");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("gradient_penalty_interpolate", &gradient_penalty_interpolate_cuda);
  m.impl("gradient_norm_penalty_fwd", &gradient_norm_penalty_fwd_cuda);
  m.impl("gradient_norm_penalty_bwd", &gradient_norm_penalty_bwd_cuda);
}

}  // namespace gencore
