"""Pure-PyTorch twin of the fused GroupNorm + SiLU + time-embedding op: the truth every backend is tested against.

y = act(((x + temb - mean) * rstd * weight + bias) * (1 + scale) + shift), per group of C/G channels and all
positions; the forward and backward in the symbols the kernels use are in docs/math.md. Here autograd
differentiates the plain expression, to any order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._rules import accumulation_dtype, is_channels_last, to_layout


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N, C) -> (N, C, 1, ..., 1) broadcastable against an (N, C, *spatial) tensor of `ndim` dims."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def group_norm_silu_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    temb: torch.Tensor | None = None,
    scale_shift: torch.Tensor | None = None,
    activation: str | None = "silu",
    upcast: bool = False,
) -> torch.Tensor:
    """Reference forward. Differentiable to any order through plain autograd.

    upcast=True computes in float64 (the tests' truth) and returns float64; otherwise float16/bfloat16 inputs are
    computed in float32 (as every fused backend does) and cast back to the input dtype.
    """
    out_dtype = x.dtype
    compute = accumulation_dtype(x.dtype, upcast)

    def cast(t):
        return None if t is None else t.to(compute)

    h = x.to(compute)
    if temb is not None:
        h = h + _per_channel(cast(temb), x.dim())
    n, c = x.shape[:2]
    grouped = h.reshape(n, num_groups, -1)
    # Two-pass (centered) variance: exact on offset data, unlike E[x^2] - E[x]^2.
    mean = grouped.mean(dim=2, keepdim=True)
    var = (grouped - mean).square().mean(dim=2, keepdim=True)
    a = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(h.shape)
    if weight is not None:
        a = a * cast(weight).reshape((1, c) + (1,) * (x.dim() - 2))
    if bias is not None:
        a = a + cast(bias).reshape((1, c) + (1,) * (x.dim() - 2))
    if scale_shift is not None:
        scale, shift = cast(scale_shift).chunk(2, dim=1)
        a = a * (1 + _per_channel(scale, x.dim())) + _per_channel(shift, x.dim())
    if activation == "silu":
        a = F.silu(a)
    y = a if upcast else a.to(out_dtype)
    # The output in the layout every backend writes for x (gencore/_rules.py).
    return to_layout(y, is_channels_last(x))


def group_norm_silu_stats_ref(x: torch.Tensor, num_groups: int, eps: float = 1e-5, temb: torch.Tensor | None = None):
    """Per-(sample, group) mean and 1/sqrt(var + eps) of x + temb, float64, shape (N, G): checks the saved stats."""
    h = x.double()
    if temb is not None:
        h = h + _per_channel(temb.double(), x.dim())
    grouped = h.reshape(x.shape[0], num_groups, -1)
    mean = grouped.mean(dim=2)
    var = (grouped - mean[..., None]).square().mean(dim=2)
    return mean, torch.rsqrt(var + eps)
