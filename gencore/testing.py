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


def tolerance(dtype: torch.dtype, kind: str = "output") -> dict[str, float]:
    table = TOLERANCES if kind == "output" else GRAD_TOLERANCES
    return dict(table[dtype])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 kind: str = "output", msg: str = "") -> None:
    """Compare `actual` with the float64 truth `expected` at the tolerance of `dtype` (default: actual's dtype).

    For kind="grad" the absolute tolerance is scaled by max(1, max|expected|), see the module doc.
    """
    dtype = dtype or actual.dtype
    tol = tolerance(dtype, kind)
    expected = expected.detach().to(torch.float64)
    actual = actual.detach().to(torch.float64)
    if kind == "grad" and expected.numel():
        tol["atol"] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], check_dtype=False,
                               check_stride=False, msg=(lambda m: f"{msg}\n{m}") if msg else None)


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
