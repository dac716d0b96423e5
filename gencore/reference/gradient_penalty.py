"""Pure-PyTorch twins of the two fused gradient-penalty ops: the truth every backend is tested against.

x_hat = alpha * real + (1 - alpha) * fake per sample, and penalty = mean_n (||grad_scale * grad[n]||_2 - center)^2
over all non-batch dims of each sample; the forward and backward in the symbols the kernels use are in
docs/math.md.

The zero-norm convention is the one torch.linalg.vector_norm's own backward uses (the minimum-norm subgradient), so
the penalty and its gradient stay finite when a sample's gradient vanishes, with no epsilon that would bias it.
"""
from __future__ import annotations

import torch

from .._rules import accumulation_dtype


def per_sample(alpha: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against an (N, ...) tensor of `ndim` dims."""
    return alpha.reshape((alpha.shape[0],) + (1,) * (ndim - 1))


def interpolate_ref(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, *,
                    upcast: bool = False) -> torch.Tensor:
    """x_hat = alpha * real + (1 - alpha) * fake with alpha of shape (N,). Differentiable to any order.

    Computed in float32 for half inputs (float64 with upcast=True) and returned in real's dtype (float64 if upcast).
    """
    compute = accumulation_dtype(real.dtype, upcast)
    a = per_sample(alpha.to(compute), real.dim())
    x_hat = a * real.to(compute) + (1 - a) * fake.to(compute)
    return x_hat if upcast else x_hat.to(real.dtype)


def gradient_norm_penalty_ref(grad: torch.Tensor, center: float = 1.0, one_sided: bool = False,
                              grad_scale: float = 1.0, *, upcast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, norms): the scalar mean((||grad_scale * grad[n]|| - center)^2) and the per-sample norms (N,).

    Both are float32 for float16/bfloat16/float32 grad and float64 for float64 grad (or with upcast=True): the
    penalty is a loss-like reduction, kept in float32 as autocast does for reductions. Differentiable to any order.
    """
    compute = accumulation_dtype(grad.dtype, upcast)
    u = grad.to(compute)
    if grad_scale != 1.0:  # skipped when there is nothing to unscale: the textbook recipe has no such pass
        u = u * grad_scale
    norms = torch.linalg.vector_norm(u.reshape(grad.shape[0], -1), ord=2, dim=1)
    d = norms - center
    if one_sided:
        d = d.clamp_min(0)
    return d.square().mean(), norms
