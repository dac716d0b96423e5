"""Philox4x32-10 and the Box-Muller map: THE definition of gencore's in-kernel noise, in plain PyTorch.

Every backend (reference, cpu, cuda, triton) reproduces the uint32 words below bit for bit; the normals then agree
to the rounding of the float math (log, sqrt, cos, sin) of each backend. This module is the specification.

Generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; identical to Random123's
philox4x32_R(10, ...), to cuRAND's Philox4_32_10 core, and to Triton's tl.philox(seed, c0, c1, c2, c3)):

    counter (c0, c1, c2, c3), key (k0, k1): 32-bit unsigned words.
    one round:  hi0:lo0 = 0xD2511F53 * c0        (32x32 -> 64-bit product)
                hi1:lo1 = 0xCD9E8D57 * c2
                (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
                (k0, k1) = (k0 + 0x9E3779B9, k1 + 0xBB67AE85)   (mod 2^32)
    ten rounds; the four words left in the counter are the output.

gencore's keying (so that a sample's noise depends on nothing but its seed, its index in the batch, the step and
the element: the same whatever the batch size, the layout, or the backend):

    element e (its logical, row-major index within its sample, 0 <= e < numel_per_sample) of sample n (0 <= n < 2^32)
    at step `offset` (0 <= offset < 2^63) under `seed` (0 <= seed < 2^63):
        key     = (seed & 0xffffffff, seed >> 32)
        counter = (e // 4, n, offset & 0xffffffff, offset >> 32)          (so numel_per_sample <= 2^34)
        word    = output[e % 4]

Box-Muller: the output words (w0, w1) give the normals of elements 4g and 4g+1, (w2, w3) those of 4g+2 and 4g+3:

    v   = (w_even >> 8) * 2^-24                 in [0, 1), exact in float32
    a   = (w_odd >> 8) * 2^-24 - 0.5            in [-1/2, 1/2), exact in float32
    r   = sqrt(-2 * log1p(-v))                  (log1p(-v) = log(1 - v): never log(0); 1 - v is exact anyway)
    z_even = r * cos(2*pi*a),  z_odd = r * sin(2*pi*a)

Using 24 bits keeps every uniform exactly representable in float32; the angle is centred on 0 so that fast GPU
sine/cosine (accurate on [-pi, pi]) stay accurate. The normals are evaluated in the step's compute dtype (float32,
or float64 for float64 samples). Because v <= 1 - 2^-24, |z| <= sqrt(2 * 24 * ln 2) ~ 5.77: the tail beyond 5.77
standard deviations (probability 8e-9) is cut, as with any 24-bit Box-Muller.

The arithmetic below is on int64 tensors holding uint32 values; the 32x32-bit products are split into 16-bit halves
so that no intermediate exceeds 2^49 (int64 multiplication must not overflow).
"""
from __future__ import annotations

import math

import torch

from .._rules import check_philox_args

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF


def _mulhilo(m: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product m * c, for a uint32 constant m and int64 c in [0, 2^32)."""
    a = m * (c >> 16)  # < 2^48
    b = m * (c & 0xFFFF)  # < 2^48
    hi = (a + (b >> 16)) >> 16
    lo = (((a & 0xFFFF) << 16) + b) & MASK32
    return hi, lo


def philox4x32_10(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
                  k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 counters (broadcastable) and a uint32 key pair.

    Returns the four output words as int64 tensors with values in [0, 2^32).
    """
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox_uint32(num_samples: int, numel_per_sample: int, seed: int, offset: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The raw word of every element: (num_samples, numel_per_sample) int64 with values in [0, 2^32)."""
    return _words(num_samples, numel_per_sample, seed, offset, device)[:, :numel_per_sample]


def _words(num_samples: int, numel_per_sample: int, seed: int, offset: int, device) -> torch.Tensor:
    """Words of whole counter groups: (num_samples, 4 * ceil(numel_per_sample / 4)). The last group's words past
    the end of a sample still feed the Box-Muller pairs of the elements before them."""
    check_philox_args(seed, offset, num_samples, numel_per_sample)
    groups = (numel_per_sample + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device)
    n = torch.arange(num_samples, dtype=torch.int64, device=device)[:, None]
    c0 = (g & MASK32)[None, :].expand(num_samples, groups)
    c1 = n.expand(num_samples, groups)
    c2 = torch.full_like(c0, offset & MASK32)
    c3 = torch.full_like(c0, offset >> 32)
    words = philox4x32_10(c0, c1, c2, c3, seed & MASK32, seed >> 32)
    # (N, groups, 4) -> element e = 4g + lane
    return torch.stack(words, dim=-1).reshape(num_samples, groups * 4)


def box_muller(words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals from Philox words (last dim = element index, an even length: whole (radius, angle) pairs).

    Computed in `dtype` (float32 or float64), exactly as the module doc defines.
    """
    if words.shape[-1] % 2:
        raise ValueError("box_muller needs whole (radius, angle) word pairs: an even last dimension")
    pairs = words.reshape(*words.shape[:-1], -1, 2)  # (..., pairs, [even, odd])
    scale = 2.0 ** -24
    v = (pairs[..., 0] >> 8).to(dtype) * scale
    a = (pairs[..., 1] >> 8).to(dtype) * scale - 0.5
    r = torch.sqrt(-2.0 * torch.log1p(-v))
    angle = (2.0 * math.pi) * a
    z = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=-1)
    return z.reshape(*words.shape[:-1], -1)


def philox_normal(shape: tuple[int, ...] | torch.Size, seed: int, offset: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise gencore's kernels draw for a batch of samples of `shape` = (N, *): contiguous, in `dtype`.

    dtype is the compute dtype (float32, or float64 for float64 samples); cast the result for half types.
    """
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError("philox_normal needs a shape (N, *) with a batch dimension")
    n = shape[0]
    numel = math.prod(shape[1:])
    return box_muller(_words(n, numel, seed, offset, device), dtype)[:, :numel].reshape(shape)
