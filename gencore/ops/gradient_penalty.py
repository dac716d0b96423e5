"""The two fused ops of the WGAN-GP gradient penalty (math: gencore/reference/gradient_penalty.py).

    gradient_penalty_interpolate(real, fake, alpha)   x_hat = alpha[n] * real + (1 - alpha[n]) * fake, one pass
    gradient_norm_penalty(grad, center, one_sided)     per-sample ||grad[n]|| over all non-batch dims and
                                                       mean_n (||grad[n]|| - center)^2, one pass; backward one pass

Layers (the anatomy of every gencore op):
    gencore::gradient_penalty_interpolate, gradient_norm_penalty_fwd / _bwd
                                    C++ schemas (csrc/gencore.cpp); CPU and CUDA kernels.
    gencore::gradient_penalty_interpolate_triton, gradient_norm_penalty_*_triton
                                    triton_op wrappers of gencore.kernels.gradient_penalty, registered on first use
                                    (gencore/ops/_triton_ops.py).
    autograd (one for both pairs)   register_autograd: setup_context saves what the backward needs; the backward
                                    calls the pair's registered backward op.
    gradient_penalty_interpolate(...), gradient_norm_penalty(...)
                                    the public functions: checks, backend, dispatch.

Arguments are checked once, by the public functions. The registered Triton ops, which torch.compile graphs and
direct callers reach without them, check again what their kernels index by (the batch shapes, dtypes and devices), as
the C++ kernels do; center, one_sided and grad_scale are trusted below the public function.

gencore.gan.gradient_penalty puts them around the critic: interpolate, critic forward, autograd.grad with
create_graph=True, then the norm penalty, whose backward feeds the critic's double backward.

Layout and dtype: the rules of gencore/_rules.py (per_sample_dense: tensors whose samples are each one dense block are
read in place and outputs keep their strides, others are copied first; norms and penalty in the accumulation dtype).
"""
from __future__ import annotations

import math

import torch
from torch.library import triton_op

from .. import _extension, backends
from .._rules import accumulation_dtype, per_sample_dense
from ..reference.gradient_penalty import gradient_norm_penalty_ref, interpolate_ref, per_sample
from ._checks import check_fake_devices, check_float_tensor, check_like
from ._triton_ops import on_first_use, register_triton_ops

IMPLEMENTED = ("reference", "cpu", "cuda", "triton")


def check_batch(name: str, x) -> None:
    """x is a floating-point tensor (N, *) with N >= 1 samples, each non-empty."""
    check_float_tensor(name, x, min_dim=1, allow_empty=True)
    if x.shape[0] == 0:
        raise ValueError(f"the batch is empty: {name} has shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_interpolate_args(real, fake, alpha) -> torch.Tensor:
    """Checks real/fake/alpha and returns alpha as (N,). alpha may be (N,) or the textbook (N, 1, ..., 1)."""
    check_batch("real", real)
    check_like("fake", fake, real, "real", real.shape)
    n = real.shape[0]
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a torch.Tensor or None, got {type(alpha).__name__}")
    allowed = ((n,), (n,) + (1,) * (real.dim() - 1))
    if alpha.shape not in allowed:
        raise ValueError(f"alpha must hold one value per sample, shape {allowed[0]} or {allowed[1]}, "
                         f"got {tuple(alpha.shape)}")
    check_like("alpha", alpha, real, "real", alpha.shape)
    return alpha if alpha.dim() == 1 else alpha.reshape(n)


def check_penalty_args(grad, center, one_sided, grad_scale) -> None:
    """grad: a non-empty floating-point batch; center >= 0 and grad_scale > 0, finite (int or float, not bool);
    one_sided a bool."""
    check_batch("grad", grad)
    for name, value in (("center", center), ("grad_scale", grad_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite float, got {value!r}")
    if center < 0:
        raise ValueError(f"center must be >= 0 (a norm is never negative), got {center}")
    if grad_scale <= 0:
        raise ValueError(f"grad_scale must be positive, got {grad_scale}")
    if not isinstance(one_sided, bool):
        raise TypeError(f"one_sided must be a bool, got {type(one_sided).__name__}")


def _check_saved_norms(grad_penalty, norms, grad) -> None:
    """The backward's inputs from the forward: a one-element upstream gradient and the (N,) norms in the accumulation
    dtype, on grad's device (the kernel reads norms[n] for every sample n)."""
    want = accumulation_dtype(grad.dtype)
    if norms.shape != (grad.shape[0],) or norms.dtype != want or norms.device != grad.device:
        raise ValueError(f"norms must be the forward's ({grad.shape[0]},) {want} norms on {grad.device}, got "
                         f"{tuple(norms.shape)} {norms.dtype} on {norms.device}")
    if grad_penalty.numel() != 1 or grad_penalty.device != grad.device:
        raise ValueError(f"grad_penalty must be one value on {grad.device}, got {tuple(grad_penalty.shape)} on "
                         f"{grad_penalty.device}")


# ---------------------------------------------------------------------------------------------------------------------
# Fake (meta) implementations: what the kernels return, for torch.compile / export.


def _flat_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t) if per_sample_dense(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _interpolate_fake(real, fake, alpha):
    check_fake_devices("real", real, fake=fake, alpha=alpha)
    if per_sample_dense(real) and per_sample_dense(fake) and real.stride() == fake.stride():
        return torch.empty_like(real)
    return torch.empty(real.shape, dtype=real.dtype, device=real.device)


def _penalty_fwd_fake(grad, center, one_sided, grad_scale):
    stats = accumulation_dtype(grad.dtype)
    return grad.new_empty((), dtype=stats), grad.new_empty((grad.shape[0],), dtype=stats)


def _penalty_bwd_fake(grad_penalty, grad, norms, center, one_sided, grad_scale):
    check_fake_devices("grad", grad, grad_penalty=grad_penalty, norms=norms)
    return _flat_like(grad)


# ---------------------------------------------------------------------------------------------------------------------
# Autograd, shared by the C++ and the Triton op pairs.


def _interpolate_setup_context(ctx, inputs, output):
    real, fake, alpha = inputs
    ctx.save_for_backward(real, fake, alpha)


def _interpolate_backward(ctx, grad_out):
    """x_hat is linear in real and fake: the backward is three plain expressions, differentiable to any order."""
    real, fake, alpha = ctx.saved_tensors
    a = per_sample(alpha, grad_out.dim())
    need = ctx.needs_input_grad
    grad_real = grad_out * a if need[0] else None
    grad_fake = grad_out * (1 - a) if need[1] else None
    grad_alpha = (grad_out * (real - fake)).reshape(real.shape[0], -1).sum(dim=1) if need[2] else None
    return grad_real, grad_fake, grad_alpha


def _penalty_setup_context(ctx, inputs, output):
    grad, center, one_sided, grad_scale = inputs
    _, norms = output
    ctx.save_for_backward(grad, norms)
    ctx.center, ctx.one_sided, ctx.grad_scale = center, one_sided, grad_scale
    ctx.mark_non_differentiable(norms)


def _make_penalty_backward(bwd_op):
    def backward(ctx, grad_penalty, _grad_norms):
        """d penalty / d grad (None for center, one_sided, grad_scale)."""
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad, norms = ctx.saved_tensors
        if torch.is_grad_enabled():
            # A graph of the backward was asked for (create_graph=True, gradgradcheck): recompute through the
            # reference, which differentiates to any order. The WGAN-GP step itself never takes this path: its
            # penalty.backward() runs the fused kernel below, whose output then flows through the critic's graph.
            with torch.enable_grad():
                penalty, _ = gradient_norm_penalty_ref(grad, ctx.center, ctx.one_sided, ctx.grad_scale)
                (grad_grad,) = torch.autograd.grad(penalty, grad, grad_penalty, create_graph=True)
        else:
            grad_grad = bwd_op(grad_penalty, grad, norms, ctx.center, ctx.one_sided, ctx.grad_scale)
        return grad_grad, None, None, None
    return backward


# ---------------------------------------------------------------------------------------------------------------------
# Registration


def _register_cpp_ops() -> None:
    """Fake implementations and autograd for the schemas that csrc/gencore.cpp declared (needs the extension)."""
    if not _extension.loaded():
        return
    torch.library.register_fake("gencore::gradient_penalty_interpolate")(_interpolate_fake)
    torch.library.register_fake("gencore::gradient_norm_penalty_fwd")(_penalty_fwd_fake)
    torch.library.register_fake("gencore::gradient_norm_penalty_bwd")(_penalty_bwd_fake)
    torch.library.register_autograd("gencore::gradient_penalty_interpolate", _interpolate_backward,
                                    setup_context=_interpolate_setup_context)
    torch.library.register_autograd("gencore::gradient_norm_penalty_fwd",
                                    _make_penalty_backward(torch.ops.gencore.gradient_norm_penalty_bwd),
                                    setup_context=_penalty_setup_context)


@on_first_use
def _register_triton_ops() -> None:
    from ..kernels import gradient_penalty as tk  # needs triton, an optional dependency

    @triton_op("gencore::gradient_penalty_interpolate_triton", mutates_args=())
    def gradient_penalty_interpolate_triton(real: torch.Tensor, fake: torch.Tensor,
                                            alpha: torch.Tensor) -> torch.Tensor:
        return tk.gradient_penalty_interpolate(real, fake, check_interpolate_args(real, fake, alpha))

    @triton_op("gencore::gradient_norm_penalty_fwd_triton", mutates_args=())
    def gradient_norm_penalty_fwd_triton(grad: torch.Tensor, center: float, one_sided: bool,
                                         grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch("grad", grad)
        return tk.gradient_norm_penalty_fwd(grad, center, one_sided, grad_scale)

    @triton_op("gencore::gradient_norm_penalty_bwd_triton", mutates_args=())
    def gradient_norm_penalty_bwd_triton(grad_penalty: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor,
                                         center: float, one_sided: bool, grad_scale: float) -> torch.Tensor:
        check_batch("grad", grad)
        _check_saved_norms(grad_penalty, norms, grad)
        return tk.gradient_norm_penalty_bwd(grad_penalty, grad, norms, center, one_sided, grad_scale)

    gradient_penalty_interpolate_triton.register_autograd(_interpolate_backward,
                                                          setup_context=_interpolate_setup_context)
    gradient_norm_penalty_fwd_triton.register_autograd(
        _make_penalty_backward(torch.ops.gencore.gradient_norm_penalty_bwd_triton),
        setup_context=_penalty_setup_context)


_register_cpp_ops()


# ---------------------------------------------------------------------------------------------------------------------
# Public ops


def gradient_penalty_interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, *,
                                 backend: str | None = None) -> torch.Tensor:
    """x_hat = alpha[n] * real[n] + (1 - alpha[n]) * fake[n], in one pass: WGAN-GP's random interpolates.

    Args:
        real, fake: (N, *) of any rank >= 1, same shape, dtype (float16, bfloat16, float32, float64) and device.
        alpha: one weight per sample, (N,) or the textbook (N, 1, ..., 1); real's dtype and device.
        backend: "reference", "cpu" (CPU tensors), "cuda" (CUDA tensors), "triton" (CUDA tensors; CPU tensors under
            TRITON_INTERPRET=1), "auto", or None for gencore.use_backend / set_backend / GENCORE_BACKEND / auto.

    Returns:
        x_hat with real's shape and dtype (and layout, when each sample is one dense block; see the module doc),
        computed in float32 for half inputs. Differentiable w.r.t. real, fake and alpha, to any order.
    """
    alpha = check_interpolate_args(real, fake, alpha)
    name = backends.resolve(backend, real.device, IMPLEMENTED)
    if name == "reference":
        return interpolate_ref(real, fake, alpha)
    if name == "triton":
        register_triton_ops()
    op = torch.ops.gencore.gradient_penalty_interpolate_triton if name == "triton" else torch.ops.gencore.gradient_penalty_interpolate
    return op.default(real, fake, alpha)


def gradient_norm_penalty(grad: torch.Tensor, center: float = 1.0, one_sided: bool = False, *,
                          grad_scale: float = 1.0, return_norms: bool = False, backend: str | None = None):
    """mean_n (||grad_scale * grad[n]||_2 - center)^2, the norm over all non-batch dims of each sample, in one pass.

    Args:
        grad: (N, *) of any rank >= 1, float16, bfloat16, float32 or float64: typically d critic / d x_hat.
        center: the target norm: 1 for WGAN-GP, 0 for the zero-centred penalty.
        one_sided: penalise only norms above center, max(norm - center, 0)^2.
        grad_scale: multiplies grad before the norm: 1 / GradScaler.get_scale() unscales a scaled gradient in the
            same pass (PyTorch's recipe for gradient penalties under mixed precision).
        return_norms: also return the per-sample norms (N,) (detached), e.g. for logging.
        backend: as in gradient_penalty_interpolate.

    Returns:
        The 0-dim penalty, float32 (float64 for float64 grad): a loss-like reduction, kept in float32 as autocast
        does. With return_norms, (penalty, norms). The penalty is differentiable w.r.t. grad: its backward is one
        fused pass (the path of WGAN-GP's double backpropagation), and is itself differentiable (recomputed through
        the reference when a graph of it is asked for). Exact and finite where a sample's norm is 0 (its gradient is
        then 0, as torch.linalg.vector_norm's). Deterministic: fixed-order reductions, no atomics.
    """
    check_penalty_args(grad, center, one_sided, grad_scale)
    name = backends.resolve(backend, grad.device, IMPLEMENTED)
    if name == "reference":
        penalty, norms = gradient_norm_penalty_ref(grad, float(center), one_sided, float(grad_scale))
        norms = norms.detach()
    else:
        if name == "triton":
            register_triton_ops()
        op = (torch.ops.gencore.gradient_norm_penalty_fwd_triton if name == "triton"
              else torch.ops.gencore.gradient_norm_penalty_fwd)
        penalty, norms = op.default(grad, float(center), one_sided, float(grad_scale))
    return (penalty, norms) if return_norms else penalty
