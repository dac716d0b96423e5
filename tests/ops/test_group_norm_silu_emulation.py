"""The CUDA kernels of group_norm_silu, run on CPU threads, against the float64 reference.

No GPU is needed: tests/cuda_emulation/group_norm_silu_emulation.cpp includes csrc/cuda/group_norm_silu_kernels.cu
verbatim and builds it with g++ on top of csrc/cuda/host_emulation.h, which implements the CUDA execution model
(each GPU thread a fiber, __syncthreads and warp shuffles as barriers, blocks in turn over static shared memory).
So the indexing, the vectorized and scalar paths, both layouts, the split reductions and their fixed-order merges
are all checked here, with a workspace poisoned with NaN so that a slot read before it is written shows up. What
this cannot check: the speed, device-specific compilation (tests/build/test_cuda_compile.py runs nvcc), and real-GPU
concurrency (the `gpu` tests in test_group_norm_silu.py).

The ctypes wrappers below mirror csrc/cuda/group_norm_silu.cpp (layout choice, output_like, accumulation dtype).
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from gencore._rules import accumulation_dtype, is_channels_last, output_like
from gencore.reference.group_norm_silu import group_norm_silu_ref, group_norm_silu_stats_ref
from gencore.testing import assert_close

from _emulation import SCALAR_KIND, build_emulation

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emu():
    """The emulation library, built once per source version (cached under build/cuda_emulation/)."""
    so = build_emulation("group_norm_silu")
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    so.gencore_emulation_gns_splits.restype = i64
    so.gencore_emulation_gns_splits.argtypes = [i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    so.gencore_emulation_gns_fwd.argtypes = [ctypes.c_int, i64, i64, i64, i64, ctypes.c_int] + [vp] * 8 + [
        ctypes.c_double, ctypes.c_int]
    so.gencore_emulation_gns_bwd.argtypes = [ctypes.c_int, i64, i64, i64, i64, ctypes.c_int] + [vp] * 13 + [
        ctypes.c_int]
    so.gencore_emulation_set_sm_count.argtypes = [ctypes.c_int]
    so.gencore_emulation_set_sm_count(132)  # an H100
    return so


def _ptr(t):
    return None if t is None else t.data_ptr()


def _dims(x, groups):
    n, c = x.shape[:2]
    return n, c, x.numel() // (n * c), groups, int(is_channels_last(x))


def emulated_fwd(emu, x, groups, weight=None, bias=None, temb=None, scale_shift=None, eps=1e-5, silu=True):
    x = x if x.is_contiguous() or is_channels_last(x) else x.contiguous()
    y = output_like(x)
    mean = torch.empty(x.shape[0], groups, dtype=torch.float64)  # the saved mean is float64 on every backend
    rstd = torch.empty(x.shape[0], groups, dtype=accumulation_dtype(x.dtype))
    rc = emu.gencore_emulation_gns_fwd(SCALAR_KIND[x.dtype], *_dims(x, groups), _ptr(x), _ptr(weight), _ptr(bias),
                                       _ptr(temb), _ptr(scale_shift), _ptr(y), _ptr(mean), _ptr(rstd), eps, silu)
    assert rc == 0, f"forward launcher returned cudaError {rc}"
    return y, mean, rstd


def emulated_bwd(emu, grad_out, x, groups, mean, rstd, weight=None, bias=None, temb=None, scale_shift=None,
                 silu=True):
    x = x if x.is_contiguous() or is_channels_last(x) else x.contiguous()
    grad_out = grad_out.movedim(1, -1).contiguous().movedim(-1, 1) if is_channels_last(x) else grad_out.contiguous()
    grads = [output_like(x)] + [None if t is None else torch.empty_like(t) for t in (weight, bias, temb, scale_shift)]
    rc = emu.gencore_emulation_gns_bwd(SCALAR_KIND[x.dtype], *_dims(x, groups), _ptr(grad_out), _ptr(x), _ptr(weight),
                                       _ptr(bias), _ptr(temb), _ptr(scale_shift), _ptr(mean), _ptr(rstd),
                                       *[_ptr(g) for g in grads], silu)
    assert rc == 0, f"backward launcher returned cudaError {rc}"
    return grads


def _make(n, c, spatial, dtype, *, affine=True, temb=True, scale_shift=True, offset=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)

    return dict(x=rnd(n, c, *spatial, shift=offset), weight=rnd(c, scale=0.5, shift=1.0) if affine else None,
                bias=rnd(c, scale=0.5) if affine else None, temb=rnd(n, c) if temb else None,
                scale_shift=rnd(n, 2 * c, scale=0.5) if scale_shift else None,
                grad_out=rnd(n, c, *spatial))


def _check(emu, a, groups, dtype, silu=True):
    """Forward output and stats, and every gradient, against the float64 reference."""
    names = ["x", "weight", "bias", "temb", "scale_shift"]
    opts = {k: a[k] for k in names[1:]}
    y, mean, rstd = emulated_fwd(emu, a["x"], groups, **opts, silu=silu)
    leaves = {k: (a[k].double().requires_grad_() if a[k] is not None else None) for k in names}
    ref = group_norm_silu_ref(leaves["x"], groups, leaves["weight"], leaves["bias"], 1e-5, temb=leaves["temb"],
                              scale_shift=leaves["scale_shift"], activation="silu" if silu else None, upcast=True)
    assert y.dtype == dtype and y.shape == a["x"].shape
    assert is_channels_last(y) == is_channels_last(a["x"]) or a["x"].dim() < 3
    assert_close(y, ref, dtype, msg="emulated cuda forward")
    ref_mean, ref_rstd = group_norm_silu_stats_ref(a["x"], groups, 1e-5, a["temb"])
    assert_close(mean, ref_mean, accumulation_dtype(dtype), msg="mean")
    assert_close(rstd, ref_rstd, accumulation_dtype(dtype), msg="rstd")

    grads = emulated_bwd(emu, a["grad_out"], a["x"], groups, mean, rstd, **opts, silu=silu)
    wanted = [k for k in names if leaves[k] is not None]
    ref_grads = torch.autograd.grad(ref, [leaves[k] for k in wanted], a["grad_out"].double())
    for k, g in zip(wanted, ref_grads):
        got = grads[names.index(k)]
        assert got.dtype == dtype and got.shape == a[k].shape
        assert_close(got, g, dtype, kind="grad", msg=f"emulated cuda grad {k}")
    return y, grads


# (N, C, spatial, G): the vector widths are 16 bytes: 8 (half types), 4 (float32), 2 (float64) elements.
SHAPES = {
    "vectorized-8x8-groups4": (2, 16, (8, 8), 4),
    "scalar-5x3-groups3": (2, 6, (5, 3), 3),                     # S = 15, C = 6: no vector width divides
    "groups-eq-C-1x1": (2, 8, (1, 1), 8),
    "cpg40-C-not-multiple-of-8": (1, 40, (3, 7), 1),
    "no-spatial": (3, 8, (), 2),
    "volume-3d": (1, 8, (2, 3, 4), 4),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(emu, shape, dtype, layout):
    n, c, spatial, g = shape
    a = _make(n, c, spatial, dtype)
    if layout == "channels_last":
        if not spatial:
            pytest.skip("no spatial dims: one layout only")
        a["x"] = a["x"].movedim(1, -1).contiguous().movedim(-1, 1)
    _check(emu, a, g, dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch1_split_reduction(emu, dtype, layout):
    """Batch 1, few channels, large S: the reductions split s over many blocks and merge them in order."""
    a = _make(1, 8, (48, 48), dtype, offset=3.0)
    if layout == "channels_last":
        a["x"] = a["x"].movedim(1, -1).contiguous().movedim(-1, 1)
    vec = 16 // a["x"].element_size()
    splits = emu.gencore_emulation_gns_splits(1, 8, 48 * 48, 2, int(layout == "channels_last"), vec)
    assert splits > 4, "the test must exercise the split path"
    _check(emu, a, 2, dtype)


# (N, C, spatial, G, layout) where the work decomposition has more than one of something.
DECOMPOSITIONS = {
    "finalize-thread-merges-4-slots": (1, 64, (64, 64), 1, "contiguous"),    # cpg * splits = 512 > 256 threads
    "cl-two-column-tiles": (1, 512, (8, 8), 32, "channels_last"),            # C/V = 64 vectors > 32 lanes (fp16)
    "cl-batch3-splits": (3, 24, (40, 40), 6, "channels_last"),
    "cf-rows-past-C": (2, 20, (33, 17), 5, "contiguous"),                    # 8-row tiles, C = 20 is not a multiple
}


@pytest.mark.parametrize("sm_count", [1, 132])
@pytest.mark.parametrize("case", DECOMPOSITIONS.values(), ids=DECOMPOSITIONS.keys())
def test_work_decompositions(emu, case, sm_count):
    n, c, spatial, g, layout = case
    a = _make(n, c, spatial, torch.float16, offset=1.0)
    if layout == "channels_last":
        a["x"] = a["x"].movedim(1, -1).contiguous().movedim(-1, 1)
    emu.gencore_emulation_set_sm_count(sm_count)
    try:
        _check(emu, a, g, torch.float16)
    finally:
        emu.gencore_emulation_set_sm_count(132)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_mean_offset(emu, dtype):
    """x = 1000 + randn: a raw E[x^2] - E[x]^2 in float32 would lose the variance."""
    _check(emu, _make(2, 16, (9, 11), dtype, offset=1000.0), 4, dtype)


@pytest.mark.parametrize("affine,temb,scale_shift,silu", [(False, False, False, True), (True, False, False, False),
                                                          (False, True, False, True), (False, False, True, False),
                                                          (True, True, True, False)])
def test_options(emu, affine, temb, scale_shift, silu):
    a = _make(2, 12, (4, 4), torch.float32, affine=affine, temb=temb, scale_shift=scale_shift)
    _check(emu, a, 4, torch.float32, silu=silu)


def test_unaligned_input_takes_the_scalar_path(emu):
    """x starting one element past a 16-byte boundary cannot be read with vector loads: same results."""
    a = _make(2, 16, (8, 8), torch.float32)
    storage = torch.empty(a["x"].numel() + 1, dtype=torch.float32)
    x = storage[1:].view(a["x"].shape)
    x.copy_(a["x"])
    assert x.data_ptr() % 16 != 0
    _check(emu, dict(a, x=x), 4, torch.float32)


def test_deterministic(emu):
    a = _make(1, 8, (40, 40), torch.float32)
    y1, g1 = _check(emu, a, 2, torch.float32)
    y2, g2 = _check(emu, a, 2, torch.float32)
    assert torch.equal(y1, y2)
    for p, q in zip(g1, g2):
        assert torch.equal(p, q)


def test_launcher_refuses_inconsistent_sizes(emu):
    """C % G != 0 reaches the launcher only if the binding forgot its check; it must still refuse, not run."""
    x = torch.randn(2, 6, 4, 4)
    y, mean, rstd = torch.empty_like(x), torch.empty(2, 4, dtype=torch.float64), torch.empty(2, 4)
    rc = emu.gencore_emulation_gns_fwd(2, 2, 6, 16, 4, 0, x.data_ptr(), None, None, None, None, y.data_ptr(),
                                       mean.data_ptr(), rstd.data_ptr(), 1e-5, 1)
    assert rc != 0


def test_emulator_reports_a_divergent_syncthreads(emu):
    """The emulation itself can fail: threads returning before a __syncthreads make the launch fail, not hang."""
    assert emu.gencore_emulation_selftest_divergent_sync() != 0
