"""Generative models built on gencore's layers: a diffusion UNet, DCGAN generators/discriminators, a WGAN-GP critic,
and class-conditional GANs (embedding-concatenation and projection discriminator).

Every model keeps the keyword arguments it was built with in `model.config` (JSON-serialisable), so a checkpoint
stores `{"name": type(model).__name__, "config": model.config}` and `build_model(name, config)` rebuilds it.
"""
from __future__ import annotations

from torch import nn

from .dcgan import (ConditionalDCGANDiscriminator, ConditionalDCGANGenerator, DCGANDiscriminator, DCGANGenerator,
                    ProjectionDiscriminator, WGANGPCritic, dcgan_init_)
from .unet import UNet, timestep_embedding

MODELS: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (
    UNet, DCGANGenerator, DCGANDiscriminator, WGANGPCritic, ConditionalDCGANGenerator,
    ConditionalDCGANDiscriminator, ProjectionDiscriminator)}


def build_model(name: str, config: dict) -> nn.Module:
    """Rebuild a model from its class name and `model.config` (as stored in a checkpoint's config.json)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    if not isinstance(config, dict):
        raise ValueError(f"model config must be a dict, got {type(config).__name__}")
    return MODELS[name](**config)


def describe(model: nn.Module) -> dict:
    """{"name", "config"} of a gencore model (unwrapping DDP / torch.compile / AveragedModel wrappers)."""
    model = unwrap(model)
    if type(model).__name__ not in MODELS or not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} is not a gencore model with a config")
    return {"name": type(model).__name__, "config": dict(model.config)}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel, torch.compile's OptimizedModule or an AveragedModel."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


__all__ = ["UNet", "DCGANGenerator", "DCGANDiscriminator", "WGANGPCritic", "ConditionalDCGANGenerator",
           "ConditionalDCGANDiscriminator", "ProjectionDiscriminator", "MODELS", "build_model", "describe",
           "unwrap", "dcgan_init_", "timestep_embedding"]
