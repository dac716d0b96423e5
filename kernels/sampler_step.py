"""Triton kernels of the fused diffusion ops, and their host launchers (no autograd here).

The math is docs/math.md (c0 ... c10 are the columns of the coefficient table in order; noise:
gencore/reference/philox.py). Kernels: sampler_step (one update step), diffusion_training_inputs (the training
objective's noisy input and target) and philox_uint32 (the raw Philox4x32-10 word of every element).

One program handles BLOCK consecutive *logical* elements of one sample (grid: N * cdiv(numel, BLOCK), 1-D so that
batches beyond 65535 samples still launch). The program loads its sample's timestep and its row of coefficients
from the device-side table, so nothing is read back to the host and a sampling loop can be captured in a CUDA
graph; the row index is clamped to [0, T) so a bad timestep can never read out of bounds (the public op also raises
a device-side assert). Contiguous samples are addressed directly (vectorised loads); channels-last samples map the
logical element e = c * S + s to memory s * C + c, which keeps the Philox stream independent of the layout.

In-kernel noise: BLOCK / 4 Philox counter groups per program via tl.philox (the same Philox4x32-10 as Random123 and
gencore.reference.philox: key = (seed lo, seed hi), counter = (e // 4, n, offset lo, offset hi)), Box-Muller on the
(radius, angle) word pairs, interleaved back into element order. Math in float32, float64 for float64 samples (the
dtype of the coefficient table).

Float scalars (guidance_scale, clip_range) travel as the int64 bit pattern of the Python float (kernels/scalars.py:
Triton would otherwise pass them as float32, rounding them for float64 samples); `aot_specs()` lists both typings
the JIT can give such an int. Flags that only choose a branch (has_uncond, clip_mode, velocity) are runtime ints, not constexprs, so the
set of compiled variants stays small: every variant a launch can pick is listed by `aot_specs()`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._rules import NUM_COEFS as _NUM_COEFS, accumulation_dtype, is_channels_last, to_layout
from .launch import wrap_triton
from .scalars import float_bits, from_bits

# Elements per program: 8 per thread at 4 warps; one program = 256 Philox counter groups.
BLOCK = 1024
NUM_WARPS = 4
# Columns of the coefficient table (gencore._rules.COEF_COLUMNS).
NUM_COEFS: tl.constexpr = tl.constexpr(_NUM_COEFS)
# Box-Muller uniforms: 24-bit words scaled by 2^-24 (exact in float32).
UNIFORM_SCALE: tl.constexpr = tl.constexpr(2.0 ** -24)
TWO_PI: tl.constexpr = tl.constexpr(2.0 * math.pi)

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2
CLIP_NONE, CLIP_RANGE, CLIP_THRESHOLD = 0, 1, 2

_TORCH_TO_TRITON = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


# ---------------------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _element_offsets(pid, chunks, numel, C, S, BLOCK: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Sample index, chunk index, logical element indices, their mask, and their memory offsets."""
    n = pid // chunks
    chunk = pid % chunks
    e = chunk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < numel
    base = n.to(tl.int64) * numel
    if CHANNELS_LAST:
        mem = base + (e % S) * C + e // S
    else:
        mem = base + e
    return n, chunk, mask, mem



@triton.jit
def _box_muller(w_radius, w_angle, acc_like):
    """(r cos, r sin) of one (radius, angle) word pair, in acc_like's dtype (gencore.reference.philox)."""
    v = (w_radius >> 8).to(acc_like.dtype) * UNIFORM_SCALE
    a = (w_angle >> 8).to(acc_like.dtype) * UNIFORM_SCALE - 0.5
    # log(1 - v) with 1 - v exact: the log1p(-v) of the definition.
    r = tl.sqrt(-2.0 * tl.log(1.0 - v))
    angle = TWO_PI * a
    return r * tl.cos(angle), r * tl.sin(angle)


@triton.jit
def _philox_words(seed, offset_lo, offset_hi, n, chunk, BLOCK: tl.constexpr):
    """The four words of the BLOCK // 4 counter groups of this program's chunk of sample n."""
    g = chunk.to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    c0 = g.to(tl.uint32)
    c1 = tl.zeros_like(c0) + n.to(tl.uint32)
    c2 = tl.zeros_like(c0) + offset_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + offset_hi.to(tl.uint32)
    return tl.philox(seed.to(tl.int64), c0, c1, c2, c3)


@triton.jit
def _philox_normals(seed, offset_lo, offset_hi, n, chunk, acc_like, BLOCK: tl.constexpr):
    """BLOCK standard normals in element order: words (w0, w1) -> elements 4g, 4g+1; (w2, w3) -> 4g+2, 4g+3."""
    w0, w1, w2, w3 = _philox_words(seed, offset_lo, offset_hi, n, chunk, BLOCK)
    z0, z1 = _box_muller(w0, w1, acc_like)
    z2, z3 = _box_muller(w2, w3, acc_like)
    # interleave(interleave(z0, z2), interleave(z1, z3)) = z0[0], z1[0], z2[0], z3[0], z0[1], ...
    return tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))


# ---------------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit(do_not_specialize=["chunks", "numel", "C", "S", "T", "has_uncond", "guidance_bits", "clip_mode",
                               "clip_bits", "seed", "offset_lo", "offset_hi", "history"])
def _sampler_step_kernel(model_ptr, sample_ptr, uncond_ptr, noise_ptr, h1_ptr, h2_ptr, t_ptr, coef_ptr, threshold_ptr,
                         prev_ptr, x0_ptr, chunks, numel, C, S, T, has_uncond, guidance_bits: tl.int64, clip_mode,
                         clip_bits: tl.int64, seed: tl.int64, offset_lo: tl.int64, offset_hi: tl.int64, history,
                         NOISE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n, chunk, mask, mem = _element_offsets(pid, chunks, numel, C, S, BLOCK, CHANNELS_LAST)
    # The coefficient row of this sample: clamped so that no timestep reads outside the table.
    t = tl.load(t_ptr + n)
    t = tl.minimum(tl.maximum(t, 0), T - 1)
    row = coef_ptr + t * NUM_COEFS
    c0 = tl.load(row + 0)
    c1 = tl.load(row + 1)
    c2 = tl.load(row + 2)
    c3 = tl.load(row + 3)
    c4 = tl.load(row + 4)
    c5 = tl.load(row + 5)
    c6 = tl.load(row + 6)
    c7 = tl.load(row + 7)
    c8 = tl.load(row + 8)

    x = tl.load(sample_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    m = tl.load(model_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    if has_uncond != 0:
        guidance = from_bits(guidance_bits).to(c0.dtype)
        u = tl.load(uncond_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
        m = u + guidance * (m - u)
    x0 = c0 * x + c1 * m
    if clip_mode == 2:
        s = tl.load(threshold_ptr + n).to(c0.dtype)
        x0 = tl.minimum(tl.maximum(x0, -s), s) / s
    elif clip_mode == 1:
        clip = from_bits(clip_bits).to(c0.dtype)
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    eps = c2 * x + c3 * m + c4 * x0
    prev = c5 * x0 + c6 * x + c7 * eps
    if NOISE == 1:
        prev += c8 * tl.load(noise_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    elif NOISE == 2:
        prev += c8 * _philox_normals(seed, offset_lo, offset_hi, n, chunk, c0, BLOCK)
    if history >= 1:  # a multistep solver's previous x0 (history 2: and the one before)
        prev += tl.load(row + 9) * tl.load(h1_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
        if history >= 2:
            prev += tl.load(row + 10) * tl.load(h2_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    tl.store(prev_ptr + mem, prev.to(prev_ptr.dtype.element_ty), mask=mask)
    tl.store(x0_ptr + mem, x0.to(x0_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["chunks", "numel", "C", "S", "T", "velocity"])
def _training_inputs_kernel(x0_ptr, noise_ptr, t_ptr, coef_ptr, noisy_ptr, velocity_ptr, chunks, numel, C, S, T,
                            velocity, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n, chunk, mask, mem = _element_offsets(pid, chunks, numel, C, S, BLOCK, CHANNELS_LAST)
    t = tl.load(t_ptr + n)
    t = tl.minimum(tl.maximum(t, 0), T - 1)
    c0 = tl.load(coef_ptr + t * 2)
    c1 = tl.load(coef_ptr + t * 2 + 1)
    x = tl.load(x0_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    z = tl.load(noise_ptr + mem, mask=mask, other=0.0).to(c0.dtype)
    tl.store(noisy_ptr + mem, (c0 * x + c1 * z).to(noisy_ptr.dtype.element_ty), mask=mask)
    if velocity != 0:
        tl.store(velocity_ptr + mem, (c0 * z - c1 * x).to(velocity_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["chunks", "numel", "seed", "offset_lo", "offset_hi"])
def _philox_uint32_kernel(out_ptr, chunks, numel, seed: tl.int64, offset_lo: tl.int64, offset_hi: tl.int64,
                          BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // chunks
    chunk = pid % chunks
    w0, w1, w2, w3 = _philox_words(seed, offset_lo, offset_hi, n, chunk, BLOCK)
    words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))
    e = chunk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # int64 holding the uint32 value (zero-extended, never sign-extended).
    tl.store(out_ptr + n.to(tl.int64) * numel + e, words.to(tl.int64), mask=e < numel)


# ---------------------------------------------------------------------------------------------------------------------
# Host launchers


def _dims(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(N, numel per sample, C, S): C = size(1) (1 for 1-D samples), S = numel / C."""
    n = x.shape[0]
    numel = math.prod(x.shape[1:])  # also for an empty batch, where x[0] does not exist
    c = x.shape[1] if x.dim() >= 2 else 1
    return n, numel, c, (numel // c if c else 0)



def sampler_step(model_output, sample, timesteps, coefs, model_output_uncond, guidance_scale, clip_range, threshold,
                 noise, philox_seed, philox_offset, history1=None, history2=None):
    """Launcher of gencore::sampler_step_triton (arguments as the C++ schema, checked by the op's triton_op wrapper)."""
    channels_last = is_channels_last(sample)
    sample = to_layout(sample, channels_last)
    model_output = to_layout(model_output, channels_last)
    uncond = None if model_output_uncond is None else to_layout(model_output_uncond, channels_last)
    noise = None if noise is None else to_layout(noise, channels_last)
    history1 = None if history1 is None else to_layout(history1, channels_last)
    history2 = None if history2 is None else to_layout(history2, channels_last)
    coefs = coefs.contiguous()
    timesteps = timesteps.contiguous()  # the kernel reads timesteps[n] at t_ptr + n (an expanded view has stride 0)
    threshold = None if threshold is None else threshold.to(coefs.dtype).contiguous()
    n, numel, c, s = _dims(sample)
    prev = torch.empty_like(sample)
    x0 = torch.empty_like(sample)
    if n == 0 or numel == 0:
        return prev, x0
    chunks = triton.cdiv(numel, BLOCK)
    mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if philox_seed is not None else NOISE_NONE)
    clip_mode = CLIP_THRESHOLD if threshold is not None else (CLIP_RANGE if clip_range is not None else CLIP_NONE)
    offset = int(philox_offset)
    # Absent optional tensors are never read (their branch is not taken); any valid pointer stands in for them.
    wrap_triton(_sampler_step_kernel)[(n * chunks,)](
        model_output, sample, sample if uncond is None else uncond, sample if noise is None else noise,
        sample if history1 is None else history1, sample if history2 is None else history2, timesteps,
        coefs, coefs if threshold is None else threshold, prev, x0, chunks, numel, c, s, coefs.shape[0],
        int(uncond is not None), float_bits(guidance_scale), clip_mode, float_bits(clip_range),
        0 if philox_seed is None else int(philox_seed), offset & 0xFFFFFFFF, offset >> 32,
        (history1 is not None) + (history2 is not None), NOISE=mode, CHANNELS_LAST=channels_last, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return prev, x0


def diffusion_training_inputs(x0, noise, timesteps, coefs, velocity):
    """Launcher of gencore::diffusion_training_inputs_triton: (noisy, velocity or a 0-element tensor)."""
    channels_last = is_channels_last(x0)
    x0 = to_layout(x0, channels_last)
    noise = to_layout(noise, channels_last)
    coefs = coefs.contiguous()
    timesteps = timesteps.contiguous()  # read as t_ptr + n
    n, numel, c, s = _dims(x0)
    noisy = torch.empty_like(x0)
    v = torch.empty_like(x0) if velocity else x0.new_empty((0,))
    if n == 0 or numel == 0:
        return noisy, v
    chunks = triton.cdiv(numel, BLOCK)
    wrap_triton(_training_inputs_kernel)[(n * chunks,)](
        x0, noise, timesteps, coefs, noisy, v if velocity else noisy, chunks, numel, c, s, coefs.shape[0],
        int(velocity), CHANNELS_LAST=channels_last, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return noisy, v


def philox_uint32(sample, seed, offset):
    """Launcher of gencore::philox_uint32_triton: (N, numel per sample) int64 holding uint32 words."""
    n, numel, _, _ = _dims(sample)
    out = torch.empty((n, numel), dtype=torch.int64, device=sample.device)
    if n == 0 or numel == 0:
        return out
    chunks = triton.cdiv(numel, BLOCK)
    offset = int(offset)
    wrap_triton(_philox_uint32_kernel)[(n * chunks,)](out, chunks, numel, int(seed), offset & 0xFFFFFFFF,
                                                      offset >> 32, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation


def aot_specs() -> list[tuple]:
    """Every kernel variant a launch above can pick: (label, jit function, signature, constexprs, options).

    The signature maps each parameter to its Triton type (constexprs as "constexpr"), for
    triton.compile(ASTSource(fn, signature, constexprs)). Variants: sample dtype x noise mode x layout for the step,
    dtype x layout for the training inputs, and the Philox word kernel.
    """
    specs = []
    for dtype, ty in _TORCH_TO_TRITON.items():
        acc = _TORCH_TO_TRITON[accumulation_dtype(dtype)]
        for noise in (NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX):
            for channels_last in (False, True):
                sig = {
                    "model_ptr": f"*{ty}", "sample_ptr": f"*{ty}", "uncond_ptr": f"*{ty}", "noise_ptr": f"*{ty}",
                    "h1_ptr": f"*{ty}", "h2_ptr": f"*{ty}", "t_ptr": "*i64", "coef_ptr": f"*{acc}", "threshold_ptr": f"*{acc}", "prev_ptr": f"*{ty}",
                    "x0_ptr": f"*{ty}", "chunks": "i32", "numel": "i32", "C": "i32", "S": "i32", "T": "i32",
                    "has_uncond": "i32", "guidance_bits": "i64", "clip_mode": "i32", "clip_bits": "i64",
                    "seed": "i64", "offset_lo": "i64", "offset_hi": "i64", "history": "i32",
                    "NOISE": "constexpr", "CHANNELS_LAST": "constexpr", "BLOCK": "constexpr",
                }
                const = {"NOISE": noise, "CHANNELS_LAST": channels_last, "BLOCK": BLOCK}
                label = f"sampler_step_{ty}_noise{noise}_{'cl' if channels_last else 'contig'}"
                specs.append((label, _sampler_step_kernel, sig, const, {"num_warps": NUM_WARPS}))
        for channels_last in (False, True):
            sig = {
                "x0_ptr": f"*{ty}", "noise_ptr": f"*{ty}", "t_ptr": "*i64", "coef_ptr": f"*{acc}",
                "noisy_ptr": f"*{ty}", "velocity_ptr": f"*{ty}", "chunks": "i32", "numel": "i32", "C": "i32",
                "S": "i32", "T": "i32", "velocity": "i32", "CHANNELS_LAST": "constexpr", "BLOCK": "constexpr",
            }
            const = {"CHANNELS_LAST": channels_last, "BLOCK": BLOCK}
            specs.append((f"training_inputs_{ty}_{'cl' if channels_last else 'contig'}", _training_inputs_kernel,
                          sig, const, {"num_warps": NUM_WARPS}))
    sig = {"out_ptr": "*i64", "chunks": "i32", "numel": "i32", "seed": "i64", "offset_lo": "i64", "offset_hi": "i64",
           "BLOCK": "constexpr"}
    specs.append(("philox_uint32", _philox_uint32_kernel, sig, {"BLOCK": BLOCK}, {"num_warps": NUM_WARPS}))
    return specs
