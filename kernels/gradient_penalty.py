"""Triton kernels of the WGAN-GP gradient penalty and host launchers (math: gencore/reference/gradient_penalty.py).

    _gradient_penalty_interpolate_kernel      x_hat = alpha[n] * real + (1 - alpha[n]) * fake            grid (N * cdiv(D, BLOCK),)
    _gp_sumsq_kernel            partial[n, c] = sum of grad^2 over chunk c of sample n     grid (N * CHUNKS,)
    _gp_penalty_finalize_kernel norms[n] = |s| sqrt(sum_c partial[n, c]); penalty          grid (1,)
    _gp_penalty_bwd_kernel      out = coef[n] * grad                                       grid (N * cdiv(D, BLOCK),)

Grids are one-dimensional (program p is chunk p % chunks of sample p // chunks): a second grid axis of N samples
would stop launching at N = 65,536, the CUDA limit of grid axes 1 and 2.

Every tensor is read as (N, D), each sample one dense block of D elements (the layout rule of per_sample_dense).
The norm is split over fixed chunks of CHUNK = BLOCK * ITERS elements so that batch 1 still fills a GPU; the partial
sums land in a workspace with one writer per slot and are merged by one program in a fixed order: deterministic,
no atomics. The math runs in the accumulation dtype (gencore._rules: float32 for half types, float64 for float64). `center` and `grad_scale` travel as the int64 bit
pattern of the Python float (kernels/scalars.py), so the float64 kernels get them unrounded; the AOT specs list both
typings the JIT can give such an int.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._rules import accumulation_dtype, per_sample_dense
from .launch import wrap_triton
from .scalars import float_bits, from_bits

BLOCK = 1024  # elements per program of the elementwise passes, and per iteration of the sum of squares
ITERS = 4  # iterations per sum-of-squares program: CHUNK = 4096 elements
FIN_BLOCK_N = 64  # samples per step of the finalize program
FIN_BLOCK_C = 16  # chunks per step of the finalize program
NUM_WARPS = 4


@triton.jit
def _acc(x, ACC_FP64: tl.constexpr):
    """x in the accumulation dtype: float64 where the launcher's gencore._rules.accumulation_dtype said so, else
    float32."""
    if ACC_FP64:
        return tl.cast(x, tl.float64)
    else:
        return tl.cast(x, tl.float32)



@triton.jit(do_not_specialize=["D", "CHUNKS"])
def _gradient_penalty_interpolate_kernel(real_ptr, fake_ptr, alpha_ptr, out_ptr, D, CHUNKS, BLOCK: tl.constexpr,
                           ACC_FP64: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // CHUNKS
    offs = (pid % CHUNKS).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    base = n.to(tl.int64) * D
    a = _acc(tl.load(alpha_ptr + n), ACC_FP64)
    r = _acc(tl.load(real_ptr + base + offs, mask=mask, other=0.0), ACC_FP64)
    f = _acc(tl.load(fake_ptr + base + offs, mask=mask, other=0.0), ACC_FP64)
    x_hat = a * r + (1.0 - a) * f
    tl.store(out_ptr + base + offs, x_hat.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["D", "CHUNKS"])
def _gp_sumsq_kernel(grad_ptr, partial_ptr, D, CHUNKS, BLOCK: tl.constexpr, ITERS: tl.constexpr,
                     ACC_FP64: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // CHUNKS
    c = pid % CHUNKS
    base = n.to(tl.int64) * D
    start = c.to(tl.int64) * (BLOCK * ITERS)
    acc = _acc(tl.zeros([BLOCK], dtype=tl.float32), ACC_FP64)
    for it in tl.static_range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        x = _acc(tl.load(grad_ptr + base + offs, mask=offs < D, other=0.0), ACC_FP64)
        acc += x * x
    tl.store(partial_ptr + n.to(tl.int64) * CHUNKS + c, tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["N", "CHUNKS", "center_bits", "scale_bits"])
def _gp_penalty_finalize_kernel(partial_ptr, norms_ptr, penalty_ptr, N, CHUNKS, center_bits: tl.int64,
                                scale_bits: tl.int64,
                                ONE_SIDED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                ACC_FP64: tl.constexpr):
    scale = tl.abs(_acc(from_bits(scale_bits), ACC_FP64))
    ctr = _acc(from_bits(center_bits), ACC_FP64)
    total = _acc(tl.zeros([BLOCK_N], dtype=tl.float32), ACC_FP64)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        sq = _acc(tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32), ACC_FP64)
        for c0 in range(0, CHUNKS, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            m = row_mask[:, None] & (cols < CHUNKS)[None, :]
            sq += tl.load(partial_ptr + rows.to(tl.int64)[:, None] * CHUNKS + cols[None, :], mask=m, other=0.0)
        norm = tl.sqrt(tl.sum(sq, axis=1)) * scale
        tl.store(norms_ptr + rows, norm, mask=row_mask)
        dev = norm - ctr
        if ONE_SIDED:
            dev = tl.where(dev < 0, 0.0, dev)  # not tl.maximum, which drops a NaN
        total += tl.where(row_mask, dev * dev, 0.0)
    tl.store(penalty_ptr, tl.sum(total, axis=0) / N)


@triton.jit(do_not_specialize=["N", "D", "CHUNKS", "center_bits", "scale_bits"])
def _gp_penalty_bwd_kernel(gout_ptr, grad_ptr, norms_ptr, out_ptr, N, D, CHUNKS, center_bits: tl.int64,
                           scale_bits: tl.int64,
                           ONE_SIDED: tl.constexpr, BLOCK: tl.constexpr, ACC_FP64: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // CHUNKS
    offs = (pid % CHUNKS).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    base = n.to(tl.int64) * D
    norm = tl.load(norms_ptr + n)
    s = _acc(from_bits(scale_bits), ACC_FP64)
    dev = norm - _acc(from_bits(center_bits), ACC_FP64)
    if ONE_SIDED:
        dev = tl.where(dev < 0, 0.0, dev)  # not tl.maximum, which drops a NaN
    # coef = gout * (2/N) * dev * s^2 / norm, and 0 where norm == 0 (the sample's gradient is then 0 as well); a
    # NaN norm stays NaN (norm == 0 is false for it), as in the reference.
    safe_norm = tl.where(norm == 0, 1.0, norm)
    gout = _acc(tl.load(gout_ptr), ACC_FP64)
    coef = tl.where(norm == 0, 0.0, gout * 2.0 * dev * (s * s) / (safe_norm * N))
    g = _acc(tl.load(grad_ptr + base + offs, mask=mask, other=0.0), ACC_FP64)
    tl.store(out_ptr + base + offs, (coef * g).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------------
# Host launchers (no autograd; gencore/ops/gradient_penalty.py wraps them in triton_op).


def _acc_fp64(dtype: torch.dtype) -> bool:
    """The kernels' ACC_FP64: whether gencore's accumulation rule puts `dtype`'s math in float64."""
    return accumulation_dtype(dtype) == torch.float64


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t if per_sample_dense(t) else t.contiguous()



def gradient_penalty_interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    real, fake = _flat(real), _flat(fake)
    if real.stride() != fake.stride():
        real, fake = real.contiguous(), fake.contiguous()
    out = torch.empty_like(real)
    n = real.shape[0]
    d = real.numel() // n
    chunks = triton.cdiv(d, BLOCK)
    wrap_triton(_gradient_penalty_interpolate_kernel)[(n * chunks,)](
        real, fake, alpha.contiguous(), out, d, chunks, BLOCK=BLOCK, ACC_FP64=_acc_fp64(real.dtype),
        num_warps=NUM_WARPS)
    return out


def gradient_norm_penalty_fwd(grad: torch.Tensor, center: float, one_sided: bool,
                        grad_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad = _flat(grad)
    n = grad.shape[0]
    d = grad.numel() // n
    stats = accumulation_dtype(grad.dtype)
    chunks = max(1, triton.cdiv(d, BLOCK * ITERS))
    partial = torch.empty((n, chunks), dtype=stats, device=grad.device)
    norms = torch.empty((n,), dtype=stats, device=grad.device)
    penalty = torch.empty((), dtype=stats, device=grad.device)
    acc_fp64 = stats == torch.float64
    wrap_triton(_gp_sumsq_kernel)[(n * chunks,)](
        grad, partial, d, chunks, BLOCK=BLOCK, ITERS=ITERS, ACC_FP64=acc_fp64, num_warps=NUM_WARPS)
    wrap_triton(_gp_penalty_finalize_kernel)[(1,)](
        partial, norms, penalty, n, chunks, float_bits(center), float_bits(grad_scale), ONE_SIDED=bool(one_sided),
        BLOCK_N=FIN_BLOCK_N, BLOCK_C=FIN_BLOCK_C, ACC_FP64=acc_fp64, num_warps=NUM_WARPS)
    return penalty, norms


def gradient_norm_penalty_bwd(grad_penalty: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor, center: float,
                        one_sided: bool, grad_scale: float) -> torch.Tensor:
    grad = _flat(grad)
    n = grad.shape[0]
    d = grad.numel() // n
    out = torch.empty_like(grad)
    chunks = triton.cdiv(d, BLOCK)
    wrap_triton(_gp_penalty_bwd_kernel)[(n * chunks,)](
        grad_penalty.reshape(()).to(norms.dtype), grad, norms.contiguous(), out, n, d, chunks, float_bits(center),
        float_bits(grad_scale), ONE_SIDED=bool(one_sided), BLOCK=BLOCK, ACC_FP64=_acc_fp64(grad.dtype),
        num_warps=NUM_WARPS)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation specs (the convention of gencore.kernels): (label, kernel, signature, constexprs, options)
# for every configuration the launchers above launch: each dtype x each constexpr value (BLOCK, ITERS and the
# finalize tiles are fixed; ONE_SIDED and ACC_FP64 take both values), so that tests/build/test_triton_aot.py compiles them
# for sm_80/sm_90 without a GPU. Sizes are "i32": tensors of 2**31 elements or more per sample make the JIT build an
# "i64" variant of the same code (all offsets are computed in int64 either way).

_PTR = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def aot_specs():
    options = {"num_warps": NUM_WARPS}
    specs = []
    for dtype, ptr in _PTR.items():
        stats = _PTR[accumulation_dtype(dtype)]
        acc_fp64 = _acc_fp64(dtype)
        name = ptr[1:]
        specs.append((f"gradient_penalty_interpolate_{name}", _gradient_penalty_interpolate_kernel,
                      {"real_ptr": ptr, "fake_ptr": ptr, "alpha_ptr": ptr, "out_ptr": ptr, "D": "i32",
                       "CHUNKS": "i32", "BLOCK": "constexpr", "ACC_FP64": "constexpr"},
                      {"BLOCK": BLOCK, "ACC_FP64": acc_fp64}, options))
        specs.append((f"gp_sumsq_{name}", _gp_sumsq_kernel,
                      {"grad_ptr": ptr, "partial_ptr": stats, "D": "i32", "CHUNKS": "i32", "BLOCK": "constexpr",
                       "ITERS": "constexpr", "ACC_FP64": "constexpr"},
                      {"BLOCK": BLOCK, "ITERS": ITERS, "ACC_FP64": acc_fp64}, options))
        for one_sided in (False, True):
            tag = f"{name}_{'one_sided' if one_sided else 'two_sided'}"
            specs.append((f"gp_penalty_bwd_{tag}", _gp_penalty_bwd_kernel,
                          {"gout_ptr": stats, "grad_ptr": ptr, "norms_ptr": stats, "out_ptr": ptr, "N": "i32",
                           "D": "i32", "CHUNKS": "i32", "center_bits": "i64", "scale_bits": "i64",
                           "ONE_SIDED": "constexpr", "BLOCK": "constexpr", "ACC_FP64": "constexpr"},
                          {"ONE_SIDED": one_sided, "BLOCK": BLOCK, "ACC_FP64": acc_fp64}, options))
    for stats_dtype in (torch.float32, torch.float64):
        stats = _PTR[stats_dtype]
        for one_sided in (False, True):
            specs.append((f"gp_penalty_finalize_{stats[1:]}_{'one_sided' if one_sided else 'two_sided'}",
                          _gp_penalty_finalize_kernel,
                          {"partial_ptr": stats, "norms_ptr": stats, "penalty_ptr": stats, "N": "i32",
                           "CHUNKS": "i32", "center_bits": "i64", "scale_bits": "i64", "ONE_SIDED": "constexpr",
                           "BLOCK_N": "constexpr", "BLOCK_C": "constexpr", "ACC_FP64": "constexpr"},
                          {"ONE_SIDED": one_sided, "BLOCK_N": FIN_BLOCK_N, "BLOCK_C": FIN_BLOCK_C,
                           "ACC_FP64": stats_dtype == torch.float64}, options))
    return specs
