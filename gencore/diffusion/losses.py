"""The DDPM training objective for every prediction type, with optional min-SNR weighting."""
from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .sampling import _as_tensor_output
from .noise import randn
from .scheduler_config import LEARNED_VARIANCE_TYPES
from .schedulers import DiscreteScheduler

from .._rules import accumulation_dtype
from ..ops.sampler_step import diffusion_training_inputs

LOSS_TYPES = ("l2", "l1", "huber")


def _elementwise(loss_type: str, pred: torch.Tensor, target: torch.Tensor, huber_delta: float) -> torch.Tensor:
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    return F.huber_loss(pred, target, reduction="none", delta=huber_delta)


def min_snr_weights(snr: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").

    The x0-space weight min(SNR_t, gamma) expressed for the network's target:
        "sample"        min(snr, gamma)
        "epsilon"       min(snr, gamma) / snr            (1 where snr = 0, its limit: zero-terminal-SNR schedules)
        "v_prediction"  min(snr, gamma) / (snr + 1)
    """
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "sample":
        return clipped
    if prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr, torch.ones_like(snr))
    return clipped / (snr + 1)


def training_loss(
    model: Callable,
    x0: torch.Tensor,
    scheduler: DiscreteScheduler,
    *,
    loss_type: str = "l2",
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    snr_gamma: float | None = None,
    class_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """The denoising loss of one batch: noise x0 to a random timestep, predict, compare with the target.

        x_t    = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise          (gencore.ops.diffusion_training_inputs, one pass)
        target = noise | x0 | sqrt(abar_t) noise - sqrt(1 - abar_t) x0   for scheduler.config.prediction_type
        loss   = mean_n [ w_n * mean_elements loss_type(model(x_t, t), target) ]

    Args:
        model: called as model(x_t, t) or model(x_t, t, class_labels); t is (N,) int64. With a scheduler whose
            variance_type is "learned"/"learned_range" a 2C-channel output is accepted and its first C channels
            are the prediction (the variance channels get no gradient from this simple objective: the variational
            bound term of Nichol & Dhariwal is not included).
        x0: (N, ...) clean samples (scaled like the model expects, e.g. [-1, 1]).
        scheduler: a DDPMScheduler or DDIMScheduler; its betas and prediction_type define the objective.
        loss_type: "l2" (mean squared error, Ho et al.), "l1", or "huber" (delta huber_delta; the tutorial's
            smooth_l1 at delta 1).
        timesteps: (N,) int64 timesteps in [0, num_train_timesteps), default uniform random.
        noise: standard normal noise shaped like x0, default drawn here.
        snr_gamma: min-SNR-gamma weighting (gamma = 5 in the paper); None weights every sample equally.
        class_labels: passed to the model when given (label dropout for guidance is the caller's business).
        generator: for the random timesteps and noise.
        huber_delta: the huber loss's delta.

    Returns:
        A scalar float32 tensor (float64 for float64 x0), differentiable w.r.t. the model's parameters and x0.
    """
    if not isinstance(scheduler, DiscreteScheduler):
        raise TypeError(f"scheduler must be a gencore DDPMScheduler or DDIMScheduler, got {type(scheduler).__name__}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(map(repr, LOSS_TYPES))}; got {loss_type!r}")
    if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point or x0.dim() < 1 or x0.numel() == 0:
        raise TypeError("x0 must be a non-empty floating-point (N, ...) tensor")
    if snr_gamma is not None and (isinstance(snr_gamma, bool) or not isinstance(snr_gamma, numbers.Real)
                                  or not snr_gamma > 0):
        raise ValueError(f"snr_gamma must be a positive float or None, got {snr_gamma!r}")
    n, T, device = x0.shape[0], len(scheduler), x0.device
    if timesteps is None:
        gen_device = generator.device if generator is not None else device
        timesteps = torch.randint(0, T, (n,), generator=generator, device=gen_device).to(device)
    else:
        if not isinstance(timesteps, torch.Tensor) or timesteps.dtype.is_floating_point:
            raise TypeError("timesteps must be an integer tensor of shape (N,)")
        if tuple(timesteps.shape) != (n,):
            raise ValueError(f"timesteps must have shape ({n},), got {tuple(timesteps.shape)}")
        if timesteps.device.type == "cpu" and (int(timesteps.min()) < 0 or int(timesteps.max()) >= T):
            raise ValueError(f"timesteps must lie in [0, num_train_timesteps={T}), got values in "
                             f"[{int(timesteps.min())}, {int(timesteps.max())}]")
        timesteps = timesteps.to(device=device, dtype=torch.int64)
    if noise is None:
        noise = randn(x0.shape, generator, device, x0.dtype)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}")
    else:
        noise = noise.to(device=device, dtype=x0.dtype)

    compute = accumulation_dtype(x0.dtype)
    coefs = scheduler.noise_coefficients(device, compute)
    prediction_type = scheduler.config.prediction_type
    noisy, target = diffusion_training_inputs(x0, noise, timesteps, coefs, prediction_type)

    out = _as_tensor_output(model(noisy, timesteps) if class_labels is None
                            else model(noisy, timesteps, class_labels))
    if (getattr(scheduler, "variance_type", None) in LEARNED_VARIANCE_TYPES and out.dim() > 1
            and out.shape[1] == 2 * x0.shape[1]):
        out = out[:, : x0.shape[1]]
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input shape {tuple(x0.shape)}")

    per_sample = _elementwise(loss_type, out.to(compute), target.to(compute), huber_delta).reshape(n, -1).mean(1)
    if snr_gamma is not None:
        c = coefs[timesteps]
        snr = (c[:, 0] / c[:, 1]) ** 2
        per_sample = per_sample * min_snr_weights(snr, float(snr_gamma), prediction_type)
    return per_sample.mean()
