"""gencore.ops.sampler_step / diffusion_training_inputs / philox_uint32: every backend against the reference twins.

The truth is the reference computed in float64 (upcast=True) from the same, already rounded, inputs; tolerances are
gencore.testing's table. Philox noise is held to the definition in gencore/reference/philox.py: Random123's
known-answer vectors, bit-identical words on every backend, batch-size independence, and normality.
"""
from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import gencore
from gencore._rules import COEF_COLUMNS, NUM_COEFS, accumulation_dtype
from gencore.ops import diffusion_training_inputs, philox_uint32, sampler_step
from gencore.reference.philox import box_muller, philox4x32_10, philox_normal
from gencore.reference.philox import philox_uint32 as philox_uint32_ref
from gencore.reference.sampler_step import diffusion_training_inputs_ref, sampler_step_ref
from gencore.testing import assert_close, assert_equal, backend_params, device_for, tolerance

ops_module = sys.modules["gencore.ops.sampler_step"]
BACKENDS = backend_params(("cpu", "cuda", "triton"))
ALL = [pytest.param("reference", id="reference")] + BACKENDS
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Sample shapes (N, *), each named for the corner it covers.
SHAPES = {
    "batch1": (1, 4, 5, 3),
    "numel-105-not-multiple-of-vector-width": (3, 3, 7, 5),
    "1d-samples-numel-1": (5,),
    "flat-37": (4, 37),
    "volume-5d": (2, 3, 4, 5, 3),
    "several-chunks-4920": (2, 3, 40, 41),  # > the CPU chunk (2048) and the Triton block (1024), not a multiple
}
T = 12  # rows of the coefficient table in most tests


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _coefs(rows, dtype, device, gen, columns=NUM_COEFS):
    """A coefficient table with O(1) entries of both signs (the kernels do not care what scheduler made it)."""
    c = torch.rand(rows, columns, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    return c.to(dtype).to(device)


def _make(shape, dtype, device, *, uncond=False, clip="none", noise="none", history=0, seed=0):
    gen = _gen(seed)
    n = shape[0]
    acc = accumulation_dtype(dtype)
    args = dict(
        model_output=_rand(shape, dtype, device, gen),
        sample=_rand(shape, dtype, device, gen, scale=1.5),
        timesteps=torch.randint(0, T, (n,), generator=gen).to(device),
        coefs=_coefs(T, acc, device, gen),
    )
    kw = {}
    if uncond:
        kw["model_output_uncond"] = _rand(shape, dtype, device, gen)
        kw["guidance_scale"] = 4.5
    if clip == "clip":
        kw["clip_range"] = 1.0
    elif clip == "threshold":
        kw["threshold"] = (torch.rand(n, generator=gen) + 0.5).to(device)
    if noise == "tensor":
        kw["noise"] = _rand(shape, dtype, device, gen)
    elif noise == "philox":
        kw["philox_seed"] = 1234 + seed
        kw["philox_offset"] = 7
    for k in range(1, history + 1):  # a multistep solver's earlier x0
        kw[f"history{k}"] = _rand(shape, dtype, device, gen)
    return args, kw


def _check(backend, args, kw, dtype):
    prev, x0 = sampler_step(**args, **kw, backend=backend)
    ref_prev, ref_x0 = sampler_step_ref(**args, **kw, upcast=True)
    assert prev.dtype == dtype and x0.dtype == dtype
    assert prev.shape == args["sample"].shape and x0.shape == args["sample"].shape
    assert_close(x0, ref_x0, dtype, msg=f"{backend} pred_original_sample")
    assert_close(prev, ref_prev, dtype, msg=f"{backend} prev_sample")
    return prev, x0


# ---------------------------------------------------------------------------------------------------------------------
# sampler_step against the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(backend, dtype, shape):
    args, kw = _make(shape, dtype, device_for(backend), uncond=True, clip="clip", noise="philox")
    _check(backend, args, kw, dtype)
    args, kw = _make(shape, dtype, device_for(backend), clip="threshold", noise="tensor", history=2, seed=1)
    _check(backend, args, kw, dtype)


OPTIONS = list(itertools.product([False, True], ["none", "clip", "threshold"], ["none", "tensor", "philox"], [0, 1, 2]))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("uncond,clip,noise,history", OPTIONS,
                         ids=[f"uncond{u}-{c}-noise_{z}-history{h}" for u, c, z, h in OPTIONS])
def test_options(backend, uncond, clip, noise, history):
    args, kw = _make((3, 2, 5, 7), torch.float32, device_for(backend), uncond=uncond, clip=clip, noise=noise,
                     history=history)
    prev, x0 = _check(backend, args, kw, torch.float32)
    if clip == "clip":
        assert x0.abs().max() <= 1.0
    if clip == "threshold":
        assert x0.abs().max() <= 1.0  # clamp(x0, -s, s) / s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_options_other_dtypes(backend, dtype):
    args, kw = _make((2, 3, 6, 5), dtype, device_for(backend), uncond=True, clip="threshold", noise="tensor")
    _check(backend, args, kw, dtype)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("guidance", [0.0, -0.0, 5e-324], ids=["zero", "negative-zero", "subnormal"])
def test_float_scalars_whose_bits_fit_in_32_bits(backend, guidance):
    """guidance 0.0 (and clip_range=None) reach the Triton kernel as the int 0, which the JIT types i32: the
    64-bit bitcast failed to compile. Any float must work, on every backend."""
    args, kw = _make((3, 2, 4, 5), torch.float64, device_for(backend), uncond=True)
    kw["guidance_scale"] = guidance
    _check(backend, args, kw, torch.float64)


@pytest.mark.parametrize("backend", ALL)
def test_expanded_timesteps(backend):
    """A timestep tensor with stride 0 (torch.tensor([t]).expand(N)) is one timestep for every sample: the Triton
    launchers read it as if contiguous and gave wrong rows (and read past its storage)."""
    args, kw = _make((4, 2, 3, 3), torch.float32, device_for(backend))
    args["timesteps"] = torch.tensor([7], device=args["sample"].device).expand(4)
    prev, x0 = _check(backend, args, kw, torch.float32)
    same = dict(args, timesteps=torch.full((4,), 7, device=args["sample"].device))
    assert_equal(prev, sampler_step(**same, **kw, backend=backend)[0])
    x0_, noise = args["sample"], args["model_output"]
    noisy, _ = diffusion_training_inputs(x0_, noise, args["timesteps"], args["coefs"][:, :2].contiguous(),
                                         backend=backend)
    ref, _ = diffusion_training_inputs_ref(x0_, noise, args["timesteps"], args["coefs"][:, :2].contiguous())
    assert_close(noisy, ref, torch.float32)


@pytest.mark.parametrize("backend", ALL)
def test_formula_by_hand(backend):
    """One sample, hand-picked coefficients: every column lands where the contract says."""
    dev = device_for(backend)
    x = torch.tensor([[0.5, -2.0, 3.0]], device=dev)
    m = torch.tensor([[1.0, 0.25, -1.0]], device=dev)
    u = torch.tensor([[0.0, 0.5, 1.0]], device=dev)
    z = torch.tensor([[1.0, -1.0, 2.0]], device=dev)
    h1 = torch.tensor([[2.0, 0.5, -4.0]], device=dev)
    h2 = torch.tensor([[-1.0, 8.0, 0.25]], device=dev)
    c = torch.tensor([[0.5, 2.0, 1.0, -1.0, 0.5, 3.0, 0.25, -2.0, 0.1, 0.75, -0.5]], device=dev)
    t0 = torch.zeros(1, dtype=torch.long, device=dev)
    prev, x0 = sampler_step(m, x, t0, c, model_output_uncond=u, guidance_scale=2.0, clip_range=2.5, noise=z,
                            backend=backend)
    mm = u + 2.0 * (m - u)
    xx = (0.5 * x + 2.0 * mm).clamp(-2.5, 2.5)
    eps = 1.0 * x - 1.0 * mm + 0.5 * xx
    expected = 3.0 * xx + 0.25 * x - 2.0 * eps + 0.1 * z
    assert_close(x0, xx)
    assert_close(prev, expected)
    # A multistep history: the columns 9 and 10 weigh history1 and history2; an absent history counts as 0.
    prev, _ = sampler_step(m, x, t0, c, model_output_uncond=u, guidance_scale=2.0, clip_range=2.5, noise=z,
                           history1=h1, backend=backend)
    assert_close(prev, expected + 0.75 * h1)
    prev, _ = sampler_step(m, x, t0, c, model_output_uncond=u, guidance_scale=2.0, clip_range=2.5, noise=z,
                           history1=h1, history2=h2, backend=backend)
    assert_close(prev, expected + 0.75 * h1 - 0.5 * h2)


@pytest.mark.parametrize("backend", ALL)
def test_per_sample_timesteps_equal_per_sample_calls(backend):
    dev = device_for(backend)
    args, kw = _make((5, 2, 4, 3), torch.float32, dev, uncond=True, clip="threshold", noise="tensor")
    args["timesteps"] = torch.tensor([0, 11, 3, 3, 7], device=dev)
    prev, x0 = sampler_step(**args, **kw, backend=backend)
    for i in range(5):
        one = {k: v[i:i + 1] if k != "coefs" else v for k, v in args.items()}
        one_kw = {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        p, x = sampler_step(**one, **one_kw, backend=backend)
        assert_equal(p, prev[i:i + 1])
        assert_equal(x, x0[i:i + 1])


def _layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        yield "channels_last_3d", x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 3:
        yield "channels_innermost_1d", x.transpose(1, 2).contiguous().transpose(1, 2)
    yield "strided_view", torch.stack([x, x], dim=-1)[..., 0]  # same values, every stride doubled


def _channels_innermost(t):
    return t.dim() >= 3 and not t.is_contiguous() and t.movedim(1, -1).is_contiguous()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 3, 5, 2), (3, 5, 7)], ids=["4d", "5d", "3d"])
@pytest.mark.parametrize("noise", ["philox", "tensor"])
def test_layouts(backend, shape, noise):
    """Every layout gives the same numbers (Philox is keyed on the logical element), channels-last stays so."""
    args, kw = _make(shape, torch.float32, device_for(backend), uncond=True, clip="clip", noise=noise, history=2)
    ref_prev, ref_x0 = sampler_step_ref(**args, **kw, upcast=True)
    for name, sample in _layouts(args["sample"]):
        # The other inputs keep their own (contiguous) layout or take the sample's: both must work.
        for other_name, other in [("contiguous", lambda t: t), ("same", lambda t: dict(_layouts(t))[name])]:
            a = dict(args, sample=sample, model_output=other(args["model_output"]))
            k = dict(kw, model_output_uncond=other(kw["model_output_uncond"]))
            for key in ("noise", "history1", "history2"):
                if key in k:
                    k[key] = other(k[key])
            prev, x0 = sampler_step(**a, **k, backend=backend)
            assert_close(prev, ref_prev, torch.float32, msg=f"{backend} {name} (others {other_name})")
            assert_close(x0, ref_x0, torch.float32, msg=f"{backend} {name} (others {other_name})")
            if name.startswith("channels"):
                assert _channels_innermost(prev) and _channels_innermost(x0), f"{name} must stay {name}"
            else:
                assert prev.is_contiguous() and x0.is_contiguous()


@pytest.mark.parametrize("backend", ALL)
def test_no_noise_is_deterministic_and_noise_free(backend):
    args, _ = _make((2, 3, 4, 4), torch.float32, device_for(backend))
    p1, _ = sampler_step(**args, backend=backend)
    p2, _ = sampler_step(**args, backend=backend)
    assert torch.equal(p1, p2)
    args["coefs"][:, 8] = 0  # zero noise std with a seed: no noise either
    p3, _ = sampler_step(**args, philox_seed=3, backend=backend)
    assert_equal(p3, sampler_step(**args, backend=backend)[0])


# ---------------------------------------------------------------------------------------------------------------------
# Philox


def test_philox_known_answer_vectors():
    """Random123's kat_vectors for philox4x32_10."""
    def run(ctr, key):
        c = [torch.tensor([v], dtype=torch.int64) for v in ctr]
        return [int(w) for w in philox4x32_10(*c, *key)]

    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    assert run((m, m, m, m), (m, m)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_philox_keying():
    """Counter = (e // 4, n, offset lo, offset hi), key = (seed lo, seed hi): checked word by word."""
    seed, offset = (5 << 32) | 17, (3 << 32) | 9
    words = philox_uint32_ref(3, 10, seed, offset)
    for n, e in [(0, 0), (2, 9), (1, 5)]:
        c = [torch.tensor([v], dtype=torch.int64) for v in (e // 4, n, 9, 3)]
        assert int(words[n, e]) == int(philox4x32_10(*c, 17, 5)[e % 4])


def test_box_muller_definition():
    w = torch.tensor([[0, 0x80000000, 0xFFFFFFFF, 0x00000100]], dtype=torch.int64)
    z = box_muller(w, torch.float64)
    # v = 0 -> r = 0; v = 1 - 2^-24 -> r = sqrt(48 ln 2); angle (1/2 - 1/2) = 0 and (2^-24 - 1/2) ~ -pi.
    assert z[0, 0] == 0 and z[0, 1] == 0
    r = math.sqrt(-2 * math.log1p(-(1 - 2 ** -24)))
    a = 2 * math.pi * (2 ** -24 - 0.5)
    assert_close(z[0, 2:], torch.tensor([r * math.cos(a), r * math.sin(a)], dtype=torch.float64), "float64_short")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (2, 1), (1, 4099), (2, 3, 3, 3, 3)], ids=str)
@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 7), (2 ** 40 + 3, 2 ** 33 + 5), (2 ** 63 - 1, 2 ** 63 - 1)],
                         ids=["zero", "small", "beyond-32-bits", "max"])
def test_philox_words_bit_identical(backend, shape, seed, offset):
    x = torch.empty(shape, device=device_for(backend))
    words = philox_uint32(x, seed, offset, backend=backend)
    assert words.dtype == torch.int64 and words.shape == (shape[0], math.prod(shape[1:]))
    assert torch.equal(words.cpu(), philox_uint32_ref(shape[0], math.prod(shape[1:]), seed, offset))


def _philox_only_coefs(dtype, device):
    """prev = z: every coefficient but noise_std zero."""
    c = torch.zeros(1, NUM_COEFS, dtype=dtype, device=device)
    c[0, 8] = 1.0
    return c


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_philox_normals_match_definition(backend, dtype):
    dev = device_for(backend)
    x = torch.zeros(3, 3, 5, 7, dtype=dtype, device=dev)
    coefs = _philox_only_coefs(dtype, dev)
    z, _ = sampler_step(x, x, torch.zeros(3, dtype=torch.long, device=dev), coefs, philox_seed=99, philox_offset=4,
                        backend=backend)
    expected = philox_normal(x.shape, 99, 4, dtype=dtype)
    assert_close(z.cpu(), expected, dtype)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_philox_batch_size_independence(backend, layout):
    """Sample 3 of a batch of 8 equals sample 3 of a batch of 4 with the same seed and step (bit for bit)."""
    args, kw = _make((8, 3, 6, 5), torch.float32, device_for(backend), uncond=True, clip="clip", noise="philox")
    if layout == "channels_last":
        for k in ("sample", "model_output"):
            args[k] = args[k].contiguous(memory_format=torch.channels_last)
    prev8, x08 = sampler_step(**args, **kw, backend=backend)
    first4 = {k: (v[:4] if k != "coefs" else v) for k, v in args.items()}
    kw4 = dict(kw, model_output_uncond=kw["model_output_uncond"][:4])
    prev4, x04 = sampler_step(**first4, **kw4, backend=backend)
    assert torch.equal(prev8[3], prev4[3]) and torch.equal(x08[3], x04[3])
    # A different step or seed changes the noise; the same ones reproduce it.
    again, _ = sampler_step(**args, **kw, backend=backend)
    assert torch.equal(again, prev8)
    other_step, _ = sampler_step(**args, **dict(kw, philox_offset=kw["philox_offset"] + 1), backend=backend)
    other_seed, _ = sampler_step(**args, **dict(kw, philox_seed=kw["philox_seed"] + 1), backend=backend)
    assert not torch.equal(other_step, prev8) and not torch.equal(other_seed, prev8)


@pytest.mark.parametrize("backend", ALL)
def test_philox_normality(backend):
    """1e5 draws (interpreter: 3e4): mean, std, tails, and no correlation between neighbours, samples or steps."""
    numel = 100_000 if not (backend == "triton" and not torch.cuda.is_available()) else 30_000
    dev = device_for(backend)
    x = torch.zeros(2, numel, device=dev)
    coefs = _philox_only_coefs(torch.float32, dev)
    ts = torch.zeros(2, dtype=torch.long, device=dev)
    z, _ = sampler_step(x, x, ts, coefs, philox_seed=2024, philox_offset=0, backend=backend)
    z_next, _ = sampler_step(x, x, ts, coefs, philox_seed=2024, philox_offset=1, backend=backend)
    z, z_next = z.double().cpu(), z_next.double().cpu()
    bound = 5 / math.sqrt(numel)  # 5 standard errors
    for row in (z[0], z[1], z_next[0]):
        assert abs(row.mean().item()) < bound
        assert abs(row.std().item() - 1) < 5 * math.sqrt(2 / numel) + 1e-3
        assert abs((row.abs() > 1.96).double().mean().item() - 0.05) < 5 * math.sqrt(0.05 * 0.95 / numel)
        assert row.abs().max() < 5.8  # the 24-bit Box-Muller bound
    for a, b in [(z[0, :-1], z[0, 1:]), (z[0], z[1]), (z[0], z_next[0])]:
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(corr) < bound, corr
    try:
        from scipy import stats
    except ImportError:
        return
    assert stats.kstest(z[0].numpy(), "norm").pvalue > 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# diffusion_training_inputs


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target", ["epsilon", "sample", "v_prediction"])
def test_training_inputs_match_reference(backend, dtype, target):
    dev = device_for(backend)
    gen = _gen(3)
    acc = accumulation_dtype(dtype)
    for shape in [(3, 3, 7, 5), (5,), (2, 3, 40, 41)]:
        x0 = _rand(shape, dtype, dev, gen)
        noise = _rand(shape, dtype, dev, gen)
        ts = torch.randint(0, 20, (shape[0],), generator=gen).to(dev)
        abar = torch.rand(20, generator=gen, dtype=torch.float64)
        coefs = torch.stack([abar.sqrt(), (1 - abar).sqrt()], 1).to(acc).to(dev)
        noisy, tgt = diffusion_training_inputs(x0, noise, ts, coefs, target, backend=backend)
        ref_noisy, ref_tgt = diffusion_training_inputs_ref(x0, noise, ts, coefs, target, upcast=True)
        assert noisy.dtype == dtype and tgt.dtype == dtype and noisy.shape == shape
        assert_close(noisy, ref_noisy, dtype, msg=f"{backend} noisy")
        assert_close(tgt, ref_tgt, dtype, msg=f"{backend} target")
        if target == "epsilon":
            assert tgt is noise
        if target == "sample":
            assert tgt is x0


@pytest.mark.parametrize("backend", ALL)
def test_training_inputs_channels_last(backend):
    dev = device_for(backend)
    x0 = torch.randn(2, 3, 5, 4, device=dev).contiguous(memory_format=torch.channels_last)
    noise = torch.randn(2, 3, 5, 4, device=dev)
    ts = torch.tensor([1, 4], device=dev)
    coefs = torch.rand(5, 2, device=dev)
    noisy, v = diffusion_training_inputs(x0, noise, ts, coefs, "v_prediction", backend=backend)
    ref_noisy, ref_v = diffusion_training_inputs_ref(x0, noise, ts, coefs, "v_prediction", upcast=True)
    assert _channels_innermost(noisy) and _channels_innermost(v)
    assert_close(noisy, ref_noisy, torch.float32)
    assert_close(v, ref_v, torch.float32)


GRAD_BACKENDS = [pytest.param("reference", id="reference")] + backend_params(("cpu", "triton"))


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("target", ["epsilon", "sample", "v_prediction"])
def test_training_inputs_gradcheck(backend, target):
    dev = device_for(backend)
    gen = _gen(5)
    x0 = _rand((3, 2, 3), torch.float64, dev, gen).requires_grad_()
    noise = _rand((3, 2, 3), torch.float64, dev, gen).requires_grad_()
    ts = torch.tensor([0, 3, 1], device=dev)
    coefs = torch.rand(4, 2, dtype=torch.float64, generator=gen).to(dev)

    def fn(a, b):
        return diffusion_training_inputs(a, b, ts, coefs, target, backend=backend)

    assert torch.autograd.gradcheck(fn, (x0, noise), **tolerance("gradcheck_linear"))
    assert torch.autograd.gradgradcheck(fn, (x0, noise), **tolerance("gradcheck_linear"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_inputs_grads_half(backend):
    """Gradients come back in the inputs' dtype (the backward does its math in the coefficients' dtype)."""
    dev = device_for(backend)
    x0 = torch.randn(2, 3, 4, device=dev, dtype=torch.bfloat16, requires_grad=True)
    noise = torch.randn(2, 3, 4, device=dev, dtype=torch.bfloat16, requires_grad=True)
    coefs = torch.rand(3, 2, device=dev)
    noisy, v = diffusion_training_inputs(x0, noise, torch.tensor([0, 2], device=dev), coefs, "v_prediction",
                                         backend=backend)
    (noisy.float().sum() + 2 * v.float().sum()).backward()
    c = coefs[[0, 2]].double().reshape(2, 2, 1, 1)
    assert x0.grad.dtype == torch.bfloat16
    assert_close(x0.grad, (c[:, 0] - 2 * c[:, 1]).expand(2, 3, 4), torch.bfloat16)
    assert_close(noise.grad, (c[:, 1] + 2 * c[:, 0]).expand(2, 3, 4), torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------------
# torch.library integration


HAS_CPU = "cpu" in ops_module.IMPLEMENTED and "cpu" in gencore.available_backends()


@pytest.mark.skipif(not HAS_CPU, reason="needs the C++ extension with the sampler_step kernels")
def test_opcheck_cpp_ops():
    args, kw = _make((2, 3, 4, 5), torch.float32, torch.device("cpu"), uncond=True, clip="threshold", noise="tensor")
    a = args
    torch.library.opcheck(torch.ops.gencore.sampler_step.default,
                          (a["model_output"], a["sample"], a["timesteps"], a["coefs"], kw["model_output_uncond"],
                           4.5, None, kw["threshold"], kw["noise"], None, 0))
    torch.library.opcheck(torch.ops.gencore.sampler_step.default,
                          (a["model_output"].contiguous(memory_format=torch.channels_last),
                           a["sample"].contiguous(memory_format=torch.channels_last), a["timesteps"], a["coefs"],
                           None, 1.0, 1.0, None, None, 5, 3))
    coefs2 = torch.rand(T, 2)
    for velocity in (False, True):
        torch.library.opcheck(torch.ops.gencore.diffusion_training_inputs.default,
                              (a["sample"].clone().requires_grad_(), a["model_output"].clone().requires_grad_(),
                               a["timesteps"], coefs2, velocity))
    torch.library.opcheck(torch.ops.gencore.philox_uint32.default, (a["sample"], 3, 4))


@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference")] + backend_params(("cpu",)))
def test_torch_compile_sampling_loop_fullgraph(backend):
    """Two fused steps inside one compiled graph equal the eager loop. (Noise as a tensor: inductor's C++ build of
    the reference's int64 Philox rounds takes minutes on a loaded CI machine; the compiled Philox path of the fused
    op is the same opaque custom op as here.)"""
    torch._dynamo.reset()
    args, kw = _make((2, 3, 5, 5), torch.float32, torch.device("cpu"), noise="tensor")
    coefs, sample0, noise = args["coefs"], args["sample"], kw["noise"]

    def loop(sample, model_output):
        for step in range(2):
            ts = torch.full((2,), 4 + step, dtype=torch.long)
            sample, _ = sampler_step(model_output * (step + 1), sample, ts, coefs, clip_range=2.0, noise=noise,
                                     backend=backend)
        return sample

    eager = loop(sample0, args["model_output"])
    compiled = torch.compile(loop, fullgraph=True)(sample0, args["model_output"])
    assert_close(compiled, eager, "float32_reordered")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backend_params(("cuda", "triton")))
def test_cuda_graph_capture(backend):
    """No host sync in a step: a loop of steps captures into a CUDA graph and replays to the eager numbers."""
    args, _ = _make((4, 4, 16, 16), torch.float16, torch.device("cuda"))
    static_sample = args["sample"].clone()
    ts = args["timesteps"]

    def run(sample):
        for step in range(3):
            sample, _ = sampler_step(args["model_output"], sample, ts, args["coefs"], philox_seed=5,
                                     philox_offset=step, backend=backend)
        return sample

    eager = run(static_sample)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(static_sample)  # warm up (Triton compiles outside the capture)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static_sample)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


# ---------------------------------------------------------------------------------------------------------------------
# Backend selection


def test_auto_backend():
    args, _ = _make((2, 3, 4, 4), torch.float32, torch.device("cpu"))
    expected = "cpu" if HAS_CPU else "reference"
    assert gencore.backends.resolve(None, torch.device("cpu"), ops_module.IMPLEMENTED) == expected
    prev, _ = sampler_step(**args)
    assert_close(prev, sampler_step_ref(**args, upcast=True)[0], torch.float32)
    # No CUDA build here: "has no implementation"; a CUDA build without a GPU: "cannot run here".
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        sampler_step(**args, backend="cuda")


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear exception naming the argument, on every backend.


@pytest.mark.parametrize("backend", ALL)
def test_bad_input_sampler_step(backend):
    dev = device_for(backend)
    args, _ = _make((2, 3, 4, 4), torch.float32, dev)
    x, m, ts, c = args["sample"], args["model_output"], args["timesteps"], args["coefs"]

    def call(**over):
        a = dict(args)
        kw = {k: over.pop(k) for k in list(over) if k not in a}
        a.update(over)
        return sampler_step(**a, **kw, backend=backend)

    cases = [
        (ValueError, "model_output", lambda: call(model_output=m[:, :2])),
        (TypeError, "model_output", lambda: call(model_output=m.double())),
        (TypeError, "sample", lambda: call(sample=x.long(), model_output=m.long())),
        (TypeError, "sample", lambda: call(sample=[1.0, 2.0])),
        (ValueError, "sample", lambda: call(sample=x[:0], model_output=m[:0], timesteps=ts[:0])),
        (TypeError, "timesteps", lambda: call(timesteps=ts.int())),
        (TypeError, "timesteps", lambda: call(timesteps=ts.float())),
        (TypeError, "timesteps", lambda: call(timesteps=3)),
        (ValueError, "timesteps", lambda: call(timesteps=ts[:1])),
        (ValueError, "coefs", lambda: call(coefs=c[:, :8])),
        (ValueError, "coefs", lambda: call(coefs=c[0])),
        (ValueError, "coefs", lambda: call(coefs=c[:0])),
        (TypeError, "coefs", lambda: call(coefs=c.double())),
        (TypeError, "coefs", lambda: call(coefs=c.half())),
        (ValueError, "model_output_uncond", lambda: call(model_output_uncond=m[:1])),
        (TypeError, "guidance_scale", lambda: call(model_output_uncond=m, guidance_scale="7")),
        (ValueError, "guidance_scale", lambda: call(model_output_uncond=m, guidance_scale=float("nan"))),
        (ValueError, "clip_range", lambda: call(clip_range=0.0)),
        (ValueError, "clip_range", lambda: call(clip_range=-1.0)),
        (TypeError, "clip_range", lambda: call(clip_range=True)),
        (ValueError, "threshold", lambda: call(threshold=torch.ones(3, device=dev))),
        (TypeError, "threshold", lambda: call(threshold=torch.ones(2, dtype=torch.long, device=dev))),
        (ValueError, "noise", lambda: call(noise=x[:1])),
        (TypeError, "noise", lambda: call(noise=x.half())),
        (ValueError, "noise or philox_seed", lambda: call(noise=x, philox_seed=1)),
        (ValueError, "history1", lambda: call(history1=x[:1])),
        (TypeError, "history1", lambda: call(history1=x.half())),
        (ValueError, "history2 is given without history1", lambda: call(history2=x)),
        (ValueError, "history2", lambda: call(history1=x, history2=x[:, :2])),
        (ValueError, "philox_seed", lambda: call(philox_seed=-1)),
        (ValueError, "philox_seed", lambda: call(philox_seed=2 ** 63)),
        (TypeError, "philox_seed", lambda: call(philox_seed=1.5)),
        (ValueError, "philox_offset", lambda: call(philox_seed=1, philox_offset=-3)),
        (TypeError, "philox_offset", lambda: call(philox_offset=0.5)),
        (RuntimeError, "requires grad", lambda: call(model_output=m.clone().requires_grad_())),
        (ValueError, "backend", lambda: sampler_step(**args, backend="tpu")),
    ]
    if dev.type == "cpu":
        meta = torch.empty(2, 3, 4, 4, device="meta")
        cases += [
            (ValueError, "model_output", lambda: call(model_output=meta)),
            (ValueError, "timesteps", lambda: call(timesteps=ts.to("meta"))),
            (ValueError, "coefs", lambda: call(coefs=c.to("meta"))),
            (ValueError, "threshold", lambda: call(threshold=torch.ones(2, device="meta"))),
        ]
    for exc, word, fn in cases:
        with pytest.raises(exc, match=word):
            fn()
    with torch.no_grad():  # an inference op is fine with grad-requiring inputs when no graph is being built
        call(model_output=m.clone().requires_grad_())


@pytest.mark.parametrize("backend", [p for p in ALL if p.values[0] != "triton"])
def test_timesteps_out_of_range(backend):
    """CPU (and the reference on CPU): IndexError naming timesteps. (CUDA: a device-side assert, not testable here.)"""
    args, _ = _make((3, 2, 4), torch.float32, torch.device("cpu"))
    for bad in ([0, T, 1], [0, -1, 2], [2 ** 40, 0, 0]):
        with pytest.raises(IndexError, match="timesteps"):
            sampler_step(**dict(args, timesteps=torch.tensor(bad)), backend=backend)
        with pytest.raises(IndexError, match="timesteps"):
            diffusion_training_inputs(args["sample"], args["model_output"], torch.tensor(bad), torch.rand(T, 2),
                                      backend=backend)


def test_timesteps_out_of_range_triton_interpreter():
    if "triton" not in gencore.available_backends() or torch.cuda.is_available():
        pytest.skip("checks the CPU-tensor (interpreter) path")
    args, _ = _make((3, 2, 4), torch.float32, torch.device("cpu"))
    with pytest.raises(IndexError, match="timesteps"):
        sampler_step(**dict(args, timesteps=torch.tensor([0, T, 1])), backend="triton")


@pytest.mark.parametrize("backend", ALL)
def test_bad_input_training_inputs(backend):
    dev = device_for(backend)
    x0 = torch.randn(2, 3, 4, device=dev)
    z = torch.randn(2, 3, 4, device=dev)
    ts = torch.tensor([0, 1], device=dev)
    c = torch.rand(3, 2, device=dev)
    cases = [
        (ValueError, "target", lambda: diffusion_training_inputs(x0, z, ts, c, "v", backend=backend)),
        (ValueError, "noise", lambda: diffusion_training_inputs(x0, z[:, :2], ts, c, backend=backend)),
        (TypeError, "noise", lambda: diffusion_training_inputs(x0, z.double(), ts, c, backend=backend)),
        (TypeError, "x0", lambda: diffusion_training_inputs(x0.int(), z.int(), ts, c, backend=backend)),
        (ValueError, "coefs", lambda: diffusion_training_inputs(x0, z, ts, torch.rand(3, 9, device=dev),
                                                                backend=backend)),
        (TypeError, "coefs", lambda: diffusion_training_inputs(x0, z, ts, c.double(), backend=backend)),
        (TypeError, "timesteps", lambda: diffusion_training_inputs(x0, z, ts.int(), c, backend=backend)),
        (ValueError, "timesteps", lambda: diffusion_training_inputs(x0, z, ts[:1], c, backend=backend)),
    ]
    for exc, word, fn in cases:
        with pytest.raises(exc, match=word):
            fn()


@pytest.mark.skipif(not HAS_CPU, reason="needs the C++ extension with the sampler_step kernels")
def test_raw_cpp_op_checks_its_arguments():
    """Calling torch.ops.gencore.* directly skips the Python checks; the C++ ones must still refuse bad input."""
    args, _ = _make((2, 3, 4), torch.float32, torch.device("cpu"))
    m, x, ts, c = args["model_output"], args["sample"], args["timesteps"], args["coefs"]
    op = torch.ops.gencore.sampler_step
    bad = [
        lambda: op(m[:1], x, ts, c, None, 1.0, None, None, None, None, 0),
        lambda: op(m, x, ts.int(), c, None, 1.0, None, None, None, None, 0),
        lambda: op(m, x, ts, c[:, :3], None, 1.0, None, None, None, None, 0),
        lambda: op(m, x, ts, c.double(), None, 1.0, None, None, None, None, 0),
        lambda: op(m.long(), x.long(), ts, c, None, 1.0, None, None, None, None, 0),
        lambda: op(m, x, torch.tensor([0, 99]), c, None, 1.0, None, None, None, None, 0),
        lambda: op(m, x, ts, c, None, 1.0, None, None, x, 3, 0),
        lambda: op(m, x, ts, c, None, 1.0, None, None, None, -3, 0),
        lambda: op(m, x, ts, c, None, 1.0, -1.0, None, None, None, 0),
        lambda: op(m, x, ts, c, None, 1.0, None, torch.ones(5), None, None, 0),
        lambda: torch.ops.gencore.diffusion_training_inputs(x, m[:1], ts, torch.rand(3, 2), False),
        lambda: torch.ops.gencore.diffusion_training_inputs(x, m, ts, torch.rand(3, 9), False),
        lambda: torch.ops.gencore.philox_uint32(x, -1, 0),
    ]
    for i, fn in enumerate(bad):
        with pytest.raises((RuntimeError, IndexError)):
            fn()


def test_table_columns_are_one_contract_in_python_and_cpp():
    """csrc/sampler_step_table.h (read by the CPU kernels, the CUDA binding and the CUDA kernels) names the same
    columns in the same order as gencore._rules.COEF_COLUMNS (read by the reference, the Triton kernels and the
    schedulers)."""
    header = (Path(__file__).resolve().parents[2] / "csrc" / "sampler_step_table.h").read_text()
    body = header[header.index("enum Column"):header.index("};")]
    names = re.findall(r"\bk([A-Z]\w*)", body)
    assert names[-1] == "NumCoefs"
    assert [n.lower() for n in names[:-1]] == [c.replace("_", "") for c in COEF_COLUMNS], (names, COEF_COLUMNS)
