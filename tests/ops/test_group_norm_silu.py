"""gencore.ops.group_norm_silu: every backend against the float64 reference, outputs and all gradients."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import gencore
from gencore._rules import is_channels_last
from gencore.ops import register_triton_ops
from gencore.ops.group_norm_silu import group_norm_silu
from gencore.reference.group_norm_silu import group_norm_silu_ref, group_norm_silu_stats_ref
from gencore.testing import assert_close, assert_equal, backend_params, device_for, tolerance

BACKENDS = backend_params(("cpu", "cuda", "triton"))
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (N, C, spatial, G), each named for the corner it covers.
SHAPES = {
    "batch1-groups1": (1, 4, (5, 3), 1),
    "groups3": (2, 6, (5, 3), 3),
    "groups7-C-not-multiple-of-8-33x17": (2, 14, (33, 17), 7),
    "groups32": (2, 64, (8, 8), 32),
    "groups-eq-C-1x1": (2, 12, (1, 1), 12),
    "cpg160": (1, 160, (4, 4), 1),
    "volume-3d": (2, 10, (3, 4, 5), 5),
    "sequence-1d": (3, 9, (17,), 3),
    "no-spatial": (2, 8, (), 4),
}
LARGE_SHAPES = {
    "64x64-groups32": (1, 64, (64, 64), 32),
    "prime-spatial-37x41": (2, 30, (37, 41), 6),
    # One channel, 67591 positions: many statistics chunks per channel merged, an odd tail, batch 1 x 1 group
    # (the cpu backend's split schedule, where one (n, g) slab is spread over all threads).
    "one-channel-big-S-257x263": (1, 1, (257, 263), 1),
}


def _make(shape, dtype, device, *, affine=True, temb=True, scale_shift=True, offset=0.0, seed=0):
    n, c, spatial, g = shape
    gen = torch.Generator().manual_seed(seed)

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).to(device)

    return dict(
        x=rnd(n, c, *spatial, shift=offset),
        num_groups=g,
        weight=rnd(c, scale=0.5, shift=1.0) if affine else None,
        bias=rnd(c, scale=0.5) if affine else None,
        temb=rnd(n, c) if temb else None,
        scale_shift=rnd(n, 2 * c, scale=0.5) if scale_shift else None,
    )


def _truth(args, activation="silu"):
    """The float64 reference output from the same (already rounded) inputs."""
    return group_norm_silu_ref(args["x"], args["num_groups"], args["weight"], args["bias"], 1e-5,
                               temb=args["temb"], scale_shift=args["scale_shift"], activation=activation,
                               upcast=True)


def _grads(fn, args, grad_out):
    leaves = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    y = fn(leaves)
    y.backward(grad_out.to(y.dtype))
    names = ["x", "weight", "bias", "temb", "scale_shift"]
    return y, {k: leaves[k].grad for k in names if isinstance(leaves[k], torch.Tensor)}


def _fused(backend, activation="silu"):
    def fn(a):
        return group_norm_silu(a["x"], a["num_groups"], a["weight"], a["bias"], temb=a["temb"],
                               scale_shift=a["scale_shift"], activation=activation, backend=backend)
    return fn


def _reference64(activation="silu"):
    def fn(a):
        return group_norm_silu_ref(a["x"], a["num_groups"], a["weight"], a["bias"], temb=a["temb"],
                                   scale_shift=a["scale_shift"], activation=activation, upcast=True)
    return fn


def _check_fwd_bwd(backend, args, dtype, activation="silu"):
    grad_out = torch.randn(args["x"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(dtype).to(args["x"].device)
    y, grads = _grads(_fused(backend, activation), args, grad_out)
    # The truth gets the same (rounded) gradient the fused op saw.
    ref_y, ref_grads = _grads(_reference64(activation), args, grad_out)
    assert y.dtype == dtype and y.shape == args["x"].shape
    assert_close(y, ref_y, dtype, msg=f"{backend} output")
    for k in ref_grads:
        assert grads[k] is not None, f"no gradient for {k}"
        assert grads[k].dtype == args[k].dtype and grads[k].shape == args[k].shape
        assert_close(grads[k], ref_grads[k], dtype, kind="grad", msg=f"{backend} grad {k}")
    return y


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(backend, dtype, shape):
    args = _make(shape, dtype, device_for(backend))
    _check_fwd_bwd(backend, args, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", LARGE_SHAPES.values(), ids=LARGE_SHAPES.keys())
def test_large_shapes(backend, shape):
    if backend == "triton" and not torch.cuda.is_available():
        shape = (shape[0], shape[1], tuple(min(s, 24) for s in shape[2]), shape[3])  # the interpreter is slow
    args = _make(shape, torch.float32, device_for(backend))
    _check_fwd_bwd(backend, args, torch.float32)


OPTIONS = list(itertools.product([True, False], [True, False], [True, False], ["silu", None]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine,temb,scale_shift,activation", OPTIONS,
                         ids=[f"affine{a}-temb{t}-ss{s}-{act}" for a, t, s, act in OPTIONS])
def test_options(backend, affine, temb, scale_shift, activation):
    args = _make((2, 12, (5, 7), 4), torch.float32, device_for(backend), affine=affine, temb=temb,
                 scale_shift=scale_shift)
    _check_fwd_bwd(backend, args, torch.float32, activation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_mean_offset(backend, dtype):
    """x = 1000 + randn: E[x^2] - E[x]^2 in float32 would lose every significant digit of the variance."""
    args = _make((2, 16, (9, 11), 4), dtype, device_for(backend), offset=1000.0)
    _check_fwd_bwd(backend, args, dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_backward_keeps_the_forward_centre_on_offset_data(layout):
    """x = 1e4 + 0.01 randn: a float32 mean is 5e-4 (0.05 sigma) off, so a backward that rebuilt its centre from a
    float32-saved mean was 7% off (the forward, centred in double, 5e-7). The saved mean is float64 and the backward
    rebuilds the forward's exact centre: both hold to the float64 reference of the same float32 inputs."""
    args = _make((2, 8, (9, 11), 2), torch.float32, "cpu", offset=0.0)
    args["x"] = 1e4 + 0.01 * args["x"]
    args["temb"] = 0.01 * args["temb"]
    if layout == "channels_last":
        args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    g = torch.randn(args["x"].shape, generator=torch.Generator().manual_seed(1))
    y, grads = _grads(_fused("cpu"), args, g)
    y_ref, ref = _grads(_reference64(), args, g.double())
    assert_close(y, y_ref)
    for k in ref:
        assert_close(grads[k], ref[k], kind="grad", msg=k)


def _layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        yield "channels_last_3d", x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 3:
        yield "channels_innermost_1d", x.transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.cat([x, x], dim=-1)
    yield "strided_view", wide[..., ::2] if x.shape[-1] > 1 else wide[..., :1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 12, (6, 5), 4), (2, 8, (3, 4, 5), 2), (2, 6, (7,), 3)], ids=["2d", "3d", "1d"])
def test_layouts(backend, shape):
    base = _make(shape, torch.float32, device_for(backend))
    for name, x in _layouts(base["x"]):
        args = dict(base, x=x)
        y = _check_fwd_bwd(backend, args, torch.float32)
        if name.startswith("channels"):
            assert is_channels_last(y), f"{backend}: {name} input must give a {name} output"
        elif name == "contiguous":
            assert y.is_contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_single_sample_takes_the_layout_torch_gives_it(backend):
    """diffusers' attention blocks return (1, C, H, W) views of a (1, HW, C) tensor: channels innermost, batch stride
    C. torch's GroupNorm answers them (suggest_memory_format) with a contiguous output, and a drop-in must too: a
    channels_last output made every later convolution of an SD VAE decoder run on channels_last inputs."""
    base = _make((1, 12, (6, 5), 4), torch.float32, device_for(backend))
    attention_view = base["x"].flatten(2).transpose(1, 2).contiguous().transpose(1, 2).reshape(base["x"].shape)
    canonical = base["x"].contiguous(memory_format=torch.channels_last)
    assert attention_view.stride(0) == 12 and attention_view.stride(1) == 1
    for x in (attention_view, canonical):
        y = _check_fwd_bwd(backend, dict(base, x=x), torch.float32)
        torch_y = torch.nn.functional.group_norm(x.cpu(), 4)
        assert y.stride() == torch_y.stride(), f"{backend}: strides {y.stride()}, torch's {torch_y.stride()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 12, (6, 5), 4), (2, 40, (3, 7), 5)], ids=["C12", "C40-vector-tail"])
def test_channels_last_every_dtype(backend, dtype, shape):
    """The channels-last kernels vectorize over channels: C smaller than, and not a multiple of, the vector width."""
    args = _make(shape, dtype, device_for(backend))
    args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    y = _check_fwd_bwd(backend, args, dtype)
    assert is_channels_last(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_out_layout_differs_from_input(backend):
    """torch.compile may hand the backward a channels_last tangent for a contiguous input (and vice versa)."""
    args = _make((2, 8, (5, 6), 4), torch.float32, device_for(backend))
    grad_out = torch.randn(args["x"].shape, dtype=torch.float32, device=args["x"].device)
    for x, g in [(args["x"], grad_out.contiguous(memory_format=torch.channels_last)),
                 (args["x"].contiguous(memory_format=torch.channels_last), grad_out)]:
        a = dict(args, x=x)
        _, grads = _grads(_fused(backend), a, g)
        _, ref = _grads(_reference64(), a, g.double())
        for k in ref:
            assert_close(grads[k], ref[k], torch.float32, kind="grad", msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_statistics(backend):
    args = _make((2, 12, (5, 7), 3), torch.float32, device_for(backend), offset=50.0)
    if backend == "triton":
        register_triton_ops()
    op = torch.ops.gencore.group_norm_silu_fwd_triton if backend == "triton" else torch.ops.gencore.group_norm_silu_fwd
    _, mean, rstd = op(args["x"], args["weight"], args["bias"], args["temb"], args["scale_shift"], 3, 1e-5, "silu")
    ref_mean, ref_rstd = group_norm_silu_stats_ref(args["x"], 3, 1e-5, args["temb"])
    assert mean.dtype == torch.float64 and mean.shape == (2, 3)  # every backend: the rule in the ops module doc
    assert rstd.dtype == torch.float32 and rstd.shape == (2, 3)
    assert_close(mean, ref_mean, torch.float32)
    assert_close(rstd, ref_rstd, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    args = _make((2, 32, (9, 9), 8), torch.float32, device_for(backend))
    grad_out = torch.randn(args["x"].shape, generator=torch.Generator().manual_seed(3)).to(args["x"].device)
    y1, g1 = _grads(_fused(backend), args, grad_out)
    y2, g2 = _grads(_fused(backend), args, grad_out)
    assert torch.equal(y1, y2)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


@pytest.mark.parametrize("backend", backend_params(("triton",)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_split_reductions(backend, layout, monkeypatch):
    """The split-reduction paths at full depth on a small shape: several spatial chunks per sample (channels_last:
    more than one merge block of them), more channels per group than one merge block, more partials than one vector."""
    from gencore.kernels import group_norm_silu as tk

    monkeypatch.setattr(tk, "MIN_CHUNK_S", 1)  # as at large spatial sizes: one chunk per tile
    shape = (1, 80, (24, 24), 1)
    args = _make(shape, torch.float32, device_for(backend), offset=100.0)
    if layout == "channels_last":
        args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    plan = tk.launch_plan(1, 80, 24 * 24, layout == "channels_last")
    assert plan["SPLIT"] > 1 and plan["SPLIT"] * 80 > tk.MERGE_BLOCK and 80 > tk.MERGE_BLOCK_CG
    assert layout == "contiguous" or plan["SPLIT"] > tk.MERGE_BLOCK_SPLIT
    _check_fwd_bwd(backend, args, torch.float32)


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
@pytest.mark.parametrize("shape", [(3, 4, (5, 3), 1), (4, 16, (9, 9), 4), (1, 2, (150, 150), 2), (2, 24, (70, 70), 3)],
                         ids=["3-slabs", "16-slabs", "big-S-1-sample", "channels-last-many-row-blocks"])
def test_thread_count_independent(backend, shape):
    """Bit-identical outputs and gradients with 1 and 2 threads: chunking depends on the shape only, and the cpu
    backend's two schedules (whole slabs per thread, or chunks spread over threads when there are few slabs)
    compute the same partials and merge them in the same order."""
    args = _make(shape, torch.float32, torch.device("cpu"))
    grad_out = torch.randn(args["x"].shape, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        for x in (args["x"], args["x"].contiguous(memory_format=torch.channels_last)):
            a = dict(args, x=x)
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(_grads(_fused(backend), a, grad_out))
            (y1, g1), (y2, g2) = results
            assert torch.equal(y1, y2)
            for k in g1:
                assert torch.equal(g1[k], g2[k]), k
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")
def test_cpu_output_cache_reuse_is_safe():
    """Outputs of 1 MiB and more come from a cache of freed buffers (csrc/cpu_output_pool.h): a live output is never
    handed out again, a reused buffer is fully overwritten, and the cache can be emptied."""
    xs = [torch.randn(2, 8, 128, 128, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    truth = [group_norm_silu_ref(x, 4, upcast=True) for x in xs]
    y0 = group_norm_silu(xs[0], 4, backend="cpu")
    y1 = group_norm_silu(xs[1], 4, backend="cpu")
    assert y0.data_ptr() != y1.data_ptr()
    del y1  # its buffer goes back to the cache ...
    y2 = group_norm_silu(xs[2], 4, backend="cpu")  # ... and is likely reused here: must hold xs[2]'s result
    assert_close(y0, truth[0], torch.float32)
    assert_close(y2, truth[2], torch.float32)
    del y2
    cache_on = os.environ.get("GENCORE_CPU_CACHE_MB", "") != "0"
    assert torch.ops.gencore.cpu_empty_cache() >= (xs[0].numel() * 4 if cache_on else 0)
    assert torch.ops.gencore.cpu_empty_cache() == 0
    y3 = group_norm_silu(xs[1], 4, backend="cpu")
    assert_close(y3, truth[1], torch.float32)


@pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")
@pytest.mark.skipif(os.environ.get("GENCORE_CPU_CACHE_MB", "") == "0", reason="the output cache is turned off")
@pytest.mark.parametrize("element_offset", [0, 16, 48, 1000])
def test_cpu_output_starts_at_the_input_page_offset(element_offset):
    """Cached outputs start at their input's offset within a 4 KiB page (to 64 bytes), so a kernel's stores never
    trail its loads by one vector in the low 12 address bits (4K aliasing; csrc/cpu_output_pool.h). The buffer's
    slack must not leak into the result, and a resize_ of such an output still works."""
    base = torch.randn(2 * 8 * 128 * 128 + 2048, generator=torch.Generator().manual_seed(0))
    x = base[element_offset:element_offset + 2 * 8 * 128 * 128].view(2, 8, 128, 128)
    torch.ops.gencore.cpu_empty_cache()  # a fresh block, and then ...
    for _ in range(2):                   # ... the same block again from the cache
        y = group_norm_silu(x, 4, backend="cpu")
        assert y.data_ptr() % 4096 == x.data_ptr() % 4096 // 64 * 64
        assert y.data_ptr() % 64 == 0
        assert_close(y, group_norm_silu_ref(x, 4, upcast=True), torch.float32)
        del y
    y = group_norm_silu(x, 4, backend="cpu")
    y.resize_(3, 8, 128, 128)  # grows through the storage's allocator
    y[2] = 1.0
    assert float(y[2].mean()) == 1.0


GRADCHECK_BACKENDS = [pytest.param("reference", id="reference")] + backend_params(("cpu", "triton"))


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("activation", ["silu", None])
def test_gradcheck_and_gradgradcheck(backend, activation):
    args = _make((2, 6, (3, 2), 3), torch.float64, device_for(backend))
    names = ["x", "weight", "bias", "temb", "scale_shift"]
    inputs = tuple(args[k].clone().requires_grad_() for k in names)

    def fn(x, w, b, t, ss):
        return group_norm_silu(x, 3, w, b, temb=t, scale_shift=ss, activation=activation, backend=backend)

    # The Triton interpreter runs each launch in Python: the full numerical Jacobian (2 forwards per input element,
    # ~500 launches) takes minutes. fast_mode checks v^T J u for random u, v instead, which a wrong gradient fails just
    # the same, with a handful of evaluations.
    fast = backend == "triton" and gencore.backends.triton_interpret()
    assert torch.autograd.gradcheck(fn, inputs, **tolerance("gradcheck"), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, inputs, **tolerance("gradgradcheck"), fast_mode=fast)


# ---------------------------------------------------------------------------------------------------------------------
# torch.library integration


@pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")
def test_opcheck_cpp_ops():
    args = _make((2, 6, (4, 3), 3), torch.float32, torch.device("cpu"))
    fwd_args = (args["x"].requires_grad_(), args["weight"], args["bias"], args["temb"], args["scale_shift"], 3, 1e-5,
                "silu")
    torch.library.opcheck(torch.ops.gencore.group_norm_silu_fwd.default, fwd_args)
    y, mean, rstd = torch.ops.gencore.group_norm_silu_fwd(*fwd_args)
    torch.library.opcheck(torch.ops.gencore.group_norm_silu_bwd.default,
                          (torch.randn_like(y), args["x"].detach(), args["weight"], args["bias"], args["temb"],
                           args["scale_shift"], mean, rstd, 3, "silu"))


@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference")] + backend_params(("cpu",)))
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.weight = torch.nn.Parameter(torch.rand(8) + 0.5)
            self.bias = torch.nn.Parameter(torch.randn(8))

        def forward(self, x, temb):
            h = group_norm_silu(x, 4, self.weight, self.bias, temb=temb, backend=backend)
            return self.conv(h) + x

    block = Block()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    temb = torch.randn(2, 8)
    eager = block(x, temb)
    eager.sum().backward()
    eager_grad = x.grad.clone()
    x.grad = None
    compiled = torch.compile(block, fullgraph=True)(x, temb)
    compiled.sum().backward()
    assert_close(compiled, eager, "float32_reordered")
    assert_close(x.grad, eager_grad, "float32_reordered")


@pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")
def test_torch_export():
    class Block(torch.nn.Module):
        def forward(self, x, temb):
            return group_norm_silu(x, 4, temb=temb, backend="cpu")

    x, temb = torch.randn(2, 8, 5, 5), torch.randn(2, 8)
    exported = torch.export.export(Block(), (x, temb))
    assert_equal(exported.module()(x, temb), Block()(x, temb))  # the same op calls


# ---------------------------------------------------------------------------------------------------------------------
# Backend selection


def test_backend_selection_order(monkeypatch):
    x = torch.randn(2, 4, 3, 3)
    monkeypatch.setattr(gencore.backends, "_environment", "reference")  # GENCORE_BACKEND as read at import
    assert gencore.get_backend() == "reference"
    gencore.set_backend("auto")
    try:
        assert gencore.get_backend() == "auto"
        with gencore.use_backend("reference"):
            assert gencore.get_backend() == "reference"
            with gencore.use_backend("auto"):
                assert gencore.get_backend() == "auto"
            assert gencore.get_backend() == "reference"
    finally:
        gencore.set_backend(None)
    assert gencore.get_backend() == "reference"  # the environment again
    assert gencore.backends.resolve("reference", x.device) == "reference"
    monkeypatch.setattr(gencore.backends, "_environment", None)
    expected = "cpu" if "cpu" in gencore.available_backends() else "reference"
    assert gencore.backends.resolve(None, x.device) == expected


def test_explicit_backend_that_cannot_serve_raises(monkeypatch):
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="cuda"):
        group_norm_silu(x, 2, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        group_norm_silu(x, 2, backend="tpu")
    monkeypatch.setattr(gencore.backends, "_environment", "nope")
    with pytest.raises(ValueError, match="GENCORE_BACKEND"):
        group_norm_silu(x, 2)


def test_backend_environment_variable_is_read_when_the_ops_load():
    script = ("import os, gencore; before = gencore.get_backend(); os.environ['GENCORE_BACKEND'] = 'cpu'; "
              "print(before, gencore.get_backend())")
    env = {**os.environ, "GENCORE_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["reference", "reference"]  # set after the import: set_backend's job, not the variable's


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear exception naming the argument, on every backend.

ALL = [pytest.param("reference", id="reference")] + BACKENDS


@pytest.mark.parametrize("backend", ALL)
def test_bad_input(backend):
    dev = device_for(backend)
    x = torch.randn(2, 6, 4, 4, device=dev)
    w = torch.ones(6, device=dev)
    cases = [
        (ValueError, "num_groups", lambda: group_norm_silu(x, 4, backend=backend)),
        (ValueError, "num_groups", lambda: group_norm_silu(x, 0, backend=backend)),
        (TypeError, "num_groups", lambda: group_norm_silu(x, 2.0, backend=backend)),
        (ValueError, "temb", lambda: group_norm_silu(x, 2, temb=torch.randn(2, 5, device=dev), backend=backend)),
        (ValueError, "scale_shift", lambda: group_norm_silu(x, 2, scale_shift=torch.randn(2, 6, device=dev),
                                                            backend=backend)),
        (ValueError, "weight", lambda: group_norm_silu(x, 2, torch.ones(5, device=dev), backend=backend)),
        (TypeError, "weight", lambda: group_norm_silu(x, 2, w.double(), backend=backend)),
        (TypeError, "bias", lambda: group_norm_silu(x, 2, w, w.half(), backend=backend)),
        (TypeError, "x", lambda: group_norm_silu(x.long(), 2, backend=backend)),
        (TypeError, "x", lambda: group_norm_silu(x.numpy() if dev.type == "cpu" else 3, 2, backend=backend)),
        (ValueError, "x", lambda: group_norm_silu(x[:0], 2, backend=backend)),
        (ValueError, "x", lambda: group_norm_silu(torch.randn(6, device=dev), 2, backend=backend)),
        (ValueError, "activation", lambda: group_norm_silu(x, 2, activation="gelu", backend=backend)),
        (ValueError, "eps", lambda: group_norm_silu(x, 2, eps=-1.0, backend=backend)),
    ]
    if dev.type == "cpu" and torch.device("meta") != dev:
        cases.append((ValueError, "device", lambda: group_norm_silu(x, 2, torch.ones(6, device="meta"),
                                                                   backend=backend)))
    for exc, word, call in cases:
        with pytest.raises(exc, match=word):
            call()


@pytest.mark.skipif("cpu" not in gencore.available_backends(), reason="needs the C++ extension")
def test_raw_cpp_op_checks_its_arguments():
    """Calling torch.ops.gencore.* directly skips the Python checks; the C++ ones must still refuse bad input."""
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(RuntimeError):
        torch.ops.gencore.group_norm_silu_fwd(x, None, None, None, None, 4, 1e-5, "silu")
    with pytest.raises(RuntimeError):
        torch.ops.gencore.group_norm_silu_fwd(x, torch.ones(5), None, None, None, 2, 1e-5, "silu")
    with pytest.raises(RuntimeError):
        torch.ops.gencore.group_norm_silu_fwd(x, None, None, torch.ones(2, 5), None, 2, 1e-5, "silu")
    with pytest.raises(RuntimeError):
        torch.ops.gencore.group_norm_silu_fwd(x.long(), None, None, None, None, 2, 1e-5, "silu")
    with pytest.raises(RuntimeError):
        torch.ops.gencore.group_norm_silu_fwd(x[:0], None, None, None, None, 2, 1e-5, "silu")
    with pytest.raises(RuntimeError, match="activation must be 'silu' or None"):
        torch.ops.gencore.group_norm_silu_fwd(x, None, None, None, None, 2, 1e-5, "relu")
    y, mean, rstd = torch.ops.gencore.group_norm_silu_fwd(x, None, None, None, None, 2, 1e-5, None)
    assert_close(y, group_norm_silu_ref(x, 2, activation=None), torch.float32)


@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_raw_triton_op_checks_its_arguments(backend):
    """torch.ops.gencore.*_triton skip the public function's checks; the launchers must refuse bad input themselves
    (a Triton kernel would read out of bounds instead)."""
    dev = device_for(backend)
    x = torch.randn(2, 6, 4, 4, device=dev)
    register_triton_ops()
    fwd, bwd = torch.ops.gencore.group_norm_silu_fwd_triton, torch.ops.gencore.group_norm_silu_bwd_triton
    with pytest.raises(ValueError, match="num_groups"):
        fwd(x, None, None, None, None, 4, 1e-5, "silu")
    with pytest.raises(ValueError, match="weight"):
        fwd(x, torch.ones(5, device=dev), None, None, None, 2, 1e-5, "silu")
    with pytest.raises(ValueError, match="temb"):
        fwd(x, None, None, torch.ones(2, 5, device=dev), None, 2, 1e-5, "silu")
    with pytest.raises(TypeError, match="x"):
        fwd(x.long(), None, None, None, None, 2, 1e-5, "silu")
    with pytest.raises(ValueError, match="x"):
        fwd(x[:0], None, None, None, None, 2, 1e-5, "silu")
    y, mean, rstd = fwd(x, None, None, None, None, 2, 1e-5, "silu")
    with pytest.raises(ValueError, match="grad_out"):
        bwd(y[:, :3], x, None, None, None, None, mean, rstd, 2, "silu")
    with pytest.raises(ValueError, match="mean"):
        bwd(y, x, None, None, None, None, mean[:, :1], rstd, 2, "silu")
    with pytest.raises(ValueError, match="rstd"):
        bwd(y, x, None, None, None, None, mean, rstd.double(), 2, "silu")


@pytest.mark.skipif(os.environ.get("GENCORE_CPU_CACHE_MB", "") == "0", reason="the output cache is turned off")
def test_cpu_output_cache_is_visible_bounded_and_can_be_turned_off():
    """The cpu backend's output cache (csrc/cpu_output_pool.h): gencore.cpu_output_cache() reports what it holds and
    its limit, a limit of 0 turns it off (and releases what it held), and outputs are reused only while it is on."""
    if "cpu" not in gencore.available_backends():
        pytest.skip("no cpu backend here")
    before = gencore.cpu_output_cache()
    try:
        x = torch.randn(2, 8, 128, 128)  # 1 MiB output: cached when freed, once its size is asked for again
        group_norm_silu(x, 4, backend="cpu")
        y = group_norm_silu(x, 4, backend="cpu")
        ptr = y.data_ptr()
        del y
        held = gencore.cpu_output_cache()
        assert held["cached_mb"] >= 1.0 and held["limit_mb"] == before["limit_mb"]
        assert group_norm_silu(x, 4, backend="cpu").data_ptr() == ptr  # the freed buffer came back
        off = gencore.cpu_output_cache(limit_mb=0)
        assert off == {"cached_mb": 0.0, "limit_mb": 0.0}
        y = group_norm_silu(x, 4, backend="cpu")
        del y
        assert gencore.cpu_output_cache()["cached_mb"] == 0.0  # off: nothing kept
        with pytest.raises(ValueError, match="limit_mb"):
            gencore.cpu_output_cache(limit_mb=-1)
    finally:
        gencore.cpu_output_cache(limit_mb=before["limit_mb"])
    assert gencore.cpu_output_cache()["limit_mb"] == before["limit_mb"]
