"""Where the drop-in modules leave torch's own kernels in place: tensors so small that a separate fused call costs
more than it saves.

Measured on this project's 2-core CPU (eager, one thread, interleaved; torch's time over gencore's, residual-block
GroupNorm + SiLU + temb): forward 0.67x at (2,32,8,8) (4,096 elements), 1.11-1.15x at 32,768 and more;
forward+backward 0.72x at 4,096, 0.85x at 32,768, 0.95x at 65,536, 1.32-1.40x at 262,144. Per-call costs (the
autograd node, argument checks, two op dispatches) are what the small sizes pay. So on the CPU, with backend
selection left to "auto", tensors under MIN_NUMEL_FORWARD elements (MIN_NUMEL_TRAINING when autograd records the
call) run on torch's F.group_norm and F.silu. An explicit backend (argument, use_backend, set_backend,
GENCORE_BACKEND) always gets what it asks for; CUDA tensors always take the fused op (not measured on a GPU yet).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends

MIN_NUMEL_FORWARD = 1 << 14
MIN_NUMEL_TRAINING = 1 << 17


def torch_is_faster(x: torch.Tensor, *tensors, backend: str | None = None) -> bool:
    """Whether torch's own ops should serve this call (see the module doc)."""
    if backend is not None or x.device.type != "cpu" or backends.get_backend() != "auto":
        return False
    records = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors))
    return x.numel() < (MIN_NUMEL_TRAINING if records else MIN_NUMEL_FORWARD)


def torch_group_norm_silu(x, num_groups, weight, bias, eps, temb=None, scale_shift=None, activation="silu"):
    """The fused op's math in torch's own kernels: what a model computes without gencore."""
    per_channel = (1,) * (x.dim() - 2)
    h = x if temb is None else x + temb.reshape(temb.shape + per_channel)
    y = F.group_norm(h, num_groups, weight, bias, eps)
    if scale_shift is not None:
        scale, shift = scale_shift.reshape(scale_shift.shape + per_channel).chunk(2, dim=1)
        y = y * (1 + scale) + shift
    return F.silu(y) if activation == "silu" else y
