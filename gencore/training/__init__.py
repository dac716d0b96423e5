"""Trainers (DDPM, GAN, WGAN-GP, conditional GAN) with EMA, bf16 autocast, gradient clipping, DDP under torchrun,
sample grids, loss curves and atomic safetensors+JSON checkpoints that resume exactly.

    from gencore.data import load_digits
    from gencore.training import DDPMConfig, DDPMTrainer
    trainer = DDPMTrainer(load_digits(), DDPMConfig(steps=2000, out_dir="runs/ddpm", unet=dict(base_channels=32)))
    trainer.train()
"""
from .checkpoint import CheckpointError, load_models, read_config, resolve_checkpoint
from .ddpm import DDPMConfig, DDPMTrainer
from .gan import GANConfig, GANTrainer, WGANGPConfig, WGANGPTrainer
from .generate import sample_from_checkpoint
from .trainer import TrainConfig, Trainer

TRAINERS = {"ddpm": (DDPMTrainer, DDPMConfig), "gan": (GANTrainer, GANConfig), "wgan-gp": (WGANGPTrainer, WGANGPConfig),
            "cgan": (GANTrainer, GANConfig)}

__all__ = ["CheckpointError", "DDPMConfig", "DDPMTrainer", "GANConfig", "GANTrainer", "TRAINERS", "TrainConfig",
           "Trainer", "WGANGPConfig", "WGANGPTrainer", "load_models", "read_config", "resolve_checkpoint",
           "sample_from_checkpoint"]
