"""Where the drop-in modules leave torch's own kernels in place: calls for which a separate fused call costs more than
it saves.

The rule. On the CPU, with backend selection left to "auto", a call runs gencore's fused op when

    x.numel() >= MIN_NUMEL_FORWARD (MIN_NUMEL_TRAINING while autograd records the call)
                 x FACTOR_BY_PASSES_SAVED[p]   p = 2 for GroupNorm + SiLU + an add (temb or scale_shift),
                                               p = 1 for GroupNorm + SiLU (or GroupNorm + an add),
                                               p = 0 for a plain GroupNorm
                 x NOT_CONTIGUOUS_FACTOR       when x is not contiguous (channels-last, or other strides)

and torch's F.group_norm (with F.silu and the add, as a model computes them without gencore) otherwise. An explicit
backend (argument, use_backend, set_backend, GENCORE_BACKEND) always gets what it asks for; CUDA tensors always take
the fused op (not yet measured on a GPU).

Why. A fused call has a larger fixed cost than torch's (Python argument checks and dispatch; while autograd records,
a Python autograd node: for a 64-element x on the machine below, ~80 us against torch's ~25 us without autograd, ~190
us against ~40 us for the forward alone with it), which only the passes over memory it saves win back: two when it
folds in the add and the SiLU, one for the SiLU alone. A plain GroupNorm saves none: torch's kernel is as fast as the
fused one until torch's outputs are big enough that each fresh allocation costs page faults (the fused op reuses
freed outputs), hence its large factor. The fused channels-last kernel gains less over torch's than the
channels-first one (torch has a channels-last GroupNorm kernel of its own).

Measured on a 2-core AMD EPYC VM (AVX2, no AVX-512), torch 2.13.0+cpu, shared with other work: torch's time / the
fused op's time for one call of the module path, float32, 32 groups, one thread, thread CPU time, median of 9 rounds
of call-by-call interleaving. A repeat run agreed within about 0.05 up to 1.2x; above it torch's page faults vary
more (channels-last forward GN + SiLU + add at 256K: 1.28 and 2.70). * marks the smallest size the rule fuses.

    elements (K = 1024, M = 1024K)  16K   32K   64K   128K  256K  512K  1M    2M    4M    8M    16M
    contiguous, forward
      GN + SiLU + add               0.90  0.97 *1.08  1.31  1.48  2.15  2.03  1.69
      GN + SiLU                     0.68  0.76  0.97  1.02 *1.10  1.26  1.34  1.40
      GN                            0.47  0.50  0.62  0.73  0.91  0.88  0.93  1.00  1.00 *2.37  2.42
    contiguous, forward+backward
      GN + SiLU + add               0.75  0.77  0.87  0.98 *1.09  1.15  1.59  1.77
      GN + SiLU                     0.66  0.70  0.77  0.87  1.05  1.14 *1.14  1.16
      GN                            0.43  0.47  0.47  0.63  0.87  0.84  0.95  1.02  1.17  2.06  2.14  (32M *1.88)
    channels-last (N, C, H, W), forward
      GN + SiLU + add                     0.87  0.89  1.11  2.70 *2.50  2.83  2.72  3.11
      GN + SiLU                           0.72  0.84  1.02  1.14  1.29  1.19 *1.06  1.18
      GN                                  0.49  0.49  0.59  0.81  1.06  0.73  0.67  0.72
    channels-last, forward+backward
      GN + SiLU + add                     0.71  0.76  0.87  0.94  1.07  1.04 *1.10  1.26  2.67
      GN + SiLU                           0.58  0.67  0.81  0.81  0.94  0.92  0.94  0.98 *2.32
      GN                                  0.44  0.48  0.62  0.78  0.83  0.71  0.77  0.88

The thresholds sit at the measured crossovers, rounded up to a power of two; the factors are the simplest that keep
every fused size in the table at 1.05x or more, at the price of leaving a few faster calls to torch (contiguous
forward+backward GroupNorm at 4M-16M, channels-last at 128K-1M forward, and 1.25x at 512K for the plain GroupNorm of
diffusers' attention on its transposed (N, HW, C) view, which torch copies first). Only float32 and one thread were
measured.
More threads shrink both paths' per-element time but not their fixed costs, and AVX-512 shrinks the arithmetic (the
SiLU's exp) more than the memory passes, so on such machines the crossovers are likely to sit higher; not yet
measured there. An explicit backend bypasses the rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends

# GroupNorm + SiLU + an add on a contiguous x: the smallest x.numel() the fused op serves.
MIN_NUMEL_FORWARD = 1 << 16
MIN_NUMEL_TRAINING = 1 << 18  # while autograd records the call
# Index: passes over x's elements that the fused call saves over torch's ops (the add, the SiLU).
FACTOR_BY_PASSES_SAVED = (128, 4, 1)
NOT_CONTIGUOUS_FACTOR = 8


def torch_is_faster(x: torch.Tensor, weight, bias, temb, scale_shift, activation: str | None,
                    backend: str | None = None) -> bool:
    """Whether torch's own ops should serve this call of the fused op's arguments (the rule in the module doc).

    Written for the calls it sends to torch, which are the small ones: every check costs a tiny model's forward
    about as much as the op it routes, so the cheap ones come first and the backend lookup last."""
    if backend is not None or not x.is_cpu:  # 0.15 us; x.device.type costs 1 us (TorchDynamo folds both)
        return False
    records = torch.is_grad_enabled() and (  # spelled out: a generator over the four costs ~1.4 us a call
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
        or (temb is not None and temb.requires_grad) or (scale_shift is not None and scale_shift.requires_grad))
    passes_saved = (activation == "silu") + (temb is not None or scale_shift is not None)
    threshold = (MIN_NUMEL_TRAINING if records else MIN_NUMEL_FORWARD) * FACTOR_BY_PASSES_SAVED[passes_saved]
    if not x.is_contiguous():
        threshold *= NOT_CONTIGUOUS_FACTOR
    return x.numel() < threshold and backends.get_backend() == "auto"


def torch_group_norm_silu(x, num_groups, weight, bias, eps, temb=None, scale_shift=None, activation="silu"):
    """The fused op's math in torch's own kernels: what a model computes without gencore."""
    if temb is not None:
        x = x + temb.reshape(temb.shape + (1,) * (x.dim() - 2))
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale_shift is not None:
        scale, shift = scale_shift.reshape(scale_shift.shape + (1,) * (x.dim() - 2)).chunk(2, dim=1)
        y = y * (1 + scale) + shift
    return F.silu(y) if activation == "silu" else y
