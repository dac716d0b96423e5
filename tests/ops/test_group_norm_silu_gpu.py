"""GPU-only checks of group_norm_silu's fused CUDA-tensor backends (cuda, and triton where it applies).

tests/ops/test_group_norm_silu.py already runs its whole matrix on CUDA tensors for the cuda and triton backends when a
GPU is present (gencore.testing.device_for). This file adds what only a GPU can show: the split reduction at batch 1
with 32 groups and large spatial sizes, 64-bit indexing past 2^31 elements, capture in a CUDA graph, launches on the
caller's current stream, the device guard, opcheck and torch.compile on CUDA tensors. Every test is marked `gpu`
(skipped without a CUDA device, see tests/conftest.py); bench/gpu.sh runs them.
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore._rules import is_channels_last
from gencore.ops.group_norm_silu import group_norm_silu
from gencore.reference.group_norm_silu import group_norm_silu_ref, group_norm_silu_stats_ref
from gencore.testing import assert_close, backend_params, tolerance

pytestmark = pytest.mark.gpu

CUDA_BACKENDS = backend_params(("cuda", "triton"))
NAMES = ["x", "weight", "bias", "temb", "scale_shift"]


def _make(n, c, spatial, dtype, *, offset=0.0, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=gen, device=device, dtype=torch.float32) * scale + shift).to(dtype)

    return dict(x=rnd(n, c, *spatial, shift=offset), weight=rnd(c, scale=0.5, shift=1.0), bias=rnd(c, scale=0.5),
                temb=rnd(n, c), scale_shift=rnd(n, 2 * c, scale=0.5))


def _fused_and_grads(backend, a, groups, grad_out):
    leaves = {k: a[k].detach().clone().requires_grad_() for k in NAMES}
    y = group_norm_silu(leaves["x"], groups, leaves["weight"], leaves["bias"], temb=leaves["temb"],
                        scale_shift=leaves["scale_shift"], backend=backend)
    y.backward(grad_out)
    return y, {k: leaves[k].grad for k in NAMES}


def _reference_and_grads(a, groups, grad_out):
    leaves = {k: a[k].detach().double().requires_grad_() for k in NAMES}
    y = group_norm_silu_ref(leaves["x"], groups, leaves["weight"], leaves["bias"], temb=leaves["temb"],
                            scale_shift=leaves["scale_shift"], upcast=True)
    y.backward(grad_out.double())
    return y, {k: leaves[k].grad for k in NAMES}


def _check(backend, a, groups, dtype):
    grad_out = torch.randn(a["x"].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)).to(dtype)
    y, grads = _fused_and_grads(backend, a, groups, grad_out)
    ref, ref_grads = _reference_and_grads(a, groups, grad_out)
    assert is_channels_last(y) == is_channels_last(a["x"])
    assert_close(y, ref, dtype, msg=f"{backend} output")
    for k in NAMES:
        assert_close(grads[k], ref_grads[k], dtype, kind="grad", msg=f"{backend} grad {k}")
    return y, grads


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 512, (64, 64), 32), (1, 32, (384, 384), 32), (2, 320, (32, 32), 32)],
                         ids=["sd-block-batch1", "cpg1-large-spatial", "batch2"])
def test_batch1_groups32_large_spatial(backend, layout, dtype, shape):
    """The shapes that need the split reduction: N*G blocks alone would leave most of an H100's 132 SMs idle."""
    n, c, spatial, g = shape
    a = _make(n, c, spatial, dtype, offset=2.0)
    if layout == "channels_last":
        a["x"] = a["x"].contiguous(memory_format=torch.channels_last)
    _check(backend, a, g, dtype)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_deterministic_at_batch1(backend):
    a = _make(1, 512, (64, 64), torch.float16)
    grad_out = torch.randn_like(a["x"])
    y1, g1 = _fused_and_grads(backend, a, 32, grad_out)
    y2, g2 = _fused_and_grads(backend, a, 32, grad_out)
    assert torch.equal(y1, y2)
    for k in NAMES:
        assert torch.equal(g1[k], g2[k]), k


def _free_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return free


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_int32_overflow_indexing(backend, layout):
    """More than 2^31 elements in float16: offsets past 2^31 must not wrap (int64 indexing everywhere).

    x is (1, 32, 8192, 8200) = 2.15e9 elements, one channel per group, so each channel is its own GroupNorm and the
    float64 reference runs on single channels: the first, and the last (whose elements all sit past 2^31).
    """
    n, c, h, w = 1, 32, 8192, 8200
    numel = n * c * h * w
    assert numel > 2**31
    need = 5 * numel * 2 + (2 << 30)  # x, y, grad_out, grad_x, a copy for the layout, plus headroom
    if _free_bytes() < need:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free GPU memory, {_free_bytes() / 2**30:.0f} GiB free")
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.rand(c, device="cuda") + 0.5).half()
    bias = torch.randn(c, device="cuda").half()
    temb = torch.randn(n, c, device="cuda").half()
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias, temb)]
    y = group_norm_silu(leaves[0], c, leaves[1], leaves[2], temb=leaves[3], backend=backend)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    gx, gw, gb, gt = (t.grad for t in leaves)
    del leaves
    for ch in (0, c - 1):
        sl = slice(ch, ch + 1)
        ref_leaves = [t[:, sl].double().requires_grad_() for t in (x, weight[None], bias[None], temb)]
        ref = group_norm_silu_ref(ref_leaves[0], 1, ref_leaves[1][0], ref_leaves[2][0], temb=ref_leaves[3],
                                  upcast=True)
        ref.backward(grad_out[:, sl].double())
        assert_close(y[:, sl], ref, torch.float16, msg=f"channel {ch} output")
        assert_close(gx[:, sl], ref_leaves[0].grad, torch.float16, kind="grad", msg=f"channel {ch} grad x")
        assert_close(gw[sl], ref_leaves[1].grad[0], torch.float16, kind="grad", msg=f"channel {ch} grad weight")
        assert_close(gb[sl], ref_leaves[2].grad[0], torch.float16, kind="grad", msg=f"channel {ch} grad bias")
        assert_close(gt[:, sl], ref_leaves[3].grad, torch.float16, kind="grad", msg=f"channel {ch} grad temb")
        del ref, ref_leaves


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_graph_capture_of_forward(backend, layout):
    """The forward has no host synchronisation and allocates only through torch: it captures and replays."""
    a = _make(2, 64, (16, 16), torch.float16)
    x = a["x"].contiguous(memory_format=torch.channels_last) if layout == "channels_last" else a["x"].clone()

    def fwd():
        return group_norm_silu(x, 8, a["weight"], a["bias"], temb=a["temb"], scale_shift=a["scale_shift"],
                               backend=backend)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (Triton compiles, allocator pools)
            fwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = fwd()
    for seed in (1, 2):
        x.copy_(torch.randn(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)).half())
        graph.replay()
        torch.cuda.synchronize()
        eager = fwd()
        assert torch.equal(y_static, eager), "a replay must equal an eager call on the same input"
        ref = group_norm_silu_ref(x, 8, a["weight"], a["bias"], temb=a["temb"], scale_shift=a["scale_shift"],
                                  upcast=True)
        assert_close(y_static, ref, torch.float16)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_runs_on_the_current_stream(backend):
    """Work queued on a side stream before the op must be seen by it: the op launches on the current stream."""
    a = _make(4, 64, (32, 32), torch.float32)
    fresh = torch.randn_like(a["x"]) * 3 + 1
    x = torch.zeros_like(a["x"])
    grad_out = torch.randn_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # tens of ms: an op on another stream would read x before the copy below
        x.copy_(fresh)
        leaf = x.requires_grad_()
        y = group_norm_silu(leaf, 8, a["weight"], a["bias"], temb=a["temb"], backend=backend)
        y.backward(grad_out)
        y_side, gx_side = y.detach().clone(), leaf.grad.clone()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    ref_x = fresh.double().requires_grad_()
    ref = group_norm_silu_ref(ref_x, 8, a["weight"], a["bias"], temb=a["temb"], upcast=True)
    ref.backward(grad_out.double())
    assert_close(y_side, ref, torch.float32)
    assert_close(gx_side, ref_x.grad, torch.float32, kind="grad")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_tensor_on_a_non_current_device(backend):
    """The binding guards the device of x: tensors on cuda:1 work while cuda:0 is current."""
    a = _make(2, 16, (8, 8), torch.float32, device="cuda:1")
    with torch.cuda.device(0):
        y = group_norm_silu(a["x"], 4, a["weight"], a["bias"], temb=a["temb"], backend=backend)
    assert y.device == a["x"].device
    ref = group_norm_silu_ref(a["x"], 4, a["weight"], a["bias"], temb=a["temb"], upcast=True)
    assert_close(y, ref, torch.float32)


@pytest.mark.skipif("cuda" not in gencore.available_backends(), reason="needs the cuda backend")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_cuda(layout):
    """Fake implementations agree with the CUDA kernels on shapes, dtypes and strides (channels_last included)."""
    a = _make(2, 12, (5, 4), torch.float32)
    x = a["x"].contiguous(memory_format=torch.channels_last) if layout == "channels_last" else a["x"]
    args = (x.requires_grad_(), a["weight"], a["bias"], a["temb"], a["scale_shift"], 3, 1e-5, "silu")
    torch.library.opcheck(torch.ops.gencore.group_norm_silu_fwd.default, args)
    y, mean, rstd = torch.ops.gencore.group_norm_silu_fwd(*args)
    grad_out = torch.randn_like(y)
    torch.library.opcheck(torch.ops.gencore.group_norm_silu_bwd.default,
                          (grad_out, x.detach(), a["weight"], a["bias"], a["temb"], a["scale_shift"], mean, rstd, 3,
                           "silu"))
    ref_mean, ref_rstd = group_norm_silu_stats_ref(x, 3, 1e-5, a["temb"])
    assert_close(mean, ref_mean, torch.float32)
    assert_close(rstd, ref_rstd, torch.float32)


@pytest.mark.skipif("cuda" not in gencore.available_backends(), reason="needs the cuda backend")
def test_raw_cuda_op_checks_its_arguments():
    """torch.ops.gencore.* skip the Python checks; the CUDA binding's TORCH_CHECKs must refuse bad input."""
    x = torch.randn(2, 6, 4, 4, device="cuda")
    bad = [
        ((x, None, None, None, None, 4, 1e-5, "silu"), "num_groups"),
        ((x, torch.ones(5, device="cuda"), None, None, None, 2, 1e-5, "silu"), "weight"),
        ((x, torch.ones(6, device="cuda").double(), None, None, None, 2, 1e-5, "silu"), "weight"),
        ((x, None, None, torch.ones(2, 5, device="cuda"), None, 2, 1e-5, "silu"), "temb"),
        ((x, None, None, None, torch.ones(2, 6, device="cuda"), 2, 1e-5, "silu"), "scale_shift"),
        ((x.long(), None, None, None, None, 2, 1e-5, "silu"), "x"),
        ((x[:0], None, None, None, None, 2, 1e-5, "silu"), "x"),
        ((x, None, None, None, None, 2, -1.0, "silu"), "eps"),
    ]
    for args, word in bad:
        with pytest.raises(RuntimeError, match=word):
            torch.ops.gencore.group_norm_silu_fwd(*args)
    y, mean, rstd = torch.ops.gencore.group_norm_silu_fwd(x, None, None, None, None, 2, 1e-5, "silu")
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.gencore.group_norm_silu_bwd(y[:1], x, None, None, None, None, mean, rstd, 2, "silu")
    with pytest.raises(RuntimeError, match="mean"):
        torch.ops.gencore.group_norm_silu_bwd(y, x, None, None, None, None, mean.double(), rstd, 2, "silu")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_torch_compile_fullgraph_cuda(backend):
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.weight = torch.nn.Parameter(torch.rand(16) + 0.5)
            self.bias = torch.nn.Parameter(torch.randn(16))

        def forward(self, x, temb):
            return self.conv(group_norm_silu(x, 4, self.weight, self.bias, temb=temb, backend=backend)) + x

    block = Block().cuda()
    x = torch.randn(2, 16, 12, 12, device="cuda", requires_grad=True)
    temb = torch.randn(2, 16, device="cuda")
    eager = block(x, temb)
    eager.sum().backward()
    eager_grad = x.grad.clone()
    x.grad = None
    compiled = torch.compile(block, fullgraph=True)(x, temb)
    compiled.sum().backward()
    assert_close(compiled, eager, "float32_compounded")  # cuDNN picks the convolutions' algorithms per graph
    assert_close(x.grad, eager_grad, "float32_compounded")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("activation", ["silu", None])
def test_gradcheck_and_gradgradcheck_cuda(backend, activation):
    """float64 on the GPU: the fused backward against finite differences, and the double backward (recompute path)."""
    a = _make(2, 6, (3, 2), torch.float64)
    inputs = tuple(a[k].clone().requires_grad_() for k in NAMES)

    def fn(x, w, b, t, ss):
        return group_norm_silu(x, 3, w, b, temb=t, scale_shift=ss, activation=activation, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, **tolerance("gradcheck"))
    assert torch.autograd.gradgradcheck(fn, inputs, **tolerance("gradgradcheck"))
