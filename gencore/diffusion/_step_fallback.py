"""TEMPORARY stand-in for gencore.ops.sampler_step, until the sampler-kernels branch lands in main.

It implements the contract of /work/wt/SAMPLER_OPS.md section 1 in plain PyTorch (without the Philox noise), so the
schedulers can be written and tested against diffusers now. Once gencore.ops.sampler_step exists, the schedulers
call it instead and this file is deleted: the one copy of the step math lives in gencore/reference/sampler_step.py.
"""
from __future__ import annotations

import torch


def sampler_step_fallback(model_output, sample, timesteps, coefs, *, model_output_uncond=None, guidance_scale=1.0,
                          clip_range=None, threshold=None, noise=None, philox_seed=None, philox_offset=0,
                          backend=None):
    if philox_seed is not None:
        raise NotImplementedError("in-kernel Philox noise needs gencore.ops.sampler_step (not merged yet)")
    compute = torch.float64 if sample.dtype == torch.float64 else torch.float32
    view = (-1,) + (1,) * (sample.dim() - 1)
    c = coefs[timesteps].to(compute)
    c = [c[:, j].reshape(view) for j in range(9)]
    x = sample.to(compute)
    m = model_output.to(compute)
    if model_output_uncond is not None:
        u = model_output_uncond.to(compute)
        m = u + guidance_scale * (m - u)
    x0 = c[0] * x + c[1] * m
    if threshold is not None:
        s = threshold.to(compute).reshape(view)
        x0 = torch.minimum(torch.maximum(x0, -s), s) / s
    elif clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    eps = c[2] * x + c[3] * m + c[4] * x0
    prev = c[5] * x0 + c[6] * x + c[7] * eps
    if noise is not None:
        prev = prev + c[8] * noise.to(compute)
    return prev.to(sample.dtype), x0.to(sample.dtype)


def diffusion_training_inputs_fallback(x0, noise, timesteps, coefs, target="epsilon", *, backend=None):
    view = (-1,) + (1,) * (x0.dim() - 1)
    c = coefs[timesteps]
    c0, c1 = c[:, 0].reshape(view).to(x0.dtype), c[:, 1].reshape(view).to(x0.dtype)
    noisy = c0 * x0 + c1 * noise
    if target == "epsilon":
        return noisy, noise
    if target == "sample":
        return noisy, x0
    return noisy, c0 * noise - c1 * x0
