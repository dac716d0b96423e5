"""The CUDA kernels of the gradient penalty, run on CPU fibers, against the float64 reference.

No GPU is needed: tests/cuda_emulation/gradient_penalty_emulation.cpp includes csrc/cuda/gradient_penalty_kernels.cu
verbatim and builds it with g++ on top of csrc/cuda/host_emulation.h (the CUDA execution model on the CPU: each GPU
thread a fiber, __syncthreads and warp shuffles as barriers). So the grid-stride indexing over samples and chunks,
the block reductions and the fixed-order merge of the partial sums are checked here, with the workspace poisoned
with NaN so that a slot read before it is written shows up. Not checked here: speed, nvcc compilation
(tests/build/test_cuda_compile.py) and real-GPU concurrency (the gpu-marked runs of test_gradient_penalty.py).

The ctypes wrappers mirror csrc/cuda/gradient_penalty.cpp for contiguous inputs.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from gencore._rules import accumulation_dtype
from gencore.reference.gradient_penalty import gradient_norm_penalty_ref, interpolate_ref
from gencore.testing import assert_close

from _emulation import SCALAR_KIND, build_emulation

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emu():
    """The emulation library, built once per source version (cached under build/cuda_emulation/)."""
    so = build_emulation("gradient_penalty")
    i64, vp, dbl, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
    so.gencore_emulation_gp_chunks.restype = i64
    so.gencore_emulation_gp_chunks.argtypes = [i64]
    so.gencore_emulation_gradient_penalty_interpolate.argtypes = [cint, vp, vp, vp, vp, i64, i64]
    so.gencore_emulation_gradient_norm_penalty_fwd.argtypes = [cint, vp, vp, vp, i64, i64, dbl, cint, dbl]
    so.gencore_emulation_gradient_norm_penalty_bwd.argtypes = [cint, vp, vp, vp, vp, i64, i64, dbl, cint, dbl]
    return so


# (N, D): one chunk, several chunks with a ragged tail, batch 1 over many chunks, one element per sample; and D a
# multiple of 8 (MNIST's 784; chunks with a short last one), where every dtype takes the 16-byte vector path.
SHAPES = {"one-chunk": (5, 77), "ragged-chunks": (3, 2 * 4096 + 13), "batch1-many-chunks": (1, 5 * 4096 + 1),
          "one-element": (7, 1), "vector-mnist-784": (6, 784), "vector-chunks": (3, 3 * 4096 + 64)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("center,one_sided,scale", [(1.0, False, 1.0), (0.0, False, 1.0), (2.0, True, 0.25)],
                         ids=["wgan-gp", "zero-centred", "one-sided-scaled"])
def test_kernels_match_reference(emu, dtype, shape, center, one_sided, scale):
    n, d = shape
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    fake = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    alpha = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    out = torch.full_like(real, float("nan"))
    assert emu.gencore_emulation_gradient_penalty_interpolate(SCALAR_KIND[dtype], real.data_ptr(), fake.data_ptr(),
                                                              alpha.data_ptr(), out.data_ptr(), n, d) == 0
    assert_close(out, interpolate_ref(real, fake, alpha, upcast=True), dtype, msg="interpolate")

    sample_scale = torch.linspace(0.02, 0.2, n, dtype=torch.float64)[:, None] * 4
    grad = (torch.randn(n, d, generator=gen, dtype=torch.float64) * sample_scale).to(dtype)
    if n > 2:
        grad[1] = 0  # a zero-norm sample
    stats = accumulation_dtype(dtype)
    norms = torch.full((n,), float("nan"), dtype=stats)
    penalty = torch.full((), float("nan"), dtype=stats)
    assert emu.gencore_emulation_gradient_norm_penalty_fwd(SCALAR_KIND[dtype], grad.data_ptr(), norms.data_ptr(),
                                                           penalty.data_ptr(), n, d, center, int(one_sided),
                                                           scale) == 0
    g64 = grad.double().requires_grad_(True)
    truth, truth_norms = gradient_norm_penalty_ref(g64, center, one_sided, scale)
    assert_close(norms, truth_norms, stats, msg="norms")
    assert_close(penalty, truth, stats, kind="grad", msg="penalty")

    grad_penalty = torch.tensor(1.5, dtype=stats)
    grad_grad = torch.full_like(grad, float("nan"))
    assert emu.gencore_emulation_gradient_norm_penalty_bwd(SCALAR_KIND[dtype], grad_penalty.data_ptr(),
                                                           grad.data_ptr(), norms.data_ptr(), grad_grad.data_ptr(), n,
                                                           d, center, int(one_sided), scale) == 0
    (truth_grad,) = torch.autograd.grad(truth, g64, torch.tensor(1.5, dtype=torch.float64))
    assert torch.isfinite(grad_grad).all()
    assert_close(grad_grad, truth_grad, dtype, kind="grad", msg="penalty backward")


def test_chunking_is_exercised(emu):
    assert emu.gencore_emulation_gp_chunks(SHAPES["ragged-chunks"][1]) == 3
    assert emu.gencore_emulation_gp_chunks(SHAPES["batch1-many-chunks"][1]) == 6
