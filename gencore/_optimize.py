"""`gencore.optimize(model)`: the tutorial's `optimize_generation` (dynamic quantization, TorchScript trace,
optimize_for_inference) redone for today's PyTorch, for inference of generators and denoisers.

TorchScript is in maintenance mode and dynamic quantization only touches nn.Linear (almost nothing in a conv
generator); what speeds up sampling now is: fused normalization+activation kernels (gencore.nn), channels_last
memory for convolutions, and torch.compile.
"""
from __future__ import annotations

import torch
from torch import nn

from .fusion import backend
from .nn import convert


def _has_4d_convs(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def optimize(model: nn.Module, *, compile: bool = True, channels_last: bool = True,
             compile_kwargs: dict | None = None) -> nn.Module:
    """Prepare a model for fast inference; its outputs equal the original's to floating-point tolerance.

    Steps:
        1. nn.GroupNorm (+ a following nn.SiLU) modules become gencore's fused GroupNorm/GroupNormSiLU modules
           (`gencore.nn.convert`, same parameters and state_dict keys); gencore's own models already use them.
        2. channels_last=True: parameters and buffers move to channels_last when the model has 2-D convolutions
           (oneDNN and cuDNN convolutions are fastest in NHWC; gencore's fused GroupNorm reads it in place).
        3. compile=True: wrap in torch.compile with gencore's backend (gencore/fusion.py: GroupNorm + SiLU patterns
           that step 1 does not know, e.g. an `h + temb` before a converted block or F.group_norm / F.silu calls,
           become the fused op in inference graphs; then Inductor). compile_kwargs pass through, e.g.
           mode="max-autotune"; a `backend` there replaces gencore's.

    The model is switched to eval mode and modified in place (steps 1-2); the returned module is the compiled
    wrapper (or the model itself with compile=False). Inputs may be contiguous or channels_last.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model.eval()
    model = convert(model)
    if channels_last and _has_4d_convs(model):
        model = model.to(memory_format=torch.channels_last)
    if compile:
        kwargs = {"backend": backend, **(compile_kwargs or {})}
        return torch.compile(model, **kwargs)
    return model
