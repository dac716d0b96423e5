// Autograd of the gradient-penalty ops, in C++ (math in gencore/reference/gradient_penalty.py).
//
// Why C++: at MNIST size the three fused kernels of the penalty take ~30 us in all, and a Python autograd layer
// around them (torch.library.register_autograd, or a torch.autograd.Function) cost more than the kernels: ~20 us per
// forward and ~30 us per backward on the 2-core CI machine. Registered at the Autograd key, these functions run for
// CPU and CUDA tensors alike, in eager mode and under torch.compile (AOTAutograd traces through them into the
// kernels' fake implementations, which gencore/ops/gradient_penalty.py registers). The Triton ops keep their Python
// autograd: they are traced by torch.compile as triton_ops, and on a GPU the launch costs dwarf it.
//
//   gp_interpolate        x_hat = alpha[n] * real + (1 - alpha[n]) * fake: linear, so the backward is three
//                         expressions in ATen ops, differentiable to any order.
//   gp_norm_penalty_fwd   the backward is the fused kernel gp_norm_penalty_bwd; when a graph of the backward is
//                         asked for (create_graph=True, gradgradcheck) it is recomputed through the reference's
//                         differentiable ops instead (the WGAN-GP step never does this: its penalty.backward()
//                         runs the fused kernel, whose output then flows through the critic's graph).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace gencore {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>& interpolate_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gencore::gp_interpolate", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, bool, double)>&
penalty_fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("gencore::gp_norm_penalty_fwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, bool, double)>();
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool,
                                          double)>&
penalty_bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gencore::gp_norm_penalty_bwd", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool, double)>();
  return op;
}

// alpha (N,) viewed as (N, 1, ..., 1) against a tensor of `dim` dimensions.
at::Tensor per_sample(const at::Tensor& alpha, int64_t dim) {
  std::vector<int64_t> shape(dim, 1);
  shape[0] = alpha.size(0);
  return alpha.view(shape);
}

class InterpolateFunction : public torch::autograd::Function<InterpolateFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                            const at::Tensor& alpha) {
    ctx->save_for_backward({real, fake, alpha});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return interpolate_op().call(real, fake, alpha);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &real = saved[0], &fake = saved[1], &alpha = saved[2];
    const at::Tensor& grad_out = grad_outputs[0];
    const at::Tensor a = per_sample(alpha, grad_out.dim());
    at::Tensor grad_real, grad_fake, grad_alpha;
    if (ctx->needs_input_grad(0)) grad_real = grad_out * a;
    if (ctx->needs_input_grad(1)) grad_fake = grad_out * (1 - a);
    if (ctx->needs_input_grad(2)) grad_alpha = (grad_out * (real - fake)).reshape({real.size(0), -1}).sum(1);
    return {grad_real, grad_fake, grad_alpha};
  }
};

class NormPenaltyFunction : public torch::autograd::Function<NormPenaltyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, double center, bool one_sided,
                               double grad_scale) {
    at::Tensor penalty, norms;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(penalty, norms) = penalty_fwd_op().call(grad, center, one_sided, grad_scale);
    }
    ctx->save_for_backward({grad, norms});
    ctx->saved_data["center"] = center;
    ctx->saved_data["one_sided"] = one_sided;
    ctx->saved_data["grad_scale"] = grad_scale;
    ctx->mark_non_differentiable({norms});
    ctx->set_materialize_grads(false);  // the norms' gradient is never used: no zeros tensor for it per backward
    return {penalty, norms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_penalty = grad_outputs[0];  // undefined only if nothing flows back (grads not materialised)
    if (!ctx->needs_input_grad(0) || !grad_penalty.defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad = saved[0], &norms = saved[1];
    const double center = ctx->saved_data["center"].toDouble();
    const bool one_sided = ctx->saved_data["one_sided"].toBool();
    const double grad_scale = ctx->saved_data["grad_scale"].toDouble();
    at::Tensor grad_grad;
    if (at::GradMode::is_enabled()) {
      grad_grad = differentiable_backward(grad, grad_penalty, center, one_sided, grad_scale);
    } else {
      grad_grad = penalty_bwd_op().call(grad_penalty, grad, norms, center, one_sided, grad_scale);
    }
    return {grad_grad, at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // gencore.reference.gradient_norm_penalty_ref and its gradient, recorded in a graph (reentrant autograd.grad).
  static at::Tensor differentiable_backward(const at::Tensor& grad, const at::Tensor& grad_penalty, double center,
                                            bool one_sided, double grad_scale) {
    at::Tensor u = grad.to(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    if (grad_scale != 1.0) u = u * grad_scale;
    const at::Tensor norms = at::linalg_vector_norm(u.reshape({grad.size(0), -1}), 2, {1});
    at::Tensor d = norms - center;
    if (one_sided) d = d.clamp_min(0);
    const at::Tensor penalty = d.square().mean();
    return torch::autograd::grad({penalty}, {grad}, {grad_penalty}, /*retain_graph=*/true,
                                 /*create_graph=*/true)[0];
  }
};

// Calls that record no graph (WGAN-GP's interpolation of detached real and fake, no_grad evaluation) go straight to
// the kernel: Function::apply would still build and drop a node.
at::Tensor gp_interpolate_autograd(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  if (!at::GradMode::is_enabled() || !(real.requires_grad() || fake.requires_grad() || alpha.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return interpolate_op().call(real, fake, alpha);
  }
  return InterpolateFunction::apply(real, fake, alpha);
}

std::tuple<at::Tensor, at::Tensor> gp_norm_penalty_fwd_autograd(const at::Tensor& grad, double center,
                                                                bool one_sided, double grad_scale) {
  if (!at::GradMode::is_enabled() || !grad.requires_grad()) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return penalty_fwd_op().call(grad, center, one_sided, grad_scale);
  }
  auto out = NormPenaltyFunction::apply(grad, center, one_sided, grad_scale);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, Autograd, m) {
  m.impl("gp_interpolate", &gp_interpolate_autograd);
  m.impl("gp_norm_penalty_fwd", &gp_norm_penalty_fwd_autograd);
}

}  // namespace gencore
