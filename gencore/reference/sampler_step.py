"""Pure-PyTorch twins of the fused diffusion ops: the truth every backend is tested against.

The math of both ops is docs/math.md: sampler_step gathers row c = coefs[timesteps[n]] (the 11 columns named in
gencore._rules.COEF_COLUMNS, c0 ... c10 below in that order) and forms the guided model output m, x0 (clipped or
thresholded), eps and prev; z is the noise tensor, else Philox normals (gencore.reference.philox) when philox_seed
is given, else 0; h1, h2 are a multistep solver's earlier x0 (history1, history2; 0 when not given).

A row is any linear step of this form: DDPM and DDIM leave c9 = c10 = 0; DPM-Solver++ (gencore.diffusion.
DPMSolverMultistepScheduler) uses c0, c1 for its data prediction, c6 for the sample, c5, c9, c10 for the current and
two previous predictions, c8 for the SDE variant's noise, and leaves c2..c4, c7 = 0. The rows of coefs are whatever
the scheduler indexes them by: the timestep for DDPM/DDIM, the step index for DPM-Solver++.

diffusion_training_inputs gathers c = coefs[timesteps[n]] = (sqrt(abar_t), sqrt(1 - abar_t)): noisy = c0 x0 +
c1 noise and the target of the prediction type.

The math is in float32 for float16/bfloat16/float32 inputs and float64 for float64 (what the fused kernels do);
upcast=True computes in float64 and returns float64 (the tests' truth).
"""
from __future__ import annotations

import torch

from .._rules import TARGETS, accumulation_dtype, is_channels_last, to_layout
from .philox import philox_normal


def gather_coefs(coefs: torch.Tensor, timesteps: torch.Tensor, ndim: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Column j of coefs[timesteps] as an (N, 1, ..., 1) tensor broadcastable against an ndim-dim sample."""
    # A readable error on CPU in eager mode; CUDA indexing (and a compiled graph) raise their own device-side assert.
    if timesteps.device.type == "cpu" and timesteps.numel() and not torch.compiler.is_compiling():
        lo, hi = int(timesteps.min()), int(timesteps.max())
        if lo < 0 or hi >= coefs.shape[0]:
            bad = lo if lo < 0 else hi
            raise IndexError(f"timesteps must be in [0, {coefs.shape[0]}) (the rows of coefs), got {bad}")
    rows = coefs.to(dtype)[timesteps.long()]
    return [rows[:, j].reshape((-1,) + (1,) * (ndim - 1)) for j in range(coefs.shape[1])]


def sampler_step_ref(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    coefs: torch.Tensor,
    *,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    clip_range: float | None = None,
    threshold: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    philox_seed: int | None = None,
    philox_offset: int = 0,
    history1: torch.Tensor | None = None,
    history2: torch.Tensor | None = None,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference sampler step: returns (prev_sample, pred_original_sample) as the module doc defines them.

    Outputs have sample's dtype (float64 with upcast=True) and sample's layout rule (contiguous, or channels-last
    for a channels-last sample).
    """
    dt = accumulation_dtype(sample.dtype, upcast)
    c = gather_coefs(coefs, timesteps, sample.dim(), dt)
    x = sample.to(dt)
    m = model_output.to(dt)
    if model_output_uncond is not None:
        u = model_output_uncond.to(dt)
        m = u + guidance_scale * (m - u)
    x0 = c[0] * x + c[1] * m
    if threshold is not None:
        s = threshold.to(dt).reshape((-1,) + (1,) * (sample.dim() - 1))
        x0 = torch.minimum(torch.maximum(x0, -s), s) / s
    elif clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    eps = c[2] * x + c[3] * m + c[4] * x0
    prev = c[5] * x0 + c[6] * x + c[7] * eps
    if history1 is not None:
        prev = prev + c[9] * history1.to(dt)
    if history2 is not None:
        prev = prev + c[10] * history2.to(dt)
    if noise is not None:
        prev = prev + c[8] * noise.to(dt)
    elif philox_seed is not None:
        z = philox_normal(sample.shape, philox_seed, philox_offset, dtype=accumulation_dtype(sample.dtype),
                          device=sample.device)
        prev = prev + c[8] * z.to(dt)
    out = dt if upcast else sample.dtype
    return to_layout(prev.to(out), is_channels_last(sample)), to_layout(x0.to(out), is_channels_last(sample))


def diffusion_training_inputs_ref(
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    coefs: torch.Tensor,
    target: str = "epsilon",
    *,
    upcast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference training inputs: (noisy, target) as the module doc defines them. Differentiable (plain autograd).

    For target "epsilon" / "sample" the target is `noise` / `x0` itself (the same tensor, not a copy), as in the
    fused op.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    dt = accumulation_dtype(x0.dtype, upcast)
    c = gather_coefs(coefs, timesteps, x0.dim(), dt)
    x = x0.to(dt)
    z = noise.to(dt)
    out = dt if upcast else x0.dtype
    noisy = to_layout((c[0] * x + c[1] * z).to(out), is_channels_last(x0))
    if target == "epsilon":
        return noisy, noise.to(out) if upcast else noise
    if target == "sample":
        return noisy, x0.to(out) if upcast else x0
    return noisy, to_layout((c[0] * z - c[1] * x).to(out), is_channels_last(x0))
