"""Noise schedules: the betas of the forward process, and the zero-terminal-SNR rescaling.

Every function returns float32 betas of shape (num_train_timesteps,) on the CPU, built the way diffusers builds them
(same dtype at each stage), so a gencore scheduler and a diffusers scheduler with the same config hold the same
alphas_cumprod bit for bit:

    linear              beta_t = linspace(beta_start, beta_end, T)                         (Ho et al. 2020)
    scaled_linear       beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2        (latent diffusion)
    squaredcos_cap_v2   beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999),
                        abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2                     (Nichol & Dhariwal 2021)
    sigmoid             beta_t = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start   (GeoDiff)
    trained_betas       given explicitly

rescale_zero_terminal_snr (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Algorithm 1) shifts and scales sqrt(alphas_cumprod) so that the last timestep has signal-to-noise ratio exactly 0
while the first keeps its value.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")

# The cosine schedule caps each beta below 1 so that the last steps stay invertible (Nichol & Dhariwal, section 3.2).
COSINE_MAX_BETA = 0.999
COSINE_OFFSET = 0.008


def _cosine_alpha_bar(s: float) -> float:
    return math.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int, max_beta: float = COSINE_MAX_BETA) -> torch.Tensor:
    """The "squaredcos_cap_v2" schedule: betas that discretise abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2.

    Computed in float64 (Python floats) and rounded once to float32, as diffusers does.
    """
    T = num_train_timesteps
    betas = [min(1.0 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """The betas of a named schedule (see the module doc), or `trained_betas` as float32 when given.

    Args:
        num_train_timesteps: T, the number of training timesteps (a positive int).
        beta_start, beta_end: the range of the "linear", "scaled_linear" and "sigmoid" schedules.
        beta_schedule: one of BETA_SCHEDULES. Ignored (but still validated) when trained_betas is given.
        trained_betas: T betas in (0, 1], overriding the named schedule.

    Returns:
        float32 tensor of shape (T,) on the CPU.

    Raises:
        ValueError: an unknown beta_schedule, or trained_betas of the wrong length or outside (0, 1].
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(map(repr, BETA_SCHEDULES))}; got {beta_schedule!r}")
    T = num_train_timesteps
    if trained_betas is not None:
        if isinstance(trained_betas, torch.Tensor):
            trained_betas = trained_betas.detach().cpu().to(torch.float64).numpy()
        betas = torch.tensor(np.asarray(trained_betas, dtype=np.float64), dtype=torch.float32)
        if betas.dim() != 1 or betas.numel() != T:
            raise ValueError(f"trained_betas must be a sequence of num_train_timesteps={T} floats; "
                             f"got shape {tuple(betas.shape)}")
        if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("trained_betas must all lie in (0, 1]")
        return betas
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(T)
    # sigmoid
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float32)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that the final timestep has zero signal-to-noise ratio (Lin et al. 2023, Algorithm 1).

    sqrt(alphas_cumprod) is shifted so its last value is 0 and scaled so its first value is unchanged; betas are
    then recovered from the new cumulative product. Works in betas' dtype (float32 for the schedulers, as diffusers).
    The last beta becomes 1, so an "epsilon" model cannot be used at the last timestep (x0 is undefined there):
    models trained this way predict "v_prediction".
    """
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas
