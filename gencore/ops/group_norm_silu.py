"""GroupNorm + SiLU + time-embedding add, fused: y = SiLU(GroupNorm(x + temb)) with optional scale_shift.

Layers:
    gencore::group_norm_silu_fwd / _bwd                 C++ schemas (csrc/gencore.cpp); CPU and CUDA kernels.
    gencore::group_norm_silu_fwd_triton / _bwd_triton   triton_op wrappers around gencore.kernels.group_norm_silu,
                                                        registered on first use (gencore/ops/_triton_ops.py).
    group_norm_silu(...)                                the public function: checks, picks a backend, dispatches.

Arguments are checked once, by the public function. The registered Triton ops, which torch.compile graphs and
direct callers reach without it, check again what their kernels index by (check_kernel_args: tensors, groups,
activation), as the C++ kernels do; eps is trusted below the public function.

Every fused forward returns (y, mean, rstd); mean and rstd are the per-(sample, group) statistics of x + temb,
saved for the backward: mean in float64 on every backend (the CPU kernels keep the centre in double so that offset
data, x = 1e4 + noise, keeps its digits; the backward must rebuild that same centre, which a float32 mean cannot
carry), rstd in the accumulation dtype (float32, float64 for float64 input). The backward op returns (grad_x, grad_weight,
grad_bias, grad_temb, grad_scale_shift), with a 0-element tensor standing for an input that was None.

Layout and dtype: the rules of gencore/_rules.py (a contiguous x gives a contiguous y, a channels-last x a
channels-last y, other strides are copied first; statistics in the accumulation dtype), as every op follows them.
"""
from __future__ import annotations

import torch
from torch.library import triton_op

from .. import _extension, backends
from .._rules import accumulation_dtype, output_like
from ..reference.group_norm_silu import group_norm_silu_ref
from ._checks import check_fake_devices, check_float_tensor, check_like, check_positive_int
from ._triton_ops import on_first_use, register_triton_ops

IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
ACTIVATIONS = ("silu", None)


def check_args(x, num_groups, weight, bias, eps, temb, scale_shift, activation) -> None:
    """Every argument of the public function."""
    check_kernel_args(x, num_groups, weight, bias, temb, scale_shift, activation)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")


def check_kernel_args(x, num_groups, weight, bias, temb, scale_shift, activation) -> None:
    """What the kernels index by and branch on: x and the per-channel tensors agree, G divides C, a known activation."""
    check_float_tensor("x", x, min_dim=2)
    check_positive_int("num_groups", num_groups)
    n, c = x.shape[0], x.shape[1]
    if c % num_groups != 0:
        raise ValueError(f"num_groups ({num_groups}) must divide the number of channels x.shape[1] ({c})")
    if weight is not None:
        check_like("weight", weight, x, "x", (c,))
    if bias is not None:
        check_like("bias", bias, x, "x", (c,))
    if temb is not None:
        check_like("temb", temb, x, "x", (n, c))
    if scale_shift is not None:
        check_like("scale_shift", scale_shift, x, "x", (n, 2 * c))
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes, dtypes and strides of what the kernels return, for torch.compile / export.


def _fwd_fake(x, weight, bias, temb, scale_shift, num_groups, eps, activation):
    check_fake_devices("x", x, weight=weight, bias=bias, temb=temb, scale_shift=scale_shift)
    y = output_like(x)
    mean = x.new_empty((x.shape[0], num_groups), dtype=torch.float64)
    rstd = x.new_empty((x.shape[0], num_groups), dtype=accumulation_dtype(x.dtype))
    return y, mean, rstd


def _bwd_fake(grad_out, x, weight, bias, temb, scale_shift, mean, rstd, num_groups, activation):
    check_fake_devices("x", x, grad_out=grad_out, weight=weight, bias=bias, temb=temb, scale_shift=scale_shift,
                       mean=mean, rstd=rstd)
    def like(t):
        return x.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return output_like(x), like(weight), like(bias), like(temb), like(scale_shift)


# ---------------------------------------------------------------------------------------------------------------------
# Autograd, shared by the C++ and the Triton op pairs.


def _setup_context(ctx, inputs, output):
    x, weight, bias, temb, scale_shift, num_groups, eps, activation = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, temb, scale_shift, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.activation = num_groups, eps, activation
    ctx.mark_non_differentiable(mean, rstd)


def _grads_by_recompute(ctx, grad_out):
    """Gradients through the reference, keeping the graph: the double-backward path (e.g. a WGAN-GP critic).

    The fused backward kernels are not themselves differentiable; when autograd asks for a graph of the backward
    (create_graph=True), the forward is recomputed in plain PyTorch, which differentiates to any order.
    """
    x, weight, bias, temb, scale_shift, _, _ = ctx.saved_tensors
    inputs = [x, weight, bias, temb, scale_shift]
    with torch.enable_grad():
        y = group_norm_silu_ref(x, ctx.num_groups, weight, bias, ctx.eps, temb=temb, scale_shift=scale_shift,
                                activation=ctx.activation)
        wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
        grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True)
    out = [None] * 5
    for i, g in zip(wanted, grads):
        out[i] = g
    return out


def _make_backward(bwd_op):
    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        if torch.is_grad_enabled() and any(ctx.needs_input_grad[:5]):
            gx, gw, gb, gt, gss = _grads_by_recompute(ctx, grad_out)
        else:
            x, weight, bias, temb, scale_shift, mean, rstd = ctx.saved_tensors
            gx, gw, gb, gt, gss = bwd_op(grad_out, x, weight, bias, temb, scale_shift, mean, rstd,
                                         ctx.num_groups, ctx.activation)
            gw = gw if weight is not None else None
            gb = gb if bias is not None else None
            gt = gt if temb is not None else None
            gss = gss if scale_shift is not None else None
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None,
                gt if need[3] else None, gss if need[4] else None, None, None, None)

    return backward


# ---------------------------------------------------------------------------------------------------------------------
# Registration


def _register_cpp_ops() -> None:
    """Fake implementations and autograd for the schemas that csrc/gencore.cpp declared (needs the extension)."""
    if not _extension.loaded():
        return
    torch.library.register_fake("gencore::group_norm_silu_fwd")(_fwd_fake)
    torch.library.register_fake("gencore::group_norm_silu_bwd")(_bwd_fake)
    torch.library.register_autograd("gencore::group_norm_silu_fwd",
                                    _make_backward(torch.ops.gencore.group_norm_silu_bwd),
                                    setup_context=_setup_context)


@on_first_use
def _register_triton_ops() -> None:
    from ..kernels import group_norm_silu as tk  # needs triton, an optional dependency

    @triton_op("gencore::group_norm_silu_fwd_triton", mutates_args=())
    def group_norm_silu_fwd_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                   temb: torch.Tensor | None, scale_shift: torch.Tensor | None, num_groups: int,
                                   eps: float, activation: str | None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_kernel_args(x, num_groups, weight, bias, temb, scale_shift, activation)
        return tk.group_norm_silu_fwd(x, weight, bias, temb, scale_shift, num_groups, eps, activation == "silu")

    @triton_op("gencore::group_norm_silu_bwd_triton", mutates_args=())
    def group_norm_silu_bwd_triton(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                                   bias: torch.Tensor | None, temb: torch.Tensor | None,
                                   scale_shift: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                                   num_groups: int, activation: str | None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        check_kernel_args(x, num_groups, weight, bias, temb, scale_shift, activation)
        return tk.group_norm_silu_bwd(grad_out, x, weight, bias, temb, scale_shift, mean, rstd, num_groups,
                                      activation == "silu")

    group_norm_silu_fwd_triton.register_autograd(_make_backward(torch.ops.gencore.group_norm_silu_bwd_triton),
                                                 setup_context=_setup_context)


_register_cpp_ops()


# ---------------------------------------------------------------------------------------------------------------------
# Public op


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    temb: torch.Tensor | None = None,
    scale_shift: torch.Tensor | None = None,
    activation: str | None = "silu",
    backend: str | None = None,
) -> torch.Tensor:
    """SiLU(GroupNorm(x + temb)), fused: the normalization of a diffusion-UNet residual block in one pass.

    Args:
        x: (N, C, *spatial) with any number of spatial dims (none included); float16, bfloat16, float32, or float64.
            Contiguous and channels-last inputs are read in place; other strides are copied first.
        num_groups: G, which must divide C. Statistics are taken over each group's C/G channels and all positions.
        weight, bias: (C,) per-channel affine (as nn.GroupNorm's), same dtype and device as x, or None.
        eps: added to the variance before the square root.
        temb: (N, C) time embedding added to x per channel *before* the statistics (the residual-block pattern).
        scale_shift: (N, 2C) = cat([scale, shift], dim=1), applied after the affine as
            y = norm * (1 + scale) + shift (diffusers' / ADM's time_embedding_norm="scale_shift").
        activation: "silu" (default) or None for plain GroupNorm.
        backend: "reference", "cpu" (CPU tensors), "cuda" (CUDA tensors), "triton" (CUDA tensors; CPU tensors under
            TRITON_INTERPRET=1), "auto", or None to use gencore.use_backend / set_backend / GENCORE_BACKEND / auto.

    Returns:
        y with x's shape, dtype and layout. Statistics accumulate in float32 (float64 for float64 input) with a
        centred two-pass variance, so large offsets (x = 1000 + noise) keep their precision.

    Differentiable with respect to x, weight, bias, temb and scale_shift, to any order (double backward recomputes
    through the reference). Deterministic: no floating-point atomics on any backend; the cpu backend's results
    are also the same for any thread count.

    The cpu backend takes outputs of 1 MiB or more from a bounded cache of freed output buffers (a fresh 40 MB
    allocation costs more in page faults than the whole op): at most GENCORE_CPU_CACHE_MB megabytes (default 1024,
    0 disables it) stay cached; ``gencore.cpu_output_cache(limit_mb=...)`` reports and bounds them and
    ``torch.ops.gencore.cpu_empty_cache()`` releases them.
    """
    check_args(x, num_groups, weight, bias, eps, temb, scale_shift, activation)
    name = backends.resolve(backend, x.device, IMPLEMENTED)
    if name == "reference":
        return group_norm_silu_ref(x, num_groups, weight, bias, eps, temb=temb, scale_shift=scale_shift,
                                   activation=activation)
    if name == "triton":
        register_triton_ops()
    op = torch.ops.gencore.group_norm_silu_fwd_triton if name == "triton" else torch.ops.gencore.group_norm_silu_fwd
    return op(x, weight, bias, temb, scale_shift, num_groups, float(eps), activation)[0]
