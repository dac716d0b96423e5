"""The rules every layer shares, written once: the dtype the math runs in, the layout a kernel reads, and the
contracts of the diffusion ops (the columns of their coefficient tables, the training targets, the Philox key ranges).

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

Coefficient tables (the diffusion ops; math: docs/math.md)
    sampler_step reads row coefs[timesteps[n]] of a (T, 11) table whose columns are COEF_COLUMNS, in that order
    (c0 ... c10 in the math); diffusion_training_inputs a (T, 2) table of TRAINING_COEF_COLUMNS. The schedulers
    build them, the reference and every kernel read them by position.

Philox keys (the in-kernel noise; gencore/reference/philox.py defines the generator and the keying)
    seed and offset in [0, 2^63 - 1], at most 2^32 samples per batch and 2^34 elements per sample: what the
    counter (e // 4, n, offset lo, offset hi) and the key (seed lo, seed hi) can hold. check_philox_args.
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


# ---------------------------------------------------------------------------------------------------------------------
# Contracts of the diffusion ops

COEF_COLUMNS = ("x0_from_sample", "x0_from_model", "eps_from_sample", "eps_from_model", "eps_from_x0",
                "prev_from_x0", "prev_from_sample", "prev_from_eps", "noise_std", "prev_from_history1",
                "prev_from_history2")
NUM_COEFS = len(COEF_COLUMNS)
TRAINING_COEF_COLUMNS = ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar")
TARGETS = ("epsilon", "sample", "v_prediction")

MAX_SEED = 2**63 - 1
MAX_OFFSET = 2**63 - 1
MAX_SAMPLES = 2**32
MAX_NUMEL_PER_SAMPLE = 2**34


def check_philox_args(seed, offset, num_samples: int, numel_per_sample: int) -> None:
    """The ranges the Philox keying supports (see the module doc); every backend calls this before drawing."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"philox_seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"philox_seed must be in [0, 2^63 - 1], got {seed}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"philox_offset must be an int, got {type(offset).__name__}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"philox_offset must be in [0, 2^63 - 1], got {offset}")
    if num_samples > MAX_SAMPLES:
        raise ValueError(f"Philox noise supports at most 2^32 samples per batch, got {num_samples}")
    if numel_per_sample > MAX_NUMEL_PER_SAMPLE:
        raise ValueError(f"Philox noise supports at most 2^34 elements per sample, got {numel_per_sample}")
