"""The two rules every layer shares, written once: the dtype the math runs in, and the layout a kernel reads.

Every backend (reference, cpu, cuda, triton), the fake implementations and the schedulers' coefficient tables follow
them; csrc/tensor_rules.h is their C++ twin for the CPU kernels and the CUDA bindings.

Accumulation dtype
    float32 for float16, bfloat16 and float32 inputs, float64 for float64 inputs (or everything in float64 when a
    reference is asked to upcast, the tests' truth). Statistics, coefficients and every intermediate are kept in it;
    outputs are rounded to the input's dtype once.

Layout (group_norm_silu and the diffusion ops)
    A contiguous input gives contiguous outputs; an input whose channels are innermost (channels_last, or its 3-D/5-D
    analogue: dim 1 has stride 1 and the rest is dense) gives outputs in that layout; any other strides are copied to
    contiguous first. The other per-element inputs of an op are brought to its main input's layout. As in torch's
    suggest_memory_format, a single sample (N = 1) counts as channels-last only if its batch stride is at least its
    size: diffusers' attention blocks return (1, C, H, W) views of a (1, HW, C) tensor with batch stride C, which
    torch's own GroupNorm answers with a contiguous output; answering channels_last instead made every convolution
    after it run on channels_last inputs with contiguous weights (an SD VAE decoder: 21 more copies, 7% slower).

Layout (the gradient-penalty ops)
    A norm is taken per sample, so any layout whose samples are each one dense block (contiguous, channels_last, ...)
    is read in place as (N, D) and its outputs keep its strides; others are copied to contiguous first.
"""
from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype, upcast: bool = False) -> torch.dtype:
    """float64 for float64 inputs (or upcast=True), else float32: the dtype every backend does its math in."""
    return torch.float64 if upcast or dtype == torch.float64 else torch.float32


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether x's channels (dim 1) are innermost and the rest dense: the kernels read it as (N, S, C) in place (a
    single sample also needs a batch stride of at least its size; see the module doc)."""
    return (x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()
            and (x.shape[0] != 1 or x.stride(0) >= x.numel()))


def to_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t in the layout the kernels read: channels innermost if channels_last, else contiguous (no copy if already)."""
    if channels_last:
        return t if is_channels_last(t) else t.movedim(1, -1).contiguous().movedim(-1, 1)
    return t.contiguous()


def output_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor shaped like x in the layout the kernels write for it (channels innermost or
    contiguous), in `dtype` (default x's)."""
    dtype = x.dtype if dtype is None else dtype
    if is_channels_last(x):
        return torch.empty(x.movedim(1, -1).shape, dtype=dtype, device=x.device).movedim(-1, 1)
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def per_sample_dense(t: torch.Tensor) -> bool:
    """Whether each sample t[n] is one dense block of numel/N elements at offset n * numel/N (any order of its dims):
    the gradient-penalty kernels then read t in place as (N, D)."""
    if t.numel() == 0 or t.is_contiguous():
        return True
    n = t.shape[0]
    if n > 1 and t.stride(0) != t.numel() // n:
        return False
    expected = 1
    for stride, size in sorted((t.stride(i), t.shape[i]) for i in range(1, t.dim()) if t.shape[i] != 1):
        if stride != expected:
            return False
        expected *= size
    return True
