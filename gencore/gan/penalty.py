"""Gradient penalties for GAN critics: WGAN-GP (and its zero-centred / one-sided variants), R1 and R2.

    penalty = gradient_penalty(critic, real, fake)           # WGAN-GP: mean_n (||grad_x D(x_hat)[n]|| - 1)^2
    loss_d = fake_score.mean() - real_score.mean() + 10.0 * penalty
    loss_d.backward()                                         # double backpropagation into the critic

Each is differentiable w.r.t. the critic's parameters: the gradient of the critic is taken with create_graph=True,
so the penalty's backward flows through the critic's own backward (its double backward). On the fused backends the
interpolation and the norm + penalty (forward and backward) are one pass each (gencore/ops/gradient_penalty.py);
the critic's forward, backward and double backward are whatever the critic is, and usually dominate the cost.
"""
from __future__ import annotations

import torch

from .. import backends
from ..ops._checks import check_like
from ..ops.gradient_penalty import (IMPLEMENTED, check_batch, check_interpolate_args, check_penalty_args,
                                    gradient_norm_penalty, gradient_penalty_interpolate)


def _critic_gradient(critic, x: torch.Tensor, critic_kwargs, scaler) -> tuple[torch.Tensor, float]:
    """(d sum(critic(x)) / dx with a graph, the factor that unscales it). x must be a leaf requiring grad.

    With an enabled GradScaler the gradient is taken of the *scaled* critic output, so that float16 intermediates of
    the critic's backward neither underflow nor overflow, and the factor 1 / scale unscales it inside the norm
    (PyTorch's AMP recipe for gradient penalties). An inf/NaN from an overflowing scale propagates to the penalty and
    the critic's gradients, and scaler.step() then skips the step, as for any other overflow.
    """
    if not callable(critic):
        raise TypeError(f"critic must be callable (an nn.Module or a function), got {type(critic).__name__}")
    if critic_kwargs is None:
        critic_kwargs = {}
    elif not isinstance(critic_kwargs, dict):
        raise TypeError("critic_kwargs must be a dict of extra critic inputs or None, "
                        f"got {type(critic_kwargs).__name__}")
    n = x.shape[0]
    out = critic(x, **critic_kwargs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"critic must return a tensor of scores, got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != n or out.numel() != n:
        raise ValueError(f"critic must return one score per sample, shape ({n},) or ({n}, 1), got {tuple(out.shape)}")
    if not out.requires_grad:
        raise RuntimeError("the critic's output does not depend on its input through autograd (was it detached, or "
                           "run under torch.no_grad inside the critic?); a gradient penalty needs d critic / d input")
    grad_scale = 1.0
    if scaler is not None and scaler.is_enabled():
        scale = float(scaler.get_scale())
        out = scaler.scale(out)
        grad_scale = 1.0 / scale
    (grad,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), create_graph=True)
    return grad, grad_scale


def gradient_penalty(
    critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    alpha: torch.Tensor | None = None,
    center: float = 1.0,
    one_sided: bool = False,
    critic_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    scaler=None,
    backend: str | None = None,
) -> torch.Tensor:
    """The WGAN-GP gradient penalty mean_n (||grad_x critic(x_hat)[n]||_2 - center)^2 at random interpolates.

    x_hat[n] = alpha[n] * real[n] + (1 - alpha[n]) * fake[n]; the norm is per sample over *all* non-batch dimensions
    (not over the whole batch, not over channels only).

    Args:
        critic: callable, critic(x, **critic_kwargs) -> scores of shape (N,) or (N, 1). Any nn.Module, including one
            built from gencore's own ops (their double backward is supported).
        real, fake: (N, *) of any rank >= 1 (vectors, sequences, images, volumes); same shape, dtype and device.
            Both are treated as constants (detached): the penalty regularises the critic, not the generator.
        alpha: one interpolation weight per sample, (N,) or (N, 1, ..., 1), real's dtype and device; drawn
            uniformly from [0, 1) with `generator` when None.
        center: target norm: 1 (WGAN-GP) or 0 (the zero-centred penalty).
        one_sided: penalise only norms above center: mean_n max(norm[n] - center, 0)^2.
        critic_kwargs: extra keyword inputs for the critic (class labels of a conditional critic, ...).
        generator: torch.Generator for alpha, on real's device.
        scaler: a torch.amp.GradScaler for mixed precision: the critic's gradient is taken of the scaled output and
            unscaled (by 1/scale) inside the fused norm, PyTorch's recipe. Run the call under autocast as usual.
        backend: for the fused interpolation and norm penalty: "reference", "cpu", "cuda", "triton", "auto" or None
            (gencore.use_backend / set_backend / GENCORE_BACKEND / auto), see gencore.backends.

    Returns:
        The 0-dim penalty, float32 (float64 for float64 inputs), differentiable w.r.t. the critic's parameters
        (double backpropagation). Multiply by lambda (10 in the WGAN-GP paper) and add to the critic's loss.
    """
    check_batch("real", real)
    check_like("fake", fake, real, "real", tuple(real.shape))
    check_penalty_args(real, center, one_sided, 1.0)
    name = backends.resolve(backend, real.device, IMPLEMENTED)
    n = real.shape[0]
    if alpha is None:
        if generator is not None and generator.device.type != real.device.type:
            raise ValueError(f"generator is on {generator.device} but real is on {real.device}")
        alpha = torch.rand((n,), generator=generator, device=real.device, dtype=real.dtype)
    else:
        alpha = check_interpolate_args(real, fake, alpha).detach()
    with torch.enable_grad():
        x_hat = gradient_penalty_interpolate(real.detach(), fake.detach(), alpha, backend=name)
        x_hat.requires_grad_(True)
        grad, grad_scale = _critic_gradient(critic, x_hat, critic_kwargs, scaler)
        return gradient_norm_penalty(grad, center, one_sided, grad_scale=grad_scale, backend=name)


def r1_penalty(critic, real: torch.Tensor, critic_kwargs: dict | None = None, *, scaler=None,
               backend: str | None = None) -> torch.Tensor:
    """StyleGAN's R1 regulariser mean_n ||grad_x critic(real)[n]||_2^2, at the real samples.

    The zero-centred norm penalty at the data (no interpolation). StyleGAN weights it by gamma / 2.
    Args and return as in gradient_penalty (real: (N, *) of any rank >= 1, detached).
    """
    return _zero_centred_penalty(critic, "real", real, critic_kwargs, scaler, backend)


def r2_penalty(critic, fake: torch.Tensor, critic_kwargs: dict | None = None, *, scaler=None,
               backend: str | None = None) -> torch.Tensor:
    """R2: mean_n ||grad_x critic(fake)[n]||_2^2, the zero-centred penalty at the generated samples.

    Args and return as in r1_penalty, with fake (N, *) in place of real (detached: it regularises the critic).
    """
    return _zero_centred_penalty(critic, "fake", fake, critic_kwargs, scaler, backend)


def _zero_centred_penalty(critic, name: str, samples: torch.Tensor, critic_kwargs, scaler, backend) -> torch.Tensor:
    """mean_n ||grad_x critic(samples)[n]||^2 at the samples themselves (R1 at real data, R2 at fakes)."""
    check_batch(name, samples)
    backend_name = backends.resolve(backend, samples.device, IMPLEMENTED)
    with torch.enable_grad():
        x = samples.detach().requires_grad_(True)
        grad, grad_scale = _critic_gradient(critic, x, critic_kwargs, scaler)
        return gradient_norm_penalty(grad, 0.0, False, grad_scale=grad_scale, backend=backend_name)
