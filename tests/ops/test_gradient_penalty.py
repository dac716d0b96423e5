"""gencore.gan.gradient_penalty / r1 / r2 and the fused ops under them, every backend against the textbook recipe.

The textbook recipe (`_textbook` below) is the plain-autograd WGAN-GP implementation: interpolate, critic forward,
autograd.grad(create_graph=True), per-sample norm, mean squared deviation. The truth is that recipe in float64 with
a float64 copy of the critic; each backend's penalty and the critic's parameter gradients (double backpropagation)
must match it at the tolerance of gencore.testing for the dtype the backend ran in.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch._dynamo import compiled_autograd
from torch.overrides import TorchFunctionMode

from gencore import _extension
from gencore.gan import gradient_penalty, r1_penalty, r2_penalty
from gencore._rules import accumulation_dtype, per_sample_dense
from gencore.ops import gradient_norm_penalty, gradient_penalty_interpolate, group_norm_silu
from gencore.reference.gradient_penalty import gradient_norm_penalty_ref, interpolate_ref
from gencore.testing import assert_close, assert_equal, backend_params, device_for

FUSED = backend_params(("cpu", "cuda", "triton"))
ALL = [pytest.param("reference", id="reference")] + FUSED
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Input shapes per rank: vectors, sequences, images, volumes (small: the Triton interpreter runs them on CPU).
RANK_SHAPES = {2: (5, 11), 3: (4, 3, 10), 4: (4, 3, 6, 5), 5: (3, 2, 3, 4, 5)}


class FlatCritic(nn.Module):
    """A two-layer MLP critic over the flattened sample: any rank. tanh gives a non-zero second derivative."""

    def __init__(self, features: int, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


class ConvCritic(nn.Module):
    """A DCGAN-style critic without batch norm: conv, LeakyReLU, conv, Softplus, linear."""

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        h, w = (size[0] + 1) // 2, (size[1] + 1) // 2
        self.fc = nn.Linear(8 * h * w, 1)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.conv1(x), 0.2)
        h = nn.functional.softplus(self.conv2(h))
        return self.fc(h.flatten(1))


class ConditionalCritic(nn.Module):
    """A projection-style conditional critic: score = mlp(x) + <embed(label), features(x)>."""

    def __init__(self, features: int, classes: int = 3, hidden: int = 12):
        super().__init__()
        self.body = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(classes, hidden)

    def forward(self, x, labels):
        h = torch.tanh(self.body(x.flatten(1)))
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(1)


class GroupNormCritic(nn.Module):
    """A critic built on gencore.ops.group_norm_silu: its double backward runs through the op's reference recompute."""

    def __init__(self, channels: int, size: tuple[int, int], gn_backend: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.rand(8) + 0.5)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)
        self.fc = nn.Linear(8 * size[0] * size[1], 1)
        self.gn_backend = gn_backend

    def forward(self, x):
        h = group_norm_silu(self.conv(x), 4, self.weight, self.bias, backend=self.gn_backend)
        return self.fc(h.flatten(1))


def _make_critic(shape, seed=0):
    torch.manual_seed(seed)
    if len(shape) == 4:
        return ConvCritic(shape[1], shape[2:])
    features = 1
    for s in shape[1:]:
        features *= s
    return FlatCritic(features)


def _inputs(shape, dtype, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=gen, dtype=torch.float64)
    fake = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5 + 0.3
    alpha = torch.rand(shape[0], generator=gen, dtype=torch.float64)
    return real.to(device, dtype), fake.to(device, dtype), alpha.to(device, dtype)


def _textbook(critic, real, fake, alpha, center=1.0, one_sided=False, critic_kwargs=None):
    """The plain autograd WGAN-GP recipe, written independently of gencore."""
    critic_kwargs = critic_kwargs or {}
    a = alpha.reshape((-1,) + (1,) * (real.dim() - 1))
    interpolates = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    out = critic(interpolates, **critic_kwargs)
    (grad,) = torch.autograd.grad(out, interpolates, grad_outputs=torch.ones_like(out), create_graph=True)
    norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    dev = norm - center
    if one_sided:
        dev = dev.clamp(min=0)
    return (dev ** 2).mean(), norm.detach()


def _param_grads(critic, penalty):
    critic.zero_grad(set_to_none=True)
    penalty.backward()
    return {k: p.grad.detach().clone() for k, p in critic.named_parameters() if p.grad is not None}


def _check_against_textbook(backend, critic, real, fake, alpha, dtype, center=1.0, one_sided=False,
                            critic_kwargs=None, truth_kwargs=None):
    critic = critic.to(real.device, dtype)
    truth_critic = copy.deepcopy(critic).to("cpu", torch.float64)
    kwargs_cpu = {k: v.cpu() for k, v in (truth_kwargs or critic_kwargs or {}).items()}
    penalty = gradient_penalty(critic, real, fake, alpha=alpha, center=center, one_sided=one_sided,
                               critic_kwargs=critic_kwargs, backend=backend)
    grads = _param_grads(critic, penalty)
    truth, _ = _textbook(truth_critic, real.cpu().double(), fake.cpu().double(), alpha.cpu().double(), center,
                         one_sided, kwargs_cpu)
    truth_grads = _param_grads(truth_critic, truth)
    assert penalty.dim() == 0 and torch.isfinite(penalty)
    assert penalty.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(penalty, truth, dtype, msg=f"{backend} penalty")
    assert grads.keys() == truth_grads.keys()
    for k in truth_grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], truth_grads[k], dtype, kind="grad", msg=f"{backend} critic grad {k}")
    return penalty


# ---------------------------------------------------------------------------------------------------------------------
# The public penalty against the textbook recipe.


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rank", RANK_SHAPES.keys(), ids=[f"rank{r}" for r in RANK_SHAPES])
def test_matches_textbook(backend, dtype, rank):
    shape = RANK_SHAPES[rank]
    real, fake, alpha = _inputs(shape, dtype, device_for(backend))
    _check_against_textbook(backend, _make_critic(shape), real, fake, alpha, dtype)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("one_sided", [False, True], ids=["two_sided", "one_sided"])
@pytest.mark.parametrize("center", ["zero", "median"])
def test_center_and_one_sided(backend, center, one_sided):
    shape = RANK_SHAPES[4]
    real, fake, alpha = _inputs(shape, torch.float64, device_for(backend))
    critic = _make_critic(shape)
    if center == "zero":
        value = 0.0
    else:  # the median norm: some samples above, some below, so one_sided really drops terms
        _, norms = _textbook(copy.deepcopy(critic).double(), real.cpu(), fake.cpu(), alpha.cpu())
        value = float(norms.median())
        assert (norms > value).any() and (norms < value).any()
    _check_against_textbook(backend, critic, real, fake, alpha, torch.float64, center=value, one_sided=one_sided)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_conditional_critic(backend, dtype):
    shape = RANK_SHAPES[3]
    device = device_for(backend)
    real, fake, alpha = _inputs(shape, dtype, device)
    torch.manual_seed(3)
    critic = ConditionalCritic(3 * 10)
    labels = torch.tensor([0, 2, 1, 2], device=device)
    _check_against_textbook(backend, critic, real, fake, alpha, dtype, critic_kwargs={"labels": labels})


def _gn_backends():
    """group_norm_silu backends whose fused kernels exist in this build (the double-backward path needs them)."""
    params = [pytest.param("reference", id="gn-reference")]
    for p in backend_params(("cpu", "cuda", "triton")):
        name = p.values[0]
        marks = list(p.marks)
        if name in ("cpu", "cuda") and not _extension.has_kernel("group_norm_silu_fwd", name.upper()):
            marks.append(pytest.mark.skip(reason=f"group_norm_silu has no {name} kernel in this build yet"))
        params.append(pytest.param(name, marks=marks, id=f"gn-{name}"))
    return params


@pytest.mark.parametrize("gn_backend", _gn_backends())
def test_critic_with_gencore_group_norm_silu(gn_backend):
    """Double backprop through gencore's own fused op: its backward is recomputed through the reference."""
    shape = (3, 2, 5, 4)
    penalty_backend = "reference" if gn_backend == "reference" else gn_backend
    device = device_for(gn_backend)
    real, fake, alpha = _inputs(shape, torch.float64, device)
    torch.manual_seed(4)
    critic = GroupNormCritic(2, (5, 4), gn_backend)
    critic = critic.to(device, torch.float64)
    penalty = gradient_penalty(critic, real, fake, alpha=alpha, backend=penalty_backend)
    grads = _param_grads(critic, penalty)
    truth_critic = copy.deepcopy(critic).cpu()
    truth_critic.gn_backend = "reference"
    truth, _ = _textbook(truth_critic, real.cpu(), fake.cpu(), alpha.cpu())
    truth_grads = _param_grads(truth_critic, truth)
    assert_close(penalty, truth, torch.float64)
    for k in truth_grads:
        assert_close(grads[k], truth_grads[k], torch.float64, kind="grad", msg=f"critic grad {k}")


@pytest.mark.parametrize("backend", ALL)
def test_zero_norm(backend):
    """Samples whose critic gradient is exactly 0: finite penalty (center^2 each) and finite, exact critic grads."""
    device = device_for(backend)
    real, fake, alpha = _inputs((4, 6), torch.float64, device)
    torch.manual_seed(5)
    w = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device)

    def critic(x):
        return torch.tanh(x @ w) * mask  # samples 1 and 3 do not depend on x at all

    penalty = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    (grad_w,) = torch.autograd.grad(penalty, w)
    truth, norms = _textbook(critic, real, fake, alpha)
    (truth_w,) = torch.autograd.grad(truth, w)
    assert (norms[1] == 0) and (norms[3] == 0)
    assert torch.isfinite(penalty) and torch.isfinite(grad_w).all()
    assert_close(penalty, truth, torch.float64)
    assert_close(grad_w, truth_w, torch.float64, kind="grad")

    # All-zero gradient, through the fused op directly: penalty = center^2, gradient exactly 0.
    g = torch.zeros(3, 2, 5, dtype=torch.float32, device=device, requires_grad=True)
    p = gradient_norm_penalty(g, 1.0, backend=backend)
    (dg,) = torch.autograd.grad(p, g)
    assert p.item() == 1.0
    assert torch.equal(dg, torch.zeros_like(dg))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("one_sided", [False, True], ids=["two_sided", "one_sided"])
def test_nan_norm_propagates_to_its_whole_sample(backend, one_sided):
    """A NaN in one element makes that sample's norm NaN, and every element of the sample depends on the norm: the
    backward must give NaN there (it gave 0 for the finite elements), and stay exact for the other samples."""
    device = device_for(backend)
    g = torch.randn(3, 2, 5, dtype=torch.float64, device=device)
    g[1, 0, 2] = float("nan")
    g.requires_grad_(True)
    (dg,) = torch.autograd.grad(gradient_norm_penalty(g, 1.0, one_sided, backend=backend), g)
    ref = g.detach().clone().requires_grad_(True)
    (truth,) = torch.autograd.grad(gradient_norm_penalty_ref(ref, 1.0, one_sided)[0], ref)
    assert torch.isnan(truth[1]).all() and torch.isfinite(truth[[0, 2]]).all()
    assert torch.isnan(dg[1]).all()
    torch.testing.assert_close(dg, truth, equal_nan=True)


@pytest.mark.parametrize("backend", ALL)
def test_r1_r2_match_textbook(backend):
    shape = RANK_SHAPES[4]
    real, fake, _ = _inputs(shape, torch.float64, device_for(backend))
    critic = _make_critic(shape).to(real.device, torch.float64)
    for fn, x in ((r1_penalty, real), (r2_penalty, fake)):
        penalty = fn(critic, x, backend=backend)
        grads = _param_grads(critic, penalty)
        xt = x.detach().cpu().requires_grad_(True)
        truth_critic = copy.deepcopy(critic).cpu()
        out = truth_critic(xt)
        (g,) = torch.autograd.grad(out, xt, torch.ones_like(out), create_graph=True)
        truth = g.reshape(g.shape[0], -1).pow(2).sum(1).mean()
        truth_grads = _param_grads(truth_critic, truth)
        assert_close(penalty, truth, torch.float64, msg=fn.__name__)
        for k in truth_grads:
            assert_close(grads[k], truth_grads[k], torch.float64, kind="grad", msg=f"{fn.__name__} grad {k}")


@pytest.mark.parametrize("backend", ALL)
def test_default_alpha_uses_generator(backend):
    device = device_for(backend)
    real, fake, _ = _inputs((4, 7), torch.float32, device)
    critic = _make_critic((4, 7)).to(device)
    p1 = gradient_penalty(critic, real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    p2 = gradient_penalty(critic, real, fake, generator=torch.Generator(device).manual_seed(7), backend=backend)
    alpha = torch.rand(4, generator=torch.Generator(device).manual_seed(7), device=device)
    p3 = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    assert torch.equal(p1, p2) and torch.equal(p1, p3)


@pytest.mark.parametrize("backend", ALL)
def test_textbook_alpha_shape_accepted(backend):
    real, fake, alpha = _inputs((4, 2, 3), torch.float64, device_for(backend))
    critic = _make_critic((4, 2, 3)).to(real.device, torch.float64)
    a = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    b = gradient_penalty(critic, real, fake, alpha=alpha.reshape(4, 1, 1), backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ALL)
def test_grad_scaler_recipe(backend):
    """With a GradScaler the gradient is taken on the scaled output and unscaled before the norm: the penalty and the
    critic's gradients (after scaler.unscale_) equal the unscaled computation."""
    shape = RANK_SHAPES[4]
    device = device_for(backend)
    real, fake, alpha = _inputs(shape, torch.float32, device)
    critic = _make_critic(shape).to(device)
    plain = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    plain_grads = _param_grads(critic, plain)

    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 12)
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.0)
    critic.zero_grad(set_to_none=True)
    scaled = gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, backend=backend)
    scaler.scale(scaled).backward()
    scaler.unscale_(optimizer)
    assert_close(scaled, plain, torch.float32)
    for k, p in critic.named_parameters():
        if k not in plain_grads:  # the penalty does not depend on it (the last bias)
            assert p.grad is None or not p.grad.any(), k
            continue
        assert_close(p.grad, plain_grads[k], torch.float32, kind="grad", msg=f"scaled grad {k}")


@pytest.mark.parametrize("backend", ALL)
def test_autocast_bfloat16_matches_pytorch_recipe(backend):
    """Under CPU autocast (bfloat16) with a scaler: the same numbers as PyTorch's documented recipe, by hand."""
    if device_for(backend).type != "cpu":
        pytest.skip("CPU autocast case")
    shape = RANK_SHAPES[4]
    real, fake, alpha = _inputs(shape, torch.float32, "cpu")
    critic = _make_critic(shape)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, backend=backend)
        a = alpha.reshape(-1, 1, 1, 1)
        x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
        out = critic(x_hat)
        (g,) = torch.autograd.grad(scaler.scale(out), x_hat, torch.ones_like(out), create_graph=True)
        g = g * (1.0 / scaler.get_scale())
        truth = ((g.reshape(g.shape[0], -1).norm(2, dim=1) - 1) ** 2).mean()
    assert torch.isfinite(ours)
    assert_close(ours, truth.double(), torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# The fused ops themselves.


def _layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "strided", torch.cat([x, x], dim=-1)[..., ::2]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# batch1-multi-chunk: 3 partial sums on cpu (16384-element chunks), 10 on Triton (4096); pieces-cross-samples: the
# cpu backend's parallel pieces (32768 elements) start and end inside samples.
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 9), (4, 3, 6, 5), (2, 3, 2, 3, 4), (1, 40000), (3, 20001), (3, 1)],
                         ids=["rank2", "rank3", "rank4", "rank5", "batch1-multi-chunk", "pieces-cross-samples",
                              "one-element"])
def test_ops_match_reference(backend, dtype, shape):
    device = device_for(backend)
    real, fake, alpha = _inputs(shape, dtype, device)
    for name, r in _layouts(real):
        f = fake.contiguous(memory_format=torch.channels_last) if name == "channels_last" else fake
        x_hat = gradient_penalty_interpolate(r, f, alpha, backend=backend)
        assert x_hat.dtype == dtype and x_hat.shape == real.shape
        if per_sample_dense(r) and r.stride() == f.stride():
            assert x_hat.stride() == r.stride(), name
        assert_close(x_hat, interpolate_ref(r, f, alpha, upcast=True), dtype, msg=f"{backend} interpolate {name}")

        grad = (r.double() * torch.linspace(0.1, 3.0, shape[0], dtype=torch.float64,
                                            device=device).reshape((-1,) + (1,) * (r.dim() - 1))).to(dtype)
        grad = grad.requires_grad_(True)
        penalty, norms = gradient_norm_penalty(grad, 1.0, return_norms=True, backend=backend)
        g64 = grad.detach().double().requires_grad_(True)
        truth, truth_norms = gradient_norm_penalty_ref(g64, 1.0)
        assert penalty.dtype == norms.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        # penalty and norms are float32 reductions of dtype inputs: judged at float32 precision at least.
        red = accumulation_dtype(dtype)
        assert_close(norms, truth_norms, red, msg=f"{backend} norms {name}")
        assert_close(penalty, truth, red, kind="grad", msg=f"{backend} penalty {name}")
        (dg,) = torch.autograd.grad(penalty, grad)
        (truth_dg,) = torch.autograd.grad(truth, g64)
        assert dg.dtype == dtype and dg.shape == grad.shape
        assert_close(dg, truth_dg, dtype, kind="grad", msg=f"{backend} penalty backward {name}")


@pytest.mark.parametrize("backend", FUSED)
def test_ops_deterministic(backend):
    device = device_for(backend)
    g = torch.randn(2, 3, 40, 50, device=device, requires_grad=True)
    runs = []
    for _ in range(2):
        p, n = gradient_norm_penalty(g, 1.0, return_norms=True, backend=backend)
        (dg,) = torch.autograd.grad(p, g)
        runs.append((p, n, dg))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fused_ops(backend):
    device = device_for(backend)
    gen = torch.Generator().manual_seed(9)
    # Tiny shapes: gradcheck calls the op once per input element, and the Triton interpreter is slow per launch.
    real = torch.randn(2, 2, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    fake = torch.randn(2, 2, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    alpha = torch.rand(2, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)

    def interpolate(r, f, a):
        return gradient_penalty_interpolate(r, f, a, backend=backend)

    assert torch.autograd.gradcheck(interpolate, (real, fake, alpha))
    assert torch.autograd.gradgradcheck(interpolate, (real, fake, alpha))
    grad = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    for center, one_sided, scale in ((1.0, False, 1.0), (0.0, False, 1.0), (2.0, True, 0.5)):
        def penalty(g):
            return gradient_norm_penalty(g, center, one_sided, grad_scale=scale, backend=backend)
        assert torch.autograd.gradcheck(penalty, (grad,))
        assert torch.autograd.gradgradcheck(penalty, (grad,))


def test_autograd_keeps_its_promises_on_the_cpp_ops():
    """The C++ ops' autograd is the registered one every gencore op has (register_autograd, shared with the Triton
    pair): an in-place change of a saved input is refused, a freed graph cannot be run twice, retain_graph can, only
    the inputs asked for get a gradient, and compiled autograd traces it (the hand-written C++ nodes it replaced
    could not be traced)."""
    if not _extension.has_kernel("gradient_norm_penalty_fwd", "CPU"):
        pytest.skip("no gencore._C CPU kernels in this build")
    gen = torch.Generator().manual_seed(4)
    grad = torch.randn(3, 2, 5, generator=gen, requires_grad=True)
    g = grad * 1.0  # a non-leaf, so it can be modified in place
    penalty = gradient_norm_penalty(g, backend="cpu")
    g.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        penalty.backward()

    penalty = gradient_norm_penalty(grad, backend="cpu")
    (first,) = torch.autograd.grad(penalty, grad, retain_graph=True)
    (second,) = torch.autograd.grad(penalty, grad)
    assert torch.equal(first, second)
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(penalty, grad)

    real, fake, alpha = (torch.randn(3, 2, 5, generator=gen, requires_grad=True),
                         torch.randn(3, 2, 5, generator=gen), torch.rand(3, generator=gen, requires_grad=True))
    x_hat = gradient_penalty_interpolate(real, fake, alpha, backend="cpu")
    (grad_alpha,) = torch.autograd.grad(x_hat.sum(), alpha)
    assert_close(grad_alpha, (real - fake).double().sum(dim=(1, 2)))
    assert real.grad is None

    expected = torch.autograd.grad(gradient_norm_penalty(grad * 2, backend="cpu"), grad)[0]
    grad.grad = None
    penalty = gradient_norm_penalty(grad * 2, backend="cpu")
    with compiled_autograd._enable(torch.compile(backend="eager")):
        penalty.backward()
    assert_equal(grad.grad, expected)


def test_ops_are_visible_to_torch_function_modes():
    real, fake, alpha = _inputs((4, 3, 5), torch.float32, "cpu")
    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Spy():
        x_hat = gradient_penalty_interpolate(real, fake, alpha, backend="cpu")
        gradient_norm_penalty(x_hat, backend="cpu")
    assert torch.ops.gencore.gradient_penalty_interpolate.default in seen
    assert torch.ops.gencore.gradient_norm_penalty_fwd.default in seen


def test_opcheck_cpp_ops():
    if not _extension.has_kernel("gradient_penalty_interpolate", "CPU"):
        pytest.skip("no gencore._C CPU kernels in this build")
    real, fake, alpha = _inputs((3, 2, 4, 5), torch.float32, "cpu")
    grad = torch.randn(3, 2, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.gencore.gradient_penalty_interpolate, (real.requires_grad_(), fake, alpha))
    torch.library.opcheck(torch.ops.gencore.gradient_norm_penalty_fwd, (grad, 1.0, False, 1.0))
    penalty, norms = torch.ops.gencore.gradient_norm_penalty_fwd(grad.detach(), 1.0, True, 0.5)
    torch.library.opcheck(torch.ops.gencore.gradient_norm_penalty_bwd,
                          (torch.tensor(1.0), grad.detach(), norms, 1.0, True, 0.5))


def test_compiled_matches_eager_cpp_path():
    """Eager calls and torch.compile (which traces the registered autograd into the fake kernels) must give the same
    penalty and gradient (fullgraph: the compiled function must not fall back to eager)."""
    if not _extension.has_kernel("gradient_norm_penalty_fwd", "CPU"):
        pytest.skip("no gencore._C CPU kernels in this build")
    real, fake, alpha = _inputs((4, 3, 5, 6), torch.float32, "cpu")

    def machinery(grad):
        x_hat = gradient_penalty_interpolate(real, fake, alpha, backend="cpu")
        return x_hat, gradient_norm_penalty(grad * x_hat, 1.0, backend="cpu")

    grad = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    x_eager, p_eager = machinery(grad)
    (g_eager,) = torch.autograd.grad(p_eager, grad)
    x_comp, p_comp = torch.compile(machinery, fullgraph=True, backend="aot_eager")(grad)
    (g_comp,) = torch.autograd.grad(p_comp, grad)
    assert_equal(x_comp, x_eager)
    assert_equal(p_comp, p_eager)
    assert_equal(g_comp, g_eager)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: each a clear exception that names the argument.


def _bad_cases():
    real = torch.randn(4, 3, 5)
    critic = _make_critic((4, 3, 5))
    return {
        "shape-mismatch": (lambda: gradient_penalty(critic, real, torch.randn(4, 3, 6)), ValueError, "fake"),
        "batch-mismatch": (lambda: gradient_penalty(critic, real, torch.randn(3, 3, 5)), ValueError, "fake"),
        "dtype-mismatch": (lambda: gradient_penalty(critic, real, real.double()), TypeError, "fake"),
        "device-mismatch": (lambda: gradient_penalty(critic, real, real.to("meta")), ValueError, "device"),
        "int-input": (lambda: gradient_penalty(critic, real.long(), real.long()), TypeError, "real"),
        "not-a-tensor": (lambda: gradient_penalty(critic, real.tolist(), real), TypeError, "real"),
        "empty-batch": (lambda: gradient_penalty(critic, real[:0], real[:0]), ValueError, "empty"),
        "empty-sample": (lambda: gradient_penalty(critic, real[:, :0], real[:, :0]), ValueError, "empty"),
        "alpha-wrong-shape": (lambda: gradient_penalty(critic, real, real, alpha=torch.rand(3)), ValueError, "alpha"),
        "alpha-wrong-rank": (lambda: gradient_penalty(critic, real, real, alpha=torch.rand(4, 1)), ValueError,
                             "alpha"),
        "alpha-wrong-dtype": (lambda: gradient_penalty(critic, real, real, alpha=torch.rand(4).double()), TypeError,
                              "alpha"),
        "output-per-element": (lambda: gradient_penalty(lambda x: x * 2, real, real), ValueError, "one score"),
        "output-scalar": (lambda: gradient_penalty(lambda x: x.sum(), real, real), ValueError, "one score"),
        "output-two-per-sample": (lambda: gradient_penalty(lambda x: x.flatten(1)[:, :2], real, real), ValueError,
                                  "one score"),
        "output-detached": (lambda: gradient_penalty(lambda x: x.detach().flatten(1).sum(1), real, real),
                            RuntimeError, "does not depend"),
        "critic-not-callable": (lambda: gradient_penalty(3, real, real), TypeError, "critic"),
        "critic-kwargs-not-dict": (lambda: gradient_penalty(critic, real, real, critic_kwargs=[1]), TypeError,
                                   "critic_kwargs"),
        "negative-center": (lambda: gradient_penalty(critic, real, real, center=-1.0), ValueError, "center"),
        "nan-center": (lambda: gradient_penalty(critic, real, real, center=float("nan")), ValueError, "center"),
        "r1-empty": (lambda: r1_penalty(critic, real[:0]), ValueError, "empty"),
        "op-grad-scale": (lambda: gradient_norm_penalty(real, grad_scale=0.0), ValueError, "grad_scale"),
        "op-one-sided": (lambda: gradient_norm_penalty(real, one_sided="yes"), TypeError, "one_sided"),
        "op-empty-batch": (lambda: gradient_norm_penalty(real[:0]), ValueError, "empty"),
        "op-alpha": (lambda: gradient_penalty_interpolate(real, real, torch.rand(4, 3)), ValueError, "alpha"),
        "op-bad-backend": (lambda: gradient_norm_penalty(real, backend="tpu"), ValueError, "backend"),
    }


@pytest.mark.parametrize("case", _bad_cases().keys())
def test_bad_input(case):
    fn, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        fn()


def test_kernels_reject_bad_input_directly():
    """Calling the registered C++ ops directly (bypassing the Python checks) fails cleanly too, never out of bounds."""
    if not _extension.has_kernel("gradient_penalty_interpolate", "CPU"):
        pytest.skip("no gencore._C CPU kernels in this build")
    real = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="alpha"):
        torch.ops.gencore.gradient_penalty_interpolate(real, real, torch.rand(3))
    with pytest.raises(RuntimeError, match="fake"):
        torch.ops.gencore.gradient_penalty_interpolate(real, torch.randn(4, 6), torch.rand(4))
    with pytest.raises(RuntimeError, match="norms"):
        torch.ops.gencore.gradient_norm_penalty_bwd(torch.tensor(1.0), real, torch.rand(3), 1.0, False, 1.0)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.gencore.gradient_norm_penalty_fwd(real[:0], 1.0, False, 1.0)


@pytest.mark.parametrize("backend", ALL)
def test_detaches_samples_and_works_under_no_grad(backend):
    """real and fake are constants of the penalty (no gradient reaches the generator through fake), and the penalty
    can be evaluated under torch.no_grad (e.g. for logging) with the same value."""
    device = device_for(backend)
    real, fake, alpha = _inputs((4, 2, 5), torch.float64, device)
    critic = _make_critic((4, 2, 5)).to(device, torch.float64)
    fake = fake.clone().requires_grad_(True)
    penalty = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    penalty.backward()
    assert fake.grad is None
    with torch.no_grad():
        logged = gradient_penalty(critic, real, fake, alpha=alpha, backend=backend)
    assert torch.equal(logged, penalty.detach())


def test_triton_grids_fit_cuda_limits_for_many_samples(monkeypatch):
    """N > 65,535 samples: a grid axis 1 or 2 that large does not launch on CUDA (the CUDA kernels loop). Every
    Triton launch of the penalty keeps axes 1 and 2 within 65,535. The launches are recorded, not run (the
    interpreter would take minutes over 70,000 programs); the results at small N are the other tests' job."""
    pytest.importorskip("triton")
    from gencore.kernels import gradient_penalty as tk

    grids = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append((self.kernel.fn.__name__, tuple(grid)))
            return lambda *args, **kwargs: None

    monkeypatch.setattr(tk, "wrap_triton", Recorder)  # every launcher starts its kernels through it
    n = 70_000
    real, fake, alpha = torch.randn(n, 2), torch.randn(n, 2), torch.rand(n)
    tk.gradient_penalty_interpolate(real, fake, alpha)
    tk.gradient_norm_penalty_fwd(real, 1.0, False, 1.0)
    tk.gradient_norm_penalty_bwd(torch.tensor(1.0), real, torch.ones(n), 1.0, False, 1.0)
    assert len(grids) == 4, grids
    for name, grid in grids:
        assert all(axis <= 65535 for axis in grid[1:]), (name, grid)


@pytest.mark.parametrize("backend", ALL)
def test_center_and_scale_keep_float64_precision(backend):
    """center and grad_scale reach the float64 kernels unrounded (Triton passed them as float32): a centre of
    1 + 2^-40 must give the float64 answer."""
    device = device_for(backend)
    g = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    center, scale = 1.0 + 2.0 ** -40, 3.0 + 2.0 ** -45
    p = gradient_norm_penalty(g, center, grad_scale=scale, backend=backend)
    (dg,) = torch.autograd.grad(p, g)
    ref = g.detach().clone().requires_grad_(True)
    truth = gradient_norm_penalty_ref(ref, center, grad_scale=scale)[0]
    (dref,) = torch.autograd.grad(truth, ref)
    assert_close(p, truth, "float64_short")
    assert_close(dg, dref, "float64_short")
