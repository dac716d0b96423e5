"""Benchmark cases of the WGAN-GP gradient penalty.

Two ops:

gradient_penalty (the penalty machinery alone, no critic): interpolate x_hat = alpha * real + (1 - alpha) * fake,
    then the per-sample norm + penalty of a stand-in critic gradient `grad` of x_hat's shape, and its backward
    d penalty / d grad. Modes: forward (interpolation + norm + penalty), backward (d penalty / d grad from a graph
    built in setup), forward+backward (all three passes). Shapes: MNIST (64, 1, 28, 28) and DCGAN 64x64
    (64, 3, 64, 64). Providers: reference (eager PyTorch, the textbook ops), torch_compile (the reference under
    torch.compile), cpu / cuda / triton, memcpy (the roofline).
    Bytes moved: interpolation reads real and fake and writes x_hat (3 x numel), the norm reads grad (1 x), the
    backward reads grad and writes its gradient (2 x): forward 4 x, backward 2 x, forward+backward 6 x.

wgan_gp_critic_step (the honest end-to-end number): one critic update of WGAN-GP with a small DCGAN-style critic
    without batch norm (the WGAN-GP paper forbids it in the critic): scores of real and fake, Wasserstein loss +
    10 * gradient_penalty, backward (the critic's double backward), Adam step. Providers: reference (the penalty
    through gencore.reference) vs the fused backend of the device. The critic's convolutions, their backward and
    double backward dominate, so the ratio is close to 1 by construction; the table reports it as measured.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from . import Case, memcpy_case

OP = "gradient_penalty"
STEP_OP = "wgan_gp_critic_step"

SHAPES = [(64, 1, 28, 28), (64, 3, 64, 64)]
QUICK_SHAPES = [(4, 1, 28, 28)]
MODES = ("forward", "backward", "forward+backward")
BYTES_PER_ELEMENT_MOVED = {"forward": 4, "backward": 2, "forward+backward": 6}


def _providers(device: str, compiled: bool = True) -> list[str]:
    from .. import backends

    available = backends.available_backends()
    providers = ["reference"] + (["torch_compile"] if compiled else [])
    if device == "cpu" and "cpu" in available:
        providers.append("cpu")
    if device == "cuda":
        providers += [p for p in ("cuda", "triton") if p in available]
    return providers


def _machinery_reference(real, fake, alpha, grad):
    from ..reference.gradient_penalty import gradient_norm_penalty_ref, interpolate_ref

    return interpolate_ref(real, fake, alpha), gradient_norm_penalty_ref(grad, 1.0)[0]


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    """The reference under torch.compile with static shapes (recompile limit raised: one entry per shape/mode)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_machinery_reference, dynamic=False)


def _machinery_for(provider: str):
    """(real, fake, alpha, grad) -> (x_hat, penalty) for one provider."""
    if provider == "reference":
        return _machinery_reference
    if provider == "torch_compile":
        return _compiled_reference()
    from ..ops.gradient_penalty import gradient_norm_penalty, gradient_penalty_interpolate

    def fused(real, fake, alpha, grad):
        return (gradient_penalty_interpolate(real, fake, alpha, backend=provider),
                gradient_norm_penalty(grad, 1.0, backend=provider))

    return fused


def _machinery_setup(provider: str, shape, dtype: torch.dtype, device: str, mode: str):
    def setup():
        gen = torch.Generator().manual_seed(0)
        real = torch.randn(shape, generator=gen).to(device, dtype)
        fake = torch.randn(shape, generator=gen).to(device, dtype)
        alpha = torch.rand(shape[0], generator=gen).to(device, dtype)
        grad = (torch.randn(shape, generator=gen) * 0.05).to(device, dtype).requires_grad_(mode != "forward")
        fn = _machinery_for(provider)
        if mode == "forward":
            def forward():
                with torch.no_grad():
                    return fn(real, fake, alpha, grad)
            return forward
        if mode == "backward":
            _, penalty = fn(real, fake, alpha, grad)

            def backward():
                return torch.autograd.grad(penalty, grad, retain_graph=True)
            return backward

        def forward_backward():
            x_hat, penalty = fn(real, fake, alpha, grad)
            return x_hat, torch.autograd.grad(penalty, grad)
        return forward_backward

    return setup


# ---------------------------------------------------------------------------------------------------------------------
# The full WGAN-GP critic step.


def dcgan_critic(channels: int, size: int, width: int = 32) -> nn.Sequential:
    """A small DCGAN-style critic without batch norm: stride-2 4x4 convs with LeakyReLU(0.2) down to 4x4 (or 7x7 for
    28x28), then one conv to a score per sample."""
    layers: list[nn.Module] = []
    c_in, c, s = channels, width, size
    while s > 7 and s % 2 == 0:
        layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        c_in, c, s = c, c * 2, s // 2
    layers += [nn.Conv2d(c_in, 1, s), nn.Flatten(0)]
    return nn.Sequential(*layers)


def _step_setup(provider: str, shape, device: str):
    from ..gan import gradient_penalty

    backend = "reference" if provider == "reference" else provider

    def setup():
        torch.manual_seed(0)
        n, c, h, _ = shape
        critic = dcgan_critic(c, h).to(device)
        optimizer = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9))
        real = torch.randn(shape, device=device)
        fake = torch.randn(shape, device=device)  # a generator's (detached) output in a real loop
        gen = torch.Generator(device).manual_seed(1)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = critic(fake).mean() - critic(real).mean()
            loss = loss + 10.0 * gradient_penalty(critic, real, fake, generator=gen, backend=backend)
            loss.backward()
            optimizer.step()
            return loss

        return step

    return setup


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    """Every case of the penalty machinery and of the critic step on `device` ("cpu" or "cuda")."""
    device = str(torch.device(device).type)
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    out = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        label = "(" + ",".join(map(str, shape)) + ")"
        numel = 1
        for s in shape:
            numel *= s
        for dtype in dtypes:
            dname = str(dtype).replace("torch.", "")
            for mode in MODES:
                nbytes = BYTES_PER_ELEMENT_MOVED[mode] * numel * dtype.itemsize
                for provider in _providers(device):
                    out.append(Case(OP, provider, label, dname, mode, nbytes,
                                    _machinery_setup(provider, shape, dtype, device, mode)))
                out.append(memcpy_case(OP, label, dname, mode, nbytes, device))
        for provider in _providers(device, compiled=False):
            out.append(Case(STEP_OP, provider, label, "float32", "step", 0, _step_setup(provider, shape, device)))
    return out
