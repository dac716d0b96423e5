"""Triton kernels for the fused GroupNorm + SiLU + time-embedding op, and their host launchers (no autograd here).

The math, and the names of its symbols here (x viewed as (N, C, S); mean, rstd = r, k = 1 + scale, xhat, z, gz,
S1, S2, S3, m1, m2 per (n, c) or (n, g)), is docs/math.md. The elementwise backward evaluates
gx = rstd * (w k gz - m1 - xhat m2), the expanded form of A gz + E d + F there.

Memory layouts. x is read in place through (n, c, s) offsets: channels-first (contiguous) puts s innermost, channels
last (x.movedim(1, -1) contiguous, and any x with S == 1) puts c innermost; the CHANNELS_LAST constexpr tells the
compiler which axis of a tile is contiguous so that loads vectorise. Anything else is copied to contiguous first.

Work split (why several kernels). A grid of one program per (n, g) has only 32 programs at batch 1 with 32 groups:
an H100 has 132 SMs. So every pass over x tiles it into (channel block, spatial chunk) pieces, one program each, on a
grid of (N * channel blocks, SPLIT spatial chunks) sized to about TARGET_PROGRAMS. A program never owns a whole
group, so the reductions are split and merged deterministically through small workspaces: each program writes its
own slot of per-(n, chunk, c) partials (one writer per slot, no atomics) and a per-(n, g) program merges them in a
fixed order. Forward (3 launches): partial per-channel (mean, M2) of each chunk -> merge per group with Chan's
formula -> elementwise output. Backward (4 launches): partial per-channel S1, S2, S3 -> per-group merge (m1, m2,
g_temb, g_scale_shift, per-sample parameter-grad partials) -> elementwise gx -> parameter grads summed over n in order.

Statistics and all accumulation run in float32 (float64 for float64 input). The variance is never E[h^2] - E[h]^2:
each tile's centred M2 is Chan-merged into a running per-channel (mean, M2), and the per-group merge centres the
partial means on a pivot, so x = 1000 + noise keeps its digits. xhat is formed as (x - mean) + t: x - mean is exact
for x near the mean (Sterbenz), which keeps offset data precise in the elementwise passes too.

Block sizes come from a fixed menu chosen by shape (no autotuning): every kernel can be compiled ahead of time with
the exact constexprs a launch can pick (`aot_specs`, exercised by tests/build/test_triton_aot.py), and run unchanged in
the interpreter (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from .._rules import accumulation_dtype, is_channels_last, output_like
from .launch import wrap_triton

# Elements per tile of the (spatial, channel) passes: 1024 values = 8 per thread at 4 warps, so a backward tile (x,
# gy and a few temporaries) stays in registers.
TILE = 1024
NUM_WARPS = 4
# Tile shapes (BLOCK_S, BLOCK_C), by the axis that is contiguous in memory: it gets the long side. A short menu on
# purpose: every entry is compiled ahead of time for sm_80 and sm_90 in CI (aot_specs), per dtype.
CHANNELS_FIRST_BLOCK_S = (32, 128, 1024)   # BLOCK_C = TILE // BLOCK_S
CHANNELS_LAST_BLOCK_C = (32, 128, 1024)    # BLOCK_S = TILE // BLOCK_C
# Programs per pass the split aims for: ~8 per SM on a 132-SM H100 (enough warps in flight to saturate HBM). A fixed
# number, not the device's SM count, so that a given shape is reduced in the same order on every GPU.
TARGET_PROGRAMS = 1024
# A spatial chunk spans at least this many positions, so the partials workspace (3 values per channel and chunk in
# the backward) stays a few percent of the traffic over x; and there are at most MAX_SPLIT chunks per sample.
MIN_CHUNK_S = 64
MAX_SPLIT = 256
# Merge kernels: vector widths over (chunk, channel) partials; they loop when a group has more than this.
MERGE_BLOCK = 256
MERGE_BLOCK_SPLIT = 16
MERGE_BLOCK_CG = 64
PARAM_BLOCK = 256

_TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


# ---------------------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _tile_offsets(s, c, C, S, CHANNELS_LAST: tl.constexpr):
    """int64 offsets, within one sample, of the (s, c) tile: s along axis 0, c along axis 1."""
    s64 = s.to(tl.int64)
    c64 = c.to(tl.int64)
    if CHANNELS_LAST:
        return s64[:, None] * C + c64[None, :]
    else:
        return s64[:, None] + c64[None, :] * S


@triton.jit
def _channel_coefficients(n, c, limit, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b, has_t, has_ss, acc_ty):
    """Per-channel t, w, b, k = 1 + scale, w*k and b*k + shift for channels c of sample n, in acc_ty.

    Channels c >= limit are masked. An absent input (has_* == 0) reads as its neutral value (w = 1, b = t = scale =
    shift = 0): its mask is c < limit * has_*, which is also how the other kernels gate on a flag (the interpreter
    does not support and-ing a scalar flag into a vector mask).
    """
    w = tl.load(w_ptr + c, mask=c < limit * has_w, other=1.0).to(acc_ty)
    b = tl.load(b_ptr + c, mask=c < limit * has_b, other=0.0).to(acc_ty)
    t = tl.load(t_ptr + n * C + c, mask=c < limit * has_t, other=0.0).to(acc_ty)
    scale = tl.load(ss_ptr + n * 2 * C + c, mask=c < limit * has_ss, other=0.0).to(acc_ty)
    shift = tl.load(ss_ptr + n * 2 * C + C + c, mask=c < limit * has_ss, other=0.0).to(acc_ty)
    k = 1.0 + scale
    return t, w, b, k, w * k, b * k + shift


@triton.jit
def _group_stat(ptr, n, c, cmask, G, CPG):
    """Per-channel gather of a per-(n, g) statistic."""
    return tl.load(ptr + n * G + tl.where(cmask, c, 0) // CPG, mask=cmask, other=0.0)


@triton.jit
def _tile_range(NCB, C, S, CHUNK_S, BLOCK_C: tl.constexpr):
    """The tile range of a (channel block, spatial chunk) program: its sample n, its spatial chunk, its channels c
    with their mask, and its positions [s_begin, s_end)."""
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = pid // NCB
    c = (pid % NCB) * BLOCK_C + tl.arange(0, BLOCK_C)
    s_begin = chunk * CHUNK_S
    return n, chunk, c, c < C, s_begin, tl.minimum(s_begin + CHUNK_S, S)


@triton.jit
def _load_xhat(x_ptr, offs, mask, mean, rstd, t):
    """xhat = (x + t - mean) * rstd of one tile, in the statistics' dtype. (x - mean) first: exact for x near the
    mean, so offset data keeps its digits. Masked lanes are zeroed so that they cannot overflow in exp."""
    xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(mean.dtype)
    return tl.where(mask, ((xv - mean[None, :]) + t[None, :]) * rstd[None, :], 0.0)


@triton.jit
def _activation(z, silu):
    if silu != 0:
        z = z / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _grad_z(gy, z, silu):
    """gz = gy * act'(z); silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)."""
    if silu != 0:
        sig = 1.0 / (1.0 + tl.exp(-z))
        gy = gy * (sig * (1.0 + z * (1.0 - sig)))
    return gy


# The activation is a runtime flag (a uniform branch, free next to the memory traffic) rather than a constexpr: it
# halves the variants to compile ahead of time. No scalar argument is specialised by the JIT (do_not_specialize):
# otherwise a size equal to 1 (S with no spatial dims, CPG with groups == C) would become a constexpr, which both
# changes the code (`S.to(...)` is not defined on a constexpr) and leaves the compiled kernel untested by aot_specs.
_SCALARS = ["has_w", "has_b", "has_t", "has_ss", "silu", "N", "C", "S", "G", "CPG", "NCB", "CHUNK_S", "SPLIT"]


# ---------------------------------------------------------------------------------------------------------------------
# Forward kernels


@triton.jit(do_not_specialize=_SCALARS)
def _fwd_stats_kernel(x_ptr, t_ptr, pmean_ptr, pm2_ptr, has_t, C, S, NCB, CHUNK_S, SPLIT,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Per-channel (mean of h, M2) over one spatial chunk -> slot (n, chunk, c) of the partials."""
    n, chunk, c, cmask, s_begin, s_end = _tile_range(NCB, C, S, CHUNK_S, BLOCK_C)
    acc_ty = pmean_ptr.dtype.element_ty
    x_base = x_ptr + n.to(tl.int64) * C * S
    mean = tl.zeros([BLOCK_C], dtype=acc_ty)
    m2 = tl.zeros([BLOCK_C], dtype=acc_ty)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < s_end)[:, None] & cmask[None, :]
        xv = tl.load(x_base + _tile_offsets(s, c, C, S, CHANNELS_LAST), mask=mask, other=0.0).to(acc_ty)
        # Welford by tiles: the tile's own centred (mean, M2), Chan-merged into the running pair.
        seen = (s0 - s_begin).to(acc_ty)
        count = tl.minimum(s_end - s0, BLOCK_S).to(acc_ty)
        tile_mean = tl.sum(xv, axis=0) / count
        centred = tl.where(mask, xv - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(centred * centred, axis=0)
        delta = tile_mean - mean
        total = seen + count
        mean += delta * (count / total)
        m2 += tile_m2 + delta * delta * (seen * count / total)
    # h = x + t: the temb shifts the mean only (it is constant over a channel), so it is added once, here.
    t = tl.load(t_ptr + n * C + c, mask=c < C * has_t, other=0.0).to(acc_ty)
    slot = (n.to(tl.int64) * SPLIT + chunk) * C + c
    tl.store(pmean_ptr + slot, mean + t, mask=cmask)
    tl.store(pm2_ptr + slot, m2, mask=cmask)


@triton.jit(do_not_specialize=_SCALARS)
def _fwd_merge_kernel(pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, C, S, G, CPG, CHUNK_S, SPLIT, eps,
                      BLOCK_P: tl.constexpr):
    """One program per (n, g): merge the group's SPLIT x CPG partials in a fixed order -> mean, rstd."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    acc_ty = pmean_ptr.dtype.element_ty
    num_partials = SPLIT * CPG
    first = pmean_ptr + n.to(tl.int64) * SPLIT * C + g * CPG
    first_m2 = pm2_ptr + n.to(tl.int64) * SPLIT * C + g * CPG
    # Chan's parallel formula, centred on a pivot (the first partial mean) so offset data keeps its precision:
    # mean = pivot + sum_p n_p (mean_p - pivot) / D,  M2 = sum_p [M2_p + n_p (mean_p - mean)^2].
    pivot = tl.load(first)
    acc = tl.zeros([BLOCK_P], dtype=acc_ty)
    for p0 in range(0, num_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pmask = p < num_partials
        chunk = p // CPG
        count = tl.minimum(CHUNK_S, S - chunk * CHUNK_S).to(acc_ty)
        mu = tl.load(first + chunk * C + p % CPG, mask=pmask, other=0.0)
        acc += tl.where(pmask, count * (mu - pivot), 0.0)
    D = CPG.to(acc_ty) * S.to(acc_ty)  # in floating point: a group may exceed 2**31
    mean = pivot + tl.sum(acc, axis=0) / D
    acc = tl.zeros([BLOCK_P], dtype=acc_ty)
    for p0 in range(0, num_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pmask = p < num_partials
        chunk = p // CPG
        count = tl.minimum(CHUNK_S, S - chunk * CHUNK_S).to(acc_ty)
        mu = tl.load(first + chunk * C + p % CPG, mask=pmask, other=0.0)
        m2 = tl.load(first_m2 + chunk * C + p % CPG, mask=pmask, other=0.0)
        acc += tl.where(pmask, m2 + count * (mu - mean) * (mu - mean), 0.0)
    var = tl.sum(acc, axis=0) / D
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, 1.0 / tl.sqrt(var + eps))


@triton.jit(do_not_specialize=_SCALARS)
def _fwd_apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, t_ptr, ss_ptr, mean_ptr, rstd_ptr, has_w, has_b, has_t, has_ss,
                      silu, C, S, G, CPG, NCB, CHUNK_S,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """y = act(xhat * wk + bk) over one (channel block, spatial chunk) tile range."""
    n, chunk, c, cmask, s_begin, s_end = _tile_range(NCB, C, S, CHUNK_S, BLOCK_C)
    rstd = _group_stat(rstd_ptr, n, c, cmask, G, CPG)
    acc_ty = rstd_ptr.dtype.element_ty
    mean = _group_stat(mean_ptr, n, c, cmask, G, CPG).to(acc_ty)  # saved in float64 (see group_norm_silu_fwd)
    t, w, b, k, wk, bk = _channel_coefficients(n, c, C, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b, has_t, has_ss,
                                               acc_ty)
    sample = n.to(tl.int64) * C * S
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < s_end)[:, None] & cmask[None, :]
        offs = sample + _tile_offsets(s, c, C, S, CHANNELS_LAST)
        xhat = _load_xhat(x_ptr, offs, mask, mean, rstd, t)
        y = _activation(xhat * wk[None, :] + bk[None, :], silu)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------------
# Backward kernels


@triton.jit(do_not_specialize=_SCALARS)
def _bwd_reduce_kernel(gy_ptr, x_ptr, w_ptr, b_ptr, t_ptr, ss_ptr, mean_ptr, rstd_ptr, ps1_ptr, ps2_ptr, ps3_ptr,
                       has_w, has_b, has_t, has_ss, silu, C, S, G, CPG, NCB, CHUNK_S, SPLIT,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Per-channel S1 = sum gz, S2 = sum gz * xhat, S3 = sum xhat over one spatial chunk -> slot (n, chunk, c)."""
    n, chunk, c, cmask, s_begin, s_end = _tile_range(NCB, C, S, CHUNK_S, BLOCK_C)
    rstd = _group_stat(rstd_ptr, n, c, cmask, G, CPG)
    acc_ty = rstd_ptr.dtype.element_ty
    mean = _group_stat(mean_ptr, n, c, cmask, G, CPG).to(acc_ty)  # saved in float64 (see group_norm_silu_fwd)
    t, w, b, k, wk, bk = _channel_coefficients(n, c, C, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b, has_t, has_ss,
                                               acc_ty)
    sample = n.to(tl.int64) * C * S
    # Element-wise accumulators, reduced once at the end: fewer reductions, and pairwise-like error growth.
    s1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=acc_ty)
    s2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=acc_ty)
    s3 = tl.zeros([BLOCK_S, BLOCK_C], dtype=acc_ty)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < s_end)[:, None] & cmask[None, :]
        offs = sample + _tile_offsets(s, c, C, S, CHANNELS_LAST)
        xhat = _load_xhat(x_ptr, offs, mask, mean, rstd, t)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        gz = _grad_z(gy, xhat * wk[None, :] + bk[None, :], silu)
        s1 += gz
        s2 += gz * xhat
        s3 += xhat
    slot = (n.to(tl.int64) * SPLIT + chunk) * C + c
    tl.store(ps1_ptr + slot, tl.sum(s1, axis=0), mask=cmask)
    tl.store(ps2_ptr + slot, tl.sum(s2, axis=0), mask=cmask)
    tl.store(ps3_ptr + slot, tl.sum(s3, axis=0), mask=cmask)


@triton.jit
def _sum_partials(ptr, n, c, limit, C, SPLIT, BLOCK_SPLIT: tl.constexpr, BLOCK_CG: tl.constexpr):
    """sum over the chunks of sample n's partials of channels c (< limit), as a fixed-shape tree: deterministic."""
    total = tl.zeros([BLOCK_SPLIT, BLOCK_CG], dtype=ptr.dtype.element_ty)
    for k0 in range(0, SPLIT, BLOCK_SPLIT):
        k = k0 + tl.arange(0, BLOCK_SPLIT)
        rows = (n.to(tl.int64) * SPLIT + k) * C
        mask = (k < SPLIT)[:, None] & (c < limit)[None, :]
        total += tl.load(ptr + rows[:, None] + c[None, :], mask=mask, other=0.0)
    return tl.sum(total, axis=0)


@triton.jit(do_not_specialize=_SCALARS)
def _bwd_merge_kernel(ps1_ptr, ps2_ptr, ps3_ptr, w_ptr, b_ptr, t_ptr, ss_ptr, rstd_ptr,
                      m1_ptr, m2_ptr, gw_part_ptr, gb_part_ptr, gt_ptr, gss_ptr,
                      has_w, has_b, has_t, has_ss, C, S, G, CPG, SPLIT,
                      BLOCK_SPLIT: tl.constexpr, BLOCK_CG: tl.constexpr):
    """One program per (n, g): chunk partials -> m1, m2, g_scale_shift, g_temb, per-sample weight/bias grads."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    rstd = tl.load(rstd_ptr + pid)
    acc_ty = rstd_ptr.dtype.element_ty
    limit = (g + 1) * CPG  # the group's channels are g * CPG + j < limit
    acc1 = tl.zeros([BLOCK_CG], dtype=acc_ty)
    acc2 = tl.zeros([BLOCK_CG], dtype=acc_ty)
    for j0 in range(0, CPG, BLOCK_CG):
        c = g * CPG + j0 + tl.arange(0, BLOCK_CG)
        s1 = _sum_partials(ps1_ptr, n, c, limit, C, SPLIT, BLOCK_SPLIT, BLOCK_CG)
        s2 = _sum_partials(ps2_ptr, n, c, limit, C, SPLIT, BLOCK_SPLIT, BLOCK_CG)
        t, w, b, k, wk, bk = _channel_coefficients(n, c, limit, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b, has_t,
                                                   has_ss, acc_ty)
        out_ty = gss_ptr.dtype.element_ty
        tl.store(gss_ptr + n * 2 * C + c, (w * s2 + b * s1).to(out_ty), mask=c < limit * has_ss)
        tl.store(gss_ptr + n * 2 * C + C + c, s1.to(out_ty), mask=c < limit * has_ss)
        tl.store(gw_part_ptr + n * C + c, k * s2, mask=c < limit * has_w)
        tl.store(gb_part_ptr + n * C + c, k * s1, mask=c < limit * has_b)
        acc1 += tl.where(c < limit, wk * s1, 0.0)
        acc2 += tl.where(c < limit, wk * s2, 0.0)
    D = CPG.to(acc_ty) * S.to(acc_ty)  # in floating point: a group may exceed 2**31
    m1 = tl.sum(acc1, axis=0) / D
    m2 = tl.sum(acc2, axis=0) / D
    tl.store(m1_ptr + pid, m1)
    tl.store(m2_ptr + pid, m2)
    # g_temb[n, c] = sum_s gx = rstd (w k S1 - S m1 - m2 S3): a second sweep now that m1, m2 are known.
    if has_t != 0:
        for j0 in range(0, CPG, BLOCK_CG):
            c = g * CPG + j0 + tl.arange(0, BLOCK_CG)
            s1 = _sum_partials(ps1_ptr, n, c, limit, C, SPLIT, BLOCK_SPLIT, BLOCK_CG)
            s3 = _sum_partials(ps3_ptr, n, c, limit, C, SPLIT, BLOCK_SPLIT, BLOCK_CG)
            t, w, b, k, wk, bk = _channel_coefficients(n, c, limit, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b,
                                                       has_t, has_ss, acc_ty)
            gt = rstd * (wk * s1 - S.to(acc_ty) * m1 - m2 * s3)
            tl.store(gt_ptr + n * C + c, gt.to(gt_ptr.dtype.element_ty), mask=c < limit)


@triton.jit(do_not_specialize=_SCALARS)
def _bwd_apply_kernel(gy_ptr, x_ptr, gx_ptr, w_ptr, b_ptr, t_ptr, ss_ptr, mean_ptr, rstd_ptr, m1_ptr, m2_ptr,
                      has_w, has_b, has_t, has_ss, silu, C, S, G, CPG, NCB, CHUNK_S,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """gx = rstd * (wk * gz - m1 - xhat * m2) over one (channel block, spatial chunk) tile range."""
    n, chunk, c, cmask, s_begin, s_end = _tile_range(NCB, C, S, CHUNK_S, BLOCK_C)
    rstd = _group_stat(rstd_ptr, n, c, cmask, G, CPG)
    acc_ty = rstd_ptr.dtype.element_ty
    mean = _group_stat(mean_ptr, n, c, cmask, G, CPG).to(acc_ty)
    m1 = _group_stat(m1_ptr, n, c, cmask, G, CPG)
    m2 = _group_stat(m2_ptr, n, c, cmask, G, CPG)
    t, w, b, k, wk, bk = _channel_coefficients(n, c, C, C, w_ptr, b_ptr, t_ptr, ss_ptr, has_w, has_b, has_t, has_ss,
                                               acc_ty)
    sample = n.to(tl.int64) * C * S
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < s_end)[:, None] & cmask[None, :]
        offs = sample + _tile_offsets(s, c, C, S, CHANNELS_LAST)
        xhat = _load_xhat(x_ptr, offs, mask, mean, rstd, t)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        gz = _grad_z(gy, xhat * wk[None, :] + bk[None, :], silu)
        gx = rstd[None, :] * (wk[None, :] * gz - m1[None, :] - xhat * m2[None, :])
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SCALARS)
def _param_grad_kernel(gw_part_ptr, gb_part_ptr, gw_ptr, gb_ptr, has_w, has_b, N, C, BLOCK: tl.constexpr):
    """g_weight[c] = sum_n gw_part[n, c] (same for bias), n = 0, 1, ... in order: deterministic, no atomics."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    acc_ty = gw_part_ptr.dtype.element_ty
    gw = tl.zeros([BLOCK], dtype=acc_ty)
    gb = tl.zeros([BLOCK], dtype=acc_ty)
    for n in range(0, N):
        gw += tl.load(gw_part_ptr + n * C + c, mask=c < C * has_w, other=0.0)
        gb += tl.load(gb_part_ptr + n * C + c, mask=c < C * has_b, other=0.0)
    tl.store(gw_ptr + c, gw.to(gw_ptr.dtype.element_ty), mask=c < C * has_w)
    tl.store(gb_ptr + c, gb.to(gb_ptr.dtype.element_ty), mask=c < C * has_b)


# ---------------------------------------------------------------------------------------------------------------------
# Host side: layout, launch plan, launchers


def _served(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The tensor the kernels read (x itself when dense in either layout, else a contiguous copy), and whether its
    channels are innermost. With S == 1 both layouts are the same (n*C + c): it is read as channels-last."""
    n, c = x.shape[:2]
    spatial = x.numel() // (n * c)
    if x.is_contiguous():
        return x, spatial == 1
    if is_channels_last(x):
        return x, True
    return x.contiguous(), spatial == 1


def _pick_block(extent: int, menu: tuple[int, ...]) -> int:
    """The largest block of `menu` that covers `extent` with at most 25% padding (else the smallest)."""
    for block in sorted(menu, reverse=True):
        if triton.cdiv(extent, block) * block * 4 <= extent * 5:
            return block
    return min(menu)


def launch_plan(n: int, c: int, spatial: int, channels_last: bool) -> dict:
    """Tile shape and spatial split of the (channel block, spatial chunk) passes for an (N, C, S) input.

    The contiguous axis gets the long side of the tile. The spatial axis is then cut into SPLIT chunks (whole tiles,
    at least MIN_CHUNK_S positions each, at most MAX_SPLIT chunks) so that N * channel blocks * SPLIT comes close to
    TARGET_PROGRAMS: batch 1 with 32 groups still fills the GPU. Deterministic in the shape alone.
    """
    if channels_last:
        block_c = _pick_block(c, CHANNELS_LAST_BLOCK_C)
        block_s = TILE // block_c
    else:
        block_s = _pick_block(spatial, CHANNELS_FIRST_BLOCK_S)
        block_c = TILE // block_s
    ncb = triton.cdiv(c, block_c)
    tiles = triton.cdiv(spatial, block_s)
    split = min(triton.cdiv(spatial, max(block_s, MIN_CHUNK_S)), max(1, triton.cdiv(TARGET_PROGRAMS, n * ncb)),
                MAX_SPLIT)
    chunk_s = triton.cdiv(tiles, split) * block_s
    return dict(BLOCK_S=block_s, BLOCK_C=block_c, CHANNELS_LAST=channels_last, NCB=ncb, CHUNK_S=chunk_s,
                SPLIT=triton.cdiv(spatial, chunk_s))


def group_norm_silu_fwd(x, weight, bias, temb, scale_shift, num_groups, eps, silu):
    """Forward launcher: (y, mean, rstd); y in x's layout and dtype; mean (N, G) float64 and rstd (N, G) float32
    (float64 for float64): the rule of gencore.ops.group_norm_silu's module doc.

    x: (N, C, *spatial), float16/bfloat16/float32/float64, on a CUDA device (or CPU under TRITON_INTERPRET=1);
    weight, bias: (C,) or None; temb: (N, C) or None; scale_shift: (N, 2C) or None; all in x's dtype.
    """
    n, c = x.shape[:2]
    spatial = x.numel() // (n * c)
    xs, channels_last = _served(x)
    plan = launch_plan(n, c, spatial, channels_last)
    acc = accumulation_dtype(x.dtype)
    y = output_like(x)
    mean = torch.empty((n, num_groups), dtype=torch.float64, device=x.device)
    rstd = torch.empty((n, num_groups), dtype=acc, device=x.device)
    part_mean = torch.empty((n, plan["SPLIT"], c), dtype=acc, device=x.device)
    part_m2 = torch.empty((n, plan["SPLIT"], c), dtype=acc, device=x.device)
    tiles = dict(BLOCK_S=plan["BLOCK_S"], BLOCK_C=plan["BLOCK_C"], CHANNELS_LAST=channels_last)
    grid = (n * plan["NCB"], plan["SPLIT"])
    flags = [int(t is not None) for t in (weight, bias, temb, scale_shift)] + [int(bool(silu))]
    w, b, t, ss = (xs if a is None else a.contiguous() for a in (weight, bias, temb, scale_shift))

    wrap_triton(_fwd_stats_kernel)[grid](
        xs, t, part_mean, part_m2, flags[2], c, spatial, plan["NCB"], plan["CHUNK_S"], plan["SPLIT"],
        **tiles, num_warps=NUM_WARPS)
    wrap_triton(_fwd_merge_kernel)[(n * num_groups,)](
        part_mean, part_m2, mean, rstd, c, spatial, num_groups, c // num_groups, plan["CHUNK_S"], plan["SPLIT"],
        float(eps), BLOCK_P=MERGE_BLOCK, num_warps=NUM_WARPS)
    wrap_triton(_fwd_apply_kernel)[grid](
        xs, y, w, b, t, ss, mean, rstd, *flags, c, spatial, num_groups, c // num_groups, plan["NCB"],
        plan["CHUNK_S"], **tiles, num_warps=NUM_WARPS)
    return y, mean, rstd


def group_norm_silu_bwd(grad_out, x, weight, bias, temb, scale_shift, mean, rstd, num_groups, silu):
    """Backward launcher: (grad_x, grad_weight, grad_bias, grad_temb, grad_scale_shift).

    grad_x has x's layout and dtype (grad_out may arrive in the other layout: it is brought to x's); the other grads
    are contiguous, in their input's dtype, and a 0-element tensor for each input that is None. mean and rstd are
    the forward's saved statistics.
    """
    n, c = x.shape[:2]
    acc = accumulation_dtype(x.dtype)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(f"grad_out must have x's shape {tuple(x.shape)}, got {tuple(grad_out.shape)}")
    for name, stat, dtype in (("mean", mean, torch.float64), ("rstd", rstd, acc)):
        if tuple(stat.shape) != (n, num_groups) or stat.dtype != dtype or stat.device != x.device:
            raise ValueError(f"{name} must be the forward's ({n}, {num_groups}) {dtype} statistics on {x.device}")
    spatial = x.numel() // (n * c)
    xs, channels_last = _served(x)
    if xs.is_contiguous():
        gy = grad_out.to(x.dtype).contiguous()
    else:  # channels innermost: the same dense layout as xs
        gy = grad_out.to(x.dtype).movedim(1, -1).contiguous().movedim(-1, 1)
    plan = launch_plan(n, c, spatial, channels_last)
    cpg = c // num_groups
    mean, rstd = mean.contiguous(), rstd.contiguous()

    def new(*shape, dtype=acc):
        return torch.empty(shape, dtype=dtype, device=x.device)

    def grad_like(t):
        return x.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    gx = output_like(x)
    gw, gb, gt, gss = (grad_like(a) for a in (weight, bias, temb, scale_shift))
    part_s1, part_s2, part_s3 = (new(n, plan["SPLIT"], c) for _ in range(3))
    m1, m2 = new(n, num_groups), new(n, num_groups)
    gw_part = new(n, c) if weight is not None else part_s1  # unused (never written) when the input is None
    gb_part = new(n, c) if bias is not None else part_s1
    flags = [int(a is not None) for a in (weight, bias, temb, scale_shift)] + [int(bool(silu))]
    w, b, t, ss = (xs if a is None else a.contiguous() for a in (weight, bias, temb, scale_shift))
    tiles = dict(BLOCK_S=plan["BLOCK_S"], BLOCK_C=plan["BLOCK_C"], CHANNELS_LAST=channels_last)
    grid = (n * plan["NCB"], plan["SPLIT"])

    wrap_triton(_bwd_reduce_kernel)[grid](
        gy, xs, w, b, t, ss, mean, rstd, part_s1, part_s2, part_s3, *flags, c, spatial, num_groups, cpg,
        plan["NCB"], plan["CHUNK_S"], plan["SPLIT"], **tiles, num_warps=NUM_WARPS)
    wrap_triton(_bwd_merge_kernel)[(n * num_groups,)](
        part_s1, part_s2, part_s3, w, b, t, ss, rstd, m1, m2, gw_part, gb_part,
        gt if temb is not None else gx, gss if scale_shift is not None else gx,
        *flags[:4], c, spatial, num_groups, cpg, plan["SPLIT"], BLOCK_SPLIT=MERGE_BLOCK_SPLIT,
        BLOCK_CG=MERGE_BLOCK_CG, num_warps=NUM_WARPS)
    wrap_triton(_bwd_apply_kernel)[grid](
        gy, xs, gx, w, b, t, ss, mean, rstd, m1, m2, *flags, c, spatial, num_groups, cpg, plan["NCB"],
        plan["CHUNK_S"], **tiles, num_warps=NUM_WARPS)
    if weight is not None or bias is not None:
        wrap_triton(_param_grad_kernel)[(triton.cdiv(c, PARAM_BLOCK),)](
            gw_part, gb_part, gw if weight is not None else gb, gb if bias is not None else gw, flags[0], flags[1],
            n, c, BLOCK=PARAM_BLOCK, num_warps=NUM_WARPS)
    return gx, gw, gb, gt, gss


# ---------------------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation specs (see gencore.kernels' docstring for the convention)


def _signature(kernel, pointers: dict[str, str], floats: tuple[str, ...] = ()) -> dict[str, str]:
    """Triton signature of `kernel`: the given pointer types, fp32 for `floats`, i32 for every other runtime
    argument (what the JIT infers for sizes below 2**31), "constexpr" for the tl.constexpr parameters."""
    sig = {}
    for name, param in inspect.signature(kernel.fn).parameters.items():
        if "constexpr" in str(param.annotation):
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = "fp32" if name in floats else "i32"
    missing = set(pointers) - set(sig)
    if missing:
        raise KeyError(f"{kernel.fn.__name__} has no parameters {sorted(missing)}")
    return sig


def tile_configs() -> list[dict]:
    """Every (BLOCK_S, BLOCK_C, CHANNELS_LAST) that launch_plan can pick."""
    return ([dict(BLOCK_S=bs, BLOCK_C=TILE // bs, CHANNELS_LAST=False) for bs in CHANNELS_FIRST_BLOCK_S]
            + [dict(BLOCK_S=TILE // bc, BLOCK_C=bc, CHANNELS_LAST=True) for bc in CHANNELS_LAST_BLOCK_C])


def aot_specs() -> list[tuple]:
    """(label, kernel, signature, constexprs, options) for every kernel launch configuration of this module:
    each dtype x every tile shape and layout launch_plan can pick, and the merge kernels per dtype."""
    specs = []
    options = {"num_warps": NUM_WARPS}
    for dtype, name in _TORCH_TO_TRITON.items():
        x = "*" + name
        acc = "*" + _TORCH_TO_TRITON[accumulation_dtype(dtype)]
        inputs = dict(x_ptr=x, w_ptr=x, b_ptr=x, t_ptr=x, ss_ptr=x, mean_ptr="*fp64", rstd_ptr=acc)
        for cfg in tile_configs():
            tag = f"{name}-{'cl' if cfg['CHANNELS_LAST'] else 'cf'}-s{cfg['BLOCK_S']}-c{cfg['BLOCK_C']}"
            specs.append((f"fwd_stats-{tag}", _fwd_stats_kernel,
                          _signature(_fwd_stats_kernel, dict(x_ptr=x, t_ptr=x, pmean_ptr=acc, pm2_ptr=acc)),
                          dict(cfg), options))
            specs.append((f"fwd_apply-{tag}", _fwd_apply_kernel,
                          _signature(_fwd_apply_kernel, dict(inputs, y_ptr=x)), dict(cfg), options))
            specs.append((f"bwd_reduce-{tag}", _bwd_reduce_kernel,
                          _signature(_bwd_reduce_kernel, dict(inputs, gy_ptr=x, ps1_ptr=acc, ps2_ptr=acc, ps3_ptr=acc)),
                          dict(cfg), options))
            specs.append((f"bwd_apply-{tag}", _bwd_apply_kernel,
                          _signature(_bwd_apply_kernel, dict(inputs, gy_ptr=x, gx_ptr=x, m1_ptr=acc, m2_ptr=acc)),
                          dict(cfg), options))
        specs.append((f"fwd_merge-{name}", _fwd_merge_kernel,
                      _signature(_fwd_merge_kernel, dict(pmean_ptr=acc, pm2_ptr=acc, mean_ptr="*fp64", rstd_ptr=acc),
                                 floats=("eps",)),
                      dict(BLOCK_P=MERGE_BLOCK), options))
        specs.append((f"bwd_merge-{name}", _bwd_merge_kernel,
                      _signature(_bwd_merge_kernel,
                                 dict(ps1_ptr=acc, ps2_ptr=acc, ps3_ptr=acc, w_ptr=x, b_ptr=x, t_ptr=x, ss_ptr=x,
                                      rstd_ptr=acc, m1_ptr=acc, m2_ptr=acc, gw_part_ptr=acc, gb_part_ptr=acc,
                                      gt_ptr=x, gss_ptr=x)),
                      dict(BLOCK_SPLIT=MERGE_BLOCK_SPLIT, BLOCK_CG=MERGE_BLOCK_CG), options))
        specs.append((f"param_grad-{name}", _param_grad_kernel,
                      _signature(_param_grad_kernel, dict(gw_part_ptr=acc, gb_part_ptr=acc, gw_ptr=x, gb_ptr=x)),
                      dict(BLOCK=PARAM_BLOCK), options))
    return specs
