"""Which trainer and config class train each kind of `gencore.training.options.KINDS`."""
from __future__ import annotations

from .ddpm import DDPMConfig, DDPMTrainer
from .gan import GANConfig, GANTrainer, WGANGPConfig, WGANGPTrainer

TRAINERS = {"ddpm": (DDPMTrainer, DDPMConfig), "gan": (GANTrainer, GANConfig), "wgan-gp": (WGANGPTrainer, WGANGPConfig),
            "cgan": (GANTrainer, GANConfig)}
