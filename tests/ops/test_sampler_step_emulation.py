"""The CUDA kernels of sampler_step, run on CPU fibers, against the reference twins.

No GPU is needed: tests/cuda_emulation/sampler_step_emulation.cpp includes csrc/cuda/sampler_step_kernels.cu verbatim
and builds it with g++ on top of csrc/cuda/host_emulation.h (the CUDA execution model on the host; see that file).
So the indexing, the vector and element-wise paths, both layouts, the per-sample coefficient gather, the timestep
clamp and the in-kernel Philox are all checked here. What this cannot check: speed, nvcc's own compilation
(tests/build/test_cuda_compile.py) and the device transcendentals (the emulation uses the host's sin/cos; the `gpu`
tests in test_sampler_step.py run the real thing).

The ctypes wrappers below mirror csrc/cuda/sampler_step.cpp (layout choice, output allocation, dims).
"""
from __future__ import annotations

import ctypes
import math

import pytest
import torch

from gencore._rules import is_channels_last, to_layout
from gencore.reference.philox import philox_uint32 as philox_uint32_ref
from gencore._rules import NUM_COEFS
from gencore.reference.sampler_step import diffusion_training_inputs_ref, sampler_step_ref
from gencore.testing import assert_close

from _emulation import SCALAR_KIND, build_emulation

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emu():
    """The emulation library, built once per source version (cached under build/cuda_emulation/)."""
    so = build_emulation("sampler_step")
    i64, u64, vp, ci, cd = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    so.gencore_emulation_sampler_step.argtypes = ([ci, i64, i64, i64, i64, ci] + [vp] * 6 + [i64, vp, cd, ci, cd, ci,
                                                                                          u64, u64, vp, vp, vp, vp])
    so.gencore_emulation_training_inputs.argtypes = [ci, i64, i64, i64, i64, ci] + [vp] * 4 + [i64, vp, vp]
    so.gencore_emulation_philox_uint32.argtypes = [vp, i64, i64, u64, u64]
    return so


def _ptr(t):
    return None if t is None else t.data_ptr()


def _in_layout(t, channels_last):
    return None if t is None else to_layout(t, channels_last)


def _dims(x):
    n = x.shape[0]
    numel = x[0].numel()
    c = x.shape[1] if x.dim() >= 2 else 1
    return n, numel, c, numel // c, int(is_channels_last(x))


def emulated_step(emu, model_output, sample, timesteps, coefs, *, model_output_uncond=None, guidance_scale=1.0,
                  clip_range=None, threshold=None, noise=None, philox_seed=None, philox_offset=0, history1=None,
                  history2=None):
    cl = is_channels_last(sample)
    sample = sample if cl else sample.contiguous()
    model_output, uncond, noise, history1, history2 = (
        _in_layout(t, cl) for t in (model_output, model_output_uncond, noise, history1, history2))
    threshold = None if threshold is None else threshold.to(coefs.dtype).contiguous()
    prev, x0 = torch.empty_like(sample), torch.empty_like(sample)
    rc = emu.gencore_emulation_sampler_step(
        SCALAR_KIND[sample.dtype], *_dims(sample), _ptr(model_output), _ptr(sample), _ptr(uncond), _ptr(noise),
        _ptr(timesteps), _ptr(coefs.contiguous()), coefs.shape[0], _ptr(threshold), float(guidance_scale),
        int(clip_range is not None), float(clip_range or 1.0), int(philox_seed is not None), int(philox_seed or 0),
        int(philox_offset), _ptr(prev), _ptr(x0), _ptr(history1), _ptr(history2))
    assert rc == 0, f"launcher returned cudaError {rc}"
    return prev, x0


def _make(shape, dtype, *, seed=0, T=10):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(s=shape):
        return torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)

    args = dict(model_output=rnd(), sample=rnd(), timesteps=torch.randint(0, T, (shape[0],), generator=gen),
                coefs=(torch.rand(T, NUM_COEFS, generator=gen, dtype=torch.float64) * 2.4 - 1.2).to(acc))
    extra = dict(model_output_uncond=rnd(), noise=rnd(), threshold=torch.rand(shape[0], generator=gen) + 0.5,
                 history1=rnd(), history2=rnd())
    return args, extra


SHAPES = {
    "vector-path-numel-60": (3, 3, 4, 5),
    "wide-half-path-numel-64": (3, 4, 4, 4),  # float16/bfloat16: 8 elements (16 bytes) per thread
    "element-path-numel-105": (3, 3, 7, 5),
    "1d-samples": (5,),
    "several-blocks": (2, 3, 40, 41),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_step_matches_reference(emu, dtype, shape):
    args, extra = _make(shape, dtype)
    for kw in [dict(philox_seed=2 ** 40 + 5, philox_offset=2 ** 33 + 1, clip_range=1.0,
                    model_output_uncond=extra["model_output_uncond"], guidance_scale=3.5),
               dict(noise=extra["noise"], threshold=extra["threshold"]),
               dict(history1=extra["history1"], history2=extra["history2"], threshold=extra["threshold"]),
               dict(history1=extra["history1"], noise=extra["noise"]),
               dict()]:
        prev, x0 = emulated_step(emu, **args, **kw)
        ref_prev, ref_x0 = sampler_step_ref(**args, **kw, upcast=True)
        assert_close(x0, ref_x0, dtype, msg=f"x0 {kw.keys()}")
        assert_close(prev, ref_prev, dtype, msg=f"prev {kw.keys()}")


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d], ids=["4d", "5d"])
def test_step_channels_last(emu, memory_format):
    shape = (2, 3, 5, 6) if memory_format == torch.channels_last else (2, 3, 4, 5, 3)
    args, extra = _make(shape, torch.float32)
    kw = dict(philox_seed=7, philox_offset=3, model_output_uncond=extra["model_output_uncond"], guidance_scale=2.0,
              history1=extra["history1"], history2=extra["history2"])
    ref_prev, ref_x0 = sampler_step_ref(**args, **kw, upcast=True)
    cl = {k: (v.contiguous(memory_format=memory_format) if v.dim() >= 4 else v) for k, v in args.items()}
    prev, x0 = emulated_step(emu, **cl, **kw)
    assert prev.movedim(1, -1).is_contiguous() and not prev.is_contiguous()
    assert_close(prev, ref_prev, torch.float32)
    assert_close(x0, ref_x0, torch.float32)


def test_step_clamps_out_of_range_timesteps(emu):
    """The binding asserts on the device; the kernel itself must still never read outside the table."""
    args, _ = _make((3, 8), torch.float32)
    bad = dict(args, timesteps=torch.tensor([-5, 3, 10 ** 6]))
    prev, _ = emulated_step(emu, **bad)
    clamped = dict(args, timesteps=torch.tensor([0, 3, 9]))
    torch.testing.assert_close(prev, sampler_step_ref(**clamped)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 10), (2, 1), (1, 4099)], ids=str)
def test_philox_words_bit_identical(emu, shape):
    n, numel = shape
    for seed, offset in [(0, 0), (1234, 7), (2 ** 63 - 1, 2 ** 40 + 9)]:
        out = torch.empty(n, numel, dtype=torch.int64)
        assert emu.gencore_emulation_philox_uint32(out.data_ptr(), n, numel, seed, offset) == 0
        assert torch.equal(out, philox_uint32_ref(n, numel, seed, offset))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("velocity", [False, True])
def test_training_inputs(emu, dtype, velocity):
    for shape in [(3, 3, 4, 5), (3, 3, 7, 5)]:
        args, extra = _make(shape, dtype)
        x0, noise, ts = args["sample"], extra["noise"], args["timesteps"]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        coefs = torch.rand(10, 2, dtype=acc)
        noisy, v = torch.empty_like(x0), torch.empty_like(x0)
        rc = emu.gencore_emulation_training_inputs(SCALAR_KIND[dtype], *_dims(x0), _ptr(x0), _ptr(noise), _ptr(ts),
                                                   _ptr(coefs), 10, _ptr(noisy), _ptr(v) if velocity else None)
        assert rc == 0
        ref_noisy, ref_v = diffusion_training_inputs_ref(x0, noise, ts, coefs, "v_prediction", upcast=True)
        assert_close(noisy, ref_noisy, dtype)
        if velocity:
            assert_close(v, ref_v, dtype)


def test_normality_of_emulated_noise(emu):
    x = torch.zeros(1, 40_000)
    coefs = torch.zeros(1, NUM_COEFS)
    coefs[0, 8] = 1
    z, _ = emulated_step(emu, x, x, torch.zeros(1, dtype=torch.long), coefs, philox_seed=3)
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.std().item() - 1) < 0.02
