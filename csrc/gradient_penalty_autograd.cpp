// Autograd of the gradient-penalty ops, in C++ (math in gencore/reference/gradient_penalty.py).
//
// Why C++, and why hand-written nodes: at MNIST size the three fused kernels of the penalty take ~15 us in all, and
// every layer around them shows. A Python autograd layer (torch.library.register_autograd, torch.autograd.Function)
// cost ~20 us per forward and ~30 us per backward on the 2-core CI machine; torch::autograd::Function still cost
// ~3 us per forward (CppNode, its saved_data map of IValues, _wrap_outputs) against ~0.7 us for a node built the way
// PyTorch's generated VariableType code builds its own (a Node subclass with typed members, set_history). Registered
// at the Autograd key, these run for CPU and CUDA tensors alike, in eager mode and under torch.compile (AOTAutograd
// traces through them into the kernels' fake implementations, which gencore/ops/gradient_penalty.py registers). The
// Triton ops keep their Python autograd: they are traced by torch.compile as triton_ops, and on a GPU the launch
// costs dwarf it.
//
//   gp_interpolate        x_hat = alpha[n] * real + (1 - alpha[n]) * fake: linear, so the backward is three
//                         expressions in ATen ops, differentiable to any order.
//   gp_norm_penalty_fwd   the backward is the fused kernel gp_norm_penalty_bwd; when a graph of the backward is
//                         asked for (create_graph=True, gradgradcheck) it is recomputed through the reference's
//                         differentiable ops instead (the WGAN-GP step never does this: its penalty.backward()
//                         runs the fused kernel, whose output then flows through the critic's graph).
//
// Compiled autograd (torch._dynamo.compiled_autograd) cannot trace these nodes: it raises "compiled_args not
// implemented: GpNormPenaltyBackward" (torch::autograd::Function's CppNode failed there too, with an internal
// assert, because of the non-differentiable norms output). torch.compile of the forward is unaffected.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "gradient_penalty.h"

#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

namespace gencore {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// A new autograd node. PyTorch 2.13 holds nodes in c10::intrusive_ptr; earlier releases hold them in std::shared_ptr
// allocated with torch::autograd::deleteNode as the deleter (it frees long chains of nodes without deep recursion),
// and that function no longer exists. The test is on the type edges hold, so either header set compiles.
template <typename T>
auto make_node() {
  if constexpr (std::is_same_v<decltype(torch::autograd::Edge::function), c10::intrusive_ptr<Node>>) {
    return c10::make_intrusive<T>();
  } else {
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });  // found by ADL when instantiated
  }
}

// alpha (N,) viewed as (N, 1, ..., 1) against a tensor of `dim` dimensions.
at::Tensor per_sample(const at::Tensor& alpha, int64_t dim) {
  std::vector<int64_t> shape(dim, 1);
  shape[0] = alpha.size(0);
  return alpha.view(shape);
}

// d x_hat: next edges (real, fake, alpha).
struct GpInterpolateBackward final : Node {
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& grad_out = grads[0];
    at::Tensor grad_real, grad_fake, grad_alpha;
    if (!grad_out.defined()) return {grad_real, grad_fake, grad_alpha};
    std::lock_guard<std::mutex> lock(mutex_);  // release_variables may run on another thread of the engine
    const at::Tensor a = per_sample(alpha_.unpack(), grad_out.dim());
    if (task_should_compute_output(0)) grad_real = grad_out * a;
    if (task_should_compute_output(1)) grad_fake = grad_out * (1 - a);
    if (task_should_compute_output(2)) {
      const at::Tensor real = real_.unpack(), fake = fake_.unpack();
      grad_alpha = (grad_out * (real - fake)).reshape({real.size(0), -1}).sum(1);
    }
    return {grad_real, grad_fake, grad_alpha};
  }

  std::string name() const override { return "GpInterpolateBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    real_.reset_data();
    fake_.reset_data();
    alpha_.reset_data();
  }

  SavedVariable real_, fake_, alpha_;
};

// d penalty: next edge (grad). The norms output is not differentiable (it has no grad_fn).
struct GpNormPenaltyBackward final : Node {
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& grad_penalty = grads[0];  // undefined if nothing flows back into the penalty
    if (!grad_penalty.defined() || !task_should_compute_output(0)) return {at::Tensor()};
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor grad = grad_.unpack();
    if (at::GradMode::is_enabled()) return {differentiable_backward(grad, grad_penalty)};
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // no graph is recorded: skip the Autograd fallback
    return {gp::penalty_bwd_op().call(grad_penalty, grad, norms_.unpack(), center_, one_sided_, grad_scale_)};
  }

  std::string name() const override { return "GpNormPenaltyBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    grad_.reset_data();
    norms_.reset_data();
  }

  SavedVariable grad_, norms_;
  double center_ = 1.0;
  bool one_sided_ = false;
  double grad_scale_ = 1.0;

 private:
  // gencore.reference.gradient_norm_penalty_ref and its gradient, recorded in a graph (reentrant autograd.grad).
  at::Tensor differentiable_backward(const at::Tensor& grad, const at::Tensor& grad_penalty) const {
    at::Tensor u = grad.to(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    if (grad_scale_ != 1.0) u = u * grad_scale_;
    const at::Tensor norms = at::linalg_vector_norm(u.reshape({grad.size(0), -1}), 2, {1});
    at::Tensor d = norms - center_;
    if (one_sided_) d = d.clamp_min(0);
    const at::Tensor penalty = d.square().mean();
    return torch::autograd::grad({penalty}, {grad}, {grad_penalty}, /*retain_graph=*/true,
                                 /*create_graph=*/true)[0];
  }
};

// Calls that record no graph (WGAN-GP's interpolation of detached real and fake, no_grad evaluation) build no node.
at::Tensor gp_interpolate_autograd(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  at::Tensor x_hat;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    x_hat = gp::interpolate_op().call(real, fake, alpha);
  }
  if (torch::autograd::compute_requires_grad(real, fake, alpha)) {
    auto node = make_node<GpInterpolateBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(real, fake, alpha));
    node->real_ = SavedVariable(real, /*is_output=*/false);
    node->fake_ = SavedVariable(fake, /*is_output=*/false);
    node->alpha_ = SavedVariable(alpha, /*is_output=*/false);
    torch::autograd::set_history(x_hat, node);
  }
  return x_hat;
}

std::tuple<at::Tensor, at::Tensor> gp_norm_penalty_fwd_autograd(const at::Tensor& grad, double center,
                                                                bool one_sided, double grad_scale) {
  at::Tensor penalty, norms;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(penalty, norms) = gp::penalty_fwd_op().call(grad, center, one_sided, grad_scale);
  }
  if (torch::autograd::compute_requires_grad(grad)) {
    auto node = make_node<GpNormPenaltyBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad));
    node->grad_ = SavedVariable(grad, /*is_output=*/false);
    node->norms_ = SavedVariable(norms, /*is_output=*/false);  // no grad_fn: saving it makes no reference cycle
    node->center_ = center;
    node->one_sided_ = one_sided;
    node->grad_scale_ = grad_scale;
    torch::autograd::set_history(penalty, node);
  }
  return {penalty, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, Autograd, m) {
  m.impl("gp_interpolate", &gp_interpolate_autograd);
  m.impl("gp_norm_penalty_fwd", &gp_norm_penalty_fwd_autograd);
}

}  // namespace gencore
