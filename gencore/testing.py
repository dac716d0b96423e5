"""Test helpers shared by tests/ and bench/: the one tolerance table, and the comparison that uses it.

Every fused backend computes in float32 (float64 for float64 input) and rounds once when it stores its result in
the input dtype. The truth is the reference computed in float64 from the same (already rounded) inputs, so the
error budget of a backend is: the final rounding to the output dtype, plus float32 accumulation error.

Tolerances, per output dtype, justified:

    float64   atol 1e-9,  rtol 1e-9    The same math in a different order: float64 sums over up to ~1e6 terms
                                        differ by ~1e6 * 1.1e-16 ~ 1e-10 relative at worst; outputs are O(1).
    float32   atol 5e-5,  rtol 5e-5    float32 eps is 1.2e-7; sums over up to ~1e6 terms (a 64x64x160 group)
                                        with pairwise/blocked accumulation keep ~1e-6 relative, the rsqrt and
                                        the SiLU add a few ulps; 5e-5 leaves room for O(1..10) outputs.
    float16   atol 2e-3,  rtol 2e-3    One rounding of the output is 2^-11 = 4.9e-4 relative; the SiLU of an
                                        O(1) value and the reference's own fp16 storage of inputs stay within 4 ulps.
    bfloat16  atol 1.6e-2, rtol 1.6e-2 One rounding is 2^-8 = 3.9e-3 relative; same 4-ulp budget.

Gradients are reductions (parameter grads sum over N x spatial, up to ~1e6 terms) and are compared with the same
rtol but an atol scaled by the largest magnitude of the true gradient (`scale`): a gradient entry is only as
precise as the sum it came from, which is bounded by eps * sum of |terms| <= eps * n * max|term|.

Comparisons whose error is not one output rounding of the same math have a named entry (NAMED_TOLERANCES), each
justified here; a test asks for one by name: `assert_close(a, b, "float32_compounded")`, `tolerance("gradcheck")`.

    float64_short         atol 1e-13, rtol 1e-13  A float64 closed form, or a few dozen float64 operations (a
                                                  scheduler step, a loss, a score of a few hundred values), against
                                                  the same math written otherwise: each operation adds <= 1.1e-16
                                                  relative; 1e-13 leaves three orders for cancellation and still sees
                                                  a float32 intermediate (6e-8) or a float64 constant that passed
                                                  through float32 (1 + 2^-40 rounds 9e-13 away).
    float32_coefficients  atol 1e-6 * max(1, max|expected|), rtol 0
                                                  float64 samples stepped with coefficients (sigmas, alphas_cumprod)
                                                  stored in float32, as diffusers stores them, against the float64
                                                  truth: each coefficient is <= 6e-8 relative off, so a loop of up to
                                                  25 steps stays within 1e-6 of the largest magnitude it carries.
    float32_reordered     atol 1e-5,  rtol 1e-5   The same float32 graph run another way (compiled by inductor,
                                                  exported, captured in a CUDA graph, weights in channels_last):
                                                  fused or reordered operations move a result by a few ulps (1.2e-7)
                                                  per operation through a handful of O(1) layers.
    float32_compounded    atol 5e-5 * max(1, max|expected|), rtol 0
                                                  float32 through many steps or layers whose roundings compound: a
                                                  10-step sampling loop against diffusers' float32 loop (whose
                                                  coefficients are computed in float32, gencore's in float64 and
                                                  rounded once), ~20 UNet layers, convolutions whose algorithm cuDNN
                                                  picks per graph. An entry's error comes from the whole state, not
                                                  from its own size: the float32 row's atol, scaled by the largest
                                                  magnitude, and no rtol. (On this machine: 2.1e-5 between 10-step
                                                  DDIM pipelines' [0, 1] pixels, 3e-7 through the UNet.)
    float32_cancellation  atol 1e-12, rtol 2e-4   diffusers' float32 posterior variance against gencore's float64:
                                                  beta_1 = 1 - abar_1 / abar_0 = 1.2e-4 loses four digits to
                                                  cancellation in float32 (1e-4 relative); the variances are O(1e-8)
                                                  and up, so atol only admits an exact 0.
    float64_matrix_sqrt   atol 1e-6,  rtol 1e-6   A Frechet distance in float64 against pytorch-fid's scipy sqrtm: the
                                                  matrix square root's error grows with the covariances' condition
                                                  number (~1e6 for feature covariances) times eps; the distance of a
                                                  set to itself is 0 within the same 1e-6.
    float32_rounded_inputs atol 0,    rtol 1e-4   float64 math on statistics first rounded to float32 (6e-8 relative
                                                  each): a Frechet distance is a difference of traces ~1e3 times its
                                                  size, so cancellation amplifies that rounding to ~1e-5 relative.
    gradcheck             eps 1e-6, atol 1e-7     torch.autograd.gradcheck in float64: central differences with step
                                                  1e-6 of a smooth op err by ~eps^2 times its third derivative, plus
                                                  rounding 1e-16 / eps = 1e-10, on O(1) entries.
    gradgradcheck         eps 1e-6, atol 1e-6     The same on the first backward, whose derivatives (a
                                                  normalisation's 1 / sigma^3 terms) are larger.
    gradcheck_linear      eps 1e-6, atol 1e-8     An op linear in its inputs: central differences are exact up to
                                                  rounding (1e-16 / eps = 1e-10).

Bit-exact comparisons (a rerun, a batch against its samples one by one, a resumed run) are not tolerances:
`assert_equal`, or `torch.equal` inside a larger condition.
"""

from __future__ import annotations

import torch

from . import backends

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-9, "rtol": 1e-9},
    torch.float32: {"atol": 5e-5, "rtol": 5e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}

# Gradients of half-precision inputs are themselves stored in half precision after float32 math; parameter gradient
# sums are additionally relative to the largest gradient entry (see module doc).
GRAD_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-8, "rtol": 1e-8},
    torch.float32: {"atol": 2e-4, "rtol": 2e-4},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
}


# Comparisons of another kind than one dtype's rounding of the same math, justified in the module doc.
NAMED_TOLERANCES: dict[str, dict[str, float]] = {
    "float64_short": {"atol": 1e-13, "rtol": 1e-13},
    "float32_coefficients": {"atol": 1e-6, "rtol": 0.0},
    "float32_reordered": {"atol": 1e-5, "rtol": 1e-5},
    "float32_compounded": {"atol": TOLERANCES[torch.float32]["atol"], "rtol": 0.0},
    "float32_cancellation": {"atol": 1e-12, "rtol": 2e-4},
    "float64_matrix_sqrt": {"atol": 1e-6, "rtol": 1e-6},
    "float32_rounded_inputs": {"atol": 0.0, "rtol": 1e-4},
    "gradcheck": {"eps": 1e-6, "atol": 1e-7},
    "gradgradcheck": {"eps": 1e-6, "atol": 1e-6},
    "gradcheck_linear": {"eps": 1e-6, "atol": 1e-8},
}

# Named entries whose atol is relative to the largest magnitude of the truth, as kind="grad" is (see module doc).
_SCALED_BY_MAGNITUDE = frozenset({"float32_coefficients", "float32_compounded"})


def tolerance(precision: torch.dtype | str, kind: str = "output") -> dict[str, float]:
    """The tolerance of a dtype (kind "output" or "grad") or of a named entry: a dict to pass on as keywords."""
    if isinstance(precision, str):
        return dict(NAMED_TOLERANCES[precision])
    table = TOLERANCES if kind == "output" else GRAD_TOLERANCES
    return dict(table[precision])


def assert_close(actual, expected, precision: torch.dtype | str | None = None, kind: str = "output",
                 msg: str = "") -> None:
    """Compare `actual` with the float64 truth `expected` (tensors or numbers) at the tolerance of `precision`: a
    dtype (default: actual's) or a named entry.

    For kind="grad", and the named entries that say so, the absolute tolerance is scaled by max(1, max|expected|),
    see the module doc.
    """
    # Python numbers are float64 (torch.as_tensor would make a float32 of a float)
    actual, expected = (torch.as_tensor(v, dtype=torch.float64) if isinstance(v, (int, float)) else torch.as_tensor(v)
                        for v in (actual, expected))
    precision = precision or actual.dtype
    tol = tolerance(precision, kind)
    expected = expected.detach().to(torch.float64)
    actual = actual.detach().to(torch.float64)
    if (kind == "grad" or precision in _SCALED_BY_MAGNITUDE) and expected.numel():
        tol["atol"] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], check_dtype=False,
                               check_stride=False, msg=(lambda m: f"{msg}\n{m}") if msg else None)


def approx(expected, precision: torch.dtype | str):
    """pytest.approx at the tolerance of a dtype or a named entry, for a number (or numbers) inside a larger assert."""
    import pytest  # a test dependency, not one of the package's

    tol = tolerance(precision)
    return pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"])


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Bit for bit, dtype and shape included, with torch.testing's report of the first mismatches."""
    torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=(lambda m: f"{msg}\n{m}") if msg else None)


def device_for(backend: str) -> torch.device:
    """The device a backend's tensors live on in tests: CUDA for cuda/triton when there is a GPU, else CPU."""
    if backend in ("cuda", "triton") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def backend_params(op_backends=("cpu", "cuda", "triton")):
    """pytest params for the fused backends of an op, each skipped, with the reason, where it cannot run here."""
    import pytest  # a test dependency, not one of gencore's

    status = {s.name: s for s in backends.status()}
    params = []
    for name in op_backends:
        if name == "reference":
            continue
        marks = [] if status[name].available else [pytest.mark.skip(reason=f"{name}: {status[name].reason}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params
