"""Benchmark cases of gencore.ops.group_norm_silu: y = SiLU(GroupNorm(x + temb)) with affine weight and bias.

Providers: reference (eager PyTorch), torch_compile (the reference under torch.compile), cpu / cuda / triton
(gencore's backends, where they can run here), memcpy (a copy of the same bytes: the roofline).
Modes: forward (no autograd), backward (gradients of x, weight, bias and temb from a graph built in setup),
forward+backward. Shapes: the MNIST-UNet blocks (64, 64, 28, 28) and (64, 128, 14, 14) with 8 groups, a Stable
Diffusion block (8, 320, 64, 64) and its batch-1 form (1, 512, 64, 64) with 32 groups. float32 on CPU, float16 and
bfloat16 on CUDA. quick=True: one small shape, for CI smoke runs (`pytest bench --benchmark-disable`) and
`gencore bench --quick`.

Bytes moved (the minimum any implementation must move; the per-channel tensors are negligible):
forward reads x and writes y (2 x numel), backward reads x and grad_out and writes grad_x (3 x), forward+backward 5 x.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import Case, memcpy_case

OP = "group_norm_silu"

# (N, C, H, W, groups)
SHAPES = [
    (64, 64, 28, 28, 8),
    (64, 128, 14, 14, 8),
    (8, 320, 64, 64, 32),
    (1, 512, 64, 64, 32),
]
QUICK_SHAPES = [(4, 64, 16, 16, 8)]
MODES = ("forward", "backward", "forward+backward")
BYTES_PER_ELEMENT_MOVED = {"forward": 2, "backward": 3, "forward+backward": 5}


def _providers(device: str) -> list[str]:
    from .. import backends

    available = backends.available_backends()
    providers = ["reference", "torch", "torch_compile"]
    if device == "cpu" and "cpu" in available:
        providers.append("cpu")
    if device == "cuda":
        providers += [p for p in ("cuda", "triton") if p in available]
    return providers


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    """The reference under torch.compile, static shapes (what a fixed-shape model gets). Every benchmark shape,
    with and without grad, is one more compiled entry of the same code, so the recompile limit is raised to keep
    them all compiled rather than silently falling back to eager. Donated buffers are turned off: the "backward"
    mode replays one graph's backward (retain_graph=True), which a backward with donated buffers refuses."""
    import torch._functorch.config

    from ..reference.group_norm_silu import group_norm_silu_ref

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._functorch.config.donated_buffer = False
    return torch.compile(group_norm_silu_ref, dynamic=False)


def _op_for(provider: str):
    """(x, G, weight, bias, temb) -> y for one provider."""
    from ..ops.group_norm_silu import group_norm_silu
    from ..reference.group_norm_silu import group_norm_silu_ref

    if provider == "reference":
        return lambda x, g, w, b, t: group_norm_silu_ref(x, g, w, b, temb=t)
    if provider == "torch":
        return lambda x, g, w, b, t: F.silu(F.group_norm(x + t.reshape(t.shape + (1,) * (x.dim() - 2)), g, w, b))
    if provider == "torch_compile":
        compiled = _compiled_reference()
        return lambda x, g, w, b, t: compiled(x, g, w, b, temb=t)
    return lambda x, g, w, b, t: group_norm_silu(x, g, w, b, temb=t, backend=provider)


def _setup(provider: str, shape, dtype: torch.dtype, device: str, mode: str):
    n, c, h, w, g = shape

    def setup():
        gen = torch.Generator().manual_seed(0)

        def rnd(*size):
            return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

        grad = mode != "forward"
        x = rnd(n, c, h, w).requires_grad_(grad)
        weight = (rnd(c) * 0.1 + 1).requires_grad_(grad)
        bias = rnd(c).requires_grad_(grad)
        temb = rnd(n, c).requires_grad_(grad)
        grad_out = rnd(n, c, h, w)
        inputs = (x, weight, bias, temb)
        op = _op_for(provider)
        if mode == "forward":
            def forward():
                with torch.no_grad():
                    return op(x, g, weight, bias, temb)
            return forward
        if mode == "backward":
            y = op(x, g, weight, bias, temb)

            def backward():
                return torch.autograd.grad(y, inputs, grad_out, retain_graph=True)
            return backward

        def forward_backward():
            return torch.autograd.grad(op(x, g, weight, bias, temb), inputs, grad_out)
        return forward_backward

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    """Every (shape, dtype, mode, provider) case of the op on `device` ("cpu" or "cuda"), memcpy rows included."""
    device = str(torch.device(device).type)
    dtypes = [torch.float32] if device == "cpu" else [torch.float16, torch.bfloat16]
    out = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        n, c, h, w, g = shape
        label = f"({n},{c},{h},{w}) G={g}"
        for dtype in dtypes:
            dname = str(dtype).replace("torch.", "")
            numel_bytes = n * c * h * w * dtype.itemsize
            for mode in MODES:
                nbytes = BYTES_PER_ELEMENT_MOVED[mode] * numel_bytes
                for provider in _providers(device):
                    out.append(Case(OP, provider, label, dname, mode, nbytes,
                                    _setup(provider, shape, dtype, device, mode)))
                out.append(memcpy_case(OP, label, dname, mode, nbytes, device))
    return out
