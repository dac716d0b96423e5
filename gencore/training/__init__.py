"""Trainers (DDPM, GAN, WGAN-GP, conditional GAN, few-step students of a DDPM) with EMA, bf16 autocast, gradient clipping, DDP under torchrun,
sample grids, loss curves and atomic safetensors+JSON checkpoints that resume exactly.

    from gencore.data import load_digits
    from gencore.training import DDPMConfig, DDPMTrainer
    trainer = DDPMTrainer(load_digits(), DDPMConfig(steps=2000, out_dir="runs/ddpm", unet=dict(base_channels=32)))
    trainer.train()

The names below are imported on first use (PEP 562), so that `gencore.training.options` (plain data) and
`gencore.training.paths` import without torch: `gencore --help` reads its choices from them.
"""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint", "load_models": "checkpoint", "read_config": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "DDPMConfig": "ddpm", "DDPMTrainer": "ddpm",
    "DistillConfig": "distillation", "DistillTrainer": "distillation", "distill": "distillation",
    "GANConfig": "gan", "GANTrainer": "gan", "WGANGPConfig": "gan", "WGANGPTrainer": "gan",
    "sample_from_checkpoint": "generate",
    "TRAINERS": "registry",
    "TrainConfig": "trainer", "Trainer": "trainer", "TrainingInterrupted": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
