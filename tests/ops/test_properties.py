"""Property-based tests of the public ops (hypothesis): generated shapes, dtypes, layouts and strides.

For every generated case and every backend available here: valid input equals the float64 reference within
gencore.testing's tolerances; a rerun is bit-identical, with 1 thread and with 2. Invalid input raises
ValueError / TypeError / RuntimeError with a message naming the argument. Bounded for CI: a fixed number of
examples and a fixed seed (derandomize), small tensors, no deadline (shared machines).
"""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gencore import available_backends  # noqa: E402
from gencore._rules import NUM_COEFS, accumulation_dtype  # noqa: E402
from gencore.ops import gradient_norm_penalty, group_norm_silu, sampler_step  # noqa: E402
from gencore.reference.gradient_penalty import gradient_norm_penalty_ref  # noqa: E402
from gencore.reference.group_norm_silu import group_norm_silu_ref  # noqa: E402
from gencore.reference.sampler_step import sampler_step_ref  # noqa: E402
from gencore.testing import assert_close  # noqa: E402

FUSED = [b for b in ("cpu", "triton") if b in available_backends()]
PROFILE = settings(max_examples=25, derandomize=True, deadline=None, database=None)
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])
LAYOUTS = st.sampled_from(["contiguous", "channels_last", "strided", "expanded"])


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a twice-as-wide buffer
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "expanded" and t.shape[0] > 1:  # one sample broadcast over the batch (stride 0)
        return t[:1].expand_as(t)
    return t


def _reruns_bit_identical(fn):
    first = fn()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            again = fn()
            for a, b in zip(first if isinstance(first, tuple) else (first,),
                            again if isinstance(again, tuple) else (again,)):
                assert torch.equal(a, b), f"not bit-identical with {n} thread(s)"
    finally:
        torch.set_num_threads(threads)
    return first


@st.composite
def group_norm_cases(draw):
    groups = draw(st.integers(1, 4))
    channels = groups * draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 3)), channels, draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return dict(shape=shape, groups=groups, dtype=draw(DTYPES), layout=draw(LAYOUTS),
                temb=draw(st.booleans()), affine=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                offset=draw(st.sampled_from([0.0, 3.0, -100.0])))


@pytest.mark.parametrize("backend", FUSED)
@PROFILE
@given(case=group_norm_cases())
def test_group_norm_silu_matches_reference(backend, case):
    g = torch.Generator().manual_seed(case["seed"])
    n, c = case["shape"][:2]
    x = _layout((torch.randn(case["shape"], generator=g, dtype=torch.float64) + case["offset"]).to(case["dtype"]),
                case["layout"])
    weight = torch.randn(c, generator=g, dtype=torch.float64).to(case["dtype"]) if case["affine"] else None
    bias = torch.randn(c, generator=g, dtype=torch.float64).to(case["dtype"]) if case["affine"] else None
    temb = torch.randn(n, c, generator=g, dtype=torch.float64).to(case["dtype"]) if case["temb"] else None
    y = _reruns_bit_identical(lambda: group_norm_silu(x, case["groups"], weight, bias, temb=temb, backend=backend))
    truth = group_norm_silu_ref(x.double(), case["groups"], None if weight is None else weight.double(),
                                None if bias is None else bias.double(), temb=None if temb is None else temb.double())
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, truth, case["dtype"])


@st.composite
def sampler_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = (draw(st.integers(1, 4)),) + tuple(draw(st.integers(1, 5)) for _ in range(rank - 1))
    return dict(shape=shape, dtype=draw(DTYPES), layout=draw(LAYOUTS), seed=draw(st.integers(0, 2**16)),
                uncond=draw(st.booleans()), guidance=draw(st.sampled_from([0.0, 1.0, 3.5])),
                clip=draw(st.sampled_from([None, 1.0])))


@pytest.mark.parametrize("backend", FUSED)
@PROFILE
@given(case=sampler_cases())
def test_sampler_step_matches_reference(backend, case):
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    acc = accumulation_dtype(dtype)
    sample = _layout(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype), case["layout"])
    model = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    coefs = (torch.rand(7, NUM_COEFS, generator=g, dtype=torch.float64) * 2 - 1).to(acc)
    timesteps = torch.randint(0, 7, (shape[0],), generator=g)
    kw = dict(clip_range=case["clip"])
    if case["uncond"]:
        kw.update(model_output_uncond=torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
                  guidance_scale=case["guidance"])
    prev, x0 = _reruns_bit_identical(lambda: sampler_step(model, sample, timesteps, coefs, **kw, backend=backend))
    ref_prev, ref_x0 = sampler_step_ref(model, sample, timesteps, coefs, **kw, upcast=True)
    assert_close(x0, ref_x0, dtype)
    assert_close(prev, ref_prev, dtype)


@pytest.mark.parametrize("backend", FUSED)
@PROFILE
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), dtype=DTYPES, layout=LAYOUTS,
       seed=st.integers(0, 2**16), center=st.sampled_from([0.0, 1.0]), one_sided=st.booleans())
def test_gradient_norm_penalty_matches_reference(backend, shape, dtype, layout, seed, center, one_sided):
    g = torch.Generator().manual_seed(seed)
    grad = _layout(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype), layout)
    penalty, norms = _reruns_bit_identical(
        lambda: gradient_norm_penalty(grad, center, one_sided, return_norms=True, backend=backend))
    truth, truth_norms = gradient_norm_penalty_ref(grad.double(), center, one_sided)
    assert_close(norms, truth_norms, accumulation_dtype(dtype))
    assert_close(penalty, truth, accumulation_dtype(dtype))


@pytest.mark.parametrize("backend", FUSED)
@PROFILE
@given(which=st.sampled_from(["weight", "bias", "temb", "groups", "x_dtype", "x_rank"]), seed=st.integers(0, 99))
def test_group_norm_silu_bad_input_names_the_argument(backend, which, seed):
    x, weight, bias, temb, groups = torch.randn(2, 4, 3, 3), torch.ones(4), torch.zeros(4), torch.randn(2, 4), 2
    if which == "weight":
        weight = torch.ones(3 + seed % 2 * 2)
    elif which == "bias":
        bias = torch.zeros(4, dtype=torch.float64)
    elif which == "temb":
        temb = torch.randn(2, 5)
    elif which == "groups":
        groups = 3
    elif which == "x_dtype":
        x = x.to(torch.int32)
    else:
        x = torch.randn(4)
    name = {"groups": "num_groups", "x_dtype": "x", "x_rank": "x"}.get(which, which)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=name):
        group_norm_silu(x, groups, weight, bias, temb=temb, backend=backend)
