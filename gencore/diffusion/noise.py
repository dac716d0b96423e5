"""The noise of a stochastic step, from exactly one source: the one place that chooses it.

Sources: a tensor the caller passes (variance_noise), Philox drawn inside the fused kernel (philox_seed; the kernel
draws it, so no tensor exists here), or a torch.Generator (or a list of them, one per sample) drawn as diffusers'
randn_tensor draws, so the same generator gives diffusers' numbers.
"""
from __future__ import annotations

import torch


def randn(shape, generator, device, dtype):
    """Standard normal noise as diffusers' randn_tensor draws it (same numbers for the same generator).

    A CPU generator with a CUDA target draws on the CPU and copies; a list of generators draws sample by sample.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators but the batch has {shape[0]} samples")
        return torch.cat([randn((1,) + tuple(shape[1:]), g, device, dtype) for g in generator])
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, a list of them, or None; got {type(generator).__name__}")
    rand_device = generator.device if generator.device.type == "cpu" else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def step_noise(sample: torch.Tensor, *, generator=None, variance_noise: torch.Tensor | None = None,
               philox_seed: int | None = None, needed: bool = True) -> torch.Tensor | None:
    """The noise z of one step, shaped and typed like sample, or None when the kernel draws it (philox_seed) or the
    step needs none (needed=False and no variance_noise). Two sources at once are a ValueError."""
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator or variance_noise, not both")
    if philox_seed is not None:
        if variance_noise is not None or generator is not None:
            raise ValueError("philox_seed draws the noise in the kernel: do not also pass generator/variance_noise")
        return None
    if variance_noise is not None:
        if not isinstance(variance_noise, torch.Tensor) or variance_noise.shape != sample.shape:
            got = tuple(variance_noise.shape) if isinstance(variance_noise, torch.Tensor) else type(variance_noise).__name__
            raise ValueError(f"variance_noise must be a tensor shaped like sample {tuple(sample.shape)}, got {got}")
        return variance_noise.to(device=sample.device, dtype=sample.dtype)
    return randn(sample.shape, generator, sample.device, sample.dtype) if needed else None
