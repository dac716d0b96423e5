"""gencore.nn drop-ins: torch's signature, parameter names, state_dict keys, and the same numbers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gencore
import gencore.nn as gnn
from gencore.ops import group_norm_silu
from gencore.testing import assert_close

BACKENDS = ["reference"] + [b for b in ("cpu",) if b in gencore.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(backend, affine):
    torch.manual_seed(0)
    ref = nn.GroupNorm(4, 12, eps=1e-4, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
    ours = gnn.GroupNorm(4, 12, eps=1e-4, affine=affine)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert repr(ours) == repr(ref).replace("GroupNorm", "GroupNorm")
    x = torch.randn(3, 12, 7, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    with gencore.use_backend(backend):
        y = ours(x)
    y_ref = ref(x2)
    assert_close(y, y_ref.double(), torch.float32)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x2.grad.double(), torch.float32, kind="grad")
    if affine:
        assert_close(ours.weight.grad, ref.weight.grad.double(), torch.float32, kind="grad")


def test_group_norm_silu_module():
    torch.manual_seed(0)
    m = gnn.GroupNormSiLU(2, 8)
    assert "activation=silu" in repr(m) and "GroupNormSiLU(2, 8" in repr(m)
    x, temb, ss = torch.randn(2, 8, 4, 4), torch.randn(2, 8), torch.randn(2, 16)
    expected = nn.functional.silu(nn.functional.group_norm(x + temb[..., None, None], 2, m.weight, m.bias))
    assert_close(m(x, temb), expected.double(), torch.float32)
    gn = nn.functional.group_norm(x, 2, m.weight, m.bias)
    scale, shift = ss.chunk(2, 1)
    expected = nn.functional.silu(gn * (1 + scale[..., None, None]) + shift[..., None, None])
    assert_close(m(x, scale_shift=ss), expected.double(), torch.float32)


def test_constructor_matches_torch():
    m = gnn.GroupNorm(2, 4, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.eps == 1e-5 and m.affine
    assert isinstance(m, nn.GroupNorm)
    with pytest.raises(ValueError):
        gnn.GroupNorm(3, 4)  # torch's own check: groups must divide channels


def test_convert_in_place_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8), nn.ReLU()),
        nn.GroupNorm(8, 8),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    keys = list(model.state_dict().keys())
    params = [p for p in model.parameters()]
    out = gnn.convert(model)
    assert out is model
    assert isinstance(model[1], gnn.GroupNormSiLU) and isinstance(model[2], nn.Identity)
    assert type(model[3][1]) is gnn.GroupNorm and type(model[4]) is gnn.GroupNorm
    assert list(model.state_dict().keys()) == keys
    assert all(a is b for a, b in zip(params, model.parameters()))  # shared, so optimizers keep working
    assert_close(model(x), before.double(), torch.float32)
    # Converting twice changes nothing.
    gnn.convert(model)
    assert isinstance(model[1], gnn.GroupNormSiLU) and isinstance(model[2], nn.Identity)


def test_convert_top_level_group_norm():
    gn = nn.GroupNorm(2, 4)
    new = gnn.convert(gn)
    assert type(new) is gnn.GroupNorm and new.weight is gn.weight


def test_autocast_matches_torch_policy():
    m_ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8))
    m = gnn.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8)))
    m.load_state_dict(m_ref.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = m_ref(x), m(x)
    assert y.dtype == y_ref.dtype  # CPU autocast keeps group_norm in the input dtype (bfloat16 here)
    assert_close(y, y_ref.double(), torch.bfloat16)


def test_small_tensors_keep_torchs_kernels(size_gate):
    """Where the gate hands a call to torch, the module computes exactly torch's F.silu(F.group_norm(x + temb));
    where it does not, exactly gencore's fused op; an explicit backend always gets what it asks for."""
    m = gnn.GroupNormSiLU(4, 16).eval()
    small = torch.randn(2, 16, 8, 8)  # 2,048 elements
    temb = torch.randn(2, 16)
    with torch.no_grad():
        torch_out = F.silu(F.group_norm(small + temb[:, :, None, None], 4, m.weight, m.bias, m.eps))
        assert torch.equal(m(small, temb), torch_out)
        with gencore.use_backend("cpu"):
            assert torch.equal(m(small, temb), group_norm_silu(small, 4, m.weight, m.bias, m.eps, temb=temb,
                                                               backend="cpu"))
        large = torch.randn(4, 16, 64, 64)  # 262,144 elements
        assert torch.equal(m(large), group_norm_silu(large, 4, m.weight, m.bias, m.eps, backend="cpu"))
        # 65,536 elements: fused with an add to fold in, torch's without one
        temb = torch.randn(1, 16)
        assert torch.equal(m(large[:1], temb), group_norm_silu(large[:1], 4, m.weight, m.bias, m.eps, temb=temb,
                                                               backend="cpu"))
        assert torch.equal(m(large[:1]), F.silu(F.group_norm(large[:1], 4, m.weight, m.bias, m.eps)))


# The gate's rule (gencore/nn/size_gate.py), just under and at each threshold, on shapes of the diffusers benchmark
# models: (shape, what the call fuses, layout, autograd records, whether torch's path serves it).
GATE_RULE = [
    # contiguous, forward: GroupNorm + SiLU + add from 64K elements, GroupNorm + SiLU from 256K, GroupNorm from 8M
    ((2, 256, 8, 8), "silu+add", "contiguous", False, True),
    ((2, 128, 16, 16), "silu+add", "contiguous", False, False),
    ((2, 64, 32, 32), "silu", "contiguous", False, True),
    ((2, 128, 32, 32), "silu", "contiguous", False, False),
    ((1, 256, 128, 128), "plain", "contiguous", False, True),
    ((1, 128, 256, 256), "plain", "contiguous", False, False),
    # contiguous, autograd recording: 256K, 1M, 32M
    ((2, 64, 32, 32), "silu+add", "contiguous", True, True),
    ((2, 128, 32, 32), "silu+add", "contiguous", True, False),
    ((2, 256, 32, 32), "silu", "contiguous", True, True),
    ((8, 128, 32, 32), "silu", "contiguous", True, False),
    ((1, 128, 256, 256), "plain", "contiguous", True, True),
    ((1, 512, 256, 256), "plain", "contiguous", True, False),
    # channels-last (and any other non-contiguous layout): eight times the contiguous thresholds
    ((8, 512, 8, 8), "silu+add", "channels_last", False, True),
    ((8, 256, 16, 16), "silu+add", "channels_last", False, False),
    ((8, 512, 16, 16), "silu", "channels_last", False, True),
    ((1, 512, 64, 64), "silu", "channels_last", False, False),
    ((8, 512, 16, 16), "silu+add", "channels_last", True, True),
    ((1, 512, 64, 64), "silu+add", "channels_last", True, False),
    ((1, 256, 128, 128), "silu", "channels_last", True, True),
    ((1, 128, 256, 256), "silu", "channels_last", True, False),
    ((8, 256, 256), "plain", "transposed", False, True),  # diffusers' attention norm: (N, HW, C).transpose(1, 2)
    ((1, 512, 4096), "silu+add", "transposed", False, False),
]


def _laid_out(shape, layout):
    if layout == "channels_last":
        return torch.empty(shape, memory_format=torch.channels_last)
    if layout == "transposed":
        return torch.empty(shape[0], shape[2], shape[1]).transpose(1, 2)
    return torch.empty(shape)


@pytest.mark.parametrize("shape, fuses, layout, records, torch_serves", GATE_RULE)
def test_size_gate_rule(size_gate, shape, fuses, layout, records, torch_serves):
    x = _laid_out(shape, layout)
    c = shape[1]
    weight, bias = torch.ones(c, requires_grad=records), torch.zeros(c, requires_grad=records)
    temb = torch.zeros(shape[0], c) if fuses == "silu+add" else None
    activation = None if fuses == "plain" else "silu"
    assert size_gate.torch_is_faster(x, weight, bias, temb, None, activation) == torch_serves
    if fuses == "silu+add":  # a scale/shift is folded in like the add
        ss = torch.zeros(shape[0], 2 * c)
        assert size_gate.torch_is_faster(x, weight, bias, None, ss, activation) == torch_serves
    with torch.no_grad():  # autograd records nothing here, whatever requires grad: the forward threshold
        assert size_gate.torch_is_faster(x, weight, bias, temb, None, activation) == size_gate.torch_is_faster(
            x, weight.detach(), bias.detach(), temb, None, activation)
    # An explicit backend, in any of its forms, always gets the fused op.
    assert not size_gate.torch_is_faster(x, weight, bias, temb, None, activation, backend="cpu")
    with gencore.use_backend("cpu"):
        assert not size_gate.torch_is_faster(x, weight, bias, temb, None, activation)
