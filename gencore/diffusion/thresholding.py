"""Dynamic thresholding's per-sample levels (Imagen, Saharia et al. 2022): the one reduction a fused step cannot do
in its single pass, computed before it in plain PyTorch."""
from __future__ import annotations

import math

import torch

from .._rules import accumulation_dtype
from .tables import X0_FROM_MODEL, X0_FROM_SAMPLE

# torch.quantile refuses inputs of more than 2**24 elements.
QUANTILE_MAX_NUMEL = 2**24


def per_sample_quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (linear interpolation, as torch.quantile and diffusers) of each row of flat (N, M)."""
    n, m = flat.shape
    if m <= QUANTILE_MAX_NUMEL:
        rows = max(1, QUANTILE_MAX_NUMEL // m)
        return torch.cat([torch.quantile(chunk, q, dim=1) for chunk in flat.split(rows)])
    pos = q * (m - 1)  # a sample larger than torch.quantile takes: the two order statistics around pos
    lo, frac = math.floor(pos), pos - math.floor(pos)
    below = torch.kthvalue(flat, lo + 1, dim=1).values
    above = torch.kthvalue(flat, min(lo + 2, m), dim=1).values
    return torch.lerp(below, above, frac)


def threshold_levels(model_output, sample, rows, coefs, uncond, guidance_scale, config) -> torch.Tensor:
    """Dynamic thresholding's per-sample level s (Imagen, Saharia et al. 2022), a reduction before the fused step:
    s = clamp(quantile(|x0|, dynamic_thresholding_ratio), 1, sample_max_value) over each sample's elements, where x0
    is the unclipped prediction of row `rows[n]` of `coefs`; the step then clamps x0 to [-s, s] and divides by s.
    In the compute dtype, so that float64 samples keep float64 levels."""
    compute = accumulation_dtype(sample.dtype)
    view = (-1,) + (1,) * (sample.dim() - 1)
    c = coefs[rows].to(compute)
    m = model_output.to(compute)
    if uncond is not None:
        u = uncond.to(compute)
        m = u + guidance_scale * (m - u)
    x0 = c[:, X0_FROM_SAMPLE].reshape(view) * sample.to(compute) + c[:, X0_FROM_MODEL].reshape(view) * m
    s = per_sample_quantile(x0.abs().reshape(sample.shape[0], -1), config["dynamic_thresholding_ratio"])
    return torch.clamp(s, min=1, max=config["sample_max_value"])
