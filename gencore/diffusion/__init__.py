"""Diffusion models: noise schedules, DDPM/DDIM schedulers (diffusers' config and semantics, fused step), the
sampling loop and the training loss.

    from gencore.diffusion import DDIMScheduler, sample, training_loss
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    loss = training_loss(model, x0, scheduler, loss_type="l2", snr_gamma=5.0)        # training
    images = sample(model, scheduler, (16, 1, 28, 28), 50, eta=0.0, generator=g)      # sampling
"""
from .dpm_solver import DPMSolverMultistepScheduler
from .losses import LOSS_TYPES, min_snr_weights, training_loss
from .sampling import CapturedSampling, capture_sample, sample
from .diffusers_interop import register_with_diffusers
from .scheduler_config import (PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES, DDIMSchedulerOutput,
                               DDPMSchedulerOutput, SchedulerConfig, SchedulerMixin, SchedulerOutput)
from .schedulers import DDIMScheduler, DDPMScheduler, DiscreteScheduler
from .schedules import BETA_SCHEDULES, cosine_betas, make_betas, rescale_zero_terminal_snr

__all__ = [
    "BETA_SCHEDULES", "CapturedSampling", "DDIMScheduler", "DDIMSchedulerOutput", "DDPMScheduler",
    "DDPMSchedulerOutput", "DPMSolverMultistepScheduler", "DiscreteScheduler", "LOSS_TYPES", "PREDICTION_TYPES",
    "SchedulerConfig", "SchedulerMixin", "SchedulerOutput", "TIMESTEP_SPACINGS", "VARIANCE_TYPES", "capture_sample",
    "cosine_betas", "make_betas", "min_snr_weights", "register_with_diffusers", "rescale_zero_terminal_snr", "sample",
    "training_loss",
]
